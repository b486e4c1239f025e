r"""``hcl_loss`` for PyTorch: the spec's objective as a memory-linear ``torch.autograd.Function``."""

from __future__ import annotations

import contextlib
from typing import Optional

import torch

from . import core
from .checks import validate
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
    def forward(z1, z2, negatives, *grads):
        return tuple(g.clone() for g in grads)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(_DOUBLE_BACKWARD)


def _refuse_double_backward(z1, z2, negatives, grads):
    present = [g for g in grads if g is not None]
    wrapped = iter(_RefuseDoubleBackward.apply(z1, z2, negatives, *present))
    return tuple(None if g is None else next(wrapped) for g in grads)


class HCLFunction(torch.autograd.Function):
    r"""The objective with its closed-form, blockwise backward (docs/spec.md, sections 5 and 8).

    ``forward(z1, z2, negatives, labels, negative_labels, call)`` returns ``(value, g1, g2, gneg)``; only
    ``value`` is differentiable. For ``"mean"``/``"sum"`` with a gradient wanted, the forward pass also
    produces the gradient for a unit cotangent (``g1, g2, gneg``, compute dtype) — the same row blocks give
    the loss and the gradient, so the whole step costs the three (n x d)(d x n)-class products — and backward
    only scales it. For ``"none"`` (per-anchor cotangents) backward recomputes the similarities block by block.
    Nothing of size (n x n) is kept: saved are the inputs and, fused, three gradients of the inputs' shapes.
    """

    @staticmethod
    def forward(z1, z2, negatives, labels, negative_labels, call: core.Call):
        fused = call.want_grad and call.reduction != "none"
        with _no_autocast(z1.device):
            loss, grads = core.evaluate(z1, z2, negatives, labels, negative_labels, call,
                                        call.scale if fused else None)
            value = loss if call.reduction == "none" else loss.sum() * call.scale
        value = value.to(z1.dtype)
        if grads is None:
            # three distinct tensors: dynamo maps each output to its own gradient input
            cdt = core.compute_dtype(z1.dtype)
            return value, z1.new_empty((0,), dtype=cdt), z1.new_empty((0,), dtype=cdt), z1.new_empty((0,), dtype=cdt)
        g1, g2, gn = grads
        return value, g1, g2, (z1.new_empty((0,), dtype=g1.dtype) if gn is None else gn)

    @staticmethod
    def setup_context(ctx, inputs, output):
        z1, z2, negatives, labels, negative_labels, call = inputs
        _, g1, g2, gn = output
        ctx.mark_non_differentiable(g1, g2, gn)
        ctx.call = call
        ctx.fused = call.want_grad and call.reduction != "none"  # as decided in forward
        if ctx.fused:
            ctx.save_for_backward(z1, z2, negatives, labels, negative_labels, g1, g2, gn)
        else:
            ctx.save_for_backward(z1, z2, negatives, labels, negative_labels, None, None, None)

    @staticmethod
    def backward(ctx, grad_value, _g1, _g2, _gn):
        z1, z2, negatives, labels, negative_labels, g1, g2, gn = ctx.saved_tensors
        call: core.Call = ctx.call
        cdt = core.compute_dtype(z1.dtype)
        with torch.no_grad(), _no_autocast(z1.device):
            c = grad_value.to(cdt)
            if ctx.fused:
                grads = (c * g1, c * g2, None if negatives is None else c * gn)
            else:
                if call.reduction == "none":
                    coef = c
                else:
                    coef = (c * call.scale).expand(_n_anchors(call, z1))
                _, grads = core.evaluate(z1, z2, negatives, labels, negative_labels, call, coef)
            out = tuple(None if g is None else g.to(z1.dtype) for g in grads)
        if torch.is_grad_enabled():
            out = _refuse_double_backward(z1, z2, negatives, out)
        g1_out, g2_out, gn_out = out
        return (g1_out if ctx.needs_input_grad[0] else None, g2_out if ctx.needs_input_grad[1] else None,
                gn_out if ctx.needs_input_grad[2] else None, None, None, None)


def _n_anchors(call: core.Call, z1: torch.Tensor) -> int:
    if call.bank == "none":
        return sum(stop - start for start, stop in call.anchors)
    return z1.shape[0]


def _wants_grad(*xs: Optional[torch.Tensor]) -> bool:
    return torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in xs)


def hcl_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    temperature: float = 0.5,
    beta: float = 1.0,
    tau_plus: float = 0.1,
    estimator: str = "hard",
    clamp: bool = True,
    normalize: bool = True,
    negatives: Optional[torch.Tensor] = None,
    labels: Optional[torch.Tensor] = None,
    negative_labels: Optional[torch.Tensor] = None,
    reduction: str = "mean",
    memory_budget: Optional[int] = None,
    gather: bool = False,
    group=None,
) -> torch.Tensor:
    r"""Hard-negative contrastive loss (Robinson et al., ICLR 2021) in PyTorch, memory linear in the batch.

    For anchors :math:`i` with positive logit :math:`a_i` and negatives :math:`j \in N_i`
    (:math:`M_i = |N_i|`), with :math:`s_{ij} = u_i \cdot u_j / t` and :math:`u = z / \max(\lVert z\rVert, 10^{-12})`:

    .. math::

        R_i = M_i \frac{\sum_j e^{(1+\beta) s_{ij}}}{\sum_j e^{\beta s_{ij}}},\qquad
        Ng_i = \max\Big(\frac{R_i - \tau^+ M_i e^{a_i}}{1-\tau^+},\; M_i e^{-1/t}\Big),\qquad
        \ell_i = -\log \frac{e^{a_i}}{e^{a_i} + Ng_i}.

    ``estimator="easy"`` uses :math:`Ng_i = \sum_j e^{s_{ij}}` (NT-Xent) and ignores beta, tau_plus, clamp;
    ``beta=0`` is the debiased loss (Chuang et al., NeurIPS 2020); ``beta=math.inf`` the worst-case limit
    :math:`R_i = M_i e^{\max_j s_{ij}}`. The value and gradients equal :func:`hardneg.hcl_loss` /
    :func:`hardneg.hcl_loss_and_grad` (docs/spec.md is the contract) within the input dtype's rounding.

    Computed in log space over blocks of anchor rows: no (2B x 2B) tensor is formed in the forward or the
    backward pass; the backward is the spec's closed-form gradient. float16/bfloat16 are computed in float32
    and returned in the input dtype; autocast is disabled inside (the result does not depend on it).

    Parameters
    ----------
    z1, z2 : torch.Tensor, shape (B, d), floating
        Two views; row k of z1 and row k of z2 form a positive pair. Same shape, dtype and device.
    temperature : float, default 0.5
        t > 0.
    beta : float, default 1.0
        Hardness, >= 0; ``math.inf`` allowed.
    tau_plus : float, default 0.1
        Class prior for debiasing, 0 <= tau_plus < 1.
    estimator : {"hard", "easy"}, default "hard"
    clamp : bool, default True
        Floor Ng at M e^{-1/t} (the released code's "constrain"; hard estimator only).
    normalize : bool, default True
        Use u = z / max(||z||_2, 1e-12); False uses z as given.
    negatives : torch.Tensor, shape (K, d) or (B, K, d), optional
        Explicit bank (shared, or one per anchor), dtype of z1. Anchors are then z1's rows, positives z2's
        rows, and in-batch samples are not negatives.
    labels : torch.Tensor of int, shape (B,), optional
        Samples sharing the anchor's label are removed from its negatives.
    negative_labels : torch.Tensor of int, shape (K,) or (B, K), optional
        Labels of the bank rows; required with ``labels`` when a bank is given.
    reduction : {"mean", "sum", "none"}, default "mean"
        "none" returns the per-anchor losses: shape (2B,) in z1-then-z2 order, or (B,) with a bank.
    memory_budget : int, optional
        Bytes of transient working memory for the blocked computation (default 32 MiB). The block holds
        ``memory_budget / (C * bytes)`` anchor rows against all C candidates; any positive value works,
        larger is not faster once the products run at full speed.
    gather : bool, default False
        Use the samples of every rank of ``group`` as negatives (torch.distributed must be initialised).
        z1, z2 and labels are all-gathered with gradient; this rank's loss covers its own anchors against
        the global batch, scaled so that DistributedDataParallel's gradient averaging yields exactly the
        gradient of the single-process loss on the concatenated batch. See :mod:`hardneg_torch.distributed`.
    group : torch.distributed.ProcessGroup, optional
        Process group for ``gather`` (default: the default group).

    Returns
    -------
    torch.Tensor
        Scalar, or shape (n_anchors,) for ``reduction="none"``; dtype of z1, on z1's device.

    Raises
    ------
    TypeError, ValueError
        As :func:`hardneg.validation.check_call` (shared messages, spec section 10), plus: arguments that are
        not tensors, tensors on different devices, a bad ``memory_budget``.

    Notes
    -----
    Double backward is refused with a ``RuntimeError`` when it is attempted. ``torch.compile`` and
    ``torch.func.grad`` work; see docs/backends/torch.md.

    References
    ----------
    Robinson, Chuang, Sra, Jegelka. Contrastive Learning with Hard Negative Samples. ICLR 2021.
    Chuang, Robinson, Lin, Torralba, Jegelka. Debiased Contrastive Learning. NeurIPS 2020.
    """
    hp = dict(temperature=temperature, beta=beta, tau_plus=tau_plus, estimator=estimator, clamp=clamp,
              normalize=normalize, reduction=reduction)
    if not isinstance(gather, bool):
        raise TypeError(f"gather must be a bool (True or False); got {gather!r} of type {type(gather).__name__}")
    if gather:
        from .distributed import gathered_hcl_loss

        return gathered_hcl_loss(z1, z2, negatives, labels, negative_labels, hp, memory_budget, group)
    if group is not None:
        raise ValueError("group is only used with gather=True; got gather=False and a group")
    problem = validate(z1, z2, negatives, labels, negative_labels, hp, memory_budget)
    A = problem.n_anchors
    call = core.Call(
        hp=Hyper.from_call(temperature, beta, tau_plus, estimator, clamp),
        bank=problem.bank,
        normalize=bool(normalize),
        reduction=reduction,
        scale=1.0 / A if reduction == "mean" else 1.0,
        anchors=((0, A),) if problem.bank == "none" else (),
        memory_budget=memory_budget,
        want_grad=_wants_grad(z1, z2, negatives),
    )
    return HCLFunction.apply(z1, z2, negatives, labels, negative_labels, call)[0]
