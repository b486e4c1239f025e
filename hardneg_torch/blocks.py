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

Kernels: :func:`in_batch` (anchors are rows of U = [z1; z2]), :func:`shared_bank` and :func:`per_anchor_bank`
(anchors z1 against a bank), and :func:`cross` (one direction of the cross layout: anchors against another
side's rows plus an optional bank; the symmetric layout calls it twice with the roles swapped). Each takes
the temperature ``t`` as a float or a 0-d tensor and can return the clamp floor's share of d loss / d t.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch

from .rows import Hyper, resolvable_beta, row_terms

__all__ = ["DEFAULT_MEMORY_BUDGET", "device_default_budget", "block_rows", "in_batch", "cross", "shared_bank",
           "per_anchor_bank"]

#: Default bytes of transient working memory: large enough that the products run at full speed and the
#: number of blocks stays small, small enough to stay cache-friendly (measured: docs/backends/torch.md).
DEFAULT_MEMORY_BUDGET = 32 * 2**20


def device_default_budget(device: torch.device) -> Optional[int]:
    """The ``memory_budget=None`` default on ``device``: None (i.e. :data:`DEFAULT_MEMORY_BUDGET`, CPU behaviour
    unchanged) except on CUDA, where :func:`hardneg.budget.default_memory_budget` gives min(2 GiB, total device
    memory / 16) so that a step at large B is not thousands of blocks of kernel launches."""
    if device.type != "cuda":
        return None
    from hardneg.budget import default_memory_budget

    total = torch.cuda.get_device_properties(device).total_memory
    return default_memory_budget("cuda", DEFAULT_MEMORY_BUDGET, int(total))


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
           coef: Coef, t=None, want_floor: bool = False):
    """Row statistics, loss and (if ``coef`` is not None) the block's dloss/dS, for logits ``S`` (b, C).

    ``S`` holds the logits with non-negatives at ``-inf``; it is overwritten. Returns the loss (b,),
    ``coef * dloss/da / t`` (b,), the block of ``coef * dloss/dS / t`` (a view of ``S`` or ``T``) and, with
    ``want_floor``, the 0-d sum of ``coef * dloss/dlf`` over the block's rows (the clamp floor's share of
    d loss / d t, divided by t^2 by the caller), else None. ``t`` is the temperature (default
    ``hp.temperature``), a float or a 0-d tensor.
    """
    beta = resolvable_beta(hp.beta, S.dtype)
    t = hp.temperature if t is None else t
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
    loss, da, rho, dlf = row_terms(m, s1, s0, count, a, hp, t, want_floor)
    if coef is None:
        return loss, None, None, None
    fl = (dlf * coef).sum() if want_floor else None
    cr = rho * (coef / t)
    qa = da * (coef / t)
    one = torch.ones((), dtype=S.dtype, device=S.device)
    if math.isinf(beta):  # w = 1/k on the k maxima (S == 0 after the shift); rows without negatives have none
        torch.where(S == 0.0, one, torch.zeros((), dtype=S.dtype, device=S.device), out=T)
        k = T.sum(dim=1).clamp_min(1.0)
        return loss, qa, T.mul_((cr / k)[:, None]), fl
    if beta == 0.0:
        return loss, qa, S.mul_((cr / torch.where(has, s1, one))[:, None]), fl
    alpha = cr * (1.0 + beta) / torch.where(has, s1, one)
    gamma = cr * beta / torch.where(has, s0, one)
    if beta == 1.0:  # G = e0 (alpha e0 - gamma): two passes
        torch.addcmul(-gamma[:, None], S, alpha[:, None], out=T)
        return loss, qa, T.mul_(S), fl
    T.mul_(alpha[:, None]).addcmul_(S, -gamma[:, None])
    return loss, qa, T, fl


def _buffers(b: int, c: int, like: torch.Tensor, hp: Hyper, want_grad: bool):
    S = torch.empty((b, c), dtype=like.dtype, device=like.device)
    need_t = (not math.isinf(hp.beta) and hp.beta != 0.0) or (math.isinf(hp.beta) and want_grad)
    T = torch.empty((b, c), dtype=like.dtype, device=like.device) if need_t else None
    return S, T


def _floor_total(acc):
    """Sum of the blocks' floor terms (0-d), or None when they were not asked for."""
    if not acc:
        return None
    out = acc[0]
    for x in acc[1:]:
        out = out + x
    return out


def in_batch(U: torch.Tensor, labels: Optional[torch.Tensor], anchors: Sequence[Tuple[int, int]], hp: Hyper,
             coef: Coef, rows_per_block: int, t=None, want_floor: bool = False):
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
    t : float or 0-d tensor, optional
        The temperature (default ``hp.temperature``).
    want_floor : bool
        Also return the floor's share of d loss / d t (times t^2), see :func:`_block`.

    Returns
    -------
    loss : (A,) tensor, A the number of anchor rows.
    grad : (n, d) tensor ``dL/dU`` (contributions of these anchors only), or None.
    floor : 0-d tensor ``sum_i coef_i dloss_i/dlf_i`` (``want_floor`` and ``coef`` given), else None.
    """
    n, _ = U.shape
    half = n // 2
    want_grad = coef is not None
    t = hp.temperature if t is None else t
    Ut = U * (1.0 / t)
    S_buf, T_buf = _buffers(rows_per_block, n, U, hp, want_grad)
    gU = torch.zeros_like(U) if want_grad else None
    q_pos = U.new_zeros((n,)) if want_grad else None  # coef * dloss/da / t of each anchor row
    losses, floors = [], []
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
        loss, qa, G, fl = _block(S, T, count, a, hp, _coef_slice(coef, i0, i0 + b), t, want_floor)
        losses.append(loss)
        if want_grad:
            gU[r0:r1].addmm_(G, U)
            gU.addmm_(G.t(), U[r0:r1])
            q_pos[r0:r1] = qa
            if fl is not None:
                floors.append(fl)
        i0 += b
    if want_grad:  # the positive logits a_i = U_i . U_p(i) / t, once for all blocks (p is a shift by half)
        gU.addcmul_(torch.roll(U, half, dims=0), q_pos[:, None])
        gU.add_(torch.roll(U * q_pos[:, None], half, dims=0))
    loss = torch.cat(losses) if losses else U.new_zeros((0,))
    return loss, gU, _floor_total(floors)


def _blocks_within_halves(anchors: Sequence[Tuple[int, int]], half: int, rows: int):
    """(start, stop) of each row block: ``rows`` rows at most, never across the boundary between the halves."""
    for start, stop in anchors:
        for lo, hi in ((start, min(stop, half)), (max(start, half), stop)):
            for r0 in range(lo, hi, rows):
                yield r0, min(hi, r0 + rows)


def flat_buffers(n_elements: int, like: torch.Tensor, hp: Hyper, want_grad: bool):
    """Flat block buffers of ``n_elements`` each (the second only where :func:`_block` needs it), to be shared
    by calls of :func:`cross` (the two directions of the symmetric cross layout use the same memory)."""
    S, T = _buffers(1, n_elements, like, hp, want_grad)
    return S[0], (None if T is None else T[0])


def cross(ua: torch.Tensor, uc: torch.Tensor, V: Optional[torch.Tensor], bank: str,
          anchor_labels: Optional[torch.Tensor], candidate_labels: Optional[torch.Tensor],
          negative_labels: Optional[torch.Tensor], hp: Hyper, coef: Coef, rows_per_block: int, *,
          offset: int = 0, t=None, want_floor: bool = False, buffers=None, out=None):
    """Cross layout, one direction: anchors ``ua`` (b_a, d) against candidates ``uc`` (N, d) [+ a bank].

    Anchor i's positive is ``uc[offset + i]`` (``offset`` > 0 when the anchors are one rank's rows of a
    gathered batch); its negatives are the other rows of ``uc`` and, with ``bank="shared"``, every row of
    ``V`` (K, d), with ``bank="per_anchor"`` its own rows ``V[i]`` (``V`` of shape (b_a, K, d)). Labels remove
    candidates ``uc[j]`` with ``candidate_labels[j] == anchor_labels[i]`` and bank rows with
    ``negative_labels == anchor_labels[i]``. A block holds the logits of ``b`` anchors against all N + K
    candidates, so memory is ``O(b (N + K))`` with ``b`` from the budget, never (b_a x N) at once.

    Returns
    -------
    loss : (b_a,) tensor.
    grads : ``(dL/dua, dL/duc, dL/dV)`` (``dL/dV`` None without a bank), or None without ``coef``.
    floor : as :func:`in_batch`.

    ``buffers`` (from :func:`flat_buffers`, at least ``rows_per_block * (N + K)`` elements each) are used
    instead of allocating new ones; ``out = (ga, gc)`` (without a bank) accumulates the gradients into these
    tensors (of the shapes of ``ua`` and ``uc``) instead of new ones.
    """
    nA, _ = ua.shape
    N = uc.shape[0]
    K = 0 if V is None else V.shape[-2]
    C = N + K
    want_grad = coef is not None
    t = hp.temperature if t is None else t
    inv_t = 1.0 / t
    shared = bank == "shared"
    per_anchor = bank == "per_anchor"
    cand = torch.cat([uc, V]) if shared else uc  # (C, d) shared; (N, d) otherwise
    S_flat, T_flat = buffers if buffers is not None else flat_buffers(rows_per_block * C, ua, hp, want_grad)
    if want_grad:
        ga, gc = out if out is not None else (torch.zeros_like(ua), torch.zeros_like(cand))
        gV = torch.empty_like(V) if per_anchor else None
    losses, floors = [], []
    neg_inf = -math.inf
    labelled = anchor_labels is not None
    for r0 in range(0, nA, rows_per_block):
        r1 = min(nA, r0 + rows_per_block)
        b = r1 - r0
        S = S_flat[:b * C].view(b, C)
        T = None if T_flat is None else T_flat[:b * C].view(b, C)
        ua_t = ua[r0:r1] * inv_t  # (b, d): the block's anchors scaled, rather than a scaled copy of every candidate
        if per_anchor:
            torch.mm(ua_t, cand.t(), out=S[:, :N])
            torch.bmm(V[r0:r1], ua_t[:, :, None], out=S[:, N:, None])
        else:
            torch.mm(ua_t, cand.t(), out=S)
        p0 = offset + r0
        a = S[:, p0:p0 + b].diagonal().clone()
        if not labelled:
            S[:, p0:p0 + b].diagonal().fill_(neg_inf)
            count = torch.full((b,), C - 1, dtype=torch.int64, device=ua.device)
        else:
            same = anchor_labels[r0:r1, None] == candidate_labels[None, :]  # includes the positive
            S[:, :N].masked_fill_(same, neg_inf)
            count = C - same.sum(dim=1)
            if K:
                nl = negative_labels[None, :] if shared else negative_labels[r0:r1]
                same_b = anchor_labels[r0:r1, None] == nl
                S[:, N:].masked_fill_(same_b, neg_inf)
                count = count - same_b.sum(dim=1)
        loss, qa, G, fl = _block(S, T, count, a, hp, _coef_slice(coef, r0, r1), t, want_floor)
        losses.append(loss)
        if want_grad:
            if per_anchor:
                ga[r0:r1].addmm_(G[:, :N], cand)
                ga[r0:r1] += torch.bmm(G[:, None, N:], V[r0:r1]).squeeze(1)
                gc.addmm_(G[:, :N].t(), ua[r0:r1])
                torch.mul(G[:, N:, None], ua[r0:r1, None, :], out=gV[r0:r1])
            else:
                ga[r0:r1].addmm_(G, cand)
                gc.addmm_(G.t(), ua[r0:r1])
            ga[r0:r1].addcmul_(uc[p0:p0 + b], qa[:, None])
            gc[p0:p0 + b].addcmul_(ua[r0:r1], qa[:, None])
            if fl is not None:
                floors.append(fl)
    loss = torch.cat(losses) if losses else ua.new_zeros((0,))
    if not want_grad:
        return loss, None, None
    if shared:
        gc, gV = gc[:N], gc[N:]
    return loss, (ga, gc, gV), _floor_total(floors)


def shared_bank(u1: torch.Tensor, u2: torch.Tensor, V: torch.Tensor, labels: Optional[torch.Tensor],
                negative_labels: Optional[torch.Tensor], hp: Hyper, coef: Coef, rows_per_block: int, t=None,
                want_floor: bool = False):
    """Shared bank: anchors are the rows of ``u1`` (B, d), positives ``u2``, negatives the rows of ``V`` (K, d).

    Returns the loss (B,), ``(dL/du1, dL/du2, dL/dV)`` when ``coef`` is given (else None) and the floor term
    (see :func:`in_batch`).
    """
    B, _ = u1.shape
    K = V.shape[0]
    want_grad = coef is not None
    t = hp.temperature if t is None else t
    Vt = V * (1.0 / t)
    a_all = (u1 * u2).sum(dim=1) / t
    S_buf, T_buf = _buffers(rows_per_block, K, u1, hp, want_grad)
    if want_grad:
        g1, g2, gV = torch.zeros_like(u1), torch.zeros_like(u2), torch.zeros_like(V)
    losses, floors = [], []
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
        loss, qa, G, fl = _block(S, T, count, a_all[r0:r1], hp, _coef_slice(coef, r0, r1), t, want_floor)
        losses.append(loss)
        if want_grad:
            g1[r0:r1].addmm_(G, V)
            gV.addmm_(G.t(), u1[r0:r1])
            g1[r0:r1].addcmul_(u2[r0:r1], qa[:, None])
            g2[r0:r1].addcmul_(u1[r0:r1], qa[:, None])
            if fl is not None:
                floors.append(fl)
    loss = torch.cat(losses) if losses else u1.new_zeros((0,))
    return (loss, (g1, g2, gV), _floor_total(floors)) if want_grad else (loss, None, None)


def per_anchor_bank(u1: torch.Tensor, u2: torch.Tensor, V: torch.Tensor, labels: Optional[torch.Tensor],
                    negative_labels: Optional[torch.Tensor], hp: Hyper, coef: Coef, rows_per_block: int, t=None,
                    want_floor: bool = False):
    """Per-anchor bank: anchor i's negatives are ``V[i]`` (``V`` of shape (B, K, d)).

    Returns the loss (B,), ``(dL/du1, dL/du2, dL/dV)`` when ``coef`` is given (else None) and the floor term
    (see :func:`in_batch`).
    """
    B, _ = u1.shape
    K = V.shape[1]
    want_grad = coef is not None
    t = hp.temperature if t is None else t
    u1t = u1 * (1.0 / t)
    a_all = (u1t * u2).sum(dim=1)
    S_buf, T_buf = _buffers(rows_per_block, K, u1, hp, want_grad)
    if want_grad:
        g1, g2, gV = torch.zeros_like(u1), torch.zeros_like(u2), torch.empty_like(V)
    losses, floors = [], []
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
        loss, qa, G, fl = _block(S, T, count, a_all[r0:r1], hp, _coef_slice(coef, r0, r1), t, want_floor)
        losses.append(loss)
        if want_grad:
            g1[r0:r1] = torch.bmm(G[:, None, :], V[r0:r1]).squeeze(1)
            torch.mul(G[:, :, None], u1[r0:r1, None, :], out=gV[r0:r1])
            g1[r0:r1].addcmul_(u2[r0:r1], qa[:, None])
            g2[r0:r1].addcmul_(u1[r0:r1], qa[:, None])
            if fl is not None:
                floors.append(fl)
    loss = torch.cat(losses) if losses else u1.new_zeros((0,))
    return (loss, (g1, g2, gV), _floor_total(floors)) if want_grad else (loss, None, None)
