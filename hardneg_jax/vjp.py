"""``jax.custom_vjp`` around the blocked passes: closed-form gradients, dtype policy and the NaN rules.

Forward rule
    ``"mean"``/``"sum"``: the cotangent is a scalar, so the gradient is ``ct`` times the gradient for
    ``ct = 1``. The forward rule computes that gradient in the same walk over the blocks as the value (one
    similarity product per block instead of two) and keeps it as the residual, (B, d)-sized.
    ``"none"``: the per-anchor cotangents are unknown until the backward pass, so the forward rule keeps
    the inputs and the backward rule walks the blocks again with them.
Only what is differentiated is computed (``symbolic_zeros``): gradients of traced hyper-parameters are
summed only when they are perturbed.

Dtypes: float16/bfloat16 are computed in float32; the value and every cotangent are returned in the
dtype of the corresponding input. Non-finite inputs make the value and every gradient NaN; an undefined
anchor loss (NaN) makes every gradient NaN (spec section 6); so does an array temperature (whose value is not
validated) that is <= 0 or not finite. The temperature's gradient is the closed form of spec section 8:
through every logit (ds/dt = -s/t, positives included) and through the clamp floor log M - 1/t where it binds.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from .blocks import Inputs, PassOut, run_pass
from .normalize import normalize_rows, normalize_rows_bwd
from .rows import Needs, Statics

__all__ = ["compute_dtype", "hcl_core"]


def compute_dtype(dtype) -> jnp.dtype:
    """float16 and bfloat16 compute in float32; float32 and float64 in themselves."""
    dtype = jnp.dtype(dtype)
    return jnp.dtype(jnp.float32) if dtype in (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16)) else dtype


@jax.tree_util.register_static
@dataclass(frozen=True)
class _Plan:
    """Static part of the residuals: what the backward pass must compute."""

    needs: Needs
    dtypes: tuple = ()  # dtypes of z1, z2, negatives (None without a bank)


def _inputs(st: Statics, z1, z2, neg, labels, nlabels, row0):
    """Normalised rows in the compute dtype; returns (Inputs, norms or None)."""
    cd = compute_dtype(z1.dtype)
    cast = lambda v: None if v is None else v.astype(cd)  # noqa: E731
    z1, z2, neg = cast(z1), cast(z2), cast(neg)
    norm = normalize_rows if st.normalize else (lambda v: (v, None))
    if st.bank == "none" and not st.cross:
        B = z1.shape[0]
        U, nU = norm(jnp.concatenate([z1, z2], axis=0))
        Bl = st.local_pairs if st.distributed else B
        r0 = row0 if st.distributed else 0
        local = jnp.arange(Bl, dtype=jnp.int32) + r0
        anchors = jnp.concatenate([local, local + B])
        lab = None if labels is None else jnp.concatenate([labels, labels])
        return Inputs(U, anchors=anchors, lab=lab, half=B), (nU,)
    u1, n1 = norm(z1)
    u2, n2 = norm(z2)
    V, nV = (None, None) if neg is None else norm(neg)
    r0 = (row0 if st.distributed else 0) if st.cross else 0
    return Inputs(u1, u2, V, lab=labels, nlab=nlabels, row0=r0), (n1, n2, nV)


def _nonfinite(st: Statics, z1, z2, neg, t):
    """True when the result is NaN by definition: a non-finite input row, or (tensor temperature only, whose
    value was not validated) a temperature that is not finite and > 0 with 1/t finite."""
    bad = ~(jnp.all(jnp.isfinite(z1)) & jnp.all(jnp.isfinite(z2)))
    if neg is not None:
        bad = bad | ~jnp.all(jnp.isfinite(neg))
    if st.check_t:
        bad = bad | ~((t > 0) & jnp.isfinite(t) & jnp.isfinite(1.0 / t))
    return bad


def _reduce(st: Statics, loss: jax.Array, bad, out_dtype):
    if st.reduction == "mean":
        value = jnp.sum(loss) / loss.shape[0]
    elif st.reduction == "sum":
        value = jnp.sum(loss) * st.world
    else:
        value = loss
    return jnp.where(bad, jnp.nan, value).astype(out_dtype)


def _row_grads(st: Statics, x: Inputs, norms, out: PassOut):
    """Gradients w.r.t. z1, z2, negatives (compute dtype) from those w.r.t. the normalised rows."""
    back = (lambda g, u, n: normalize_rows_bwd(g, u, n)) if st.normalize else (lambda g, u, n: g)
    if st.bank == "none" and not st.cross:
        gZ = back(out.gU, x.U, norms[0])
        B = x.half
        return gZ[:B], gZ[B:], None
    g1, g2 = back(out.gU, x.U, norms[0]), back(out.gU2, x.U2, norms[1])
    return g1, g2, (None if out.gV is None else back(out.gV, x.V, norms[2]))


def _gradients(st, z1, z2, neg, labels, nlabels, t, beta, tau, row0, c, needs: Needs):
    """Walk the blocks once with cotangents c (A,); return (loss, (g1, g2, gneg, gt, gbeta, gtau)) with NaN rules."""
    x, norms = _inputs(st, z1, z2, neg, labels, nlabels, row0)
    out = run_pass(st, x, t, beta, tau, c, needs)
    bad = _nonfinite(st, z1, z2, neg, t) | jnp.any(jnp.isnan(out.loss))
    poison = lambda g: None if g is None else jnp.where(bad, jnp.nan, g)  # noqa: E731
    if needs.arrays:
        g1, g2, gn = _row_grads(st, x, norms, out)
    else:
        g1 = g2 = gn = None
    hp = (
        out.g_t if needs.temperature else None,
        out.g_beta if needs.beta else None,
        out.g_tau if needs.tau_plus else None,
    )
    return out.loss, tuple(poison(g) for g in (g1, g2, gn) + hp)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def hcl_core(st: Statics, z1, z2, neg, labels, nlabels, t, beta, tau, row0):
    """The loss value. Arrays as given (z1, z2 gathered in-batch when distributed); t, beta, tau in the
    compute dtype."""
    x, _ = _inputs(st, z1, z2, neg, labels, nlabels, row0)
    out = run_pass(st, x, t, beta, tau)
    return _reduce(st, out.loss, _nonfinite(st, z1, z2, neg, t), z1.dtype)


def _fwd(st: Statics, z1, z2, neg, labels, nlabels, t, beta, tau, row0):
    p = lambda v: v is not None and v.perturbed  # noqa: E731
    needs = Needs(arrays=p(z1) or p(z2) or p(neg), temperature=p(t), beta=p(beta), tau_plus=p(tau))
    val = lambda v: None if v is None else v.value  # noqa: E731
    z1, z2, neg, labels, nlabels, t, beta, tau, row0 = map(val, (z1, z2, neg, labels, nlabels, t, beta, tau, row0))
    if st.reduction == "none":
        x, _ = _inputs(st, z1, z2, neg, labels, nlabels, row0)
        out = run_pass(st, x, t, beta, tau)
        value = _reduce(st, out.loss, _nonfinite(st, z1, z2, neg, t), z1.dtype)
        return value, (_Plan(needs), (z1, z2, neg, labels, nlabels, t, beta, tau, row0))
    pairs = st.local_pairs if st.distributed else z1.shape[0]
    if st.cross:
        n_anchors = 2 * pairs if st.symmetric else pairs
    else:
        n_anchors = 2 * pairs if st.bank == "none" else z1.shape[0]
    scale = 1.0 / n_anchors if st.reduction == "mean" else float(st.world)
    c = jnp.full((n_anchors,), scale, t.dtype)
    loss, grads = _gradients(st, z1, z2, neg, labels, nlabels, t, beta, tau, row0, c, needs)
    value = _reduce(st, loss, _nonfinite(st, z1, z2, neg, t), z1.dtype)
    dtypes = (z1.dtype, z2.dtype, None if neg is None else neg.dtype)
    return value, (_Plan(needs, dtypes), grads)


def _bwd(st: Statics, res, ct):
    plan, saved = res
    nones = (None,) * 9
    if type(ct) is SymbolicZero:
        return nones
    if st.reduction == "none":
        z1, z2, neg, labels, nlabels, t, beta, tau, row0 = saved
        c = ct.astype(t.dtype)
        _, grads = _gradients(st, z1, z2, neg, labels, nlabels, t, beta, tau, row0, c, plan.needs)
        dtypes = (z1.dtype, z2.dtype, None if neg is None else neg.dtype)
    else:
        grads, dtypes = saved, plan.dtypes
        c = ct.astype(compute_dtype(dtypes[0]))
        grads = tuple(None if g is None else g * c for g in grads)
    g1, g2, gn, gt, gb, gtau = grads
    cast = lambda g, d: None if g is None else g.astype(d)  # noqa: E731
    return (cast(g1, dtypes[0]), cast(g2, dtypes[1]), cast(gn, dtypes[2]), None, None, gt, gb, gtau, None)


hcl_core.defvjp(_fwd, _bwd, symbolic_zeros=True)
