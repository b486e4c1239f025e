"""The per-anchor mathematics of spec sections 4, 5 and 8 on one block of anchor rows.

A block is ``R`` anchors seen against all of their ``C`` candidates: the similarities ``S`` (R, C), a mask of
the candidates that are negatives, and the positive logits ``a`` (R,). :func:`block_rows` returns each anchor's
loss and, when a cotangent is given, the cotangent-scaled gradient of the loss with respect to ``S`` and ``a``
and the hyper-parameter gradient sums. Everything is in log space: the only exponentials are of
``(1 + beta) (s - m)`` and ``beta (s - m)`` with ``m`` the row maximum over the negatives, so nothing overflows.

Hyper-parameters may be traced. ``beta`` is handled by a static *mode*:

``"finite"``  concrete finite beta > 0 (one path);
``"zero"``    concrete beta = 0, or the easy estimator (``e^{0 (s - m)} = 1``: one exponential per element);
``"inf"``     concrete ``math.inf`` (the maximum and its ties, no exponentials);
``"traced"``  unknown at trace time: both the finite and the infinite paths, selected per value with
``jnp.where`` (the finite path runs with beta replaced by 0 where beta is inf, so neither path makes NaN).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

__all__ = ["Statics", "Needs", "RowOut", "Terms", "anchor_terms", "tau_sum", "block_rows", "log1mexp"]


class Statics(NamedTuple):
    """The trace-time (hashable) description of one loss evaluation.

    Attributes
    ----------
    bank : {"none", "shared", "per_anchor"}
    estimator : {"hard", "easy"}
    clamp, normalize : bool
    reduction : {"mean", "sum", "none"}
    beta_mode : {"finite", "zero", "inf", "traced"}
    block : int
        Anchor rows per block.
    world : int
        Size of the mapped axis when ``axis_name`` is given (1 otherwise); "sum" is scaled by it.
    distributed : bool
        Whether the in-batch candidates were gathered over a mapped axis (local anchors, global columns).
    local_pairs : int
        With ``distributed``: the local batch B_l (this device's anchors are rows ``row0 + [0, B_l)`` of the
        gathered z1 and z2).
    cross : bool
        The cross layout (anchors u1 against [u2; bank]); ``bank`` then says which bank follows u2.
    symmetric : bool
        Cross layout: also the reverse direction (anchors u2 against u1).
    block_rev : int
        Cross layout: anchor rows per block of the reverse direction.
    check_t : bool
        The temperature is a tensor whose value was not checked: t <= 0 or non-finite makes everything NaN.
    tiles : int
        0: the row-block kernels. > 0: the tiled kernels of :mod:`hardneg_jax.symmetric` with tiles of this
        many rows (two-pass symmetric in-batch; shared tiles for the symmetric cross layout).
    tile_beta_one : bool
        Tiled kernels: beta is exactly 1, so e^{2(s-c)} is the square of e^{s-c} (one exponential per element).
    tile_fallback : bool
        Tiled kernels: the fixed shift may underflow, so rows whose sums fall below the underflow threshold
        are recomputed by the row-block kernel (:mod:`hardneg_jax.symmetric`).
    """

    bank: str
    estimator: str
    clamp: bool
    normalize: bool
    reduction: str
    beta_mode: str
    block: int
    world: int = 1
    distributed: bool = False
    local_pairs: int = 0
    cross: bool = False
    symmetric: bool = True
    block_rev: int = 0
    check_t: bool = False
    tiles: int = 0
    tile_beta_one: bool = False
    tile_fallback: bool = False


class Needs(NamedTuple):
    """Which gradients a pass computes (from ``custom_vjp``'s symbolic-zero information)."""

    arrays: bool = True
    temperature: bool = False
    beta: bool = False
    tau_plus: bool = False


class RowOut(NamedTuple):
    """Results for one block of anchors.

    loss : (R,) per-anchor loss (0 for anchors without negatives and for masked rows).
    dS : (R, C) cotangent-scaled dloss/ds on the negatives (0 elsewhere), or None.
    da : (R,) cotangent-scaled dloss/da, or None.
    g_t, g_beta, g_tau : scalars, sum over the block of the cotangent-scaled hyper-parameter gradients, or None.
    """

    loss: jax.Array
    dS: Optional[jax.Array] = None
    da: Optional[jax.Array] = None
    g_t: Optional[jax.Array] = None
    g_beta: Optional[jax.Array] = None
    g_tau: Optional[jax.Array] = None


def log1mexp(x: jax.Array) -> jax.Array:
    """log(1 - e^x) for x <= 0, accurate on both sides of -log 2 (Maechler 2012).

    ``log1mexp(0) = -inf`` and ``log1mexp(-inf) = 0``.
    """
    # Each branch is evaluated on an argument inside its own domain, so neither produces NaN.
    near = x > -math.log(2.0)
    x_near = jnp.where(near, x, -1.0)
    x_far = jnp.where(near, -1.0, x)
    return jnp.where(near, jnp.log(-jnp.expm1(x_near)), jnp.log1p(-jnp.exp(x_far)))


def _softplus(x: jax.Array) -> jax.Array:
    return jnp.logaddexp(jnp.zeros_like(x), x)


class Terms(NamedTuple):
    """Per-anchor results of spec sections 4-5 from log R (see :func:`anchor_terms`).

    delta : loss before masking anchors without negatives; rho : R / ((1 - tau+) D) (0 on the floor);
    da : dloss/da; floor : bool, on the clamp floor (all False without clamp); log1m_tau : log(1 - tau+).
    """

    delta: jax.Array
    rho: jax.Array
    da: jax.Array
    floor: jax.Array
    log1m_tau: jax.Array


def anchor_terms(lr, logM, a, t, tau, clamp: bool) -> Terms:
    """Loss, rho and dloss/da of anchors from ``lr = log R_i``, ``logM = log M_i`` and the positive logits ``a``
    (all (R,)); the part of :func:`block_rows` after the sums, shared with the tiled kernels
    (:mod:`hardneg_jax.symmetric`), which obtain log R from sums accumulated over tiles."""
    cd = lr.dtype
    ninf = jnp.asarray(-jnp.inf, cd)
    log1m_tau = jnp.log1p(-tau)
    x = jnp.log(tau) + logM + a - lr  # log(tau+ M e^a / R); -inf when tau+ = 0
    ng_pos = x < 0.0
    gu = jnp.where(ng_pos, lr + log1mexp(jnp.minimum(x, 0.0)) - log1m_tau, ninf)  # log unclamped Ng
    if clamp:
        lf = logM - 1.0 / t  # log of the floor M e^{-1/t}
        floor = gu < lf  # the tie takes the unclamped branch
        delta = _softplus(jnp.where(floor, lf, gu) - a)
        rho = jnp.where(floor, 0.0, jnp.exp(lr - log1m_tau - a - delta))
        da = jnp.where(floor, -jnp.exp(lf - a - delta), -rho)
    else:
        # Ng_u <= 0 is possible: D = e^a - N'/(1 - tau+), N' = tau+ M e^a - R >= 0; NaN when D <= 0.
        logNp = jnp.log(tau) + logM + a + log1mexp(-jnp.maximum(x, 0.0))
        y = logNp - log1m_tau - a
        delta_neg = jnp.where(y < 0.0, log1mexp(jnp.minimum(y, 0.0)), jnp.nan)
        delta = jnp.where(ng_pos, _softplus(gu - a), delta_neg)
        rho = jnp.exp(lr - log1m_tau - a - delta)
        da = -rho
    floor = floor if clamp else jnp.zeros(lr.shape, bool)
    return Terms(delta, rho, da, floor, log1m_tau)


def tau_sum(c, rho, tm: Terms, has, logM, tau, clamp: bool):
    """Sum over anchors of c_i dloss_i/dtau+ (spec section 8): (R - M e^a)/(1 - tau+)^2 / D off the floor, with
    ``rho`` already 0 for anchors without negatives."""
    # Ng_u = (R - tau+ M e^a)/(1 - tau+): dNg_u/dtau+ = (R - M e^a)/(1 - tau+)^2; dloss/dNg = 1/D
    # off the floor; rho = R/((1 - tau+) D).
    on = has if not clamp else has & ~tm.floor
    term = rho / (1.0 - tau) - jnp.exp(logM - 2.0 * tm.log1m_tau - tm.delta)
    return jnp.sum(c * jnp.where(on, term, 0.0))


def block_rows(
    S: jax.Array,
    mask: jax.Array,
    a: jax.Array,
    t: jax.Array,
    beta: jax.Array,
    tau: jax.Array,
    st: Statics,
    c: Optional[jax.Array] = None,
    needs: Needs = Needs(),
) -> RowOut:
    r"""Loss (and, with a cotangent, gradients) of a block of anchors; spec sections 4, 5 and 8.

    Parameters
    ----------
    S : (R, C) similarities :math:`s_{ij} = u_i \cdot v_j / t` in the compute dtype.
    mask : (R, C) bool, True where candidate j is a negative of anchor i.
    a : (R,) positive logits.
    t, beta, tau : scalars in the compute dtype (may be traced).
    st : :class:`Statics`.
    c : (R,) cotangent of each anchor's loss (0 on padding rows), or None for the value only.
    needs : which hyper-parameter gradients to sum.

    Returns
    -------
    RowOut
    """
    cd = S.dtype
    ninf = jnp.asarray(-jnp.inf, cd)
    easy = st.estimator == "easy"
    mode = "zero" if easy else st.beta_mode
    if easy:  # released code: Ng = sum_j e^{s_ij}, i.e. hard with beta = tau+ = 0 and no clamp
        tau = jnp.zeros((), cd)
    clamp = st.clamp and not easy

    M = jnp.sum(mask, axis=1, dtype=jnp.int32)
    has = M > 0
    logM = jnp.log(jnp.where(has, M, 1).astype(cd))
    m = jnp.where(has, jnp.max(jnp.where(mask, S, ninf), axis=1), 0.0).astype(cd)
    dz = jnp.where(mask, S - m[:, None], 0.0)  # s - m <= 0 on the negatives, 0 elsewhere (never -inf: no 0 * inf)

    fin = mode in ("finite", "zero", "traced")
    inf = mode in ("inf", "traced")
    if mode == "traced":
        is_inf = jnp.isinf(beta)
        b = jnp.where(is_inf, jnp.zeros((), cd), beta)
    elif mode == "zero":
        b = jnp.zeros((), cd)
    else:
        b = beta
    if fin:
        e1 = jnp.where(mask, jnp.exp((1.0 + b) * dz), 0.0)
        e0 = mask.astype(cd) if mode == "zero" else jnp.where(mask, jnp.exp(b * dz), 0.0)
        S1 = jnp.where(has, jnp.sum(e1, axis=1), 1.0)
        S0 = jnp.where(has, M.astype(cd) if mode == "zero" else jnp.sum(e0, axis=1), 1.0)
        lr_fin = logM + m + jnp.log(S1) - jnp.log(S0)  # log R_i
    if inf:
        top = mask & (S == m[:, None])  # the maxima (s - m == 0 exactly iff s == m)
        k = jnp.maximum(jnp.sum(top, axis=1, dtype=jnp.int32), 1).astype(cd)
        lr_inf = logM + m
    if mode == "traced":
        lr = jnp.where(is_inf, lr_inf, lr_fin)
    else:
        lr = lr_fin if fin else lr_inf

    tm = anchor_terms(lr, logM, a, t, tau, clamp)
    delta, rho, da, floor = tm.delta, tm.rho, tm.da, tm.floor
    loss = jnp.where(has, delta, 0.0)
    if c is None:
        return RowOut(loss)

    rho = jnp.where(has, rho, 0.0)
    cr = c * rho
    da = c * jnp.where(has, da, 0.0)
    # dS = c rho w, w = (1 + b) e1 / S1 - b e0 / S0 (finite) or 1/k on the maxima (inf); the row factors
    # are formed on (R,) vectors so that the (R, C) work is two multiply-adds.
    if fin:
        dS_fin = (cr * (1.0 + b) / S1)[:, None] * e1
        if mode != "zero":
            dS_fin = dS_fin - (cr * b / S0)[:, None] * e0
    if inf:
        dS_inf = jnp.where(top, (cr / k)[:, None], 0.0)
    if mode == "traced":
        dS = jnp.where(is_inf, dS_inf, dS_fin)
    else:
        dS = dS_fin if fin else dS_inf

    g_t = g_beta = g_tau = None
    if needs.temperature:
        # s_ij = u.v / t: ds/dt = -s/t for every similarity (negatives and positives); on the floor the
        # floor log M - 1/t moves too: dloss/dfloor = -da (before c), dfloor/dt = 1/t^2.
        g_t = -(jnp.sum(dS * jnp.where(mask, S, 0.0)) + jnp.sum(da * a)) / t
        if clamp:
            g_t = g_t - jnp.sum(jnp.where(floor & has, da, 0.0)) / (t * t)
    if needs.beta:
        if easy or mode == "inf":
            g_beta = jnp.zeros((), cd)
        else:
            # dlr/dbeta = E_p[s - m] - E_q[s - m] (p ~ e^{(1+b)(s-m)}, q ~ e^{b(s-m)}); dloss/dlr = rho.
            dlr = jnp.sum(e1 * dz, axis=1) / S1 - jnp.sum(e0 * dz, axis=1) / S0
            g_beta = jnp.sum(cr * dlr)
            if mode == "traced":
                g_beta = jnp.where(is_inf, jnp.zeros((), cd), g_beta)
    if needs.tau_plus:
        if easy:
            g_tau = jnp.zeros((), cd)
        else:
            g_tau = tau_sum(c, rho, tm, has, logM, tau, clamp)
    return RowOut(loss, dS, da, g_t, g_beta, g_tau)
