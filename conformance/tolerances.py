r"""Tolerances per example, derived from the dtype's unit roundoff and the example's conditioning.

Nothing here is tuned: every tolerance is a first-order forward error bound (Higham, *Accuracy and Stability of
Numerical Algorithms*, 2nd ed., ch. 3) of an implementation that follows the spec's recipe (normalise, matrix
products, log-space sums, closed-form or automatic gradient), evaluated at the example, plus the same bound for the
float64 reference, plus the rounding of the returned result to the output dtype. A target passes a check when
``|target - reference| <= tolerance`` elementwise; the report quotes ``max |target - reference| / tolerance``.

Notation
--------
``u``   unit roundoff of the compute dtype plus that of the reference: ``u = u_c + 2^-53`` where ``u_c`` is
        ``2^-24`` for float32, float16 and bfloat16 (halves compute in float32, spec) and ``2^-53`` for float64.
``u_o`` unit roundoff of the output dtype (``2^-11`` float16, ``2^-8`` bfloat16, else ``u_c``).
For anchor ``i``: logits ``s_ij`` (negatives ``j``), positive logit ``a_i``, ``M_i`` negatives,
``L_i = max(|a_i|, max_j |s_ij|)`` the logit magnitude, ``d`` the feature dimension, ``t`` the temperature,
``beta_f`` = beta for the hard estimator with finite beta and 0 otherwise,
``p1 = softmax((1+beta) s)``, ``p0 = softmax(beta s)`` over the negatives, ``w = (1+beta) p1 - beta p0``
(``dl/ds_ij = rho_i w_ij``), ``rho_i = R_i / ((1-tau+) D_i)`` (0 when the clamp binds), ``da_i = dl/da_i``.

1. Logits.  With normalisation, each computed coordinate of ``u = z / ||z||`` has relative error
   ``<= (d+3) u`` (sum of squares ``gamma_d``, square root, scaling and division); a dot product of two such rows
   adds ``gamma_d sum_k |u_ik u_jk| <= d u ||u_i|| ||u_j||`` (Cauchy-Schwarz), and dividing by ``t`` one more
   ``u``.  Hence every logit of anchor ``i`` is off by at most

       eps_s,i = (3d + 7) u P_i / t            (normalize=False: (d + 2) u P_i / t)

   with ``P_i = ||u_i|| max_j ||u_j||`` over the anchor's candidates (1 for unit rows).

2. Log-domain arithmetic.  ``log R = log M + m + log S1 - log S0`` with ``S1 = sum exp((1+beta)(s-m))``:
   forming an exponent ``(1+beta) s`` (or ``(1+beta)(s - m)``) costs ``u (1+beta) 2L`` absolutely, the sum
   ``gamma_M`` relatively, and each addition of logs ``u`` times the magnitudes involved.  Collecting the
   magnitudes of every log-domain quantity of the recipe (log M, m, log R, log tau+, a, log Ng, log D, the
   floor log M - 1/t):

       A_i = (1 + 2 beta_f) 2 L_i + 2 (M_i + 2) + 2|log M_i| + 2|m_i| + 2|log R_i| + |log tau+| + |a_i|
             + |log Ng_i| + 2|log D_i| + |log M_i - 1/t| + 10

   and the absolute error of those quantities is ``u A_i``.

3. Value.  The loss of anchor ``i`` moves by ``kappa_i = |da_i| + rho_i sum_j |w_ij|`` per unit logit error
   (the l1 norm of its gradient with respect to the logits: this is where ``1/t``, ``beta`` and the
   debiasing cancellation enter, since ``rho_i`` carries the factor ``1/(1 - e^x)``,
   ``x = log(tau+ M e^a / R)``).  An error ``delta`` in ``log R`` moves the loss by ``rho_i delta``
   (``d l / d log R = rho``), one in ``x`` by at most ``rho_i delta`` (``q e^x/(1-e^x) <= rho``), one in
   ``gamma = log Ng`` or in ``gamma - a`` by ``q_i delta`` with ``q_i = |Ng_i| / D_i`` (the spec evaluates the
   loss as ``softplus(gamma - a)``, whose slope is ``q``; ``log1mexp(y)`` has slope ``e^y/(1-e^y) = q`` on the
   ``Ng < 0`` branch), and the final rounding is relative.  So

       E_i = kappa_i eps_s,i + (2 rho_i + q_i) u A_i + 2 u |l_i|.

   A small loss is thus checked to relative accuracy: an implementation that forms ``log D - a`` (losing the
   digits of a loss below the rounding of ``a``, spec section 5) does not conform.

   "mean" adds summation ``(A+1) u sum|l_i| / A`` to ``sum E_i / A``, "sum" the same without ``/A``, "none"
   keeps ``E_i + u |l_i|`` per anchor. The returned value then carries ``u_o (|value| + E) + tiny_o``
   (one rounding to the output dtype of a result already off by ``E``; ``tiny_o`` the smallest normal, for
   flush-to-zero).  For float16/bfloat16 outputs this rounding dominates, and it is tight: an honest
   implementation can sit anywhere up to 1.0 of the tolerance there, while rounding twice exceeds it.

4. Gradients.  Relative error of ``rho_i``: ``eta_i = (1 + sum_j|w_ij|) eps_s,i + u A_i + E_i``
   (``rho = exp(log R - log(1-tau+) - log D)``).  Relative error of ``p1_j``, ``p0_j``:
   ``theta_i = 2 (1 + beta_f)(2 eps_s,i + 2 u L_i) + 2 u (M_i + 2)`` (0 for beta = inf: ``w`` is then piecewise
   constant).  The gradient matrix ``G`` (``G_ij = c_i rho_i w_ij``, ``G_i,p(i) = c_i da_i``, ``c_i`` the
   cotangent weight of anchor ``i``: ``cot/A`` for mean, ``cot`` for sum, ``cot_i`` for none) is then off by

       dG_ij <= |c_i| rho_i (|w_ij| eta_i + ((1+beta) p1_j + beta p0_j) (theta_i + 3u))
       dG_ip <= |c_i| |da_i| (eta_i + 2u).

   ``gU = (G + G^T) U / t`` (a bank: ``G V / t``, ``G^T u1 / t``) is bounded elementwise with absolute values,
   ``H = |G| + |G|^T``:  ``dgU <= (dH |U| + u (n + 2 + c_U) H |U|) / t`` with ``c_U = d + 3`` under
   normalisation (the rows' own error) and 0 without.  Through the normalisation's backward
   ``g_z = (g_U - u (u . g_U)) / max(||z||, 1e-12)``, with ``P(v) = v + |u| (|u| . v)``:

       dg_z <= [P(dgU) + (2d + 7) u P'(|gU|bound)] / N  +  (n + d + 2) tiny_c / N  +  (d + 4) tiny_c

   (``N = max(||z||, 1e-12)``, ``P'(v) = v + 2|u|(|u| . v)``; the ``tiny_c`` terms, with an absolute
   ``tiny_c (1 + |c_i|)`` on every entry of ``G``, cover flush-to-zero of intermediates before and after the
   division by ``N``).  The returned gradient carries ``u_o (|g| + dg_z) + tiny_o``.

   The cross layout (spec 1.1) reads one B x B matrix ``C = u1 u2^T / t`` from both directions: ``|C|``-bounds
   collect direction 1's rows and direction 2's columns, ``Cbar = |G1| + diag|g1| + (|G2| + diag|g2|)^T``
   (likewise ``dCbar``), and ``gu1 = (Cbar |u2| + |G1_bank| |V|) / t``, ``gu2 = Cbar^T |u1| / t`` with the
   summation terms ``u (B + K + 3 + c_U)`` and ``u (B + 3 + c_U)``; the bank as with a bank.

6. The temperature's gradient (spec 1.1).  ``dL/dt = -(1/t) [sum_ij G_ij s_ij + sum_i g_i a_i] + sum_i h_i / t^2``
   with ``h_i = c_i dl_i/dphi_i`` on the floor (``= -c_i da_i``) and 0 elsewhere.  Each product is off by its
   factors' errors (``dG_ij |s_ij| + |G_ij| eps_s,i``, ``dP_i |a_i| + |g_i| eps_s,i``), the sums by
   ``u (n_terms + 4)`` times the sum of absolute values, ``h_i`` relatively by ``eta_i + 2u`` (it is formed like
   ``da_i``), and each division by t by ``u``:

       dT = [sum dG|S| + |G| eps_s + dP|a| + |g| eps_s + u (n + A + 4) S_abs] / t
            + [sum dh + u (A + 3) sum|h|] / t^2 + 3u (S_abs / t + sum|h| / t^2),

   ``S_abs = sum |G||S| + sum |g||a|``.  The slack of section 5 (ties, ill-conditioned anchors, many kink
   anchors) enters through ``dG``, ``dP`` and ``|c_i| |da_i|`` on ``h``; at an enumerated kink the other
   branch's d/dt (its logits' terms and the floor's own term ``-c_i da_f / t^2``) is one more alternative.
   The returned scalar carries ``u_o (|dL/dt| + dT) + tiny_o`` in the temperature tensor's dtype.

5. Where the result is not determined by the inputs' bits.  These regimes stay in the suite; only the
   contribution that is genuinely ambiguous is relaxed:

   * the clamp's kink.  The target's ``gamma = log Ng`` lies within ``gamma +/- mu_i``,
     ``mu_i = (1 + 2 e^x/(1-e^x)) ((1 + sum|w|) eps_s + u A_i) + u (|gamma| + 2)``; when that interval meets the
     floor ``log M_i - 1/t`` (give or take ``u (log M + 1/t + 2)``) the anchor may take either branch.  Its
     loss gets the spread of ``softplus(max(gamma, floor) - a)`` over the interval, its error terms the larger
     of the two branches' ``rho``/``da``, and the gradient is compared against the reference on *each*
     assignment of branches to such anchors (:attr:`Bounds.alternatives`, up to 4 anchors = 16 assignments),
     passing if one matches: it is compared on the branch the implementation chose (spec section 11).  With
     more than 4 such anchors each gets slack equal to the difference of its two branches' contributions.
     Anchors clearly above or below the floor are compared exactly, so the clamp-binding regime is fully checked.
   * the debiasing cancellation at ``x = 0`` (Ng -> 0, where ``e^x/(1-e^x)`` explodes and first order fails:
     ``(1 + 2 e^x/(1-e^x)) dlog > 1/8``, or the reference has ``x >= 0`` while ``x - dlog < 0``): the interval of
     ``gamma`` is evaluated directly, ``gamma(x -/+ dlog) +/- dlog`` with ``dlog = (1 + sum|w|) eps_s + u A_i``
     the error of ``x``; the loss gets that interval's spread and the anchor's gradient row is not compared.
   * beta = inf: an anchor whose maximum is shared (ties) or has a runner-up within ``2 eps_s + 2u(|m|+1)``
     may split its weight differently; slack ``|c_i| rho_i`` on those candidates.  Ties of exactly computable
     logits (the suite's exact-tie cases: basis vectors, temperatures powers of two) get no slack: there the
     spec's even split is checked.
   * clamp=False near ``D = 0``: when ``y = log(N'/((1-tau+) e^a))`` is within its error of 0 the spec's value is
     NaN on one side and finite on the other; such examples are not compared (reported as ill-posed).
   * first order no longer valid: an anchor with ``eta_i > 1/8`` (its gradient not determined to 12%) gets its
     whole gradient row as slack; the report counts such anchors.

The bound is worst case (``gamma_n`` grows like ``n``, rounding errors rarely align): an honest float32 target
typically sits at a few percent of it, while each planted defect in :mod:`conformance.defects` exceeds it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np

from .cases import COMPUTE_DTYPE, HUGE, OUTPUT_ROUNDOFF, TINY, UNIT_ROUNDOFF, Case

__all__ = ["Bounds", "bounds", "anchor_quantities", "AnchorQuantities"]

_U64 = 2.0**-53
NORM_EPS = 1e-12
ILL_CONDITIONED = 0.125
MAX_BRANCH_ENUMERATION = 4


@dataclass
class AnchorQuantities:
    """Float64 per-anchor quantities of the spec (the same math as the reference, kept for error analysis)."""

    S: np.ndarray  # (A, C) logits
    mask: np.ndarray  # (A, C) negatives
    a: np.ndarray  # (A,) positive logits
    M: np.ndarray  # (A,) negatives per anchor
    has: np.ndarray  # M > 0
    m: np.ndarray  # max logit over the negatives
    L: np.ndarray  # logit magnitude
    P: np.ndarray  # ||u_i|| max_j ||u_j||
    w: np.ndarray  # (A, C) d log R / d s
    wabs: np.ndarray  # (1+beta) p1 + beta p0
    lr: np.ndarray  # log R
    x: np.ndarray  # log(tau+ M e^a / R)
    gu: np.ndarray  # log of the unclamped Ng (-inf when Ng <= 0)
    lf: np.ndarray  # log M - 1/t
    floor: np.ndarray  # clamp binds
    logD: np.ndarray
    loss: np.ndarray
    q: np.ndarray  # |Ng| / D, the slope of the loss in gamma - a
    rho: np.ndarray
    da: np.ndarray
    y: np.ndarray  # clamp=False, Ng <= 0 branch: log of N'/((1-tau+) e^a); D <= 0 when y >= 0
    beta_eff: float
    tau_eff: float
    clamp_eff: bool


@dataclass
class Bounds:
    """Tolerances of one example (absolute, elementwise; same shapes as the reference's outputs)."""

    value: np.ndarray
    grads: Dict[str, np.ndarray] = field(default_factory=dict)
    ill_posed: bool = False  # clamp=False with an anchor on the D = 0 boundary: not compared
    kink_anchors: int = 0
    tie_anchors: int = 0
    ill_conditioned: int = 0
    #: gradient changes, one per kink anchor, that flip its branch; any subset may be applied (see section 5)
    alternatives: list = field(default_factory=list)
    #: unit roundoff of the output dtype (the rounding of an alternative's extra magnitude is added to it)
    output_roundoff: float = 0.0


def _log1mexp(x):
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x > -math.log(2.0), np.log(-np.expm1(x)), np.log1p(-np.exp(x)))


def _normalize(z: np.ndarray, normalize: bool):
    """Rows used by the math, their divisors N = max(||z||, eps) (None without normalisation)."""
    if not normalize:
        return z, None
    scale = np.max(np.abs(z), axis=-1, keepdims=True)
    safe = np.where(scale > 0, scale, 1.0)
    n = scale * np.sqrt(np.sum((z / safe) ** 2, axis=-1, keepdims=True))
    N = np.maximum(n, NORM_EPS)
    return z / N, N


def _norm_backward(g: np.ndarray, u: np.ndarray, N: Optional[np.ndarray]) -> np.ndarray:
    """Exact float64 backward of the normalisation (spec section 8)."""
    if N is None:
        return g
    radial = np.sum(g * u, axis=-1, keepdims=True)
    return np.where(N > NORM_EPS, (g - u * radial) / N, g / NORM_EPS)


def _backprop(lay: dict, case: Case, Gneg: np.ndarray, gpos: np.ndarray) -> Dict[str, np.ndarray]:
    """Gradient with respect to the inputs of logit cotangents (Gneg on the candidates, gpos on the positives)."""
    t = float(case.params["temperature"])
    if lay["kind"] == "none":
        n = Gneg.shape[0]
        G = Gneg.copy()
        G[np.arange(n), lay["partner"]] += gpos
        gz = _norm_backward((G + G.T) @ lay["U"] / t, lay["U"], lay["N"])
        B = n // 2
        return {"z1": gz[:B], "z2": gz[B:]}
    u1, u2, V = lay["u1"], lay["u2"], lay["V"]
    if lay["kind"] == "cross":
        # both directions read C = u1 u2^T / t: direction 1 by rows (then the bank), direction 2 by columns
        B = u1.shape[0]
        dC = Gneg[:B, :B] + np.diag(gpos[:B])
        if lay["sym"]:
            dC = dC + (Gneg[B:, :B] + np.diag(gpos[B:])).T
        g1, g2 = dC @ u2, dC.T @ u1
        out = {}
        if V is not None:
            Gb = Gneg[:B, B:]
            if V.ndim == 2:
                g1, gV = g1 + Gb @ V, Gb.T @ u1
            else:
                g1, gV = g1 + np.einsum("bk,bkd->bd", Gb, V), Gb[:, :, None] * u1[:, None, :]
            out["negatives"] = _norm_backward(gV / t, V, lay["NV"])
        out["z1"] = _norm_backward(g1 / t, u1, lay["N1"])
        out["z2"] = _norm_backward(g2 / t, u2, lay["N2"])
        return out
    if V.ndim == 2:
        g1, gV = Gneg @ V, Gneg.T @ u1
    else:
        g1, gV = np.einsum("bk,bkd->bd", Gneg, V), Gneg[:, :, None] * u1[:, None, :]
    return {
        "z1": _norm_backward((g1 + gpos[:, None] * u2) / t, u1, lay["N1"]),
        "z2": _norm_backward(gpos[:, None] * u1 / t, u2, lay["N2"]),
        "negatives": _norm_backward(gV / t, V, lay["NV"]),
    }


def _cross_layout(case: Case):
    """Cross layout (spec 1.1 section 3): direction 1's anchors u1 against [u2; bank], then (symmetric) direction
    2's anchors u2 against u1 only, padded to the same number of columns (the padding is never a negative)."""
    p = case.params
    t = float(p["temperature"])
    B = case.z1.shape[0]
    sym = case.symmetric
    u1, N1 = _normalize(case.z1, p["normalize"])
    u2, N2 = _normalize(case.z2, p["normalize"])
    V = NV = None
    C = u1 @ u2.T / t
    a = np.diagonal(C).copy()
    maskc = ~np.eye(B, dtype=bool)
    if case.labels is not None:
        maskc &= case.labels[:, None] != case.labels[None, :]
    n1, n2 = np.linalg.norm(u1, axis=1), np.linalg.norm(u2, axis=1)
    S1, m1 = C, maskc
    nv1 = np.broadcast_to(n2[None, :], (B, B))
    if case.negatives is not None:
        V, NV = _normalize(case.negatives, p["normalize"])
        if V.ndim == 2:
            Sb = u1 @ V.T / t
            nvb = np.broadcast_to(np.linalg.norm(V, axis=1)[None, :], Sb.shape)
        else:
            Sb = np.einsum("bd,bkd->bk", u1, V) / t
            nvb = np.linalg.norm(V, axis=2)
        maskb = np.ones(Sb.shape, dtype=bool)
        if case.labels is not None:
            nl = case.negative_labels if V.ndim == 3 else case.negative_labels[None, :]
            maskb &= case.labels[:, None] != nl
        S1, m1 = np.concatenate([C, Sb], axis=1), np.concatenate([maskc, maskb], axis=1)
        nv1 = np.concatenate([nv1, nvb], axis=1)
    P1 = n1 * np.maximum(np.where(m1, nv1, 0.0).max(axis=1, initial=0.0), n2)
    S, mask, aa, P = S1, m1, a, P1
    if sym:
        width = S1.shape[1]
        pad = np.zeros((B, width - B))
        S2 = np.concatenate([C.T, pad], axis=1)
        m2 = np.concatenate([maskc.T, np.zeros((B, width - B), dtype=bool)], axis=1)
        P2 = n2 * np.maximum(np.where(maskc.T, n1[None, :], 0.0).max(axis=1, initial=0.0), n1)
        S, mask = np.concatenate([S1, S2]), np.concatenate([m1, m2])
        aa, P = np.concatenate([a, a]), np.concatenate([P1, P2])
    return dict(kind="cross", sym=sym, u1=u1, u2=u2, V=V, N1=N1, N2=N2, NV=NV, S=S, a=aa, mask=mask, P=P)


def _layout(case: Case):
    p = case.params
    t = float(p["temperature"])
    B = case.z1.shape[0]
    if case.layout == "cross":
        return _cross_layout(case)
    if case.negatives is None:
        Z = np.concatenate([case.z1, case.z2])
        U, N = _normalize(Z, p["normalize"])
        n = 2 * B
        S = U @ U.T / t
        idx = np.arange(n)
        partner = (idx + B) % n
        a = S[idx, partner]
        mask = np.ones((n, n), dtype=bool)
        mask[idx, idx] = False
        mask[idx, partner] = False
        if case.labels is not None:
            lab = np.concatenate([case.labels, case.labels])
            mask &= lab[:, None] != lab[None, :]
        nu = np.linalg.norm(U, axis=1)
        cand = np.where(mask, nu[None, :], 0.0).max(axis=1, initial=0.0)
        P = nu * np.maximum(cand, nu[partner])
        return dict(kind="none", U=U, N=N, S=S, a=a, mask=mask, P=P, partner=partner)
    u1, N1 = _normalize(case.z1, p["normalize"])
    u2, N2 = _normalize(case.z2, p["normalize"])
    V, NV = _normalize(case.negatives, p["normalize"])
    a = np.sum(u1 * u2, axis=1) / t
    if case.negatives.ndim == 2:
        S = u1 @ V.T / t
        nv = np.broadcast_to(np.linalg.norm(V, axis=1)[None, :], S.shape)
    else:
        S = np.einsum("bd,bkd->bk", u1, V) / t
        nv = np.linalg.norm(V, axis=2)
    mask = np.ones(S.shape, dtype=bool)
    if case.labels is not None:
        nl = case.negative_labels if case.negatives.ndim == 3 else case.negative_labels[None, :]
        mask &= case.labels[:, None] != nl
    n1, n2 = np.linalg.norm(u1, axis=1), np.linalg.norm(u2, axis=1)
    P = n1 * np.maximum(np.where(mask, nv, 0.0).max(axis=1, initial=0.0), n2)
    return dict(kind="bank", u1=u1, u2=u2, V=V, N1=N1, N2=N2, NV=NV, S=S, a=a, mask=mask, P=P)


def anchor_quantities(case: Case, lay: Optional[dict] = None) -> AnchorQuantities:
    """Per-anchor quantities of the spec in float64 (the inputs must be finite)."""
    lay = lay or _layout(case)
    p = case.params
    t = float(p["temperature"])
    beta, tau, clamp = float(p["beta"]), float(p["tau_plus"]), bool(p["clamp"])
    if p["estimator"] == "easy":
        beta, tau, clamp = 0.0, 0.0, False
    S, mask, a = lay["S"], lay["mask"], lay["a"]
    M = mask.sum(axis=1)
    has = M > 0
    Mf = np.where(has, M, 1).astype(np.float64)
    logM = np.log(Mf)
    with np.errstate(all="ignore"):
        Sm = np.where(mask, S, -np.inf)
        m = np.where(has, Sm.max(axis=1, initial=-np.inf), 0.0)
        L = np.maximum(np.abs(a), np.where(mask, np.abs(S), 0.0).max(axis=1, initial=0.0))
        dd = np.where(mask, S - m[:, None], -np.inf)
        if math.isinf(beta):
            top = mask & (dd == 0.0)
            w = top / np.maximum(top.sum(axis=1, keepdims=True), 1)
            wabs = w
            lr = logM + m
        else:
            e1 = np.where(mask, np.exp((1.0 + beta) * dd), 0.0)
            e0 = np.where(mask, np.exp(beta * dd), 0.0)
            S1 = np.where(has, e1.sum(axis=1), 1.0)
            S0 = np.where(has, e0.sum(axis=1), 1.0)
            p1, p0 = e1 / S1[:, None], e0 / S0[:, None]
            w = (1.0 + beta) * p1 - beta * p0
            wabs = (1.0 + beta) * p1 + beta * p0
            lr = logM + m + np.log(S1) - np.log(S0)
        log1m_tau = math.log1p(-tau)
        x = (math.log(tau) + logM + a - lr) if tau > 0 else np.full(len(a), -np.inf)
        ngpos = x < 0
        gu = np.where(ngpos, lr + _log1mexp(np.minimum(x, 0.0)) - log1m_tau, -np.inf)
        lf = logM - 1.0 / t
        y = np.full(len(a), -np.inf)
        if clamp:
            floor = gu < lf
            g = np.where(floor, lf, gu)
            loss = np.logaddexp(0.0, g - a)
            qq = np.exp(g - a - loss)
            rho = np.where(floor, 0.0, np.exp(lr - log1m_tau - a - loss))
            da = np.where(floor, -qq, -rho)
        else:
            floor = np.zeros(len(a), dtype=bool)
            if tau > 0:
                y = math.log(tau) + logM + _log1mexp(-np.maximum(x, 0.0)) - log1m_tau
            y = np.where(ngpos, -np.inf, y)
            neg_branch = np.where(y < 0, _log1mexp(np.minimum(y, 0.0)), np.nan)
            loss = np.where(ngpos, np.logaddexp(0.0, gu - a), neg_branch)
            qq = np.where(ngpos, np.exp(gu - a - loss), np.exp(y - loss))
            rho = np.exp(lr - log1m_tau - a - loss)
            da = -rho
        logD = a + loss
    z = lambda v: np.where(has, v, 0.0)  # noqa: E731
    return AnchorQuantities(
        S=S, mask=mask, a=a, M=M, has=has, m=z(m), L=z(L), P=z(lay["P"]), w=np.where(has[:, None], w, 0.0),
        wabs=np.where(has[:, None], wabs, 0.0), lr=z(lr), x=x, gu=gu, lf=lf, floor=floor & has, logD=z(logD),
        loss=z(loss), q=z(qq), rho=z(rho), da=z(da), y=y, beta_eff=beta, tau_eff=tau, clamp_eff=clamp,
    )


def _cot_weights(case: Case, signed: bool = True) -> np.ndarray:
    """Per-anchor weight of the cotangent: cot/A (mean), cot (sum), cot_i (none)."""
    A = case.n_anchors
    red = case.params["reduction"]
    if red == "none":
        return np.asarray(case.cotangent, dtype=np.float64).reshape(A).copy()
    return np.full(A, float(case.cotangent) / (A if red == "mean" else 1))


def spec_gradient(case: Case) -> Dict[str, np.ndarray]:
    """The gradient of spec section 8 recomputed here in float64 (finite inputs; anchors without negatives: 0),
    with ``"temperature"``: d loss / d t through the logits and the clamp floor."""
    lay = _layout(case)
    q = anchor_quantities(case, lay)
    cw = _cot_weights(case)
    t = float(case.params["temperature"])
    with np.errstate(all="ignore"):
        G = np.where(q.mask & q.has[:, None], cw[:, None] * q.rho[:, None] * q.w, 0.0)
        gpos = cw * q.da
        h = np.where(q.floor, -gpos, 0.0)  # on the floor d l / d lf = -d l / d a
        dt = -(np.sum(np.where(q.mask, G * q.S, 0.0)) + np.sum(gpos * q.a)) / t + np.sum(h) / t**2
    out = _backprop(lay, case, G, gpos)
    out["temperature"] = np.asarray(dt)
    return out


def _fin(v):
    return np.where(np.isfinite(v), np.abs(v), 0.0)


def _proj(ua: np.ndarray, v: np.ndarray, k: float = 1.0) -> np.ndarray:
    """v + k |u| (|u| . v), row-wise: the absolute-value form of v - u (u . v)."""
    return v + k * ua * np.sum(ua * v, axis=-1, keepdims=True)


def _norm_back(dgu, gabs, u, N, normalize, d, u_r, tiny_c, n_terms):
    if not normalize:
        return dgu + (n_terms + d + 2) * tiny_c
    ua = np.abs(u)
    out = (_proj(ua, dgu) + (2 * d + 7) * u_r * _proj(ua, gabs, 2.0)) / N
    # flush-to-zero of intermediates before (/N) and after the division (the d + 2 terms of the projection)
    return out + (n_terms + d + 2) * tiny_c / N + (d + 4) * tiny_c


def bounds(case: Case, reference_value=None, reference_grads=None, want_grad: bool = True) -> Bounds:
    """Tolerances (absolute, elementwise) for comparing a target with the reference on ``case``.

    ``reference_value``/``reference_grads`` (from :meth:`Case.reference`) add the output-dtype rounding of the
    reference's magnitudes; they are recomputed when omitted.
    """
    if reference_value is None:
        reference_value, reference_grads = case.reference(want_grad)
    dtype = case.dtype
    u = UNIT_ROUNDOFF[dtype] + _U64
    u_o, tiny_o = OUTPUT_ROUNDOFF[dtype], TINY[dtype]
    tiny_c = TINY[COMPUTE_DTYPE[dtype]]
    p = case.params
    t = float(p["temperature"])
    d = case.z1.shape[1]
    A = case.n_anchors

    lay = _layout(case)
    q = anchor_quantities(case, lay)
    beta_f = 0.0 if math.isinf(q.beta_eff) else q.beta_eff
    c_s = (3 * d + 7) if p["normalize"] else (d + 2)
    eps_s = c_s * u * q.P / t
    sw = np.abs(q.w).sum(axis=1)
    with np.errstate(all="ignore"):
        logtau = abs(math.log(q.tau_eff)) if q.tau_eff > 0 else 0.0
        logM = np.log(np.maximum(q.M, 1))
        Ai = (
            (1 + 2 * beta_f) * 2 * q.L + 2 * (q.M + 2) + 2 * logM + 2 * np.abs(q.m) + 2 * _fin(q.lr) + logtau
            + np.abs(q.a) + _fin(q.gu) + 2 * _fin(q.logD) + np.abs(q.lf) + 10
        )
        dlog = (1 + sw) * eps_s + u * Ai
        ex = np.where(np.isfinite(q.x) & (q.x < 0), np.exp(np.minimum(q.x, 0.0)), 0.0)
        cx = ex / np.maximum(-np.expm1(np.minimum(q.x, -1e-300)), 1e-300)
        log1m = math.log1p(-q.tau_eff)
        dlf = u * (logM + 1 / t + 2)
        # where the target's gamma = log Ng may lie: first order, or (near the cancellation x = 0, where the
        # first-order factor e^x/(1-e^x) explodes) the interval gamma(x -/+ dlog) +/- dlog
        mu = (1 + 2 * cx) * dlog + u * (_fin(q.gu) + 2)
        gam = lambda xx: np.where(xx < 0, q.lr + _log1mexp(np.minimum(xx, 0.0)) - log1m, -np.inf)  # noqa: E731
        wide = q.has & np.isfinite(q.x) & (((1 + 2 * cx) * dlog > ILL_CONDITIONED) |
                                           (~np.isfinite(q.gu) & (q.x - dlog < 0)))
        g_hi = np.where(wide, gam(q.x - dlog) + dlog, q.gu + mu)
        g_lo = np.where(wide, gam(q.x + dlog) - dlog, q.gu - mu)
        # the clamp's kink: the target may be on either branch
        kink = q.has & q.clamp_eff & np.isfinite(g_hi) & (g_hi >= q.lf - dlf) & (g_lo <= q.lf + dlf)
        # value: the loss anywhere between the ends of that interval (softplus is monotone)
        fl = q.lf if q.clamp_eff else -np.inf
        l_hi = np.logaddexp(0.0, np.maximum(g_hi, fl) - q.a)
        l_lo = np.logaddexp(0.0, np.maximum(g_lo, fl) - q.a)
        slack = np.where(kink | wide, np.maximum(_fin(l_hi - q.loss), _fin(q.loss - l_lo)), 0.0)
        # both branches: the error terms take the larger of the two (rho_u is largest when Ng is smallest)
        g_u = np.where(wide, g_lo, q.gu)
        rho_u = np.where(kink | wide, np.exp(q.lr - log1m - q.a - np.logaddexp(0.0, g_u - q.a)), 0.0)
        da_f = np.where(kink, -np.exp(q.lf - q.a - np.logaddexp(0.0, q.lf - q.a)), 0.0)
        rho_e = np.maximum(q.rho, rho_u)
        da_e = np.maximum(np.abs(q.da), np.maximum(rho_u, np.abs(da_f)))
        kappa = da_e + rho_e * sw
        E = kappa * eps_s + (2 * rho_e + q.q) * u * Ai + 2 * u * np.abs(q.loss) + slack

        # clamp=False near D = 0: NaN on one side, finite on the other.
        dy = (1 + 1 / np.maximum(np.abs(np.expm1(np.where(np.isfinite(q.x), q.x, 0.0))), 1e-300)) * dlog
        ill_posed = bool(np.any(q.has & np.isfinite(q.y) & (np.abs(q.y) <= 2 * dy + u)))
        ill_posed |= bool(np.any(q.has & ~q.clamp_eff & np.isfinite(q.x) & (np.abs(q.x) <= 2 * dlog)
                                 & (q.y >= -4 * dy - u)))
        E = np.where(q.has, E, 0.0)

    loss = np.where(q.has, q.loss, 0.0)
    red = p["reduction"]
    if red == "none":
        vtol = E + u * np.abs(loss)
    else:
        tot = E.sum() + u * (A + 1) * np.abs(loss).sum()
        vtol = np.asarray(tot / A if red == "mean" else tot)
    rv = np.asarray(reference_value, dtype=np.float64)
    # one rounding to the output dtype of a result already off by vtol: u_o (|v| + vtol)
    vtol = vtol * (1 + u_o) + u_o * _fin(rv) + tiny_o
    out = Bounds(value=np.asarray(vtol, dtype=np.float64), ill_posed=ill_posed, kink_anchors=int(kink.sum()))
    if not want_grad:
        return out

    c = np.abs(_cot_weights(case))

    eta = dlog + eps_s + E
    theta = 0.0 if math.isinf(q.beta_eff) else 2 * (1 + beta_f) * (2 * eps_s + 2 * u * q.L) + 2 * u * (q.M + 2)
    theta = np.broadcast_to(np.asarray(theta, dtype=np.float64), (A,))
    crho = (c * rho_e)[:, None]
    Gabs = crho * np.abs(q.w)
    dG = crho * (np.abs(q.w) * eta[:, None] + q.wabs * (theta[:, None] + 3 * u))
    Pabs = c * da_e
    dP = Pabs * (eta + 2 * u)
    # a per-anchor factor (rho, da, G_ij) below the smallest normal may be flushed to zero
    dG = dG + np.where(q.mask & q.has[:, None], tiny_c * (1 + c)[:, None], 0.0)
    dP = dP + np.where(q.has, tiny_c * (1 + c), 0.0)

    # kink: the target may be on either branch; compare on each assignment (few anchors) or give slack (many)
    alternatives = []
    enum = kink & ~wide
    if enum.any():
        if enum.sum() <= MAX_BRANCH_ENUMERATION:
            csigned = _cot_weights(case, signed=True)
            for i in np.flatnonzero(enum):
                sign = 1.0 if q.floor[i] else -1.0  # floor -> unclamped adds rho_u w; unclamped -> floor removes it
                Gn = np.zeros_like(q.w)
                Gn[i] = sign * csigned[i] * rho_u[i] * q.w[i]
                gp = np.zeros(A)
                gp[i] = sign * csigned[i] * (-rho_u[i] - da_f[i])
                alternatives.append(_backprop(lay, case, Gn, gp))
        else:
            dG = dG + np.where(enum[:, None], (c * rho_u)[:, None] * np.abs(q.w), 0.0)
            dP = dP + np.where(enum, c * np.abs(-rho_u - da_f), 0.0)
    # beta = inf: shared or nearly shared maxima
    n_tie = 0
    if math.isinf(q.beta_eff):
        gap = q.m[:, None] - q.S
        margin = 2 * eps_s + 2 * u * (np.abs(q.m) + 1)
        near = q.mask & (gap <= margin[:, None])
        amb = near.sum(axis=1) > 1
        if case.origin.get("exact_ties"):
            amb = near.sum(axis=1) > (q.mask & (gap == 0)).sum(axis=1)
        amb &= q.has
        n_tie = int(amb.sum())
        dG = dG + np.where(amb[:, None] & near, crho, 0.0)
    # first-order analysis no longer valid
    ill = q.has & ((eta > ILL_CONDITIONED) | wide)
    dG = dG + np.where(ill[:, None], Gabs, 0.0)
    dP = dP + np.where(ill, Pabs, 0.0)
    out.tie_anchors, out.ill_conditioned = n_tie, int(ill.sum())

    rg = reference_grads
    grads: Dict[str, np.ndarray] = {}
    normalize = bool(p["normalize"])
    c_U = (d + 3) if normalize else 0
    if lay["kind"] == "none":
        n = A
        B = n // 2
        idx = np.arange(n)
        G = Gabs.copy()
        DG = dG.copy()
        G[idx, lay["partner"]] += Pabs
        DG[idx, lay["partner"]] += dP
        H, dH = G + G.T, DG + DG.T
        Ua = np.abs(lay["U"])
        gabs = H @ Ua / t
        dgu = (dH @ Ua + u * (n + 2 + c_U) * (H @ Ua)) / t
        gz = _norm_back(dgu, gabs, lay["U"], lay["N"], normalize, d, u, tiny_c, n)
        grads["z1"], grads["z2"] = gz[:B], gz[B:]
    elif lay["kind"] == "cross":
        B = case.z1.shape[0]
        u1a, u2a = np.abs(lay["u1"]), np.abs(lay["u2"])
        # the B x B logits C = u1 u2^T / t collect direction 1's rows and direction 2's columns
        Cabs = Gabs[:B, :B] + np.diag(Pabs[:B])
        dCm = dG[:B, :B] + np.diag(dP[:B])
        if lay["sym"]:
            Cabs = Cabs + (Gabs[B:, :B] + np.diag(Pabs[B:])).T
            dCm = dCm + (dG[B:, :B] + np.diag(dP[B:])).T
        gv1, dv1, n1 = Cabs @ u2a, dCm @ u2a, B
        gv2, dv2 = Cabs.T @ u1a, dCm.T @ u1a
        if lay["V"] is not None:
            Va = np.abs(lay["V"])
            Gb, dGb = Gabs[:B, B:], dG[:B, B:]
            K = Gb.shape[1]
            shared = lay["V"].ndim == 2
            if shared:
                gv1, dv1 = gv1 + Gb @ Va, dv1 + dGb @ Va
                gVa, dVa = Gb.T @ u1a, dGb.T @ u1a
            else:
                gv1 = gv1 + np.einsum("bk,bkd->bd", Gb, Va)
                dv1 = dv1 + np.einsum("bk,bkd->bd", dGb, Va)
                gVa, dVa = Gb[:, :, None] * u1a[:, None, :], dGb[:, :, None] * u1a[:, None, :]
            n1 += K
            gV = gVa / t
            dV = (dVa + u * ((B if shared else 1) + 2 + c_U) * gVa) / t
            grads["negatives"] = _norm_back(dV, gV, lay["V"], lay["NV"], normalize, d, u, tiny_c, B)
        g1, d1 = gv1 / t, (dv1 + u * (n1 + 3 + c_U) * gv1) / t
        g2, d2 = gv2 / t, (dv2 + u * (B + 3 + c_U) * gv2) / t
        grads["z1"] = _norm_back(d1, g1, lay["u1"], lay["N1"], normalize, d, u, tiny_c, n1)
        grads["z2"] = _norm_back(d2, g2, lay["u2"], lay["N2"], normalize, d, u, tiny_c, B)
    else:
        K = q.S.shape[1]
        u1a, u2a, Va = np.abs(lay["u1"]), np.abs(lay["u2"]), np.abs(lay["V"])
        shared = case.negatives.ndim == 2
        if shared:
            gv1, dv1 = Gabs @ Va, dG @ Va
            gVa, dVa = Gabs.T @ u1a, dG.T @ u1a
        else:
            gv1, dv1 = np.einsum("bk,bkd->bd", Gabs, Va), np.einsum("bk,bkd->bd", dG, Va)
            gVa, dVa = Gabs[:, :, None] * u1a[:, None, :], dG[:, :, None] * u1a[:, None, :]
        g1 = (gv1 + Pabs[:, None] * u2a) / t
        d1 = (dv1 + dP[:, None] * u2a + u * (K + 2 + c_U) * (gv1 + Pabs[:, None] * u2a)) / t
        g2 = Pabs[:, None] * u1a / t
        d2 = (dP[:, None] * u1a + u * (2 + c_U) * Pabs[:, None] * u1a) / t
        gV = gVa / t
        dV = (dVa + u * ((A if shared else 1) + 2 + c_U) * gVa) / t
        grads["z1"] = _norm_back(d1, g1, lay["u1"], lay["N1"], normalize, d, u, tiny_c, K + 1)
        grads["z2"] = _norm_back(d2, g2, lay["u2"], lay["N2"], normalize, d, u, tiny_c, 1)
        grads["negatives"] = _norm_back(dV, gV, lay["V"], lay["NV"], normalize, d, u, tiny_c, A)
    if case.temperature_grad:
        # d loss / d t = -(1/t) [sum_ij G_ij s_ij + sum_i g_i a_i] + sum_i h_i / t^2 (spec 1.1 section 8), h_i the
        # cotangent-weighted derivative in the log floor (on the floor only). Each product is off by the error of
        # its factors (dG, dP above; eps_s for a logit), the sums by their length, the divisions by u each.
        Sa = np.where(q.mask & q.has[:, None], np.abs(q.S), 0.0)
        aa = np.where(q.has, np.abs(q.a), 0.0)
        big = float(np.sum(Gabs * Sa) + np.sum(Pabs * aa))
        err = float(np.sum(dG * Sa) + np.sum(Gabs * eps_s[:, None]) + np.sum(dP * aa) + np.sum(Pabs * eps_s))
        err += u * (q.mask.sum() + A + 4) * big
        Habs = np.where(q.floor, c * np.abs(q.da), 0.0)
        dH = Habs * (eta + 2 * u) + np.where(q.has, tiny_c * (1 + c), 0.0)
        loose = ill | (enum if enum.sum() > MAX_BRANCH_ENUMERATION else np.zeros_like(enum))
        dH = dH + np.where(loose, c * da_e, 0.0)
        hsum = float(np.sum(Habs))
        terr = err / t + (float(np.sum(dH)) + u * (A + 3) * hsum) / t**2 + 3 * u * (big / t + hsum / t**2)
        grads["temperature"] = np.asarray(terr)
        if alternatives:
            csigned = _cot_weights(case, signed=True)
            for alt, i in zip(alternatives, np.flatnonzero(enum)):
                sign = 1.0 if q.floor[i] else -1.0
                gsum = sign * csigned[i] * (rho_u[i] * float(np.sum(np.where(q.mask[i], q.w[i] * q.S[i], 0.0)))
                                            + (-rho_u[i] - da_f[i]) * q.a[i])
                # the floor's own term: present on the floor branch (h = -da_f), absent off it
                alt["temperature"] = np.asarray(-gsum / t + sign * csigned[i] * da_f[i] / t**2)
    for k in list(grads):
        if k == "temperature":
            ref = None if rg is None else np.asarray(rg.temperature, dtype=np.float64)
        else:
            ref = getattr(rg, k) if rg is not None else None
        extra = u_o * _fin(ref) if ref is not None else 0.0
        grads[k] = grads[k] * (1 + u_o) + extra + tiny_o
    out.grads = grads
    out.alternatives = alternatives
    out.output_roundoff = u_o
    return out


def representable(ref: np.ndarray, dtype: str) -> np.ndarray:
    """Where a float64 result fits the output dtype (there the target must be finite)."""
    return np.abs(np.asarray(ref, dtype=np.float64)) <= HUGE[dtype] * (1 - OUTPUT_ROUNDOFF[dtype])
