"""One evaluation of the objective in the compute dtype: normalisation, the blocked kernel, the NaN rules,
the backward through the normalisation and d loss / d t. Used by the forward and (for ``reduction="none"``)
the backward of :class:`hardneg_torch.loss.HCLFunction`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from . import blocks, cross_tiles, symmetric
from .normalize import normalize_backward, normalize_rows
from .rows import Hyper

__all__ = ["Call", "compute_dtype", "evaluate", "n_anchors"]


@dataclass(frozen=True)
class Call:
    """Everything about a call that is not a tensor.

    ``layout`` is the resolved layout ("in_batch", "bank" or "cross"), ``bank`` the bank's kind ("none",
    "shared", "per_anchor"). ``anchors`` are the anchor row ranges: for "in_batch", ranges of U = [z1; z2] (all
    rows in one process, this rank's rows under gather); for "cross", one range of rows of z1 (and, with
    ``symmetric``, the same rows of z2); unused for "bank". ``scale`` multiplies the sum of the anchors' losses
    for "mean"/"sum" (1/A for "mean" in one process, see :mod:`hardneg_torch.distributed` under gather).
    ``temperature_grad``: the temperature is a tensor whose gradient is wanted (d loss / d t is computed).
    """

    hp: Hyper
    bank: str
    normalize: bool
    reduction: str
    scale: float
    anchors: Tuple[Tuple[int, int], ...]
    memory_budget: Optional[int]
    want_grad: bool
    layout: str = "in_batch"
    symmetric: bool = True
    temperature_grad: bool = False


def n_anchors(call: Call, n_rows: int) -> int:
    """Number of anchors (length of the per-anchor loss) of ``call`` for inputs of ``n_rows`` rows."""
    if call.layout == "bank":
        return n_rows
    if call.layout == "cross":
        lo, hi = call.anchors[0]
        return (hi - lo) * (2 if call.symmetric else 1)
    return sum(stop - start for start, stop in call.anchors)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16/bfloat16 compute in float32; float32 and float64 in themselves (spec section 7)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _all_finite(*xs: Optional[torch.Tensor]) -> torch.Tensor:
    flags = [torch.isfinite(x).all() for x in xs if x is not None]
    out = flags[0]
    for f in flags[1:]:
        out = out & f
    return out


def _split(coef, n: int):
    """The cotangents of the forward direction's anchors (first ``n``) and of the reverse direction's."""
    if isinstance(coef, torch.Tensor):
        return coef[:n], coef[n:]
    return coef, coef


def _dot(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return (x.reshape(-1) * g.reshape(-1)).sum()


def evaluate(z1, z2, negatives, labels, negative_labels, temperature, call: Call, coef):
    """Loss of each anchor and, when ``coef`` is not None, the gradients ``coef``-weighted.

    Parameters
    ----------
    z1, z2 : (N, d) tensors; negatives : (K, d), (N, K, d) or None (any float dtype; converted here).
        Under gather in the cross layout, z1 and z2 are the gathered batch and a per-anchor bank holds the
        rows of this rank's anchors only.
    labels : (N,) or None; negative_labels : (K,), (N, K) or None.
    temperature : 0-d tensor or None
        The temperature as a tensor (None: ``call.hp.temperature``, a float). A tensor that is <= 0 or not
        finite makes the loss and every gradient NaN (its value is never read on the host).
    call : Call
    coef : None, float or (A,) tensor — the cotangent of each anchor's loss (reduction scale included).

    Returns
    -------
    loss : (A,) tensor in the compute dtype, NaN everywhere if an input is not finite.
    grads : (g1, g2, gneg, gt) in the compute dtype (``gneg`` None without a bank, ``gt`` — d loss / d t —
        None unless ``call.temperature_grad``), or None when ``coef`` is None.
    """
    cdt = compute_dtype(z1.dtype)
    z1, z2 = z1.to(cdt), z2.to(cdt)
    negatives = None if negatives is None else negatives.to(cdt)
    finite = _all_finite(z1, z2, negatives)
    hp = call.hp
    if temperature is None:
        t = hp.temperature
    else:
        t = temperature.to(cdt)
        finite = finite & torch.isfinite(t) & (t > 0) & torch.isfinite(1.0 / t)
    want_floor = call.temperature_grad and coef is not None and hp.clamp
    nrm = normalize_rows if call.normalize else (lambda z: (z, None))
    itemsize = torch.empty((), dtype=cdt).element_size()
    labelled = labels is not None
    floor = None
    grads = None
    dots = None  # sum over the inputs of <u, dL/du>, for d loss / d t

    if call.layout == "in_batch":
        N = z1.shape[0]
        U, norm = nrm(torch.cat([z1, z2], dim=0))
        lab = None if labels is None else torch.cat([labels, labels])
        n_anchor_rows = sum(stop - start for start, stop in call.anchors)
        rows = blocks.block_rows(call.memory_budget, max(n_anchor_rows, 1), 2 * N, itemsize, hp, labelled)
        workers = symmetric.worker_count(U.device.type)
        tile = symmetric.tile_rows(call.memory_budget, itemsize, labelled, workers)
        if symmetric.choose(hp, t, call.anchors, 2 * N, call.normalize, tile, U.device.type, workers):  # spec §8
            # (a tensor temperature's value as a float: choose has checked it; d loss / d t from dots and floor)
            loss, gU, floor = symmetric.in_batch(U, lab, hp, coef, tile, symmetric.host_temperature(t), rows,
                                                 want_floor=want_floor)
        else:
            loss, gU, floor = blocks.in_batch(U, lab, call.anchors, hp, coef, rows, t, want_floor)
        if gU is not None:
            if call.temperature_grad:
                dots = _dot(U, gU)
            gz = gU if norm is None else normalize_backward(gU, U, norm)
            grads = (gz[:N], gz[N:], None)
    elif call.layout == "cross":
        N = z1.shape[0]
        lo, hi = call.anchors[0]
        u1, n1 = nrm(z1)
        u2, n2 = nrm(z2)
        V, nV = (None, None) if negatives is None else nrm(negatives)
        K = 0 if V is None else V.shape[-2]
        lab_a = None if labels is None else labels[lo:hi]
        c_fwd, c_rev = _split(coef, hi - lo)
        rows = blocks.block_rows(call.memory_budget, max(hi - lo, 1), N + K, itemsize, hp, labelled)
        workers = symmetric.worker_count(u1.device.type)  # 1 while torch.compile traces
        tile = symmetric.tile_rows(call.memory_budget, itemsize, labelled, workers)
        if cross_tiles.choose(hp, t, call.anchors, N, call.bank, call.symmetric, call.normalize, tile,
                              u1.device.type):  # shared tiles: one product of u1 u2^T per pass (spec section 8)
            loss, g, floor = cross_tiles.cross(u1, u2, labels, hp, coef, tile, symmetric.host_temperature(t), rows,
                                               workers, want_floor=want_floor)
            if g is not None:
                gu1, gu2 = g
                if call.temperature_grad:
                    dots = _dot(u1, gu1) + _dot(u2, gu2)
                if call.normalize:
                    gu1, gu2 = normalize_backward(gu1, u1, n1), normalize_backward(gu2, u2, n2)
                grads = (gu1, gu2, None)
        else:  # two row-block passes, one per direction (banks, gather, symmetric=False, ...)
            # one pair of block buffers for both directions (the reverse one takes as many rows as fit in them)
            bufs = blocks.flat_buffers(rows * (N + K), u1, hp, coef is not None)
            loss, g, floor = blocks.cross(u1[lo:hi], u2, V, call.bank, lab_a, labels, negative_labels, hp, c_fwd, rows,
                                          offset=lo, t=t, want_floor=want_floor, buffers=bufs)
            if g is not None:
                if (lo, hi) == (0, N):
                    gu1 = g[0]
                else:  # under gather: this rank's anchors are rows lo..hi of the gathered z1
                    gu1 = torch.zeros_like(u1)
                    gu1[lo:hi] = g[0]
                gu2, gV = g[1], g[2]
            if call.symmetric:
                rows = max(1, min(hi - lo, rows * (N + K) // max(N, 1)))
                acc = None if g is None else (gu2[lo:hi], gu1)  # the reverse direction adds into the same gradients
                loss_r, g_r, floor_r = blocks.cross(u2[lo:hi], u1, None, "none", lab_a, labels, None, hp, c_rev, rows,
                                                    offset=lo, t=t, want_floor=want_floor, buffers=bufs, out=acc)
                loss = torch.cat([loss, loss_r])
                if floor is not None:
                    floor = floor + floor_r
            del bufs  # free the block buffers before the normalisation's backward
            if g is not None:
                if call.temperature_grad:
                    dots = _dot(u1, gu1) + _dot(u2, gu2) + (0.0 if gV is None else _dot(V, gV))
                if call.normalize:
                    gu1, gu2 = normalize_backward(gu1, u1, n1), normalize_backward(gu2, u2, n2)
                    gV = None if gV is None else normalize_backward(gV, V, nV)
                grads = (gu1, gu2, gV)
    else:
        u1, n1 = nrm(z1)
        u2, n2 = nrm(z2)
        V, nV = nrm(negatives)
        kernel = blocks.shared_bank if call.bank == "shared" else blocks.per_anchor_bank
        K = V.shape[-2]
        rows = blocks.block_rows(call.memory_budget, z1.shape[0], K, itemsize, hp, labelled)
        loss, g, floor = kernel(u1, u2, V, labels, negative_labels, hp, coef, rows, t, want_floor)
        if g is not None:
            if call.temperature_grad:
                dots = _dot(u1, g[0]) + _dot(u2, g[1]) + _dot(V, g[2])
            if call.normalize:
                g = (normalize_backward(g[0], u1, n1), normalize_backward(g[1], u2, n2),
                     normalize_backward(g[2], V, nV))
            grads = g

    nan = torch.full((), math.nan, dtype=cdt, device=z1.device)
    loss = torch.where(finite, loss, nan)
    if coef is None:
        return loss, None
    gt = None
    if call.temperature_grad:
        # Every logit is bilinear in two inputs, so sum_x <x, dL/dx> = 2 sum_ij dL/ds_ij s_ij, and the logits'
        # share of dL/dt is -(1/t) sum_ij dL/ds_ij s_ij; the floor M e^{-1/t} adds dL/dlf / t^2 (spec section 8).
        gt = -dots / (2.0 * t)
        if floor is not None:
            gt = gt + floor / (t * t)
    # Spec section 6: a non-finite input, or any undefined (NaN) anchor loss, makes every gradient NaN.
    # In place: every gradient here is a fresh tensor of this function (a copy would double the peak memory).
    bad = ~(finite & ~torch.isnan(loss).any())
    grads = tuple(None if x is None else x.masked_fill_(bad, math.nan) for x in (*grads, gt))
    return loss, grads
