"""hardneg_tf: the HCL objective (docs/spec.md) in TensorFlow — blockwise, closed-form gradient, Keras 3.

``hcl_loss`` has the reference's signature plus ``memory_budget`` and ``gather``; ``HCLLoss`` (imported on
first use, since it needs Keras) wraps it as a ``keras.losses.Loss``; ``LearnableTemperature`` holds its learned
temperature.
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
