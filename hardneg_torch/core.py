"""One evaluation of the objective in the compute dtype: normalisation, the blocked kernel, the NaN rules,
and the backward through the normalisation. Used by the forward and (for ``reduction="none"``) the backward
of :class:`hardneg_torch.loss.HCLFunction`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from . import blocks
from .normalize import normalize_backward, normalize_rows
from .rows import Hyper

__all__ = ["Call", "compute_dtype", "evaluate"]


@dataclass(frozen=True)
class Call:
    """Everything about a call that is not a tensor.

    ``anchors`` are the in-batch anchor row ranges of U = [z1; z2] (all rows in one process, this rank's rows
    under gather); ``scale`` multiplies the sum of the anchors' losses for "mean"/"sum" (1/A for "mean" in one
    process, see :mod:`hardneg_torch.distributed` under gather).
    """

    hp: Hyper
    bank: str
    normalize: bool
    reduction: str
    scale: float
    anchors: Tuple[Tuple[int, int], ...]
    memory_budget: Optional[int]
    want_grad: bool


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16/bfloat16 compute in float32; float32 and float64 in themselves (spec section 7)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _all_finite(*xs: Optional[torch.Tensor]) -> torch.Tensor:
    flags = [torch.isfinite(x).all() for x in xs if x is not None]
    out = flags[0]
    for f in flags[1:]:
        out = out & f
    return out


def evaluate(z1, z2, negatives, labels, negative_labels, call: Call, coef):
    """Loss of each anchor and, when ``coef`` is not None, the gradients ``coef``-weighted.

    Parameters
    ----------
    z1, z2 : (N, d) tensors; negatives : (K, d), (N, K, d) or None (any float dtype; converted here).
    labels : (N,) or None; negative_labels : (K,), (N, K) or None.
    call : Call
    coef : None, float or (A,) tensor — the cotangent of each anchor's loss (reduction scale included).

    Returns
    -------
    loss : (A,) tensor in the compute dtype, NaN everywhere if an input is not finite.
    grads : (g1, g2, gneg) in the compute dtype (``gneg`` None without a bank), or None when ``coef`` is None.
    """
    cdt = compute_dtype(z1.dtype)
    z1, z2 = z1.to(cdt), z2.to(cdt)
    negatives = None if negatives is None else negatives.to(cdt)
    finite = _all_finite(z1, z2, negatives)
    nrm = normalize_rows if call.normalize else (lambda z: (z, None))
    hp = call.hp
    itemsize = torch.empty((), dtype=cdt).element_size()
    labelled = labels is not None

    if call.bank == "none":
        N = z1.shape[0]
        U, norm = nrm(torch.cat([z1, z2], dim=0))
        lab = None if labels is None else torch.cat([labels, labels])
        n_anchor_rows = sum(stop - start for start, stop in call.anchors)
        rows = blocks.block_rows(call.memory_budget, max(n_anchor_rows, 1), 2 * N, itemsize, hp, labelled)
        loss, gU = blocks.in_batch(U, lab, call.anchors, hp, coef, rows)
        if gU is not None:
            gz = gU if norm is None else normalize_backward(gU, U, norm)
            grads = (gz[:N], gz[N:], None)
    else:
        u1, n1 = nrm(z1)
        u2, n2 = nrm(z2)
        V, nV = nrm(negatives)
        kernel = blocks.shared_bank if call.bank == "shared" else blocks.per_anchor_bank
        K = V.shape[-2]
        rows = blocks.block_rows(call.memory_budget, z1.shape[0], K, itemsize, hp, labelled)
        loss, g = kernel(u1, u2, V, labels, negative_labels, hp, coef, rows)
        if g is not None:
            if call.normalize:
                g = (normalize_backward(g[0], u1, n1), normalize_backward(g[1], u2, n2),
                     normalize_backward(g[2], V, nV))
            grads = g

    nan = torch.full((), math.nan, dtype=cdt, device=z1.device)
    loss = torch.where(finite, loss, nan)
    if coef is None:
        return loss, None
    # Spec section 6: a non-finite input, or any undefined (NaN) anchor loss, makes every gradient NaN.
    ok = finite & ~torch.isnan(loss).any()
    grads = tuple(None if g is None else torch.where(ok, g, nan) for g in grads)
    return loss, grads
