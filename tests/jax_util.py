"""Shared helpers of the hardneg_jax tests: inputs, the reference's answer, and a JAX value + VJP of a call."""

from __future__ import annotations

import numpy as np

import hardneg

jax = __import__("pytest").importorskip("jax")
import jax.numpy as jnp  # noqa: E402

import hardneg_jax  # noqa: E402

#: float64 closed forms evaluated in two summation orders (blocked vs whole rows, XLA vs NumPy matmuls): the
#: differences are a few ulps times the conditioning of exp((1+beta) s) (<= (1+beta) * 2/t <= 300 here),
#: so 1e-9 relative leaves a wide margin while any real mistake (a missing term) is far above it.
RTOL64 = 1e-9


def problem(B=5, d=3, K=4, seed=0, bank=None, labels=False):
    """Float64 NumPy inputs: z1, z2 and the keyword arguments for a bank / labels."""
    rng = np.random.default_rng(seed)
    z1, z2 = rng.standard_normal((B, d)), rng.standard_normal((B, d))
    kw = {}
    if bank == "shared":
        kw["negatives"] = rng.standard_normal((K, d))
    elif bank == "per_anchor":
        kw["negatives"] = rng.standard_normal((B, K, d))
    if labels:
        kw["labels"] = rng.integers(0, 3, B)
        if bank == "shared":
            kw["negative_labels"] = rng.integers(0, 3, K)
        elif bank == "per_anchor":
            kw["negative_labels"] = rng.integers(0, 3, (B, K))
    return z1, z2, kw


def jax_value_and_grads(z1, z2, cotangent=None, dtype=None, **kw):
    """hardneg_jax's value and (dz1, dz2, dnegatives) through jax.vjp, as NumPy float64 (and the raw outputs).

    ``cotangent`` defaults to 1 (scalar reductions) or ones (``reduction="none"``).
    """
    neg = kw.pop("negatives", None)
    cast = (lambda x: None if x is None else jnp.asarray(x, dtype)) if dtype else (lambda x: x)
    args = (cast(z1), cast(z2), cast(neg))

    def f(a, b, n):
        return hardneg_jax.hcl_loss(a, b, negatives=n, **kw)

    value, vjp = jax.vjp(f, *args)
    ct = jnp.ones_like(value) if cotangent is None else jnp.asarray(cotangent, value.dtype)
    grads = vjp(ct)
    to64 = lambda x: None if x is None else np.asarray(x, dtype=np.float64)  # noqa: E731
    return to64(value), tuple(to64(g) for g in grads), (value, grads)


def reference(z1, z2, cotangent=None, **kw):
    """The reference's value and gradients (float64)."""
    value, g = hardneg.hcl_loss_and_grad(z1, z2, cotangent=cotangent, **kw)
    return np.asarray(value), (g.z1, g.z2, g.negatives)


def assert_close(got, want, rtol, what=""):
    """Elementwise |got - want| <= rtol * (|want| + scale), scale = max |want| (gradients mix magnitudes)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    assert np.array_equal(np.isnan(got), np.isnan(want)), (what, got, want)
    ok = ~np.isnan(want)
    scale = np.max(np.abs(want[ok])) if ok.any() else 0.0
    err = np.abs(got[ok] - want[ok])
    bound = rtol * (np.abs(want[ok]) + scale) + 1e-300
    assert np.all(err <= bound), f"{what}: max error {err.max():.3g}, allowed {bound[np.argmax(err - bound)]:.3g}"
