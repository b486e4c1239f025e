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
rank with B_r = 0 contributes no anchors (its loss is 0, or empty for ``"none"``) and still takes part in
every collective, so its encoder receives the gradient the global loss defines; the global batch must be
valid (N >= 1, N >= 2 without a bank). With a bank, anchors only ever see their own bank rows, so nothing
needs gathering: the result equals the single-process loss on the concatenated batch (a shared bank being
the same on every rank, as a replicated queue is); only the scale above uses the global N.

**Cross layout** (spec 1.1): z1 and z2 are gathered with gradient; this rank's z1 rows are anchors against
the global z2 (plus this rank's bank, as with a bank above) and, with ``symmetric=True``, its z2 rows are
anchors against the global z1; A = 2N (symmetric) or N in the scale above. A tensor temperature's gradient is
this rank's share, scaled like the loss, so its average over the ranks (DDP's, for a replicated parameter) is
the single-process d loss / d t.

**Ranks that disagree.** Before gathering, every rank shares its batch size, feature dimension, dtype,
labels (present? dtype?), layout, kind of bank and ``symmetric`` flag; a disagreement raises the same
``ValueError`` on every rank (a gloo collective on tensors of different dtypes would crash instead). A rank
whose own arguments fail validation shares that too, raises its own error, and the others raise
``gather=True: the arguments on rank(s) [...] are invalid``, so that no rank waits forever.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from hardneg.validation import FLOAT_DTYPES, INT_DTYPES, LAYOUTS, check_call

from .checks import dtype_name, validate

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


_LAYOUT_CODES = {"in_batch": 0, "bank": 1, "cross": 2}
_BANK_CODES = {"none": 0, "shared": 1, "per_anchor": 2}


def _code(name: Optional[str], names: Sequence[str]) -> int:
    return -1 if name is None else (names.index(name) if name in names else len(names))


def _name(code: int, names: Sequence[str]) -> str:
    return "none" if code < 0 else (names[code] if code < len(names) else "other")


def _per_rank(values: Sequence, fmt=str) -> str:
    return ", ".join(f"{fmt(v)} on rank {r}" for r, v in enumerate(values))


def _check_ranks_agree(meta: torch.Tensor, world: int) -> None:
    """Raise the same ValueError on every rank when the ranks disagree on what the gather exchanges."""
    bad = [r for r in range(world) if meta[r, 0] < 0]
    if bad:
        raise ValueError(
            f"gather=True: the arguments on rank(s) {bad} are invalid (see the error raised there); every rank "
            "must pass valid arguments, as hcl_loss is a collective call"
        )
    col = {name: meta[:, k].tolist() for k, name in enumerate(_META)}
    if len(set(col["d"])) != 1:
        raise ValueError(f"gather=True: z1 and z2 must have the same feature dimension d on every rank; got d = "
                         f"{col['d']} on ranks 0..{world - 1}")
    if len(set(col["dtype"])) != 1:
        raise ValueError(
            "gather=True: z1 and z2 must have the same dtype on every rank (the ranks' embeddings are gathered "
            f"into one batch); got {_per_rank(col['dtype'], lambda c: _name(c, FLOAT_DTYPES))} (autocast on some "
            "ranks only?)"
        )
    if len(set(col["layout"])) != 1 or len(set(col["bank"])) != 1 or len(set(col["symmetric"])) != 1:
        got = [f"{_name(lay, LAYOUTS)}/{_name(b, ('none', 'shared', 'per_anchor'))}/"
               f"{'symmetric' if s else 'one-way'}" for lay, b, s in zip(col["layout"], col["bank"], col["symmetric"])]
        raise ValueError(
            "gather=True: every rank must use the same layout, the same kind of bank and the same symmetric "
            f"flag; got {_per_rank(got)}"
        )
    if len({s < 0 for s in col["labels"]}) != 1:
        raise ValueError("gather=True: labels must be given on every rank or on none")
    if len(set(col["labels_dtype"])) != 1:
        raise ValueError(
            "gather=True: labels must have the same dtype on every rank (they are gathered); got "
            f"{_per_rank(col['labels_dtype'], lambda c: _name(c, INT_DTYPES))}"
        )


#: What each rank tells the others before gathering (one int64 row per rank).
_META = ("B", "d", "labels", "dtype", "labels_dtype", "layout", "bank", "symmetric")


def _local_meta(z1, labels, problem, hp) -> List[int]:
    return [z1.shape[0], z1.shape[1], -1 if labels is None else labels.shape[0],
            _code(dtype_name(z1), FLOAT_DTYPES), _code(dtype_name(labels), INT_DTYPES),
            _LAYOUT_CODES[problem.layout], _BANK_CODES[problem.bank], int(bool(problem.symmetric))]


def _global_shape(shape, N):
    return None if shape is None else ((N,) + tuple(shape[1:]))


def gathered_hcl_loss(z1, z2, negatives, labels, negative_labels, temp, hp: dict, memory_budget, group):
    """``hcl_loss(..., gather=True)``: see the module docstring."""
    from .loss import HCLFunction, _wants_grad, make_call

    dist = _dist()
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    # B_r = 0 or 1 is fine when the global batch is valid: hide it from the local check, check N below.
    few = isinstance(z1, torch.Tensor) and z1.dim() == 2 and z1.shape[0] <= 1
    if not isinstance(z1, torch.Tensor):
        validate(z1, z2, negatives, labels, negative_labels, hp, memory_budget)  # raises the shared TypeError
    try:
        problem = validate(z1, z2, negatives, labels, negative_labels, hp, memory_budget, unknown_batch=few)
        error = None
    except (TypeError, ValueError) as exc:  # tell the other ranks before raising, so that none waits forever
        problem, error = None, exc
    local = [-1] * len(_META) if error is not None else _local_meta(z1, labels, problem, hp)
    meta = _exchange_sizes(torch.tensor(local, dtype=torch.int64, device=z1.device), group)
    if error is not None:
        raise error
    _check_ranks_agree(meta, world)
    sizes, label_sizes = meta[:, 0].tolist(), meta[:, 2].tolist()
    N, d = sum(sizes), z1.shape[1]
    neg_shape = None if negatives is None else tuple(negatives.shape)
    nl_shape = None if negative_labels is None else tuple(negative_labels.shape)
    if problem.bank == "per_anchor":
        neg_shape, nl_shape = _global_shape(neg_shape, N), _global_shape(nl_shape, N)
    gp = check_call(z1_shape=(N, d), z2_shape=(N, d), z1_dtype=dtype_name(z1), z2_dtype=dtype_name(z2),
                    negatives_shape=neg_shape, negatives_dtype=dtype_name(negatives),
                    labels_shape=None if labels is None else (sum(label_sizes),), labels_dtype=dtype_name(labels),
                    negative_labels_shape=nl_shape, negative_labels_dtype=dtype_name(negative_labels), **hp)
    A = gp.n_anchors
    B = z1.shape[0]
    start = sum(sizes[:rank])
    reduction = hp["reduction"]
    scale = world / A if reduction == "mean" else float(world)
    want_grad = _wants_grad(z1, z2, negatives, temp)
    if problem.layout == "bank":
        call = make_call(gp, hp, temp, memory_budget, scale=scale, anchors=((0, B),), want_grad=want_grad)
        return HCLFunction.apply(z1, z2, negatives, labels, negative_labels, temp, call)[0]
    Z1 = _AllGather.apply(z1, sizes, rank, group)
    Z2 = _AllGather.apply(z2, sizes, rank, group)
    lab = None if labels is None else _gather_padded(labels, sizes, group)
    if problem.layout == "cross":
        anchors = ((start, start + B),)
    else:
        anchors = ((start, start + B), (N + start, N + start + B))
    call = make_call(gp, hp, temp, memory_budget, scale=scale, anchors=anchors, want_grad=want_grad)
    return HCLFunction.apply(Z1, Z2, negatives, lab, negative_labels, temp, call)[0]
