"""The NumPy reference: values and closed-form gradients of the HCL objective in float64.

This module *defines* what every backend computes (docs/spec.md is the same contract in prose).
It is written for clarity and exactness, not memory: it materialises the (A x C) similarity
matrix. Backends compute the same quantities over row blocks.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

import numpy as np

from ._docs import fill_doc
from .validation import NORM_EPS, Problem, check_call

__all__ = ["hcl_loss", "hcl_loss_and_grad", "Grads", "dtype_name"]


class Grads(NamedTuple):
    """Gradients of the reduced loss (times the cotangent) with respect to each input.

    ``negatives`` is ``None`` when no bank was given. Each array has its input's shape and is float64.
    ``temperature`` (spec 1.1) is d loss / d t, a float64 scalar, through every logit and through the
    clamp floor M e^{-1/t} (docs/spec.md §8).
    """

    z1: np.ndarray
    z2: np.ndarray
    negatives: Optional[np.ndarray]
    temperature: float = float("nan")


def dtype_name(x: Any) -> Optional[str]:
    """Canonical dtype name of a NumPy array (``'float32'``, ``'bfloat16'``, ...)."""
    return np.asarray(x).dtype.name if x is not None else None


# ---------------------------------------------------------------------------------------------
# Normalisation (spec section 2): u = z / max(||z||_2, 1e-12), the norm computed without overflow.


def _norms(z: np.ndarray) -> np.ndarray:
    scale = np.max(np.abs(z), axis=-1, keepdims=True)
    safe = np.where(scale > 0, scale, 1.0)
    return (scale * np.sqrt(np.sum((z / safe) ** 2, axis=-1, keepdims=True)))


def _normalize(z: np.ndarray):
    n = _norms(z)
    den = np.maximum(n, NORM_EPS)
    u = z / den

    def backward(gu: np.ndarray) -> np.ndarray:
        # Like torch's clamp_min, the tie n == eps takes the norm's branch.
        radial = np.sum(gu * u, axis=-1, keepdims=True)
        return np.where(n >= NORM_EPS, (gu - u * radial) / den, gu / NORM_EPS)

    return u, backward


# ---------------------------------------------------------------------------------------------
# The per-anchor objective (spec sections 3-5), vectorised over anchor rows.


def _log1mexp(x: np.ndarray) -> np.ndarray:
    """log(1 - e^x) for x <= 0, accurate on both sides of -log 2 (Maechler 2012)."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x > -math.log(2.0), np.log(-np.expm1(x)), np.log1p(-np.exp(x)))


def _rows(S, mask, a, M, *, temperature, beta, tau_plus, estimator, clamp):
    """Loss and gradients of each anchor row.

    Parameters
    ----------
    S : (A, C) float64 similarities s_ij / t of each anchor with each candidate.
    mask : (A, C) bool, True where candidate j is a negative of anchor i.
    a : (A,) float64 positive logits s_i,p(i).
    M : (A,) int, number of negatives of each anchor (mask.sum(1)).

    Returns
    -------
    loss : (A,), dloss/da : (A,), dloss/dS : (A, C) (zero off the mask),
    dloss/dlf : (A,), the derivative with respect to the log floor lf = log M - 1/t (zero off the floor).
    """
    A = S.shape[0]
    t = float(temperature)
    if estimator == "easy":  # released code: Ng = sum_j e^{s_ij}; identical to hard with beta = tau+ = 0, no clamp
        beta, tau_plus, clamp = 0.0, 0.0, False
    beta, tau = float(beta), float(tau_plus)
    has = M > 0
    Mf = np.where(has, M, 1).astype(np.float64)
    logM = np.log(Mf)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        Sm = np.where(mask, S, -np.inf)
        m = np.where(has, Sm.max(axis=1, initial=-np.inf), 0.0)
        d = np.where(mask, S - m[:, None], -np.inf)  # <= 0 on the mask
        if math.isinf(beta):
            top = mask & (d == 0.0)
            w = top / np.maximum(top.sum(axis=1, keepdims=True), 1)
            lr = logM + m
        else:
            e1 = np.where(mask, np.exp((1.0 + beta) * d), 0.0)
            e0 = np.where(mask, np.exp(beta * d), 0.0)
            S1 = e1.sum(axis=1)
            S0 = e0.sum(axis=1)
            S1s, S0s = np.where(has, S1, 1.0), np.where(has, S0, 1.0)
            lr = logM + m + np.log(S1s) - np.log(S0s)  # log R_i
            w = (1.0 + beta) * e1 / S1s[:, None] - beta * e0 / S0s[:, None]

        log1m_tau = math.log1p(-tau)
        if tau > 0.0:
            x = math.log(tau) + logM + a - lr  # log(tau+ M e^a / R)
        else:
            x = np.full(A, -np.inf)
        ng_pos = x < 0.0
        gu = np.where(ng_pos, lr + _log1mexp(np.minimum(x, 0.0)) - log1m_tau, -np.inf)  # log unclamped Ng

        # delta = log D - a = the loss, evaluated as softplus(gamma - a) so that tiny losses keep their digits.
        if clamp:
            lf = logM - 1.0 / t  # log of the floor M e^{-1/t}
            floor = gu < lf  # the tie takes the unclamped branch, as torch.clamp's gradient does
            g = np.where(floor, lf, gu)
            delta = np.logaddexp(0.0, g - a)
            rho = np.where(floor, 0.0, np.exp(lr - log1m_tau - a - delta))
            dlf = np.where(floor, np.exp(lf - a - delta), 0.0)  # d softplus(lf - a) / d lf
            da = -dlf - rho
        else:
            # Ng_u <= 0 is possible: D = e^a + Ng_u = e^a - N'/(1 - tau+), N' = tau+ M e^a - R >= 0.
            logNp = np.log(tau) + logM + a + _log1mexp(-np.maximum(x, 0.0)) if tau > 0.0 else np.full(A, -np.inf)
            y = logNp - log1m_tau - a
            delta_neg = np.where(y < 0.0, _log1mexp(np.minimum(y, 0.0)), np.nan)  # D <= 0: undefined, NaN
            delta = np.where(ng_pos, np.logaddexp(0.0, gu - a), delta_neg)
            rho = np.exp(lr - log1m_tau - a - delta)
            da = -rho
            dlf = np.zeros(A)
        loss = delta

        loss = np.where(has, loss, 0.0)
        da = np.where(has, da, 0.0)
        dlf = np.where(has, dlf, 0.0)
        dS = np.where(has[:, None] & mask, rho[:, None] * w, 0.0)
        dS = np.where((has & np.isnan(rho))[:, None], np.nan, dS)
    return loss, da, dS, dlf


# ---------------------------------------------------------------------------------------------
# Layouts: which similarities each anchor sees (spec section 3).


def _directions(z1, z2, negatives, labels, negative_labels, problem: Problem, t: float, nrm):
    """The anchor blocks of the layout: a list of (S, mask, a) and the data to map gradients back to rows."""
    B = problem.batch
    if problem.layout == "in_batch":
        U, back_U = nrm(np.concatenate([z1, z2], axis=0))
        n = 2 * B
        S = U @ U.T / t
        idx = np.arange(n)
        partner = (idx + B) % n
        a = S[idx, partner]
        mask = np.ones((n, n), dtype=bool)
        mask[idx, idx] = False
        mask[idx, partner] = False
        if labels is not None:
            lab = np.concatenate([labels, labels])
            mask &= lab[:, None] != lab[None, :]
        return [(S, mask, a)], dict(U=U, back_U=back_U, idx=idx, partner=partner)

    u1, back1 = nrm(z1)
    u2, back2 = nrm(z2)
    ctx = dict(u1=u1, u2=u2, back1=back1, back2=back2, V=None, backV=None)
    Sb = maskb = None
    if problem.bank != "none":
        V, backV = nrm(negatives)
        ctx.update(V=V, backV=backV)
        Sb = u1 @ V.T / t if problem.bank == "shared" else np.einsum("bd,bkd->bk", u1, V) / t
        maskb = np.ones(Sb.shape, dtype=bool)
        if labels is not None:
            nl = negative_labels if problem.bank == "per_anchor" else negative_labels[None, :]
            maskb &= labels[:, None] != nl
    if problem.layout == "bank":
        a = np.sum(u1 * u2, axis=1) / t
        return [(Sb, maskb, a)], ctx

    # cross: anchor u1[i], candidates u2[0..B-1] (+ bank), positive u2[i]; reverse: anchor u2[i], candidates u1.
    C = u1 @ u2.T / t
    a = np.diagonal(C).copy()
    maskc = ~np.eye(B, dtype=bool)
    if labels is not None:
        maskc &= labels[:, None] != labels[None, :]
    if Sb is None:
        blocks = [(C, maskc, a)]
    else:
        blocks = [(np.concatenate([C, Sb], axis=1), np.concatenate([maskc, maskb], axis=1), a)]
    if problem.symmetric:
        blocks.append((C.T, maskc.T, a))
    return blocks, ctx


def _evaluate(z1, z2, negatives, labels, negative_labels, problem: Problem, hp: dict, want_grad: bool, cot):
    t = float(hp["temperature"])
    norm = hp["normalize"]
    ident = lambda z: (z, lambda g: g)  # noqa: E731
    nrm = _normalize if norm else ident
    B = problem.batch

    blocks, ctx = _directions(z1, z2, negatives, labels, negative_labels, problem, t, nrm)
    parts = [
        _rows(
            S,
            mask,
            a,
            mask.sum(axis=1),
            temperature=t,
            beta=hp["beta"],
            tau_plus=hp["tau_plus"],
            estimator=hp["estimator"],
            clamp=hp["clamp"],
        )
        for S, mask, a in blocks
    ]
    loss = np.concatenate([p[0] for p in parts])

    reduction = hp["reduction"]
    if reduction == "mean":
        value = loss.mean()
    elif reduction == "sum":
        value = loss.sum()
    else:
        value = loss
    if not want_grad:
        return value, None

    A = loss.shape[0]
    if reduction == "none":
        c = np.ones(A) if cot is None else np.asarray(cot, dtype=np.float64).reshape(A)
    else:
        c0 = 1.0 if cot is None else float(np.asarray(cot, dtype=np.float64))
        c = np.full(A, c0 / A if reduction == "mean" else c0)

    # Scale each block's gradients by its anchors' cotangents; d loss / d t through every logit
    # (s = u.v / t, so ds/dt = -s/t) and through the log floor lf = log M - 1/t (dlf/dt = 1/t^2).
    scaled, dt, start = [], 0.0, 0
    with np.errstate(invalid="ignore"):
        for (S, mask, a), (_, da, dS, dlf) in zip(blocks, parts):
            cb = c[start : start + S.shape[0]]
            start += S.shape[0]
            da, dS, dlf = da * cb, dS * cb[:, None], dlf * cb
            scaled.append((da, dS))
            dt += -(np.sum(dS[mask] * S[mask]) + np.sum(da * a)) / t + np.sum(dlf) / (t * t)

    if problem.layout == "in_batch":
        (da, dS), = scaled
        idx, partner, U = ctx["idx"], ctx["partner"], ctx["U"]
        G = dS.copy()
        G[idx, partner] += da
        gU = (G + G.T) @ U / t
        gz = ctx["back_U"](gU)
        g1, g2, gn = gz[:B], gz[B:], None
    else:
        u1, u2, V = ctx["u1"], ctx["u2"], ctx["V"]
        da, dS = scaled[0]
        if problem.layout == "bank":  # only the positive pairs link z1 and z2
            dSb = dS
            gu1 = (da[:, None] * u2) / t
            gu2 = (da[:, None] * u1) / t
        else:
            dC = dS[:, :B] + np.diag(da)  # d loss / d C, C = u1 u2^T / t
            dSb = dS[:, B:] if V is not None else None
            if problem.symmetric:
                da2, dS2 = scaled[1]
                dC = dC + (dS2 + np.diag(da2)).T
            gu1 = dC @ u2 / t
            gu2 = dC.T @ u1 / t
        gV = None
        if V is not None:
            if problem.bank == "shared":
                gu1 = gu1 + dSb @ V / t
                gV = dSb.T @ u1 / t
            else:
                gu1 = gu1 + np.einsum("bk,bkd->bd", dSb, V) / t
                gV = dSb[:, :, None] * u1[:, None, :] / t
        g1, g2 = ctx["back1"](gu1), ctx["back2"](gu2)
        gn = None if gV is None else ctx["backV"](gV)
    if np.isnan(loss).any():  # spec 6.4: an undefined anchor makes every gradient undefined
        g1, g2 = np.full_like(g1, np.nan), np.full_like(g2, np.nan)
        gn = None if gn is None else np.full_like(gn, np.nan)
        dt = np.nan
    return value, Grads(g1, g2, gn, np.float64(dt))


def _prepare(z1, z2, negatives, labels, negative_labels, hp):
    arrays = {k: np.asarray(v) for k, v in (("z1", z1), ("z2", z2), ("negatives", negatives)) if v is not None}
    names = {k: v.dtype.name for k, v in arrays.items()}
    lab = None if labels is None else np.asarray(labels)
    nlab = None if negative_labels is None else np.asarray(negative_labels)
    problem = check_call(
        z1_shape=arrays["z1"].shape,
        z2_shape=arrays["z2"].shape,
        z1_dtype=names["z1"],
        z2_dtype=names["z2"],
        negatives_shape=None if negatives is None else arrays["negatives"].shape,
        negatives_dtype=names.get("negatives"),
        labels_shape=None if lab is None else lab.shape,
        labels_dtype=None if lab is None else lab.dtype.name,
        negative_labels_shape=None if nlab is None else nlab.shape,
        negative_labels_dtype=None if nlab is None else nlab.dtype.name,
        **hp,
    )
    as64 = lambda x: None if x is None else np.asarray(x, dtype=np.float64)  # noqa: E731
    return problem, as64(arrays["z1"]), as64(arrays["z2"]), as64(arrays.get("negatives")), lab, nlab


def _nonfinite_result(problem: Problem, hp: dict, z1, z2, negatives, want_grad):
    value = np.full(problem.n_anchors, np.nan) if hp["reduction"] == "none" else np.float64(np.nan)
    if not want_grad:
        return value, None
    nan = lambda x: None if x is None else np.full(x.shape, np.nan)  # noqa: E731
    return value, Grads(nan(z1), nan(z2), nan(negatives), np.float64(np.nan))


def _run(z1, z2, negatives, labels, negative_labels, hp, want_grad, cot=None):
    problem, z1, z2, neg, lab, nlab = _prepare(z1, z2, negatives, labels, negative_labels, hp)
    if not all(np.isfinite(x).all() for x in (z1, z2, neg) if x is not None):
        return _nonfinite_result(problem, hp, z1, z2, neg, want_grad)
    if want_grad and cot is not None:
        want = (problem.n_anchors,) if hp["reduction"] == "none" else ()
        if np.shape(cot) != want:
            raise ValueError(f"cotangent must have shape {want} for reduction={hp['reduction']!r}; got {np.shape(cot)}")
    return _evaluate(z1, z2, neg, lab, nlab, problem, hp, want_grad, cot)


@fill_doc
def hcl_loss(
    z1,
    z2,
    *,
    temperature: float = 0.5,
    beta: float = 1.0,
    tau_plus: float = 0.1,
    estimator: str = "hard",
    clamp: bool = True,
    normalize: bool = True,
    negatives=None,
    labels=None,
    negative_labels=None,
    reduction: str = "mean",
    layout: Optional[str] = None,
    symmetric: bool = True,
):
    r"""Hard-negative contrastive loss (Robinson et al., ICLR 2021), reference value in float64.

    {{hcl_loss.math}}

    ``estimator="easy"`` uses :math:`Ng_i = \sum_j e^{s_{ij}}` (NT-Xent) and ignores beta, tau_plus, clamp.
    ``beta=0`` gives the debiased loss (Chuang et al., NeurIPS 2020); ``beta=0, tau_plus=0`` gives NT-Xent;
    ``beta=math.inf`` the worst-case limit :math:`R_i = M_i e^{\max_j s_{ij}}`. docs/spec.md is the full contract.
    At ``estimator="easy"``, ``layout="cross"`` is CLIP's loss (``symmetric=True``) and sentence-transformers'
    MultipleNegativesRankingLoss with scale 1/t (``symmetric=False``, hard negatives as a shared bank).

    Parameters
    ----------
    z1, z2 : array_like, shape (B, d), floating
        Two views; row k of z1 and row k of z2 form a positive pair.
    temperature : float, default 0.5
        t > 0 (a real number; the backends also take a 0-d floating tensor and differentiate with respect to
        it, docs/spec.md §1.1; here d loss / d t is ``hcl_loss_and_grad``'s ``grads.temperature``).
    beta : float, default 1.0
        {{hcl_loss.beta}}
    tau_plus : float, default 0.1
        {{hcl_loss.tau_plus}}
    estimator : {"hard", "easy"}, default "hard"
    clamp : bool, default True
        {{hcl_loss.clamp}}
    normalize : bool, default True
        {{hcl_loss.normalize}}
    negatives : array_like, shape (K, d) or (B, K, d), optional
        Explicit bank (shared, or one per anchor). With the default layout, anchors are then z1's rows,
        positives z2's rows, and in-batch samples are not negatives; with ``layout="cross"`` the bank rows
        are extra candidates after z2's rows.
    labels : array_like of int, shape (B,), optional
        {{hcl_loss.labels}}
    negative_labels : array_like of int, shape (K,) or (B, K), optional
        {{hcl_loss.negative_labels}}
    reduction : {"mean", "sum", "none"}, default "mean"
        "none" returns the per-anchor losses: shape (2B,) in z1-then-z2 order, or (B,) with a bank
        (layout "bank") or with ``layout="cross", symmetric=False``.
    layout : {None, "in_batch", "bank", "cross"}, default None
        Which rows are anchors and candidates (docs/spec.md §3). ``None``: "in_batch" without ``negatives``
        (SimCLR: both views are anchors and candidates), "bank" with them (MoCo: z1's anchors, bank negatives).
        "cross" (CLIP, sentence-transformers): anchor z1[i], candidates z2's rows then the bank rows, positive
        z2[i]; every other candidate is a negative (M = B - 1 + K).
    symmetric : bool, default True
        Cross layout only: also use the reverse direction (anchor z2[i], candidates z1's rows, no bank), as
        CLIP does. ``False`` with another layout raises ValueError.

    Returns
    -------
    float64 scalar, or float64 array of shape (n_anchors,) for ``reduction="none"``.

    References
    ----------
    {{hcl_loss.references}}
    """
    hp = dict(
        temperature=temperature,
        beta=beta,
        tau_plus=tau_plus,
        estimator=estimator,
        clamp=clamp,
        normalize=normalize,
        reduction=reduction,
        layout=layout,
        symmetric=symmetric,
    )
    return _run(z1, z2, negatives, labels, negative_labels, hp, want_grad=False)[0]


def hcl_loss_and_grad(
    z1,
    z2,
    *,
    temperature: float = 0.5,
    beta: float = 1.0,
    tau_plus: float = 0.1,
    estimator: str = "hard",
    clamp: bool = True,
    normalize: bool = True,
    negatives=None,
    labels=None,
    negative_labels=None,
    reduction: str = "mean",
    layout: Optional[str] = None,
    symmetric: bool = True,
    cotangent=None,
):
    """Value of :func:`hcl_loss` and its closed-form gradients (docs/spec.md, section 5).

    Takes the arguments of :func:`hcl_loss`, plus ``cotangent``: the vector the gradient is taken
    against — a scalar for "mean"/"sum" (default 1), shape (n_anchors,) for "none" (default ones).

    Returns
    -------
    value : float64 scalar or (n_anchors,) array
    grads : Grads
        ``grads.z1`` (B, d), ``grads.z2`` (B, d), ``grads.negatives`` (bank's shape, or None),
        ``grads.temperature`` (a float64 scalar, d loss / d t through every logit and the clamp floor);
        the vector-Jacobian product of the cotangent, in float64.
    """
    hp = dict(
        temperature=temperature,
        beta=beta,
        tau_plus=tau_plus,
        estimator=estimator,
        clamp=clamp,
        normalize=normalize,
        reduction=reduction,
        layout=layout,
        symmetric=symmetric,
    )
    return _run(z1, z2, negatives, labels, negative_labels, hp, want_grad=True, cot=cotangent)
