"""The graph objective: InfoGraph's local-global Jensen-Shannon estimator with hard negatives (float64 reference).

``jsd_loss(local, graph, batch)`` is the objective that the authors' released graph code trains with
(joshr17/HCL, ``graph/losses.py: local_global_loss_`` with measure ``'JSD_hard'`` of
``graph/cortex_DIM/functions/gan_losses.py``), exactly (``convention="released"``), and the paper's construction
applied to the same estimator (``convention="corrected"``). docs/spec.md section 14 is the contract; this module is
its executable form: values and closed-form gradients in float64, materialising the (N, G) score matrix.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from .validation import JsdProblem, check_jsd_batch_values, check_jsd_call

__all__ = ["jsd_loss", "jsd_loss_and_grad", "JsdGrads"]

LOG2 = math.log(2.0)


class JsdGrads(NamedTuple):
    """Gradients of the reduced graph objective (times the cotangent): float64 arrays of the inputs' shapes."""

    local: np.ndarray
    graph: np.ndarray


def _sp(x):
    """softplus(x) = log(1 + e^x), stable for every float64 x."""
    return np.logaddexp(0.0, x)


def _sig(x):
    """The logistic function, stable for every float64 x."""
    with np.errstate(over="ignore"):
        return np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))))


def _scale(q: np.ndarray):
    """c = max(max q, |min q|) over the whole (N, G) matrix, and its subgradient dc/dq (spec 14.5).

    Python's ``max(a, b)`` returns ``a`` on a tie, so the tie max q = |min q| takes the max branch; a reduction's
    gradient splits evenly over tied extreme entries (torch, JAX and TensorFlow all do so); d|x|/dx = sign(x).
    """
    mx, mn = q.max(), q.min()
    dc = np.zeros_like(q)
    if mx >= abs(mn):
        hit = q == mx
        dc[hit] = 1.0 / hit.sum()
        return np.float64(mx), dc
    hit = q == mn
    dc[hit] = np.sign(mn) / hit.sum()
    return np.float64(abs(mn)), dc


def _terms(S, pos, beta, tau, convention, want_grad, absolute=False):
    """Per-node terms l_n and, if wanted, d l_n / d S (per row) and d l_n / d c (per row) with dc/dS.

    ``absolute=True`` returns instead the magnitudes of the gradients' constituent terms (every difference
    replaced by the sum of its operands' magnitudes): the scale of their rounding errors, for conformance.

    Returns ``loss (N,)``, ``dS (N, G)`` (row n = d l_n / d S[n, :]), ``dl_dc (N,)`` and ``dc_dS (N, G)``.
    """
    N, G = S.shape
    M = G - 1
    rows = np.arange(N)
    a = S[rows, pos]
    neg = np.ones((N, G), dtype=bool)
    neg[rows, pos] = False
    q = np.where(neg, S, 0.0)  # the released S o Q: masked slots are zeros
    dS = np.zeros((N, G))
    dl_dc = np.zeros(N)
    dc_dS = np.zeros((N, G))
    if convention == "released":
        r = tau / (1.0 - tau)
        # E_pos's row n: log2 - sp(-a) - r sp(a) at the positive slot, and -r log2 at each of the M masked slots
        pos_row = LOG2 - _sp(-a) - r * _sp(a) - M * r * LOG2
        da = -(_sig(-a) - r * _sig(a)) if not absolute else _sig(-a) + r * _sig(a)
        if beta == 0.0:
            # (sp(q) - log2) / (1 - tau): a masked slot contributes sp(0) - log2 = 0
            neg_row = np.sum(np.where(neg, _sp(q) - LOG2, 0.0), axis=1) / (M * (1.0 - tau))
            dq = np.where(neg, _sig(q), 0.0) / (M * (1.0 - tau))
        else:
            c, dc = _scale(q)
            with np.errstate(divide="ignore", invalid="ignore"):
                z = -2.0 * beta * q / c  # c = 0: NaN, as in the released code
                m = z.max(axis=1, keepdims=True)
                e = np.exp(z - m)
                pi = e / e.sum(axis=1, keepdims=True)  # softmax over all G columns, masked slot included
                w = G * pi  # u / rowmean(u)
                f = _sp(q)  # masked slot: sp(0) = log2, stays in the sum
                fbar = np.sum(pi * f, axis=1, keepdims=True)
                neg_row = (np.sum(w * f, axis=1) / (1.0 - tau) - G * LOG2) / M
                k = 1.0 / (M * (1.0 - tau))
                if absolute:
                    dq = k * w * (_sig(q) + (2.0 * beta / c) * (f + fbar))
                    dl_dc = k * np.sum(w * (f + fbar) * (2.0 * beta * np.abs(q) / c**2), axis=1)
                else:
                    dq = k * w * (_sig(q) - (2.0 * beta / c) * (f - fbar))
                    dl_dc = k * np.sum(w * (f - fbar) * (2.0 * beta * q / c**2), axis=1)
            dc_dS = np.where(neg, np.abs(dc) if absolute else dc, 0.0)
        loss = neg_row - pos_row
    else:
        c, dc = _scale(q)
        if beta == 0.0 or c == 0.0:  # c = 0: every negative score is 0, uniform weights (spec 14.5)
            zeta = np.zeros((N, G))
            kz = 0.0
        else:
            zeta = 2.0 * beta * q / c
            kz = 2.0 * beta / c
        zm = np.where(neg, zeta, -np.inf)
        m = zm.max(axis=1, keepdims=True)
        e = np.where(neg, np.exp(zm - m), 0.0)
        pi = e / e.sum(axis=1, keepdims=True)  # softmax over the node's M negatives: w = M pi
        f = np.where(neg, _sp(q), 0.0)
        fbar = np.sum(pi * f, axis=1, keepdims=True)
        est = (fbar[:, 0] - tau * _sp(a)) / (1.0 - tau)  # debiased estimate of E_{q-}[sp(s)]
        floor = est < 0.0  # the tie takes the unfloored branch
        loss = np.where(floor, 0.0, est) + _sp(-a) - 2.0 * LOG2
        on = (~floor).astype(np.float64)
        da = -_sig(-a) - on * tau * _sig(a) / (1.0 - tau)
        if absolute:
            da = -da
            dq = on[:, None] * pi * (_sig(q) + kz * (f + fbar)) / (1.0 - tau)
        else:
            dq = on[:, None] * pi * (_sig(q) + kz * (f - fbar)) / (1.0 - tau)
        if kz != 0.0:
            if absolute:
                dl_dc = on * np.sum(pi * (f + fbar) * (kz * np.abs(q) / c), axis=1) / (1.0 - tau)
            else:
                dl_dc = on * np.sum(pi * (f - fbar) * (-kz * q / c), axis=1) / (1.0 - tau)
            dc_dS = np.where(neg, np.abs(dc) if absolute else dc, 0.0)
    dS = np.where(neg, dq, 0.0)
    dS[rows, pos] = da
    return loss, dS, dl_dc, dc_dS


def _prepare(local, graph, batch, hp) -> tuple:
    lo, gr, b = np.asarray(local), np.asarray(graph), np.asarray(batch)
    problem = check_jsd_call(
        local_shape=lo.shape, graph_shape=gr.shape, batch_shape=b.shape, local_dtype=lo.dtype.name,
        graph_dtype=gr.dtype.name, batch_dtype=b.dtype.name, **hp,
    )
    check_jsd_batch_values(b.min(), b.max(), problem.graphs)
    return problem, np.asarray(lo, dtype=np.float64), np.asarray(gr, dtype=np.float64), b.astype(np.int64)


def _run(local, graph, batch, hp: dict, want_grad: bool, cot: Any = None):
    problem: JsdProblem
    problem, lo, gr, b = _prepare(local, graph, batch, hp)
    N = problem.nodes
    red = hp["reduction"]
    if want_grad and cot is not None:
        want = (N,) if red == "none" else ()
        if np.shape(cot) != want:
            raise ValueError(f"cotangent must have shape {want} for reduction={red!r}; got {np.shape(cot)}")
    if not (np.isfinite(lo).all() and np.isfinite(gr).all()):  # spec 14.6: every output element is NaN
        value = np.full(N, np.nan) if red == "none" else np.float64(np.nan)
        return value, (JsdGrads(np.full(lo.shape, np.nan), np.full(gr.shape, np.nan)) if want_grad else None)
    S = lo @ gr.T
    loss, dS, dl_dc, dc_dS = _terms(S, b, float(hp["beta"]), float(hp["tau_plus"]), hp["convention"], want_grad)
    value = loss.mean() if red == "mean" else (loss.sum() if red == "sum" else loss)
    if not want_grad:
        return value, None
    if red == "none":
        cv = np.ones(N) if cot is None else np.asarray(cot, dtype=np.float64).reshape(N)
    else:
        c0 = 1.0 if cot is None else float(np.asarray(cot, dtype=np.float64))
        cv = np.full(N, c0 / N if red == "mean" else c0)
    with np.errstate(invalid="ignore"):
        gS = cv[:, None] * dS + np.sum(cv * dl_dc) * dc_dS
    if np.isnan(loss).any():  # an undefined term (released, c = 0) makes every gradient undefined
        gS = np.full_like(gS, np.nan)
    return value, JsdGrads(gS @ gr, gS.T @ lo)


def jsd_loss(local, graph, batch, *, beta: float = 1.0, tau_plus: float = 0.5, convention: str = "released",
             reduction: str = "mean"):
    r"""InfoGraph's local-global Jensen-Shannon objective with hard negatives (Robinson et al., ICLR 2021, graphs).

    Node embeddings ``local`` (N, d), graph embeddings ``graph`` (G, d) and the PyTorch Geometric batch vector
    ``batch`` (N,) (node n belongs to graph ``batch[n]``). Scores are raw dot products
    :math:`s_{nk} = l_n\cdot g_k`; node n's positive score is :math:`a_n = s_{n,b_n}` and its negatives are the
    M = G - 1 other graphs. With :math:`\mathrm{sp}` the softplus:

    ``convention="corrected"`` (the paper's construction applied to the estimator):

    .. math::

        w_{nj} = \frac{e^{2\beta s_{nj}/c}}{\frac1M\sum_{k\ne b_n} e^{2\beta s_{nk}/c}},\quad
        \hat E_n = \frac{\frac1M\sum_{j\ne b_n} w_{nj}\,\mathrm{sp}(s_{nj}) - \tau^+\mathrm{sp}(a_n)}{1-\tau^+},\quad
        \ell_n = \max(\hat E_n, 0) + \mathrm{sp}(-a_n) - 2\log 2,

    with :math:`c = \max_{n, j\ne b_n} |s_{nj}|`. ``convention="released"`` reproduces the released arithmetic
    exactly, including its departures from the paper (weights :math:`e^{-2\beta q/c}` that favour *easy*
    negatives, masked slots inside every sum, the positive-side term with the opposite sign); docs/spec.md
    section 14 writes both out, with the table of departures. At ``beta=0, tau_plus=0`` both conventions equal
    InfoGraph's JSD loss. The loss is :math:`\frac1N\sum_n \ell_n` (``"mean"``).

    Parameters
    ----------
    local : array_like, shape (N, d), floating
        Node (patch) embeddings.
    graph : array_like, shape (G, d), floating
        Graph (summary) embeddings, G >= 2, same dtype as ``local``.
    batch : array_like, shape (N,), integer
        Graph index of each node, values in [0, G).
    beta : float, default 1.0
        Hardness, finite and >= 0. The released experiments loop over 0, 1, 2, 10 (``local_global_loss_``'s
        own default, 0, is the non-hard objective); the default is the loop's first hard value.
    tau_plus : float, default 0.5
        Class prior, 0 <= tau_plus < 1 (the released code never passes it: its default 0.5 is always used).
    convention : {"released", "corrected"}, default "released"
    reduction : {"mean", "sum", "none"}, default "mean"
        ``"none"`` returns the N per-node terms, whose mean is the ``"mean"`` value.

    Returns
    -------
    numpy.float64 or numpy.ndarray
        The loss (float64), shape () or (N,).

    Raises
    ------
    TypeError, ValueError
        For bad input, with the messages of docs/spec.md section 14.7.

    Examples
    --------
    >>> import numpy as np, hardneg
    >>> local = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> graph = np.array([[1.0, 0.5], [-0.5, 1.0]])
    >>> batch = np.array([0, 1, 1])  # node 0 in graph 0, nodes 1 and 2 in graph 1
    >>> round(float(hardneg.jsd_loss(local, graph, batch)), 6)  # the released code's defaults
    3.047681
    >>> round(float(hardneg.jsd_loss(local, graph, batch, convention="corrected", tau_plus=0.1)), 6)
    0.013723

    References
    ----------
    Robinson, Chuang, Sra, Jegelka, *Contrastive Learning with Hard Negative Samples*, ICLR 2021
    (arXiv:2010.04592); released code: github.com/joshr17/HCL, ``graph/``. Sun, Hoffman, Verma, Tang, *InfoGraph*,
    ICLR 2020; code: github.com/sunfanyunn/InfoGraph.

    New in hardneg 0.2.0 (spec 1.1).
    """
    hp = dict(beta=beta, tau_plus=tau_plus, convention=convention, reduction=reduction)
    return _run(local, graph, batch, hp, want_grad=False)[0]


def jsd_loss_and_grad(local, graph, batch, *, beta: float = 1.0, tau_plus: float = 0.5,
                      convention: str = "released", reduction: str = "mean", cotangent=1.0):
    """:func:`jsd_loss` and its gradients in closed form (docs/spec.md section 14.5).

    Parameters
    ----------
    cotangent : float or array_like of shape (N,), default 1.0
        The vector of the vector-Jacobian product: a scalar for ``"mean"``/``"sum"``, one entry per node for
        ``"none"`` (``None`` means ones).

    Returns
    -------
    value : numpy.float64 or numpy.ndarray
    grads : JsdGrads
        ``grads.local`` (N, d) and ``grads.graph`` (G, d), float64.
    """
    hp = dict(beta=beta, tau_plus=tau_plus, convention=convention, reduction=reduction)
    if reduction == "none" and np.ndim(cotangent) == 0 and cotangent is not None:
        cotangent = np.full(np.shape(local)[0] if np.ndim(local) == 2 else 0, float(cotangent))
    return _run(local, graph, batch, hp, want_grad=True, cot=cotangent)


def _diagnostics(local, graph, batch, *, beta: float, tau_plus: float, convention: str) -> dict:
    """Distances to the non-differentiable points of spec 14.5, for conformance (float64, finite inputs).

    ``c_gap``: c minus the largest |negative score| below c (inf if none): within rounding of 0, an
    implementation may pick another entry as the maximum. ``floor_margin`` (corrected): |E_n| per node, the
    distance of the debiased estimate to its floor 0 (inf for the released convention).
    """
    lo, gr = np.asarray(local, dtype=np.float64), np.asarray(graph, dtype=np.float64)
    b = np.asarray(batch).astype(np.int64)
    S = lo @ gr.T
    N, G = S.shape
    neg = np.ones((N, G), dtype=bool)
    neg[np.arange(N), b] = False
    aq = np.abs(S[neg])
    c = aq.max() if aq.size else 0.0
    below = aq[aq < c]
    c_gap = float(c - below.max()) if below.size else math.inf
    if convention != "corrected":
        return {"c": float(c), "c_gap": c_gap, "floor_margin": np.full(N, math.inf)}
    a = S[np.arange(N), b]
    zeta = np.zeros((N, G)) if (beta == 0.0 or c == 0.0) else 2.0 * beta * S / c
    zm = np.where(neg, zeta, -np.inf)
    e = np.where(neg, np.exp(zm - zm.max(axis=1, keepdims=True)), 0.0)
    pi = e / e.sum(axis=1, keepdims=True)
    fbar = np.sum(pi * np.where(neg, _sp(S), 0.0), axis=1)
    est = (fbar - tau_plus * _sp(a)) / (1.0 - tau_plus)
    return {"c": float(c), "c_gap": c_gap, "floor_margin": np.abs(est)}


def _gradient_magnitudes(local, graph, batch, hp: dict, cot: Any = 1.0) -> JsdGrads:
    """Magnitudes of the terms that the gradients sum (before cancellation), float64 finite inputs only.

    u times these (times the length of the sums) bounds the rounding of any evaluation order: conformance's
    tolerances use them (conformance/jsd_suite.py).
    """
    lo, gr = np.abs(np.asarray(local, dtype=np.float64)), np.abs(np.asarray(graph, dtype=np.float64))
    b = np.asarray(batch).astype(np.int64)
    S = np.asarray(local, dtype=np.float64) @ np.asarray(graph, dtype=np.float64).T
    _, dS, dl_dc, dc_dS = _terms(S, b, float(hp["beta"]), float(hp["tau_plus"]), hp["convention"], True,
                                 absolute=True)
    N = S.shape[0]
    red = hp["reduction"]
    if red == "none":
        cv = np.abs(np.broadcast_to(np.asarray(cot, dtype=np.float64), (N,)))
    else:
        cv = np.full(N, abs(float(np.asarray(cot, dtype=np.float64))) / (N if red == "mean" else 1))
    with np.errstate(invalid="ignore"):
        gS = cv[:, None] * np.abs(dS) + np.sum(cv * np.abs(dl_dc)) * np.abs(dc_dS)
    return JsdGrads(gS @ gr, gS.T @ lo)
