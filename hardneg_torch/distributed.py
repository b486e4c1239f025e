r"""Cross-device negatives with ``torch.distributed``: ``hcl_loss(..., gather=True, group=None)``.

Every rank passes its own shard (B_r pairs). In-batch, z1, z2 (and labels) are all-gathered *with
gradient* into the global batch of N = sum_r B_r pairs; each rank evaluates the loss of its own 2 B_r
anchors against the 2N - 2 global candidates, blockwise as in one process (memory linear in N).

**Scaling.** Let L be the single-process loss on the concatenated batch (``"mean"``: the average over
all A = 2N anchors). Rank r returns

.. math::  L_r = \frac{W}{A}\sum_{i \in \text{anchors}(r)} \ell_i  \quad(\text{"mean"}),\qquad
           L_r = W \sum_{i \in \text{anchors}(r)} \ell_i \quad(\text{"sum"}),

with W the world size, so that (1/W) sum_r L_r = L. The gather's backward sums every rank's gradient for
a shard (an all-reduce), so rank r's encoder receives W dL/dz_r, and DistributedDataParallel's averaging
over the W ranks yields exactly dL/dtheta — the gradient of single-process training on the global batch.
With equal shards, L_r is simply the mean over this rank's anchors. ``"none"`` returns this rank's
anchors' losses (2 B_r,) unscaled; their mean, averaged by DDP, is again exact when the shards are equal.

Uneven shards (the last batch of an epoch) work: the gather pads to the largest shard and trims. A
rank with B_r = 0 is an error (``z1 and z2 need at least one row``). With a bank, anchors only ever see
their own bank rows, so nothing needs gathering: the result equals the single-process loss on the
concatenated batch (a shared bank being the same on every rank, as a replicated queue is); only the scale
above uses the global N.
"""

from __future__ import annotations

import dataclasses

from typing import List, Optional, Sequence

import torch

from hardneg.validation import check_call

from . import core
from .checks import dtype_name, validate
from .rows import Hyper

__all__ = ["all_gather_with_grad", "gathered_hcl_loss"]


def _dist():
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "gather=True needs an initialised torch.distributed process group (torch.distributed."
            "init_process_group, e.g. under torchrun); none is initialised"
        )
    return dist


def _gather_padded(x: torch.Tensor, sizes: Sequence[int], group) -> torch.Tensor:
    dist = _dist()
    longest = max(sizes)
    if x.shape[0] < longest:
        x = torch.cat([x, x.new_zeros((longest - x.shape[0],) + tuple(x.shape[1:]))])
    parts = [torch.empty_like(x) for _ in sizes]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)])


class _AllGather(torch.autograd.Function):
    """All-gather along dim 0 with gradient: backward sums every rank's gradient and keeps this rank's rows."""

    @staticmethod
    def forward(ctx, x, sizes, rank, group):
        ctx.sizes, ctx.rank, ctx.group = sizes, rank, group
        return _gather_padded(x, sizes, group)

    @staticmethod
    def backward(ctx, grad):
        dist = _dist()
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start:start + ctx.sizes[ctx.rank]], None, None, None


def all_gather_with_grad(x: torch.Tensor, group=None, sizes: Optional[List[int]] = None) -> torch.Tensor:
    """Concatenate ``x`` (B_r, ...) from every rank of ``group`` along dim 0, differentiably.

    The backward pass all-reduces (sums) the gradient of the gathered tensor and returns this rank's rows,
    so that gradient flows to every rank's shard from every rank's loss (a plain ``all_gather`` has none).
    ``sizes`` (each rank's B_r) is exchanged when not given; shards may differ in length.
    """
    dist = _dist()
    if sizes is None:
        sizes = _exchange_sizes(torch.tensor([x.shape[0]], device=x.device), group)[:, 0].tolist()
    return _AllGather.apply(x, list(sizes), dist.get_rank(group), group)


def _exchange_sizes(meta: torch.Tensor, group) -> torch.Tensor:
    dist = _dist()
    parts = [torch.empty_like(meta) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, meta, group=group)
    return torch.stack(parts)


def gathered_hcl_loss(z1, z2, negatives, labels, negative_labels, hp: dict, memory_budget, group):
    """``hcl_loss(..., gather=True)``: see the module docstring."""
    from .loss import HCLFunction, _wants_grad

    dist = _dist()
    one_pair = isinstance(z1, torch.Tensor) and z1.dim() == 2 and z1.shape[0] == 1 and negatives is None
    # B_r = 1 is fine when the global batch has >= 2 pairs: hide it from the local check, check N below.
    problem = validate(z1, z2, negatives, labels, negative_labels, hp, memory_budget, unknown_batch=one_pair)
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    B, d = z1.shape
    meta = _exchange_sizes(torch.tensor([B, d, -1 if labels is None else labels.shape[0]], device=z1.device), group)
    sizes, dims, label_sizes = meta[:, 0].tolist(), meta[:, 1].tolist(), meta[:, 2].tolist()
    if len(set(dims)) != 1:
        raise ValueError(f"gather=True: z1 and z2 must have the same feature dimension d on every rank; got d = "
                         f"{dims} on ranks 0..{world - 1}")
    if len({s < 0 for s in label_sizes}) != 1:
        raise ValueError("gather=True: labels must be given on every rank or on none")
    N = sum(sizes)
    if problem.bank == "none":
        check_call(z1_shape=(N, d), z2_shape=(N, d), z1_dtype=dtype_name(z1), z2_dtype=dtype_name(z2),
                   labels_shape=None if labels is None else (sum(label_sizes),), labels_dtype=dtype_name(labels),
                   **hp)
    A = 2 * N if problem.bank == "none" else N
    reduction = hp["reduction"]
    call = core.Call(
        hp=Hyper.from_call(hp["temperature"], hp["beta"], hp["tau_plus"], hp["estimator"], hp["clamp"]),
        bank=problem.bank,
        normalize=bool(hp["normalize"]),
        reduction=reduction,
        scale=world / A if reduction == "mean" else float(world),
        anchors=(),
        memory_budget=memory_budget,
        want_grad=_wants_grad(z1, z2, negatives),
    )
    if problem.bank != "none":
        return HCLFunction.apply(z1, z2, negatives, labels, negative_labels, call)[0]
    start = sum(sizes[:rank])
    Z1 = _AllGather.apply(z1, sizes, rank, group)
    Z2 = _AllGather.apply(z2, sizes, rank, group)
    lab = None if labels is None else _gather_padded(labels, sizes, group)
    call = dataclasses.replace(call, anchors=((start, start + B), (N + start, N + start + B)))
    return HCLFunction.apply(Z1, Z2, None, lab, None, call)[0]
