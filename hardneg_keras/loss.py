"""``HCLLoss``: the HCL objective as one Keras 3 loss, computed by the hardneg package of the Keras backend.

Keras calls a loss as ``loss(y_true, y_pred)`` with one prediction tensor per output. The model therefore
emits both views in one tensor of shape (B, 2, d) — ``keras.ops.stack([z1, z2], axis=1)`` — and ``y_true`` is
either ignored or, with ``use_labels=True``, the integer class labels (B,) whose same-class samples are removed
from the negatives. Called directly (a custom ``train_step`` or ``compute_loss``), the loss also takes the pair
``(z1, z2)`` and a bank of negatives, ``loss(None, (z1, z2), negatives=queue)``.

The computation is written once per framework, in ``hardneg_jax``, ``hardneg_tf`` and ``hardneg_torch``; this
module only dispatches (as einops picks a backend): :func:`backend_hcl_loss` maps ``keras.config.backend()``
to the package's ``hcl_loss``, imported on the first call and cached, so a process never imports a framework
its Keras backend does not use. Everything else here is written with ``keras.ops`` and runs under every
backend.

A learnable temperature (``learn_temperature=True``, as CLIP learns its logit scale) lives in a small
pass-through layer, :class:`LearnableTemperature` (``HCLLoss.temperature_layer``): Keras trains the model's
variables only — a ``keras.losses.Loss`` cannot own a trainable variable — so that layer is put into the model
(anywhere, e.g. as its last layer) and the loss reads the temperature from it inside the training step.
"""

from __future__ import annotations

import functools
import importlib
import math

import keras
from keras import ops

from hardneg.loss_settings import HCLLossSettings
from hardneg.validation import _check_bool, check_hyperparameters, check_learned_temperature

__all__ = ["HCLLoss", "LearnableTemperature", "split_views", "backend_hcl_loss", "BACKEND_PACKAGES"]

#: The hardneg package that computes the loss under each Keras backend.
BACKEND_PACKAGES = {"jax": "hardneg_jax", "tensorflow": "hardneg_tf", "torch": "hardneg_torch"}


@functools.cache
def _hcl_loss_of(backend: str):
    return importlib.import_module(BACKEND_PACKAGES[backend]).hcl_loss


def backend_hcl_loss(backend=None):
    """The ``hcl_loss`` function of the hardneg package for a Keras backend, imported on first use and cached.

    Parameters
    ----------
    backend : {"jax", "tensorflow", "torch"}, optional
        Default: the active Keras backend, ``keras.config.backend()``.

    Raises
    ------
    NotImplementedError
        For a Keras backend without a hardneg package (``numpy`` and ``openvino`` have no automatic
        differentiation, so ``model.fit`` cannot train with them anyway).
    """
    backend = keras.config.backend() if backend is None else backend
    if backend not in BACKEND_PACKAGES:
        raise NotImplementedError(
            f"hardneg_keras computes with hardneg_jax, hardneg_tf or hardneg_torch, i.e. under the Keras backends "
            f"{', '.join(sorted(BACKEND_PACKAGES))}; the active Keras backend is {backend!r}. Set KERAS_BACKEND "
            "to one of them before importing keras"
        )
    return _hcl_loss_of(backend)


try:  # keras.saving's object-sharing scope, active while load_model rebuilds a model and its compile config
    from keras.src.saving.serialization_lib import get_shared_object as _shared_get
    from keras.src.saving.serialization_lib import record_object_after_deserialization as _shared_record
except ImportError:  # pragma: no cover - a Keras without it: a reloaded loss gets a fresh temperature layer
    def _shared_get(key):
        return None

    def _shared_record(obj, key):
        return None


def _share_key(layer_name: str):
    # a tuple never collides with Keras' own keys (the integer ids of shared objects); layer names are unique
    # within a model, and the scope lives for one load_model call
    return ("hardneg>LearnableTemperature", layer_name)


@keras.saving.register_keras_serializable(package="hardneg")
class LearnableTemperature(keras.layers.Layer):
    """A pass-through layer that owns a learnable temperature, kept as a log-parameter like CLIP's logit scale.

    The layer returns its inputs unchanged; it exists so that the temperature is one of the model's trainable
    variables (``model.fit`` trains only those, under every Keras backend). :class:`HCLLoss` with
    ``learn_temperature=True`` creates one (``HCLLoss.temperature_layer``) and reads the temperature from it
    inside the training step, where the backend's autodiff (``tf.GradientTape``, ``jax.grad`` of Keras'
    stateless step, torch autograd) reaches ``logit_scale`` through the loss's closed-form d loss / d t.

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
        check_learned_temperature(True, min_temperature)
        self.initial_temperature = float(temperature)
        self.min_temperature = None if min_temperature is None else float(min_temperature)
        self.logit_scale = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(-math.log(self.initial_temperature)),
            name="logit_scale", trainable=True,
        )

    def temperature(self):
        """The temperature in use, a 0-d backend tensor: exp(-logit_scale), floored at ``min_temperature``."""
        t = ops.exp(ops.negative(self.logit_scale))
        if self.min_temperature is not None:
            # maximum passes no gradient to the clamped argument: logit_scale stops while the bound holds
            t = ops.maximum(t, ops.cast(self.min_temperature, t.dtype))
        return t

    def call(self, inputs):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return dict(super().get_config(), temperature=self.initial_temperature, min_temperature=self.min_temperature)

    @classmethod
    def from_config(cls, config):
        layer = super().from_config(config)
        # recorded for HCLLoss.from_config: within one keras.saving.load_model the reloaded loss then reads
        # (and trains) this layer, which is in the model and receives the saved logit_scale
        _shared_record(layer, _share_key(layer.name))
        return layer


def _static_shape(x):
    try:
        return tuple(x.shape)
    except (TypeError, ValueError):  # a TensorFlow tensor of unknown rank
        return None


def split_views(y_pred):
    """(z1, z2) from a prediction of shape (B, 2, d), or from a pair ``(z1, z2)`` (each (B, d)).

    Returns backend tensors (``y_pred[:, 0, :]`` and ``y_pred[:, 1, :]``); raises ValueError for any other
    shape, naming the expected one.
    """
    if isinstance(y_pred, (tuple, list)) and len(y_pred) == 2:
        return y_pred[0], y_pred[1]
    y_pred = ops.convert_to_tensor(y_pred)
    shape = _static_shape(y_pred)
    if shape is None or len(shape) != 3 or (shape[1] is not None and shape[1] != 2):
        raise ValueError(
            "HCLLoss expects y_pred of shape (B, 2, d): the two views stacked on axis 1, e.g. "
            f"keras.ops.stack([z1, z2], axis=1) as the model's output; got shape {shape}"
        )
    return y_pred[:, 0, :], y_pred[:, 1, :]


@keras.saving.register_keras_serializable(package="hardneg")
class HCLLoss(HCLLossSettings, keras.losses.Loss):
    """Hard-negative contrastive loss (Robinson et al., ICLR 2021) as a ``keras.losses.Loss``, any Keras backend.

    Under ``KERAS_BACKEND=jax`` the value is :func:`hardneg_jax.hcl_loss` (traced inside Keras' jitted train
    step), under ``tensorflow`` :func:`hardneg_tf.hcl_loss`, under ``torch`` :func:`hardneg_torch.hcl_loss`
    (autograd-native): the spec's values and closed-form gradients, memory linear in the batch. No other
    framework is imported.

    Parameters
    ----------
    temperature : float, default 0.5
        t > 0: similarities are divided by t; with ``learn_temperature=True``, the initial temperature.
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
        The loss's own reduction: "mean" over the anchors, "sum", or "none" for the per-anchor vector;
        ``model.fit`` needs "mean" or "sum".
    layout : {None, "in_batch", "bank", "cross"}, default None
        Which rows are anchors and candidates (docs/spec.md §3, docs/layouts.md). None: "in_batch" (SimCLR)
        without ``negatives``, "bank" (MoCo) when the call passes them; "cross" makes z1's rows the anchors
        against z2's rows, then the bank's (CLIP, sentence-transformers); "bank" requires ``negatives``.
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
        Bytes of transient working memory for the blocked computation (the backend's ``memory_budget``).
    gather : bool, default False
        Use every replica's samples as negatives: under a ``tf.distribute`` strategy (tensorflow backend, see
        :func:`hardneg_tf.hcl_loss`) or across the ranks of ``torch.distributed``'s default group (torch
        backend). Under the JAX backend ``keras.distribution`` runs one jitted step on the global batch, so
        the loss already sees every sample; ``gather=True`` raises ValueError there.
    use_labels : bool, default False
        Read ``y_true`` as integer class labels (B,) and remove same-class samples from the negatives
        (supervised debiasing). False ignores ``y_true`` (pass anything, e.g. ``None`` or zeros).
    name : str, default "hcl_loss"
        The loss's name (Keras' name scope and metric name).
    dtype : str or keras.DTypePolicy, optional
        Dtype the views (and the bank) are cast to before the loss; default ``keras.backend.floatx()``
        (float32), which also makes a ``mixed_float16`` model's float16 outputs compute the loss in float32.

    Attributes
    ----------
    temperature_layer : LearnableTemperature or None
        The layer holding the learned temperature (None unless ``learn_temperature``).

    Notes
    -----
    Called as ``loss(y_true, y_pred, *, negatives=None, negative_labels=None)``: ``y_pred`` of shape
    (B, 2, d), or a pair ``(z1, z2)`` of (B, d) tensors; ``negatives`` an optional bank, (K, d) shared by the
    anchors or (B, K, d) per anchor (a MoCo queue; ``model.fit`` passes only ``y_true`` and ``y_pred``, so a
    bank is passed where the loss is called by hand — a custom ``compute_loss`` or ``train_step``);
    ``negative_labels`` the bank rows' labels, (K,) or (B, K), required with ``use_labels`` and a bank.
    Returns a scalar (or the per-anchor vector for ``reduction="none"``: (2B,) in-batch, (B,) with a bank).
    ``sample_weight`` is not supported (the anchors are the 2B views, not the B samples).

    Under a ``tf.distribute`` strategy with R replicas in sync, the scalar value is divided by R, as Keras'
    built-in losses do, so that the optimizer's sum of the replicas' gradients is their average.

    The configuration (``get_config``) holds the hyper-parameters. A model saved with ``model.save`` (the
    ``.keras`` format) and reloaded with ``keras.saving.load_model`` gets back one temperature layer, in the
    model and in its loss, carrying the learned ``logit_scale``; ``keras.losses.deserialize`` of the loss alone
    creates a new layer at the initial temperature.

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
        # the shared validation and attributes (hardneg.loss_settings), as hardneg_torch.HCLLoss
        self._hold_settings(temperature=temperature, beta=beta, tau_plus=tau_plus, estimator=estimator, clamp=clamp,
                            normalize=normalize, reduction=reduction, layout=layout, symmetric=symmetric,
                            memory_budget=memory_budget, gather=gather, learn_temperature=learn_temperature,
                            min_temperature=min_temperature)
        _check_bool("use_labels", use_labels)
        self.use_labels = use_labels
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        #: The :class:`LearnableTemperature` holding the learned temperature (None unless learn_temperature).
        self.temperature_layer = (
            LearnableTemperature(temperature, min_temperature, name=f"{name}_temperature")
            if learn_temperature else None
        )

    def _int(self, x):
        """Integer labels as a backend tensor; Keras' data adapters may hand integer labels over as floats."""
        x = ops.convert_to_tensor(x)
        if "float" in keras.backend.standardize_dtype(x.dtype):
            x = ops.round(x)
        # JAX without x64 has no int64 (it would warn and truncate to int32)
        return ops.cast(x, "int32" if keras.config.backend() == "jax" else "int64")

    def __call__(self, y_true, y_pred, sample_weight=None, *, negatives=None, negative_labels=None):
        # Keras' Loss.__call__ would cast y_true (the labels) to a float dtype and reduce per sample; the
        # loss is already reduced over its anchors, so only the views are cast here.
        if sample_weight is not None:
            raise ValueError("HCLLoss does not support sample_weight (its anchors are the 2B views, not B samples)")
        backend = keras.config.backend()
        hcl_loss = backend_hcl_loss(backend)
        with keras.name_scope(self.name):
            z1, z2 = (ops.cast(z, self.dtype) for z in split_views(y_pred))
            labels = None
            if self.use_labels:
                if y_true is None:
                    raise ValueError("HCLLoss(use_labels=True) needs y_true: the integer class labels, shape (B,)")
                labels = ops.reshape(self._int(y_true), (-1,))
            if negatives is not None:
                negatives = ops.cast(negatives, self.dtype)
            if negative_labels is not None:
                negative_labels = self._int(negative_labels)
            kwargs = self.call_kwargs()
            if self.gather:
                if backend == "jax":
                    raise ValueError(
                        "HCLLoss(gather=True) gathers across tf.distribute replicas (tensorflow backend) or "
                        "torch.distributed ranks (torch backend); under the JAX backend keras.distribution runs "
                        "one jitted step on the global batch, so every sample is already a negative: use "
                        "gather=False"
                    )
                if backend == "tensorflow":
                    import tensorflow as tf

                    if tf.distribute.in_cross_replica_context():
                        # Keras traces the loss once outside strategy.run to build the model's metrics: no
                        # replicas to gather from there, and the value is not used for training
                        kwargs["gather"] = False
            if backend == "jax":
                del kwargs["gather"]  # hardneg_jax has axis_name instead (pmap/shard_map), unused by Keras
            if self.temperature_layer is not None:
                kwargs["temperature"] = ops.cast(self.temperature_layer.temperature(), self.dtype)
            value = hcl_loss(z1, z2, negatives=negatives, labels=labels, negative_labels=negative_labels, **kwargs)
            if backend == "tensorflow" and self.reduction != "none":
                import tensorflow as tf

                replicas = tf.distribute.get_strategy().num_replicas_in_sync
                if replicas > 1:
                    value = value * (1.0 / replicas)
            return value

    def call(self, y_true, y_pred):
        return self.__call__(y_true, y_pred)

    def get_config(self):
        return dict(name=self.name, dtype=self.dtype, use_labels=self.use_labels,
                    learn_temperature=self.learn_temperature, min_temperature=self.min_temperature, **self.call_kwargs())

    @classmethod
    def from_config(cls, config):
        loss = cls(**config)
        if loss.learn_temperature:
            # Inside keras.saving.load_model the model's layers are rebuilt before its compile config (this
            # loss): reuse the model's LearnableTemperature, with the trained logit_scale, rather than a new one
            # that the model would not train (see LearnableTemperature.from_config).
            shared = _shared_get(_share_key(loss.temperature_layer.name))
            if shared is not None:
                loss.temperature_layer = shared
        return loss
