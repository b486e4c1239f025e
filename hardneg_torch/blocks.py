r"""Blocked forward/backward kernels: the loss and its closed-form gradient, one block of anchor rows at a time.

A block holds the logits of ``b`` anchors against *all* their candidates, so every row's maximum and sums
are exact within the block (no rescaling across blocks is needed), and the working memory is two
``(b, C)`` buffers in the compute dtype — ``b`` comes from the memory budget, so memory is linear in the
batch. Per block (docs/spec.md, sections 5 and 8):

1. ``S = U_I (U / t)^T`` into a preallocated buffer; non-negatives are set to ``-inf``;
2. ``m = max_j S_ij``; ``S -= m``; ``e0 = exp(beta S)``, ``e1 = exp((1+beta) S)`` (one ``exp`` when
   beta is 0 or 1: ``e1 = e0^2`` at beta = 1), ``S1, S0`` their row sums;
3. the row terms (:func:`hardneg_torch.rows.row_terms`) give the loss, ``rho`` and ``dloss/da``;
4. with a gradient wanted, ``G_I = c rho (alpha e1 - gamma e0) / t`` overwrites a buffer and two products
   accumulate ``dL/dU[I] += G_I U`` and ``dL/dU += G_I^T U_I`` (``(G + G^T) U / t`` block by block).

So the forward with gradient costs exactly the three (n x d)(d x n)-class products of the loss; the
elementwise work is a handful of in-place passes over a block of bounded size. The positive logits'
terms are added once for all blocks at the end.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch

from .rows import Hyper, row_terms

__all__ = ["DEFAULT_MEMORY_BUDGET", "block_rows", "in_batch", "shared_bank", "per_anchor_bank"]

#: Default bytes of transient working memory: large enough that the products run at full speed and the
#: number of blocks stays small, small enough to stay cache-friendly (measured: docs/backends/torch.md).
DEFAULT_MEMORY_BUDGET = 32 * 2**20

Coef = Union[None, float, torch.Tensor]


def _needs_second_buffer(beta: float) -> bool:
    return beta != 0.0


def block_rows(memory_budget: Optional[int], n_rows: int, n_cols: int, itemsize: int, hp: Hyper,
               labelled: bool) -> int:
    """Rows per block so that the block's buffers fit in ``memory_budget`` bytes (at least 1)."""
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else int(memory_budget)
    per_row = n_cols * (itemsize * (1 + _needs_second_buffer(hp.beta)) + int(labelled) + int(math.isinf(hp.beta)))
    return max(1, min(n_rows, budget // max(per_row, 1)))


def _coef_slice(coef: Coef, i0: int, i1: int):
    return coef[i0:i1] if isinstance(coef, torch.Tensor) else coef


def _block(S: torch.Tensor, T: Optional[torch.Tensor], count: torch.Tensor, a: torch.Tensor, hp: Hyper,
           coef: Coef) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Row statistics, loss and (if ``coef`` is not None) the block's dloss/dS, for logits ``S`` (b, C).

    ``S`` holds the logits with non-negatives at ``-inf``; it is overwritten. Returns the loss (b,),
    ``coef * dloss/da / t`` (b,) and the block of ``coef * dloss/dS / t`` (a view of ``S`` or ``T``).
    """
    beta, t = hp.beta, hp.temperature
    has = count > 0
    zero = torch.zeros((), dtype=S.dtype, device=S.device)
    m = torch.where(has, S.amax(dim=1), zero)
    S.sub_(m[:, None])  # -inf stays -inf: masked entries contribute exp(-inf) = 0 below
    s1 = s0 = None
    if math.isinf(beta):
        pass  # lr = log M + m needs no sums; the maxima are found below if the gradient is wanted
    elif beta == 0.0:
        S.exp_()
        s1, s0 = S.sum(dim=1), count
    elif beta == 1.0:
        S.exp_()  # e0; e1 = e0^2, saving the second exp
        s0 = S.sum(dim=1)
        torch.mul(S, S, out=T)
        s1 = T.sum(dim=1)
    else:
        torch.mul(S, 1.0 + beta, out=T).exp_()
        S.mul_(beta).exp_()
        s1, s0 = T.sum(dim=1), S.sum(dim=1)
    loss, da, rho = row_terms(m, s1, s0, count, a, hp)
    if coef is None:
        return loss, None, None
    cr = rho * (coef / t)
    qa = da * (coef / t)
    one = torch.ones((), dtype=S.dtype, device=S.device)
    if math.isinf(beta):  # w = 1/k on the k maxima (S == 0 after the shift); rows without negatives have none
        torch.where(S == 0.0, one, torch.zeros((), dtype=S.dtype, device=S.device), out=T)
        k = T.sum(dim=1).clamp_min(1.0)
        return loss, qa, T.mul_((cr / k)[:, None])
    if beta == 0.0:
        return loss, qa, S.mul_((cr / torch.where(has, s1, one))[:, None])
    alpha = cr * (1.0 + beta) / torch.where(has, s1, one)
    gamma = cr * beta / torch.where(has, s0, one)
    if beta == 1.0:  # G = e0 (alpha e0 - gamma): two passes
        torch.addcmul(-gamma[:, None], S, alpha[:, None], out=T)
        return loss, qa, T.mul_(S)
    T.mul_(alpha[:, None]).addcmul_(S, -gamma[:, None])
    return loss, qa, T


def _buffers(b: int, c: int, like: torch.Tensor, hp: Hyper, want_grad: bool):
    S = torch.empty((b, c), dtype=like.dtype, device=like.device)
    need_t = (not math.isinf(hp.beta) and hp.beta != 0.0) or (math.isinf(hp.beta) and want_grad)
    T = torch.empty((b, c), dtype=like.dtype, device=like.device) if need_t else None
    return S, T


def in_batch(U: torch.Tensor, labels: Optional[torch.Tensor], anchors: Sequence[Tuple[int, int]], hp: Hyper,
             coef: Coef, rows_per_block: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """In-batch layout: anchors are rows of ``U`` (n = 2N rows, partner p(i) = (i + N) mod n).

    Parameters
    ----------
    U : (n, d) tensor, the (normalised) rows [u(z1); u(z2)] of the whole (possibly gathered) batch.
    labels : (n,) integer tensor or None, the label of each row of ``U``.
    anchors : sequence of (start, stop)
        Row ranges of ``U`` that are anchors here (``[(0, n)]`` in one process; this rank's rows under gather).
        The output is ordered by these ranges.
    hp : Hyper
    coef : None, float or (A,) tensor
        Cotangent of each anchor's loss (reduction scale included); None computes the loss only.
    rows_per_block : int

    Returns
    -------
    loss : (A,) tensor, A the number of anchor rows.
    grad : (n, d) tensor ``dL/dU`` (contributions of these anchors only), or None.
    """
    n, _ = U.shape
    half = n // 2
    want_grad = coef is not None
    Ut = U * (1.0 / hp.temperature)
    S_buf, T_buf = _buffers(rows_per_block, n, U, hp, want_grad)
    gU = torch.zeros_like(U) if want_grad else None
    q_pos = U.new_zeros((n,)) if want_grad else None  # coef * dloss/da / t of each anchor row
    losses = []
    neg_inf = -math.inf
    i0 = 0  # position of the block in the anchor order
    for r0, r1 in _blocks_within_halves(anchors, half, rows_per_block):
        b = r1 - r0
        p0 = (r0 + half) % n  # a block never straddles the halves, so its partners are rows p0 .. p0 + b
        S = torch.mm(U[r0:r1], Ut.t(), out=S_buf[:b])
        T = None if T_buf is None else T_buf[:b]
        a = S[:, p0:p0 + b].diagonal().clone()
        if labels is None:
            S[:, r0:r1].diagonal().fill_(neg_inf)
            S[:, p0:p0 + b].diagonal().fill_(neg_inf)
            count = torch.full((b,), n - 2, dtype=torch.int64, device=U.device)
        else:
            same = labels[r0:r1, None] == labels[None, :]  # includes the anchor and its partner
            count = n - same.sum(dim=1)
            S.masked_fill_(same, neg_inf)
        loss, qa, G = _block(S, T, count, a, hp, _coef_slice(coef, i0, i0 + b))
        losses.append(loss)
        if want_grad:
            gU[r0:r1].addmm_(G, U)
            gU.addmm_(G.t(), U[r0:r1])
            q_pos[r0:r1] = qa
        i0 += b
    if want_grad:  # the positive logits a_i = U_i . U_p(i) / t, once for all blocks (p is a shift by half)
        gU.addcmul_(torch.roll(U, half, dims=0), q_pos[:, None])
        gU.add_(torch.roll(U * q_pos[:, None], half, dims=0))
    loss = torch.cat(losses) if losses else U.new_zeros((0,))
    return loss, gU


def _blocks_within_halves(anchors: Sequence[Tuple[int, int]], half: int, rows: int):
    """(start, stop) of each row block: ``rows`` rows at most, never across the boundary between the halves."""
    for start, stop in anchors:
        for lo, hi in ((start, min(stop, half)), (max(start, half), stop)):
            for r0 in range(lo, hi, rows):
                yield r0, min(hi, r0 + rows)


def shared_bank(u1: torch.Tensor, u2: torch.Tensor, V: torch.Tensor, labels: Optional[torch.Tensor],
                negative_labels: Optional[torch.Tensor], hp: Hyper, coef: Coef, rows_per_block: int):
    """Shared bank: anchors are the rows of ``u1`` (B, d), positives ``u2``, negatives the rows of ``V`` (K, d).

    Returns the loss (B,) and, when ``coef`` is given, ``(dL/du1, dL/du2, dL/dV)``.
    """
    B, _ = u1.shape
    K = V.shape[0]
    want_grad = coef is not None
    t = hp.temperature
    Vt = V * (1.0 / t)
    a_all = (u1 * u2).sum(dim=1) / t
    S_buf, T_buf = _buffers(rows_per_block, K, u1, hp, want_grad)
    if want_grad:
        g1, g2, gV = torch.zeros_like(u1), torch.zeros_like(u2), torch.zeros_like(V)
    losses = []
    neg_inf = -math.inf
    for r0 in range(0, B, rows_per_block):
        r1 = min(B, r0 + rows_per_block)
        b = r1 - r0
        S = torch.mm(u1[r0:r1], Vt.t(), out=S_buf[:b])
        T = None if T_buf is None else T_buf[:b]
        if labels is None:
            count = torch.full((b,), K, dtype=torch.int64, device=u1.device)
        else:
            same = labels[r0:r1, None] == negative_labels[None, :]
            count = K - same.sum(dim=1)
            S.masked_fill_(same, neg_inf)
        loss, qa, G = _block(S, T, count, a_all[r0:r1], hp, _coef_slice(coef, r0, r1))
        losses.append(loss)
        if want_grad:
            g1[r0:r1].addmm_(G, V)
            gV.addmm_(G.t(), u1[r0:r1])
            g1[r0:r1].addcmul_(u2[r0:r1], qa[:, None])
            g2[r0:r1].addcmul_(u1[r0:r1], qa[:, None])
    loss = torch.cat(losses)
    return (loss, (g1, g2, gV)) if want_grad else (loss, None)


def per_anchor_bank(u1: torch.Tensor, u2: torch.Tensor, V: torch.Tensor, labels: Optional[torch.Tensor],
                    negative_labels: Optional[torch.Tensor], hp: Hyper, coef: Coef, rows_per_block: int):
    """Per-anchor bank: anchor i's negatives are ``V[i]`` (``V`` of shape (B, K, d)).

    Returns the loss (B,) and, when ``coef`` is given, ``(dL/du1, dL/du2, dL/dV)``.
    """
    B, _ = u1.shape
    K = V.shape[1]
    want_grad = coef is not None
    t = hp.temperature
    u1t = u1 * (1.0 / t)
    a_all = (u1t * u2).sum(dim=1)
    S_buf, T_buf = _buffers(rows_per_block, K, u1, hp, want_grad)
    if want_grad:
        g1, g2, gV = torch.zeros_like(u1), torch.zeros_like(u2), torch.empty_like(V)
    losses = []
    neg_inf = -math.inf
    for r0 in range(0, B, rows_per_block):
        r1 = min(B, r0 + rows_per_block)
        b = r1 - r0
        S = torch.bmm(V[r0:r1], u1t[r0:r1, :, None], out=S_buf[:b, :, None]).squeeze(2)
        T = None if T_buf is None else T_buf[:b]
        if labels is None:
            count = torch.full((b,), K, dtype=torch.int64, device=u1.device)
        else:
            same = labels[r0:r1, None] == negative_labels[r0:r1]
            count = K - same.sum(dim=1)
            S.masked_fill_(same, neg_inf)
        loss, qa, G = _block(S, T, count, a_all[r0:r1], hp, _coef_slice(coef, r0, r1))
        losses.append(loss)
        if want_grad:
            g1[r0:r1] = torch.bmm(G[:, None, :], V[r0:r1]).squeeze(1)
            torch.mul(G[:, :, None], u1[r0:r1, None, :], out=gV[r0:r1])
            g1[r0:r1].addcmul_(u2[r0:r1], qa[:, None])
            g2[r0:r1].addcmul_(u1[r0:r1], qa[:, None])
    loss = torch.cat(losses)
    return (loss, (g1, g2, gV)) if want_grad else (loss, None)
