"""``HCLLoss``: hardneg_tf.hcl_loss as a Keras 3 loss, for ``model.fit`` and custom ``train_step``.

Keras calls a loss as ``loss(y_true, y_pred)`` with one prediction tensor per output. The model therefore
emits both views in one tensor of shape (B, 2, d) — ``keras.ops.stack([z1, z2], axis=1)`` — and
``y_true`` is either ignored or, with ``use_labels=True``, the integer class labels (B,) whose same-class
samples are removed from the negatives. docs/backends/tensorflow.md shows both workflows.

A learnable temperature (``learn_temperature=True``, as CLIP learns its logit scale) lives in a small
pass-through layer, :class:`LearnableTemperature` (``HCLLoss.temperature_layer``): Keras trains the model's
variables only, so that layer is put into the model (anywhere, e.g. after the encoder) and the loss reads the
temperature from it.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from hardneg.validation import check_call, check_hyperparameters

from .loss import hcl_loss

__all__ = ["HCLLoss", "LearnableTemperature", "split_views"]


@keras.saving.register_keras_serializable(package="hardneg")
class LearnableTemperature(keras.layers.Layer):
    """A pass-through layer that owns a learnable temperature, kept as a log-parameter like CLIP's logit scale.

    The layer returns its inputs unchanged; it exists so that the temperature is one of the model's trainable
    variables (``model.fit`` trains only those). :class:`HCLLoss` with ``learn_temperature=True`` creates one
    (``HCLLoss.temperature_layer``) and reads the temperature from it inside the training step's tape.

    Parameters
    ----------
    temperature : float, default 0.5
        Initial temperature t0 > 0; the weight ``logit_scale`` starts at log(1 / t0).
    min_temperature : float, optional
        Lower bound of the temperature used, ``max(exp(-logit_scale), min_temperature)`` (CLIP bounds its logit
        scale by 100, i.e. ``min_temperature=0.01``); no gradient reaches ``logit_scale`` while it is clamped.
        Default: no bound.
    **kwargs
        Keras layer arguments (``name``, ``dtype``, ...).
    """

    def __init__(self, temperature: float = 0.5, min_temperature=None, **kwargs):
        super().__init__(**kwargs)
        check_hyperparameters(temperature=temperature, beta=1.0, tau_plus=0.1, estimator="hard", clamp=True,
                              normalize=True, reduction="mean")
        if min_temperature is not None:
            check_hyperparameters(temperature=min_temperature, beta=1.0, tau_plus=0.1, estimator="hard",
                                  clamp=True, normalize=True, reduction="mean")
        self.initial_temperature = float(temperature)
        self.min_temperature = None if min_temperature is None else float(min_temperature)
        self.logit_scale = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(-math.log(self.initial_temperature)),
            name="logit_scale", trainable=True,
        )

    def temperature(self):
        """The temperature in use, a 0-d tensor: exp(-logit_scale), floored at ``min_temperature``."""
        t = tf.exp(-tf.convert_to_tensor(self.logit_scale))
        if self.min_temperature is not None:
            t = tf.maximum(t, tf.cast(self.min_temperature, t.dtype))
        return t

    def call(self, inputs):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return dict(super().get_config(), temperature=self.initial_temperature, min_temperature=self.min_temperature)


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
    temperature : float, default 0.5
        t > 0: similarities are divided by t.
    beta : float, default 1.0
        Hardness, >= 0; ``math.inf`` allowed (worst-case negatives); 0 is the debiased loss.
    tau_plus : float, default 0.1
        Class prior for debiasing, 0 <= tau_plus < 1.
    estimator : {"hard", "easy"}, default "hard"
        "easy" is NT-Xent / InfoNCE (beta, tau_plus and clamp are ignored).
    clamp : bool, default True
        Floor the negatives' term at M e^{-1/t} (the released code's "constrain"; hard estimator only).
    normalize : bool, default True
        Normalise the rows of the views (u = z / max(||z||, 1e-12)); False uses them as given.
    reduction : {"mean", "sum", "none"}, default "mean"
        The loss's own reduction: "mean" over the 2B anchors, "sum", or "none" for the per-anchor vector;
        ``model.fit`` needs "mean" or "sum".
    layout : {None, "in_batch", "bank", "cross"}, default None
        Which rows are anchors and candidates (see :func:`hardneg_tf.hcl_loss`); None is spec 1.0 (in-batch,
        since the Keras loss never gets a bank); "cross" makes z1's rows the anchors against z2's (CLIP).
    symmetric : bool, default True
        Cross layout only: also use z2's rows as anchors against z1's rows (CLIP's two directions).
    learn_temperature : bool, default False
        Learn the temperature, starting from ``temperature``: the loss creates a
        :class:`LearnableTemperature` layer, ``temperature_layer``, whose weight ``logit_scale`` = log(1/t)
        must be part of the model (e.g. its last layer) so that ``model.fit`` trains it.
    min_temperature : float, optional
        With ``learn_temperature``, the smallest temperature used (CLIP's bound on its logit scale is
        ``min_temperature=0.01``); no gradient reaches ``logit_scale`` while the bound holds. None: no bound.
    memory_budget : int, optional
        Bytes of transient working memory for the blocked computation (see :func:`hardneg_tf.hcl_loss`).
    gather : bool, default False
        Under a ``tf.distribute`` strategy, use every replica's samples as negatives (see
        :func:`hardneg_tf.hcl_loss`).
    use_labels : bool, default False
        Read ``y_true`` as integer class labels (B,) and remove same-class samples from the negatives
        (supervised debiasing). False ignores ``y_true`` (pass anything, e.g. ``None`` or zeros).
    name : str, default "hcl_loss"
        The loss's name (Keras' name scope and metric name).
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

    Examples
    --------
    A learned temperature (the pass-through layer goes into the model, here after the encoder)::

        loss = HCLLoss(layout="cross", learn_temperature=True, temperature=0.07, min_temperature=0.01)
        model = keras.Sequential([keras.Input((2, 32)), keras.layers.Dense(16), loss.temperature_layer])
        model.compile(optimizer="adam", loss=loss)
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
        layout=None,
        symmetric: bool = True,
        learn_temperature: bool = False,
        min_temperature=None,
        memory_budget=None,
        gather: bool = False,
        use_labels: bool = False,
        name: str = "hcl_loss",
        dtype=None,
    ):
        # the shared validation, shapes unknown: hyper-parameters, layout and symmetric (no bank is ever given)
        check_call(z1_shape=(None, None), z2_shape=(None, None), z1_dtype=None, z2_dtype=None,
                   temperature=temperature, beta=beta, tau_plus=tau_plus, estimator=estimator, clamp=clamp,
                   normalize=normalize, reduction=reduction, layout=layout, symmetric=symmetric)
        if not isinstance(learn_temperature, bool):
            raise TypeError(f"learn_temperature must be a bool (True or False); got {learn_temperature!r}")
        if min_temperature is not None and not learn_temperature:
            raise ValueError("min_temperature is only meaningful with learn_temperature=True")
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.temperature, self.beta, self.tau_plus = temperature, beta, tau_plus
        self.estimator, self.clamp, self.normalize = estimator, clamp, normalize
        self.layout, self.symmetric = layout, symmetric
        self.learn_temperature, self.min_temperature = learn_temperature, min_temperature
        self.memory_budget, self.gather, self.use_labels = memory_budget, gather, use_labels
        #: The :class:`LearnableTemperature` holding the learned temperature (None unless learn_temperature).
        self.temperature_layer = (
            LearnableTemperature(temperature, min_temperature, name=f"{name}_temperature")
            if learn_temperature else None
        )

    def _kwargs(self):
        return dict(
            temperature=self.temperature,
            beta=self.beta,
            tau_plus=self.tau_plus,
            estimator=self.estimator,
            clamp=self.clamp,
            normalize=self.normalize,
            reduction=self.reduction,
            layout=self.layout,
            symmetric=self.symmetric,
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
            if self.temperature_layer is not None:
                kwargs["temperature"] = self.temperature_layer.temperature()
            value = hcl_loss(z1, z2, labels=labels, **kwargs)
            if self.reduction != "none":
                replicas = tf.distribute.get_strategy().num_replicas_in_sync
                if replicas > 1:
                    value = value * (1.0 / replicas)
            return value

    def call(self, y_true, y_pred):
        return self.__call__(y_true, y_pred)

    def get_config(self):
        return dict(name=self.name, dtype=self.dtype, use_labels=self.use_labels,
                    learn_temperature=self.learn_temperature, min_temperature=self.min_temperature, **self._kwargs())
