"""hardneg_keras: the HCL objective (docs/spec.md) as one Keras 3 loss for every Keras backend.

:class:`HCLLoss` is a ``keras.losses.Loss`` that computes with the hardneg package of the active Keras
backend (``keras.config.backend()``): ``hardneg_jax`` under ``KERAS_BACKEND=jax``, ``hardneg_tf`` under
``tensorflow`` and ``hardneg_torch`` under ``torch``. Only that package (and so only that framework) is
imported, on the first call. :class:`LearnableTemperature` holds a learned temperature. Guide:
docs/integrations.md (Keras 3) and docs/backends/tensorflow.md.
"""

from .loss import HCLLoss, LearnableTemperature, backend_hcl_loss, split_views

__all__ = ["HCLLoss", "LearnableTemperature", "split_views", "backend_hcl_loss"]
