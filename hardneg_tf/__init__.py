"""hardneg_tf: the HCL objective (docs/spec.md) in TensorFlow — blockwise, closed-form gradient, Keras 3.

``hcl_loss`` has the reference's signature plus ``memory_budget`` and ``gather``. ``HCLLoss`` and
``LearnableTemperature`` are aliases of :class:`hardneg_keras.HCLLoss` and
:class:`hardneg_keras.LearnableTemperature` (imported on first use, since they need Keras): the Keras 3 loss,
which computes with ``hardneg_tf.hcl_loss`` under the TensorFlow backend of Keras (and with ``hardneg_jax`` or
``hardneg_torch`` under those backends).
"""

from typing import TYPE_CHECKING

from .jsd import jsd_loss
from .loss import DEFAULT_MEMORY_BUDGET, hcl_loss

if TYPE_CHECKING:  # for type checkers and the API docs; at run time Keras is imported on first use
    from .keras import HCLLoss, LearnableTemperature

__all__ = ["hcl_loss", "HCLLoss", "LearnableTemperature", "DEFAULT_MEMORY_BUDGET", "jsd_loss"]


def __getattr__(name):
    if name in ("HCLLoss", "LearnableTemperature"):
        from . import keras

        return getattr(keras, name)
    raise AttributeError(f"module 'hardneg_tf' has no attribute {name!r}")
