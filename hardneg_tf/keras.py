"""``HCLLoss``: hardneg_tf.hcl_loss as a Keras 3 loss, for ``model.fit`` and custom ``train_step``.

Keras calls a loss as ``loss(y_true, y_pred)`` with one prediction tensor per output. The model therefore
emits both views in one tensor of shape (B, 2, d) — ``keras.ops.stack([z1, z2], axis=1)`` — and
``y_true`` is either ignored or, with ``use_labels=True``, the integer class labels (B,) whose same-class
samples are removed from the negatives. docs/backends/tensorflow.md shows both workflows.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from hardneg.validation import check_hyperparameters

from .loss import hcl_loss

__all__ = ["HCLLoss", "split_views"]


def split_views(y_pred):
    """(z1, z2) from a prediction of shape (B, 2, d), or from a pair ``(z1, z2)``."""
    if isinstance(y_pred, (tuple, list)) and len(y_pred) == 2:
        return y_pred[0], y_pred[1]
    y_pred = tf.convert_to_tensor(y_pred)
    if y_pred.shape.rank != 3 or (y_pred.shape[1] is not None and y_pred.shape[1] != 2):
        raise ValueError(
            "HCLLoss expects y_pred of shape (B, 2, d): the two views stacked on axis 1, e.g. "
            f"keras.ops.stack([z1, z2], axis=1) as the model's output; got shape {tuple(y_pred.shape)}"
        )
    return y_pred[:, 0, :], y_pred[:, 1, :]


@keras.saving.register_keras_serializable(package="hardneg")
class HCLLoss(keras.losses.Loss):
    """Hard-negative contrastive loss (Robinson et al., ICLR 2021) as a ``keras.losses.Loss``.

    Parameters
    ----------
    temperature, beta, tau_plus, estimator, clamp, normalize, reduction
        As in :func:`hardneg_tf.hcl_loss` (same defaults). ``reduction`` is the loss's own ("mean" over the
        2B anchors, "sum", or "none" for the per-anchor vector); ``model.fit`` needs "mean" or "sum".
    memory_budget, gather
        As in :func:`hardneg_tf.hcl_loss`.
    use_labels : bool, default False
        Read ``y_true`` as integer class labels (B,) and remove same-class samples from the negatives
        (supervised debiasing). False ignores ``y_true`` (pass anything, e.g. ``None`` or zeros).
    name : str, default "hcl_loss"
    dtype : str or keras.DTypePolicy, optional
        Dtype the views are cast to before the loss; default ``keras.backend.floatx()`` (float32), which
        also makes a ``mixed_float16`` model's float16 outputs compute the loss in float32.

    Notes
    -----
    Called as ``loss(y_true, y_pred)`` with ``y_pred`` of shape (B, 2, d) (or a pair ``(z1, z2)``); returns a
    scalar (or (2B,) for ``reduction="none"``). ``sample_weight`` is not supported (the anchors are the 2B
    views, not the B samples).

    Under a ``tf.distribute`` strategy with R replicas in sync, the scalar value is divided by R, as Keras'
    built-in losses do, so that the optimizer's sum of the replicas' gradients is their average.
    """

    def __init__(
        self,
        temperature: float = 0.5,
        beta: float = 1.0,
        tau_plus: float = 0.1,
        estimator: str = "hard",
        clamp: bool = True,
        normalize: bool = True,
        reduction: str = "mean",
        memory_budget=None,
        gather: bool = False,
        use_labels: bool = False,
        name: str = "hcl_loss",
        dtype=None,
    ):
        check_hyperparameters(
            temperature=temperature,
            beta=beta,
            tau_plus=tau_plus,
            estimator=estimator,
            clamp=clamp,
            normalize=normalize,
            reduction=reduction,
        )
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.temperature, self.beta, self.tau_plus = temperature, beta, tau_plus
        self.estimator, self.clamp, self.normalize = estimator, clamp, normalize
        self.memory_budget, self.gather, self.use_labels = memory_budget, gather, use_labels

    def _kwargs(self):
        return dict(
            temperature=self.temperature,
            beta=self.beta,
            tau_plus=self.tau_plus,
            estimator=self.estimator,
            clamp=self.clamp,
            normalize=self.normalize,
            reduction=self.reduction,
            memory_budget=self.memory_budget,
            gather=self.gather,
        )

    def __call__(self, y_true, y_pred, sample_weight=None):
        # Keras' Loss.__call__ would cast y_true (the labels) to a float dtype and reduce per sample; the
        # loss is already reduced over its anchors, so only the views are cast here.
        if sample_weight is not None:
            raise ValueError("HCLLoss does not support sample_weight (its anchors are the 2B views, not B samples)")
        with tf.name_scope(self.name):
            z1, z2 = (tf.cast(z, self.dtype) for z in split_views(y_pred))
            labels = None
            if self.use_labels:
                if y_true is None:
                    raise ValueError("HCLLoss(use_labels=True) needs y_true: the integer class labels, shape (B,)")
                labels = tf.convert_to_tensor(y_true)
                if labels.dtype.is_floating:  # Keras data adapters may hand integer labels over as floats
                    labels = tf.cast(tf.round(labels), tf.int64)
                labels = tf.reshape(labels, [-1])
            kwargs = self._kwargs()
            if self.gather and tf.distribute.in_cross_replica_context():
                # Keras traces the loss once outside strategy.run to build the model's metrics: no replicas
                # to gather from there, and the value is not used for training
                kwargs["gather"] = False
            value = hcl_loss(z1, z2, labels=labels, **kwargs)
            if self.reduction != "none":
                replicas = tf.distribute.get_strategy().num_replicas_in_sync
                if replicas > 1:
                    value = value * (1.0 / replicas)
            return value

    def call(self, y_true, y_pred):
        return self.__call__(y_true, y_pred)

    def get_config(self):
        return dict(name=self.name, dtype=self.dtype, use_labels=self.use_labels, **self._kwargs())
