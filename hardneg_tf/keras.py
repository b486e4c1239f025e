"""``hardneg_tf.HCLLoss`` and ``LearnableTemperature``: aliases of the Keras 3 loss in :mod:`hardneg_keras`.

The Keras loss used to live here and worked only under the TensorFlow backend of Keras 3. It moved to
:mod:`hardneg_keras`, which computes with the hardneg package of whichever Keras backend is active
(``hardneg_tf`` under ``KERAS_BACKEND=tensorflow``, the default), so this module re-exports the same classes:
``hardneg_tf.HCLLoss is hardneg_keras.HCLLoss``. Existing code, and models saved with the loss (registered as
``hardneg>HCLLoss``), keep working unchanged; new code should import from ``hardneg_keras``.
"""

from __future__ import annotations

from hardneg_keras.loss import HCLLoss, LearnableTemperature, split_views

__all__ = ["HCLLoss", "LearnableTemperature", "split_views"]
