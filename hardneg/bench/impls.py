"""The implementations ``hardneg bench`` measures, and how to build one forward+backward step of each.

Every entry builds, for a batch size B, feature dimension d, dtype and device, a zero-argument ``step()``
that runs one forward+backward pass (or, for a floor, the three matrix products) and returns only when the
result has been computed. Frameworks are imported inside the builders, so a worker process imports only
the framework it measures.

Kinds
-----
backend   hardneg_torch / hardneg_jax / hardneg_tf ``hcl_loss`` (skipped with a message when not installed).
naive     the released arithmetic transliterated into the same framework (hardneg.bench.naive_*).
floor     S = U U^T, G U, G^T U: the three (2B x d)(d x 2B)-class products of an implementation that
          computes G U and G^T U separately ("floor_*"), and S = U U^T, (G + G^T) U: the two products of one
          that uses the symmetry of the in-batch layout ("symfloor_*", the symmetric floor). Outputs are
          preallocated where the framework allows it (torch), so a floor times arithmetic, not allocation.
external  lightly's and pytorch-metric-learning's NTXentLoss (estimator "easy" only; optional).

A custom entry ``"module:function"`` names a builder with the signature of :func:`build` (used by the tests).
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from ..backends import FUNCTION_BACKENDS, by_name

__all__ = ["Impl", "IMPLS", "FRAMEWORKS", "BASELINES", "FLOORS", "SYMMETRIC_FLOORS", "get", "availability", "build",
           "for_backends"]

FRAMEWORKS = tuple(b.name for b in FUNCTION_BACKENDS)  # hardneg.backends: the one table


@dataclass(frozen=True)
class Impl:
    """One benchmarked implementation.

    Attributes
    ----------
    name : registry key, e.g. ``"naive_torch"``.
    framework : "torch", "jax" or "tf".
    kind : "backend", "naive", "floor" or "external".
    requires : modules that must be importable (checked without importing them).
    label : legend text for plots and tables.
    estimators : estimators it can compute; the floor is estimator-independent.
    install_hint : what to run when a requirement is missing.
    """

    name: str
    framework: str
    kind: str
    requires: Tuple[str, ...]
    label: str
    estimators: Tuple[str, ...] = ("hard", "easy")
    install_hint: str = ""
    builder: str = field(default="", repr=False)  # name of the _build_* function in this module


IMPLS: Dict[str, Impl] = {
    i.name: i
    for i in [
        Impl("hardneg_torch", "torch", "backend", ("torch", "hardneg_torch"), "hardneg_torch (eager)",
             install_hint=by_name("torch").install_hint, builder="_torch_backend"),
        Impl("naive_torch", "torch", "naive", ("torch",), "naive torch (eager)", builder="_torch_naive"),
        Impl("floor_torch", "torch", "floor", ("torch",), "floor: 3 matmuls (torch)", builder="_torch_floor"),
        Impl("symfloor_torch", "torch", "floor", ("torch",), "symmetric floor: 2 matmuls (torch)",
             builder="_torch_symfloor"),
        Impl("hardneg_torch_cross", "torch", "backend", ("torch", "hardneg_torch"),
             "hardneg_torch cross layout (eager)", install_hint=by_name("torch").install_hint, builder="_torch_backend_cross"),
        Impl("naive_torch_cross", "torch", "naive", ("torch",), "naive torch CLIP-style cross (eager)",
             builder="_torch_naive_cross"),
        Impl("lightly_ntxent", "torch", "external", ("torch", "lightly"), "lightly NTXentLoss",
             estimators=("easy",), install_hint="pip install lightly", builder="_torch_lightly"),
        Impl("pml_ntxent", "torch", "external", ("torch", "pytorch_metric_learning"), "PML NTXentLoss",
             estimators=("easy",), install_hint="pip install pytorch-metric-learning", builder="_torch_pml"),
        Impl("hardneg_jax", "jax", "backend", ("jax", "hardneg_jax"), "hardneg_jax (jit)",
             install_hint=by_name("jax").install_hint, builder="_jax_backend"),
        Impl("naive_jax", "jax", "naive", ("jax",), "naive jax (jit)", builder="_jax_naive"),
        Impl("floor_jax", "jax", "floor", ("jax",), "floor: 3 matmuls (jax jit)", builder="_jax_floor"),
        Impl("symfloor_jax", "jax", "floor", ("jax",), "symmetric floor: 2 matmuls (jax jit)",
             builder="_jax_symfloor"),
        Impl("hardneg_jax_cross", "jax", "backend", ("jax", "hardneg_jax"), "hardneg_jax cross layout (jit)",
             install_hint=by_name("jax").install_hint, builder="_jax_backend_cross"),
        Impl("naive_jax_cross", "jax", "naive", ("jax",), "naive jax CLIP-style cross (jit)",
             builder="_jax_naive_cross"),
        Impl("hardneg_tf", "tf", "backend", ("tensorflow", "hardneg_tf"), "hardneg_tf (tf.function)",
             install_hint=by_name("tf").install_hint, builder="_tf_backend"),
        Impl("hardneg_tf_xla", "tf", "backend", ("tensorflow", "hardneg_tf"), "hardneg_tf (XLA)",
             install_hint=by_name("tf").install_hint, builder="_tf_backend_xla"),
        Impl("naive_tf", "tf", "naive", ("tensorflow",), "naive tf (tf.function)", builder="_tf_naive"),
        Impl("naive_tf_xla", "tf", "naive", ("tensorflow",), "naive tf (XLA)", builder="_tf_naive_xla"),
        Impl("floor_tf", "tf", "floor", ("tensorflow",), "floor: 3 matmuls (tf)", builder="_tf_floor"),
        Impl("symfloor_tf", "tf", "floor", ("tensorflow",), "symmetric floor: 2 matmuls (tf)",
             builder="_tf_symfloor"),
        Impl("hardneg_tf_cross_xla", "tf", "backend", ("tensorflow", "hardneg_tf"), "hardneg_tf cross layout (XLA)",
             install_hint=by_name("tf").install_hint, builder="_tf_backend_cross_xla"),
        Impl("naive_tf_cross_xla", "tf", "naive", ("tensorflow",), "naive tf CLIP-style cross (XLA)",
             builder="_tf_naive_cross_xla"),
    ]
}

#: The baseline each implementation's ratios are quoted against (same framework, same run).
BASELINES: Dict[str, str] = {
    "hardneg_torch": "naive_torch",
    "lightly_ntxent": "naive_torch",
    "pml_ntxent": "naive_torch",
    "hardneg_torch_cross": "naive_torch_cross",
    "hardneg_jax": "naive_jax",
    "hardneg_jax_cross": "naive_jax_cross",
    "hardneg_tf": "naive_tf_xla",
    "hardneg_tf_xla": "naive_tf_xla",
    "naive_tf": "naive_tf_xla",
    "hardneg_tf_cross_xla": "naive_tf_cross_xla",
}
#: The floor of each framework: three products, S = U U^T, G U, G^T U ...
FLOORS: Dict[str, str] = {"torch": "floor_torch", "jax": "floor_jax", "tf": "floor_tf"}
#: ... and the symmetric floor: two products, S = U U^T and (G + G^T) U (the in-batch layout's S is symmetric).
SYMMETRIC_FLOORS: Dict[str, str] = {"torch": "symfloor_torch", "jax": "symfloor_jax", "tf": "symfloor_tf"}


def for_backends(backends: List[str], estimator: str, external: bool = True) -> List[Impl]:
    """The registry entries for the given frameworks that can compute ``estimator``, in display order."""
    out = []
    for impl in IMPLS.values():
        if impl.framework not in backends or estimator not in impl.estimators:
            continue
        if impl.kind == "external" and not external:
            continue
        out.append(impl)
    return out


def get(name: str) -> Impl:
    """Registry entry by name; ``"module:function"`` makes a custom entry (framework taken from the module)."""
    if name in IMPLS:
        return IMPLS[name]
    if ":" in name:
        module = name.split(":", 1)[0]
        return Impl(name, "custom", "custom", (module,), name, builder=name)
    raise KeyError(f"unknown implementation {name!r}; known: {', '.join(IMPLS)}")


def availability(impl: Impl) -> Optional[str]:
    """None when every module ``impl`` needs is importable, else a message saying what is missing.

    Checks with ``importlib.util.find_spec`` so no framework is imported in the calling process.
    """
    for mod in impl.requires:
        try:
            found = importlib.util.find_spec(mod) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            hint = f" (install: {impl.install_hint})" if impl.install_hint else ""
            return f"{impl.name}: skipped, module '{mod}' is not installed{hint}"
    return None


def build(name: str, batch: int, dim: int, dtype: str, device: str, estimator: str, hp: dict,
          seed: int = 0) -> Callable[[], None]:
    """A zero-argument forward+backward step of implementation ``name`` on random (B, d) inputs.

    Parameters
    ----------
    name : registry key or ``"module:function"``.
    batch, dim : B pairs of d features (the floors get U of shape (2B, d)).
    dtype : "float32", "bfloat16", "float16" or "float64".
    device : "cpu" or "cuda".
    estimator : "hard" or "easy".
    hp : dict with temperature, beta, tau_plus.
    """
    impl = get(name)
    if impl.kind == "custom":
        module, attr = name.split(":", 1)
        fn = getattr(importlib.import_module(module), attr)
    else:
        fn = globals()[impl.builder]
    return fn(batch=batch, dim=dim, dtype=dtype, device=device, estimator=estimator, hp=hp, seed=seed)


# ---------------------------------------------------------------------------------------------------------
# torch


def _torch_inputs(batch, dim, dtype, device, seed, rows=None, grad=True):
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch.cuda.is_available() is False")
    g = torch.Generator().manual_seed(seed)
    dt = getattr(torch, dtype)
    shape = (rows or batch, dim)
    z1 = torch.randn(shape, generator=g).to(device=device, dtype=dt).requires_grad_(grad)
    z2 = torch.randn(shape, generator=g).to(device=device, dtype=dt).requires_grad_(grad)
    return z1, z2


def _torch_sync(device):
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _torch_loss_step(loss_fn, z1, z2, device):
    def step():
        z1.grad = None
        z2.grad = None
        loss_fn(z1, z2).backward()
        _torch_sync(device)

    return step


def _torch_backend(batch, dim, dtype, device, estimator, hp, seed):
    import hardneg_torch

    z1, z2 = _torch_inputs(batch, dim, dtype, device, seed)
    return _torch_loss_step(lambda a, b: hardneg_torch.hcl_loss(a, b, estimator=estimator, **hp), z1, z2, device)


def _torch_naive(batch, dim, dtype, device, estimator, hp, seed):
    from . import naive_torch

    z1, z2 = _torch_inputs(batch, dim, dtype, device, seed)
    return _torch_loss_step(lambda a, b: naive_torch.hcl_loss(a, b, estimator=estimator, **hp), z1, z2, device)


def _torch_floor(batch, dim, dtype, device, estimator, hp, seed):
    import torch

    from . import naive_torch

    u, _ = _torch_inputs(batch, dim, dtype, device, seed, rows=2 * batch, grad=False)
    n = 2 * batch
    out = (u.new_empty((n, n)), u.new_empty((n, dim)), u.new_empty((n, dim)))  # S, G U, G^T U

    def step():
        with torch.no_grad():
            naive_torch.floor(u, out=out)
        _torch_sync(device)

    return step


def _torch_symfloor(batch, dim, dtype, device, estimator, hp, seed):
    import torch

    from . import naive_torch

    u, _ = _torch_inputs(batch, dim, dtype, device, seed, rows=2 * batch, grad=False)
    n = 2 * batch
    out = (u.new_empty((n, n)), u.new_empty((n, dim)))  # S, (G + G^T) U

    def step():
        with torch.no_grad():
            naive_torch.floor_symmetric(u, out=out)
        _torch_sync(device)

    return step


def _torch_backend_cross(batch, dim, dtype, device, estimator, hp, seed):
    from . import naive_torch

    return naive_torch.build_backend_cross(batch, dim, dtype, device, estimator, hp, seed)


def _torch_naive_cross(batch, dim, dtype, device, estimator, hp, seed):
    from . import naive_torch

    return naive_torch.build_naive_cross(batch, dim, dtype, device, estimator, hp, seed)


def _torch_lightly(batch, dim, dtype, device, estimator, hp, seed):
    from lightly.loss import NTXentLoss

    loss = NTXentLoss(temperature=hp["temperature"])
    z1, z2 = _torch_inputs(batch, dim, dtype, device, seed)
    return _torch_loss_step(loss, z1, z2, device)


def _torch_pml(batch, dim, dtype, device, estimator, hp, seed):
    from pytorch_metric_learning.losses import NTXentLoss, SelfSupervisedLoss

    loss = SelfSupervisedLoss(NTXentLoss(temperature=hp["temperature"]), symmetric=True)
    z1, z2 = _torch_inputs(batch, dim, dtype, device, seed)
    return _torch_loss_step(loss, z1, z2, device)


# ---------------------------------------------------------------------------------------------------------
# jax


def _jax_inputs(batch, dim, dtype, device, seed, rows=None):
    import jax
    import jax.numpy as jnp
    import numpy as np

    platform = "gpu" if device == "cuda" else "cpu"
    dev = jax.devices(platform)[0]  # raises a clear RuntimeError when the platform is absent
    rng = np.random.default_rng(seed)
    shape = (rows or batch, dim)
    dt = jnp.dtype(dtype)
    z1 = jax.device_put(jnp.asarray(rng.standard_normal(shape, dtype=np.float32), dtype=dt), dev)
    z2 = jax.device_put(jnp.asarray(rng.standard_normal(shape, dtype=np.float32), dtype=dt), dev)
    return z1, z2


def _jax_value_and_grad_step(loss_fn, z1, z2):
    import jax

    vg = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))
    return lambda: jax.block_until_ready(vg(z1, z2))


def _jax_backend(batch, dim, dtype, device, estimator, hp, seed):
    import hardneg_jax

    z1, z2 = _jax_inputs(batch, dim, dtype, device, seed)
    return _jax_value_and_grad_step(lambda a, b: hardneg_jax.hcl_loss(a, b, estimator=estimator, **hp), z1, z2)


def _jax_naive(batch, dim, dtype, device, estimator, hp, seed):
    import jax

    from . import naive_jax

    z1, z2 = _jax_inputs(batch, dim, dtype, device, seed)
    t, b, tp = hp["temperature"], hp["beta"], hp["tau_plus"]
    return lambda: jax.block_until_ready(naive_jax.value_and_grad(z1, z2, t, b, tp, estimator=estimator))


def _jax_backend_cross(batch, dim, dtype, device, estimator, hp, seed):
    import hardneg_jax

    z1, z2 = _jax_inputs(batch, dim, dtype, device, seed)
    return _jax_value_and_grad_step(
        lambda a, b: hardneg_jax.hcl_loss(a, b, estimator=estimator, layout="cross", **hp), z1, z2)


def _jax_naive_cross(batch, dim, dtype, device, estimator, hp, seed):
    import jax

    from . import naive_jax

    z1, z2 = _jax_inputs(batch, dim, dtype, device, seed)
    t, b, tp = hp["temperature"], hp["beta"], hp["tau_plus"]
    return lambda: jax.block_until_ready(naive_jax.cross_value_and_grad(z1, z2, t, b, tp, estimator=estimator))


def _jax_floor(batch, dim, dtype, device, estimator, hp, seed):
    import jax

    from . import naive_jax

    u, _ = _jax_inputs(batch, dim, dtype, device, seed, rows=2 * batch)
    return lambda: jax.block_until_ready(naive_jax.floor(u))


def _jax_symfloor(batch, dim, dtype, device, estimator, hp, seed):
    import jax

    from . import naive_jax

    u, _ = _jax_inputs(batch, dim, dtype, device, seed, rows=2 * batch)
    return lambda: jax.block_until_ready(naive_jax.floor_symmetric(u))


# ---------------------------------------------------------------------------------------------------------
# tensorflow


def _tf_inputs(batch, dim, dtype, device, seed, rows=None):
    import numpy as np
    import tensorflow as tf

    if device == "cuda" and not tf.config.list_physical_devices("GPU"):
        raise RuntimeError("device 'cuda' requested but TensorFlow sees no GPU")
    rng = np.random.default_rng(seed)
    shape = (rows or batch, dim)
    with tf.device("/GPU:0" if device == "cuda" else "/CPU:0"):
        z1 = tf.cast(tf.constant(rng.standard_normal(shape, dtype=np.float32)), dtype)
        z2 = tf.cast(tf.constant(rng.standard_normal(shape, dtype=np.float32)), dtype)
    return z1, z2


def _tf_sync(out):
    # Fetching one element forces completion on any device.
    import tensorflow as tf

    leaf = tf.nest.flatten(out)[-1]
    tf.reshape(leaf, [-1])[:1].numpy()


def _tf_tape_step(loss_fn, z1, z2, jit_compile):
    import tensorflow as tf

    def fwd_bwd(a, b):
        with tf.GradientTape() as tape:
            tape.watch([a, b])
            loss = loss_fn(a, b)
        return loss, tape.gradient(loss, [a, b])

    f = tf.function(fwd_bwd, jit_compile=jit_compile)
    return lambda: _tf_sync(f(z1, z2))


def _tf_backend(batch, dim, dtype, device, estimator, hp, seed, jit_compile=False):
    import hardneg_tf

    z1, z2 = _tf_inputs(batch, dim, dtype, device, seed)
    return _tf_tape_step(lambda a, b: hardneg_tf.hcl_loss(a, b, estimator=estimator, **hp), z1, z2, jit_compile)


def _tf_backend_xla(**kw):
    return _tf_backend(**kw, jit_compile=True)


def _tf_naive(batch, dim, dtype, device, estimator, hp, seed, jit_compile=False):
    from . import naive_tf

    z1, z2 = _tf_inputs(batch, dim, dtype, device, seed)
    f = naive_tf.make_value_and_grad(estimator=estimator, jit_compile=jit_compile, **hp)
    return lambda: _tf_sync(f(z1, z2))


def _tf_naive_xla(**kw):
    return _tf_naive(**kw, jit_compile=True)


def _tf_backend_cross_xla(batch, dim, dtype, device, estimator, hp, seed):
    import hardneg_tf

    z1, z2 = _tf_inputs(batch, dim, dtype, device, seed)
    return _tf_tape_step(lambda a, b: hardneg_tf.hcl_loss(a, b, estimator=estimator, layout="cross", **hp), z1, z2,
                         True)


def _tf_naive_cross_xla(batch, dim, dtype, device, estimator, hp, seed):
    from . import naive_tf

    z1, z2 = _tf_inputs(batch, dim, dtype, device, seed)
    f = naive_tf.make_value_and_grad_cross(estimator=estimator, jit_compile=True, **hp)
    return lambda: _tf_sync(f(z1, z2))


def _tf_floor(batch, dim, dtype, device, estimator, hp, seed):
    from . import naive_tf

    u, _ = _tf_inputs(batch, dim, dtype, device, seed, rows=2 * batch)
    return lambda: _tf_sync(naive_tf.floor_graph(u))


def _tf_symfloor(batch, dim, dtype, device, estimator, hp, seed):
    from . import naive_tf

    u, _ = _tf_inputs(batch, dim, dtype, device, seed, rows=2 * batch)
    return lambda: _tf_sync(naive_tf.floor_symmetric_graph(u))
