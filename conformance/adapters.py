"""Framework adapters: build a case's inputs in a framework, call the target, take gradients by its own autodiff.

Every adapter turns a :class:`~conformance.cases.Case` into framework tensors of the case's dtype (exactly: the
case's values are representable), calls ``target(z1, z2, **kwargs)``, and returns the value and the
vector-Jacobian product with the case's cotangent, as float64 NumPy, together with the dtypes the target returned.
Each framework is imported on first use only (einops-style), so verifying a PyTorch target never imports
TensorFlow.

The NumPy adapter has no autodiff: a NumPy target is checked on gradients through its ``<name>_and_grad`` twin
(``hardneg.hcl_loss`` -> ``hardneg.hcl_loss_and_grad``, returning ``(value, grads)`` with ``grads.z1``,
``grads.z2``, ``grads.negatives`` (and ``grads.temperature``, spec 1.1) or a tuple, and accepting
``cotangent=``), and on values alone without one; the report says which.

For a case with ``temperature_grad`` (spec 1.1) the temperature is passed as a 0-d tensor of the case's dtype —
a ``torch.Tensor`` with ``requires_grad``, a JAX array differentiated by ``jax.vjp``, a ``tf.Variable`` watched by
the tape — and its gradient is returned as ``grads["temperature"]``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

import numpy as np

from .cases import Case

__all__ = ["Outcome", "Adapter", "get_adapter", "FRAMEWORKS", "resolve_target", "target_path"]

FRAMEWORKS = ("numpy", "torch", "jax", "tensorflow")
_DIFF = ("z1", "z2", "negatives", "temperature")


@dataclass
class Outcome:
    """What the target returned, converted to float64 NumPy."""

    value: np.ndarray
    value_dtype: str
    grads: Optional[Dict[str, np.ndarray]] = None
    grad_dtypes: Dict[str, str] = field(default_factory=dict)


def resolve_target(spec):
    """``"module:function"`` (or ``"module.function"``) -> the callable; a callable is returned unchanged."""
    if callable(spec):
        return spec
    mod, _, name = spec.partition(":") if ":" in spec else spec.rpartition(".")
    obj = importlib.import_module(mod)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def target_path(target) -> Optional[str]:
    """``module:qualname`` when the target can be imported back by that path, else None."""
    mod, qual = getattr(target, "__module__", None), getattr(target, "__qualname__", None)
    if not mod or not qual or "<" in qual or mod == "__main__":
        return None
    try:
        if resolve_target(f"{mod}:{qual}") is target:
            return f"{mod}:{qual}"
    except Exception:  # noqa: BLE001 - any import failure means "not importable by path"
        return None
    return None


def _dtype_name(dt) -> str:
    s = str(dt)
    for prefix in ("torch.", "<dtype: '"):
        s = s.replace(prefix, "")
    return s.rstrip("'>")


class Adapter:
    """Base class; one subclass per framework."""

    framework = "?"
    #: dtypes the framework can represent (a target may still raise NotImplementedError for one)
    dtypes = ("float64", "float32", "float16", "bfloat16")
    has_autodiff = True

    def version(self) -> str:
        raise NotImplementedError

    def device(self) -> str:
        return "cpu"

    def context(self):
        """Context manager every call runs in (JAX: 64-bit types enabled)."""
        return contextlib.nullcontext()

    # -- conversions --------------------------------------------------------------------------------------
    def tensor(self, x: np.ndarray, dtype: str):
        raise NotImplementedError

    def labels(self, x: Optional[np.ndarray]):
        return None if x is None else self.tensor(np.asarray(x), np.asarray(x).dtype.name)

    def to_numpy(self, x) -> np.ndarray:
        raise NotImplementedError

    # -- calls --------------------------------------------------------------------------------------------
    def call(self, target: Callable, case: Case, want_grad: bool = True) -> Outcome:
        raise NotImplementedError

    def call_raw(self, target: Callable, arrays: Dict[str, Any], kwargs: Dict[str, Any]):
        """Call with framework tensors made from NumPy arrays of any dtype/shape (the error contract).

        ``arrays`` may hold ``temperature``: a NumPy array passed as a framework tensor temperature."""
        with self.context():
            conv = {k: (None if v is None else self.tensor(np.asarray(v), np.asarray(v).dtype.name))
                    for k, v in arrays.items()}
            return target(conv.pop("z1"), conv.pop("z2"), **conv, **kwargs)

    def temperature(self, case: Case):
        """The case's temperature as a 0-d tensor of its dtype (``temperature_grad`` cases)."""
        return self.tensor(np.asarray(float(case.params["temperature"])), case.dtype)

    def _kw(self, case: Case, conv: Dict[str, Any]):
        kw = dict(case.kwargs())
        if case.negatives is not None:
            kw["negatives"] = conv["negatives"]
        if "temperature" in conv:
            kw["temperature"] = conv["temperature"]
        if case.labels is not None:
            kw["labels"] = self.labels(case.labels)
        if case.negative_labels is not None:
            kw["negative_labels"] = self.labels(case.negative_labels)
        return kw


# ------------------------------------------------------------------------------------------------------------


class NumpyAdapter(Adapter):
    framework = "numpy"
    dtypes = ("float64", "float32", "float16", "bfloat16")
    has_autodiff = False

    def version(self) -> str:
        return np.__version__

    def tensor(self, x, dtype):
        if dtype == "bfloat16":
            import ml_dtypes  # installed with jax and tensorflow; NumPy has no bfloat16 of its own

            return np.asarray(x).astype(ml_dtypes.bfloat16)
        return np.asarray(x).astype(dtype)

    def to_numpy(self, x):
        return np.asarray(np.asarray(x).astype(np.float64) if np.asarray(x).dtype.kind == "V" else x,
                          dtype=np.float64)

    @staticmethod
    def twin(target: Callable) -> Optional[Callable]:
        """The ``<name>_and_grad`` function next to ``target`` (or ``target`` itself if so named)."""
        name = getattr(target, "__name__", "")
        if name.endswith("_and_grad"):
            return target
        mod = sys.modules.get(getattr(target, "__module__", "") or "")
        return getattr(mod, name + "_and_grad", None) if mod is not None else None

    def call(self, target, case, want_grad=True):
        conv = {k: self.tensor(v, case.dtype) for k, v in case.arrays.items()}
        kw = self._kw(case, conv)
        twin = self.twin(target) if want_grad else None
        if case.temperature_grad and twin is None:
            raise NotImplementedError("the temperature's gradient of a NumPy target needs its *_and_grad twin")
        if twin is None:
            v = target(conv["z1"], conv["z2"], **kw)
            if isinstance(v, tuple):  # an *_and_grad function checked on values only
                v = v[0]
            return Outcome(self.to_numpy(v), np.asarray(v).dtype.name)
        v, g = twin(conv["z1"], conv["z2"], cotangent=case.cotangent, **kw)
        if isinstance(g, (tuple, list)) and not hasattr(g, "_fields"):
            g = dict(zip(_DIFF, g))
        else:
            g = {k: getattr(g, k, None) for k in _DIFF}
        names = list(case.arrays) + (["temperature"] if case.temperature_grad else [])
        grads = {k: self.to_numpy(g[k]) for k in names if g.get(k) is not None}
        dts = {k: np.asarray(g[k]).dtype.name for k in names if g.get(k) is not None}
        return Outcome(self.to_numpy(v), np.asarray(v).dtype.name, grads, dts)


#: Environment variable naming the device of ``hardneg verify --device`` (set by conformance.cli, read here).
DEVICE_ENV = "HARDNEG_VERIFY_DEVICE"


class TorchAdapter(Adapter):
    framework = "torch"

    def __init__(self, device: Optional[str] = None):
        import torch

        self.torch = torch
        self._device = device or os.environ.get(DEVICE_ENV) or "cpu"
        if self._device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("hardneg verify --device cuda: torch.cuda.is_available() is False")

    def version(self):
        return self.torch.__version__

    def device(self):
        return self._device

    def tensor(self, x, dtype):
        t = self.torch
        x = np.asarray(x)
        if x.dtype.kind == "f":
            return t.tensor(x.astype(np.float64), dtype=t.float64, device=self._device).to(getattr(t, dtype))
        return t.tensor(x, device=self._device)

    def to_numpy(self, x):
        return x.detach().to("cpu", self.torch.float64).numpy()

    def call(self, target, case, want_grad=True):
        t = self.torch
        conv = {k: self.tensor(v, case.dtype).requires_grad_(want_grad) for k, v in case.arrays.items()}
        if case.temperature_grad:
            conv["temperature"] = self.temperature(case).requires_grad_(want_grad)
        value = target(conv["z1"], conv["z2"], **self._kw(case, conv))
        out = Outcome(self.to_numpy(value), _dtype_name(value.dtype))
        if want_grad:
            names = list(conv)
            cot = t.tensor(np.asarray(case.cotangent, dtype=np.float64), dtype=t.float64).to(value.dtype)
            gs = t.autograd.grad(value, [conv[k] for k in names], grad_outputs=cot.reshape(value.shape),
                                 allow_unused=True)
            # an unused input has a zero gradient; a temperature without one was not differentiated at all
            out.grads = {k: (np.zeros(conv[k].shape) if g is None else self.to_numpy(g)) for k, g in zip(names, gs)
                         if g is not None or k != "temperature"}
            out.grad_dtypes = {k: (case.dtype if g is None else _dtype_name(g.dtype)) for k, g in zip(names, gs)
                               if g is not None or k != "temperature"}
        return out


class JaxAdapter(Adapter):
    framework = "jax"

    def __init__(self):
        import jax
        import jax.numpy as jnp

        self.jax, self.jnp = jax, jnp
        if os.environ.get(DEVICE_ENV) == "cuda":
            jax.devices("gpu")  # raises RuntimeError naming the platforms present when JAX sees no GPU

    def version(self):
        return self.jax.__version__

    def device(self):
        return str(self.jax.devices()[0].platform)

    def context(self):
        # float64 needs 64-bit types; scoped, so the caller's setting is untouched afterwards
        return self.jax.enable_x64(True)

    # Conversions happen in NumPy (ml_dtypes for bfloat16), not as JAX operations: an eager JAX operation is
    # compiled once per shape and dtype, which in a quick run would cost more than the examples themselves. The
    # values are the same: a case's values are exactly representable in its dtype.
    def tensor(self, x, dtype):
        x = np.asarray(x)
        if x.dtype.kind == "f":
            return self.jnp.asarray(x.astype(np.float64).astype(self.jnp.dtype(dtype)))
        return self.jnp.asarray(x)

    def to_numpy(self, x):
        return np.asarray(x).astype(np.float64)

    def call(self, target, case, want_grad=True):
        jax, jnp = self.jax, self.jnp
        with self.context():
            conv = {k: self.tensor(v, case.dtype) for k, v in case.arrays.items()}
            if case.temperature_grad:
                conv["temperature"] = self.temperature(case)
            names = list(conv)
            kw = self._kw(case, conv)

            def f(*xs):
                d = dict(zip(names, xs))
                k2 = dict(kw)
                for k in ("negatives", "temperature"):
                    if k in d:
                        k2[k] = d[k]
                return target(d["z1"], d["z2"], **k2)

            if not want_grad:
                value = f(*[conv[k] for k in names])
                return Outcome(self.to_numpy(value), _dtype_name(value.dtype))
            value, vjp = jax.vjp(f, *[conv[k] for k in names])
            cot = jnp.asarray(np.asarray(case.cotangent, dtype=np.float64).astype(value.dtype).reshape(value.shape))
            gs = vjp(cot)
            out = Outcome(self.to_numpy(value), _dtype_name(value.dtype))
            out.grads = {k: self.to_numpy(g) for k, g in zip(names, gs)}
            out.grad_dtypes = {k: _dtype_name(g.dtype) for k, g in zip(names, gs)}
            return out


class TensorflowAdapter(Adapter):
    framework = "tensorflow"

    def __init__(self):
        import tensorflow as tf

        self.tf = tf
        if os.environ.get(DEVICE_ENV) == "cuda" and not tf.config.list_logical_devices("GPU"):
            raise RuntimeError("hardneg verify --device cuda: TensorFlow sees no GPU")

    def version(self):
        return self.tf.__version__

    def device(self):
        return "cpu" if not self.tf.config.list_logical_devices("GPU") else "gpu"

    def tensor(self, x, dtype):
        tf = self.tf
        x = np.asarray(x)
        if x.dtype.kind == "f":
            return tf.cast(tf.constant(x.astype(np.float64), dtype=tf.float64), getattr(tf, dtype))
        return tf.constant(x)

    def to_numpy(self, x):
        return self.tf.cast(x, self.tf.float64).numpy()

    def call(self, target, case, want_grad=True):
        tf = self.tf
        conv = {k: self.tensor(v, case.dtype) for k, v in case.arrays.items()}
        if case.temperature_grad:
            conv["temperature"] = tf.Variable(self.temperature(case), trainable=True)
        names = list(conv)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            for k in names:
                tape.watch(conv[k])
            value = target(conv["z1"], conv["z2"], **self._kw(case, conv))
        out = Outcome(self.to_numpy(value), _dtype_name(value.dtype))
        if want_grad:
            cot = tf.reshape(tf.cast(tf.constant(np.asarray(case.cotangent, dtype=np.float64)), value.dtype),
                             value.shape)
            gs = tape.gradient(value, [conv[k] for k in names], output_gradients=cot)
            # an unused input has a zero gradient; a temperature without one was not differentiated at all
            out.grads = {k: (np.zeros(conv[k].shape) if g is None else self.to_numpy(g)) for k, g in zip(names, gs)
                         if g is not None or k != "temperature"}
            out.grad_dtypes = {k: (case.dtype if g is None else _dtype_name(g.dtype)) for k, g in zip(names, gs)
                               if g is not None or k != "temperature"}
        return out


_ADAPTERS = {"numpy": NumpyAdapter, "torch": TorchAdapter, "jax": JaxAdapter, "tensorflow": TensorflowAdapter}


def get_adapter(framework: str) -> Adapter:
    """The adapter of ``framework`` ("numpy", "torch", "jax", "tensorflow"; "tf" is accepted)."""
    framework = {"tf": "tensorflow"}.get(framework, framework)
    if framework == "command":  # a port in any language over the JSON-lines protocol (conformance.command)
        from .command import CommandAdapter

        return CommandAdapter()
    if framework not in _ADAPTERS:
        raise ValueError(f"framework must be one of {', '.join(FRAMEWORKS)}; got {framework!r}")
    return _ADAPTERS[framework]()
