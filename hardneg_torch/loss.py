r"""``hcl_loss`` for PyTorch: the spec's objective as a memory-linear ``torch.autograd.Function``."""

from __future__ import annotations

import contextlib
import math
from typing import Optional, Union

import torch

from hardneg._docs import fill_doc
from hardneg.validation import UNKNOWN, check_temperature_tensor

from . import core
from .blocks import device_default_budget
from .checks import dtype_name, validate
from .rows import Hyper

__all__ = ["hcl_loss", "HCLFunction"]

_DOUBLE_BACKWARD = (
    "hardneg_torch.hcl_loss does not support double backward (differentiating its gradient, e.g. "
    "torch.autograd.grad(..., create_graph=True) followed by another backward, or nested torch.func.grad): "
    "its backward is the spec's closed-form gradient, evaluated blockwise without an autograd graph. "
    "First-order gradients, torch.func.grad and torch.compile are supported."
)


def _no_autocast(device: torch.device):
    """Disable autocast inside the loss: it computes in its own precision (float32 for halves)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


class _RefuseDoubleBackward(torch.autograd.Function):
    """Copies the gradients into outputs that depend on the loss's inputs; differentiating them raises.

    Used only when backward runs with grad mode on (``create_graph=True``, ``torch.func.grad``), so that
    first-order gradients work there and a second differentiation fails with a clear message.
    """

    @staticmethod
    def forward(z1, z2, negatives, temperature, *grads):
        return tuple(g.clone() for g in grads)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(_DOUBLE_BACKWARD)


def _refuse_double_backward(z1, z2, negatives, temperature, grads):
    present = [g for g in grads if g is not None]
    wrapped = iter(_RefuseDoubleBackward.apply(z1, z2, negatives, temperature, *present))
    return tuple(None if g is None else next(wrapped) for g in grads)


class HCLFunction(torch.autograd.Function):
    r"""The objective with its closed-form, blockwise backward (docs/spec.md, sections 5 and 8).

    ``forward(z1, z2, negatives, labels, negative_labels, temperature, call)`` returns
    ``(value, g1, g2, gneg, gt)``; only ``value`` is differentiable. ``temperature`` is None (the float in
    ``call.hp``) or a 0-d tensor, whose gradient d loss / d t is then returned in closed form. For
    ``"mean"``/``"sum"`` with a gradient wanted, the forward pass also produces the gradient for a unit
    cotangent (``g1, g2, gneg, gt``, compute dtype) — the same row blocks give the loss and the gradient, so
    the whole step costs the three (n x d)(d x n)-class products — and backward only scales it. For
    ``"none"`` (per-anchor cotangents) backward recomputes the similarities block by block.
    Nothing of size (n x n) is kept: saved are the inputs and, fused, the gradients of the inputs' shapes.
    """

    @staticmethod
    def forward(z1, z2, negatives, labels, negative_labels, temperature, call: core.Call):
        fused = call.want_grad and call.reduction != "none"
        with _no_autocast(z1.device):
            temp = None if temperature is None else temperature.to(z1.device)
            loss, grads = core.evaluate(z1, z2, negatives, labels, negative_labels, temp, call,
                                        call.scale if fused else None)
            value = loss if call.reduction == "none" else loss.sum() * call.scale
        value = value.to(z1.dtype)
        cdt = core.compute_dtype(z1.dtype)
        if grads is None:
            # distinct tensors: dynamo maps each output to its own gradient input
            return (value,) + tuple(z1.new_empty((0,), dtype=cdt) for _ in range(4))
        g1, g2, gn, gt = grads
        empty = lambda: z1.new_empty((0,), dtype=cdt)  # noqa: E731
        return value, g1, g2, (empty() if gn is None else gn), (empty() if gt is None else gt)

    @staticmethod
    def setup_context(ctx, inputs, output):
        z1, z2, negatives, labels, negative_labels, temperature, call = inputs
        _, g1, g2, gn, gt = output
        ctx.mark_non_differentiable(g1, g2, gn, gt)
        ctx.call = call
        ctx.fused = call.want_grad and call.reduction != "none"  # as decided in forward
        if ctx.fused:
            ctx.save_for_backward(z1, z2, negatives, labels, negative_labels, temperature, g1, g2, gn, gt)
        else:
            ctx.save_for_backward(z1, z2, negatives, labels, negative_labels, temperature, None, None, None, None)

    @staticmethod
    def backward(ctx, grad_value, _g1, _g2, _gn, _gt):
        z1, z2, negatives, labels, negative_labels, temperature, g1, g2, gn, gt = ctx.saved_tensors
        call: core.Call = ctx.call
        cdt = core.compute_dtype(z1.dtype)
        with torch.no_grad(), _no_autocast(z1.device):
            c = grad_value.to(cdt)
            if ctx.fused:
                grads = (c * g1, c * g2, None if negatives is None else c * gn,
                         c * gt if call.temperature_grad else None)
            else:
                if call.reduction == "none":
                    coef = c
                else:
                    coef = (c * call.scale).expand(core.n_anchors(call, z1.shape[0]))
                temp = None if temperature is None else temperature.to(z1.device)
                _, grads = core.evaluate(z1, z2, negatives, labels, negative_labels, temp, call, coef)
            out = tuple(None if g is None else g.to(z1.dtype) for g in grads[:3])
            gt_out = None
            if temperature is not None and grads[3] is not None:
                gt_out = grads[3].to(device=temperature.device, dtype=temperature.dtype).reshape(temperature.shape)
        if torch.is_grad_enabled():
            *out, gt_out = _refuse_double_backward(z1, z2, negatives, temperature, (*out, gt_out))
        g1_out, g2_out, gn_out = out
        return (g1_out if ctx.needs_input_grad[0] else None, g2_out if ctx.needs_input_grad[1] else None,
                gn_out if ctx.needs_input_grad[2] else None, None, None,
                gt_out if ctx.needs_input_grad[5] else None, None)


def _wants_grad(*xs: Optional[torch.Tensor]) -> bool:
    return torch.is_grad_enabled() and any(isinstance(x, torch.Tensor) and x.requires_grad for x in xs)


@fill_doc
def hcl_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    temperature: Union[float, torch.Tensor] = 0.5,
    beta: float = 1.0,
    tau_plus: float = 0.1,
    estimator: str = "hard",
    clamp: bool = True,
    normalize: bool = True,
    negatives: Optional[torch.Tensor] = None,
    labels: Optional[torch.Tensor] = None,
    negative_labels: Optional[torch.Tensor] = None,
    reduction: str = "mean",
    layout: Optional[str] = None,
    symmetric: bool = True,
    memory_budget: Optional[int] = None,
    gather: bool = False,
    group=None,
) -> torch.Tensor:
    r"""Hard-negative contrastive loss (Robinson et al., ICLR 2021) in PyTorch, memory linear in the batch.

    {{hcl_loss.math}}

    ``estimator="easy"`` uses :math:`Ng_i = \sum_j e^{s_{ij}}` (NT-Xent) and ignores beta, tau_plus, clamp;
    ``beta=0`` is the debiased loss (Chuang et al., NeurIPS 2020); ``beta=math.inf`` the worst-case limit
    :math:`R_i = M_i e^{\max_j s_{ij}}`. The value and gradients equal :func:`hardneg.hcl_loss` /
    :func:`hardneg.hcl_loss_and_grad` (docs/spec.md is the contract) within the input dtype's rounding.

    Layouts (``layout``): ``"in_batch"`` (SimCLR: both views are anchors, every other sample a negative),
    ``"bank"`` (MoCo: anchors z1, negatives an explicit bank) and ``"cross"`` (CLIP / sentence-transformers:
    anchors z1, candidates the rows of z2 — positive z2[i], the others negatives — plus the bank's rows if
    given; ``symmetric=True`` adds the reverse direction, anchors z2 against the rows of z1 only).

    Computed in log space over blocks of anchor rows: no (B x B) or (2B x 2B) tensor is formed in the forward
    or the backward pass, in any layout; the backward is the spec's closed-form gradient. The temperature may
    be a 0-d tensor (e.g. a learnable parameter): its gradient d loss / d t is returned in closed form too.
    float16/bfloat16 are computed in float32 and returned in the input dtype; autocast is disabled inside (the
    result does not depend on it).

    Parameters
    ----------
    z1, z2 : torch.Tensor, shape (B, d), floating
        Two views; row k of z1 and row k of z2 form a positive pair. Same shape, dtype and device.
    temperature : float or 0-d floating torch.Tensor, default 0.5
        t > 0. A Python or NumPy real number is validated (and costs nothing extra). A 0-d floating tensor
        (any of float16, bfloat16, float32, float64; e.g. ``exp(-logit_scale)`` of a learnable parameter) is
        differentiable: with ``requires_grad`` its gradient d loss / d t flows back (through every logit and
        through the clamp floor M e^{-1/t}), eagerly, under ``torch.compile`` and with DDP. Its value is not
        checked (that would synchronise with the device): a tensor temperature <= 0, infinite or NaN gives
        NaN for the loss and every gradient.
    beta : float, default 1.0
        {{hcl_loss.beta}}
    tau_plus : float, default 0.1
        {{hcl_loss.tau_plus}}
    estimator : {"hard", "easy"}, default "hard"
        "easy" is NT-Xent / InfoNCE (beta, tau_plus and clamp are ignored).
    clamp : bool, default True
        {{hcl_loss.clamp}}
    normalize : bool, default True
        {{hcl_loss.normalize}}
    negatives : torch.Tensor, shape (K, d) or (B, K, d), optional
        Explicit bank (shared, or one per anchor), dtype of z1. In the bank layout (the default when a bank
        is given) anchors are z1's rows, positives z2's rows, and in-batch samples are not negatives. In the
        cross layout the bank rows are extra negatives of z1's anchors (after the rows of z2).
    labels : torch.Tensor of int, shape (B,), optional
        {{hcl_loss.labels}}
    negative_labels : torch.Tensor of int, shape (K,) or (B, K), optional
        {{hcl_loss.negative_labels}}
    reduction : {"mean", "sum", "none"}, default "mean"
        "none" returns the per-anchor losses: shape (2B,) in z1-then-z2 order in-batch and in the symmetric
        cross layout, (B,) with a bank or ``symmetric=False``. "mean" averages over every anchor.
    layout : {None, "in_batch", "bank", "cross"}, default None
        None is spec 1.0: "in_batch" without ``negatives``, "bank" with them. "in_batch" with a bank, "bank"
        without one, or an unknown name raise ``ValueError``. "cross": anchors z1, candidates z2's rows (the
        positive of anchor i is z2[i], M = B - 1 + K negatives).
    symmetric : bool, default True
        Cross layout only: also use z2's rows as anchors against z1's rows (no bank), as CLIP does.
        ``symmetric=False`` with another layout raises ``ValueError`` (in-batch is symmetric by
        construction; the bank layout has anchors z1 only).
    memory_budget : int, optional
        Bytes of transient working memory for the blocked computation (default 32 MiB on CPU; on CUDA
        min(2 GiB, total device memory / 16), see :mod:`hardneg.budget`). The block holds
        ``memory_budget / (C * bytes)`` anchor rows against all C candidates; any positive value works,
        larger is not faster once the products run at full speed.
    gather : bool, default False
        Use the samples of every rank of ``group`` as negatives (torch.distributed must be initialised).
        z1, z2 and labels are all-gathered with gradient; this rank's loss covers its own anchors against
        the global batch (in the cross layout: its z1 rows against the global z2, and its z2 rows against
        the global z1), scaled so that DistributedDataParallel's gradient averaging yields exactly the
        gradient of the single-process loss on the concatenated batch. A rank may hold no rows (B = 0).
        See :mod:`hardneg_torch.distributed`.
    group : torch.distributed.ProcessGroup, optional
        Process group for ``gather`` (default: the default group).

    Returns
    -------
    torch.Tensor
        Scalar, or shape (n_anchors,) for ``reduction="none"``; dtype of z1, on z1's device.

    Raises
    ------
    TypeError, ValueError
        As :func:`hardneg.validation.check_call` (shared messages, spec section 10) and
        :func:`hardneg.validation.check_temperature_tensor` (a temperature tensor that is not 0-d or not
        floating), plus: arguments that are not tensors, tensors on different devices, a bad
        ``memory_budget``; under ``gather=True``, ranks that disagree on what the gather exchanges.

    Notes
    -----
    Double backward is refused with a ``RuntimeError`` when it is attempted. ``torch.compile`` and
    ``torch.func.grad`` work; see docs/backends/torch.md.

    References
    ----------
    {{hcl_loss.references}}
    """
    tensor_t = isinstance(temperature, torch.Tensor)
    hp = dict(temperature=UNKNOWN if tensor_t else temperature, beta=beta, tau_plus=tau_plus, estimator=estimator,
              clamp=clamp, normalize=normalize, reduction=reduction, layout=layout, symmetric=symmetric)
    if tensor_t:
        check_temperature_tensor(tuple(temperature.shape), dtype_name(temperature))
    temp = temperature if tensor_t else None
    if not isinstance(gather, bool):
        raise TypeError(f"gather must be a bool (True or False); got {gather!r} of type {type(gather).__name__}")
    if memory_budget is None and isinstance(z1, torch.Tensor):  # per-device default (hardneg.budget); CPU: None
        memory_budget = device_default_budget(z1.device)
    if gather:
        from .distributed import gathered_hcl_loss

        return gathered_hcl_loss(z1, z2, negatives, labels, negative_labels, temp, hp, memory_budget, group)
    if group is not None:
        raise ValueError("group is only used with gather=True; got gather=False and a group")
    problem = validate(z1, z2, negatives, labels, negative_labels, hp, memory_budget)
    A = problem.n_anchors
    call = make_call(problem, hp, temp, memory_budget, scale=1.0 / A if reduction == "mean" else 1.0,
                     anchors=((0, A),) if problem.layout == "in_batch" else ((0, problem.batch),),
                     want_grad=_wants_grad(z1, z2, negatives, temp))
    return HCLFunction.apply(z1, z2, negatives, labels, negative_labels, temp, call)[0]


def make_call(problem, hp: dict, temp, memory_budget, *, scale: float, anchors, want_grad: bool) -> core.Call:
    """The :class:`hardneg_torch.core.Call` of a validated call (``temp``: the temperature tensor or None)."""
    return core.Call(
        hp=Hyper.from_call(math.nan if temp is not None else hp["temperature"], hp["beta"], hp["tau_plus"],
                           hp["estimator"], hp["clamp"]),
        bank=problem.bank,
        normalize=bool(hp["normalize"]),
        reduction=hp["reduction"],
        scale=scale,
        anchors=anchors,
        memory_budget=memory_budget,
        want_grad=want_grad,
        layout=problem.layout,
        symmetric=bool(problem.symmetric),
        temperature_grad=temp is not None and _wants_grad(temp),
    )
