"""``hardneg_torch.jsd_loss``: the graph objective of docs/spec.md section 14 in PyTorch.

The (N, G) score matrix is formed once (G is the number of graphs in the batch, so this is the size of the
problem itself); the gradient is PyTorch's autodiff of the stable formulas below (the even split of
``max``/``min`` over tied entries and ``abs``'s zero derivative at 0 are the spec's subgradient of c). Half
precision is computed in float32 and returned in the input dtype. ``torch.compile`` traces it without graph
breaks: the hyper-parameters are Python numbers, G is ``graph.shape[0]``, and the check of ``batch``'s values
(which reads them on the host) is skipped while compiling.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from hardneg.validation import check_jsd_batch_values, check_jsd_call

from .checks import dtype_name

__all__ = ["jsd_loss"]

LOG2 = math.log(2.0)


def _require_tensor(name: str, x: Any) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__} (convert it with torch.as_tensor)")


def _compiling() -> bool:
    try:
        return bool(torch.compiler.is_compiling())
    except AttributeError:  # pragma: no cover - torch < 2.3
        return False


def _sp(x):
    """Exact softplus log(1 + e^x) (F.softplus returns x above its threshold 20: an error up to 2e-9)."""
    return torch.logaddexp(x, torch.zeros_like(x))


def _terms(local, graph, batch, beta: float, tau: float, convention: str):
    G = graph.shape[0]
    M = G - 1
    S = local @ graph.T
    ok = torch.isfinite(local).all() & torch.isfinite(graph).all()
    S = S + torch.where(ok, 0.0, math.nan).to(S.dtype)  # spec 14.6: any non-finite input poisons everything
    pos = batch.long()[:, None] == torch.arange(G, device=S.device)[None, :]
    neg = ~pos
    zero = torch.zeros((), dtype=S.dtype, device=S.device)
    q = torch.where(neg, S, zero)
    a = torch.where(pos, S, zero).sum(dim=1)
    if convention == "released":
        q = S * neg.to(S.dtype)  # S o Q as the released code multiplies: a NaN gradient reaches every slot
        r = tau / (1.0 - tau)
        pos_row = LOG2 - _sp(-a) - r * _sp(a) - M * r * LOG2
        if beta == 0.0:
            neg_row = torch.where(neg, _sp(q) - LOG2, zero).sum(dim=1) / (M * (1.0 - tau))
        else:
            mx, amn = q.max(), q.min().abs()
            c = torch.where(mx >= amn, mx, amn)
            pi = torch.softmax((-2.0 * beta) * q / c, dim=1)
            neg_row = ((G * pi * _sp(q)).sum(dim=1) / (1.0 - tau) - G * LOG2) / M
        return neg_row - pos_row
    if beta == 0.0:
        pi = neg.to(S.dtype) / M
    else:
        mx, amn = q.max(), q.min().abs()
        c = torch.where(mx >= amn, mx, amn)
        on = c > 0
        zeta = torch.where(on, (2.0 * beta) * q / torch.where(on, c, torch.ones_like(c)), zero)
        pi = torch.softmax(torch.where(neg, zeta, torch.full_like(zeta, -math.inf)), dim=1)
    fbar = (pi * torch.where(neg, _sp(q), zero)).sum(dim=1)
    est = (fbar - tau * _sp(a)) / (1.0 - tau)
    return torch.where(est < 0, zero, est) + _sp(-a) - 2.0 * LOG2


def jsd_loss(local, graph, batch, *, beta: float = 1.0, tau_plus: float = 0.5, convention: str = "released",
             reduction: str = "mean"):
    r"""InfoGraph's local-global Jensen-Shannon objective with hard negatives, in PyTorch.

    Same arguments, defaults, values and errors as :func:`hardneg.jsd_loss` (docs/spec.md section 14);
    differentiable by autograd with respect to ``local`` and ``graph``.

    Parameters
    ----------
    local : torch.Tensor, shape (N, d), floating
    graph : torch.Tensor, shape (G, d), same dtype and device
    batch : torch.Tensor, shape (N,), integer
        PyTorch Geometric's batch vector (``data.batch``), values in [0, G).
    beta, tau_plus, convention, reduction
        As :func:`hardneg.jsd_loss`.

    Returns
    -------
    torch.Tensor
        Shape () or (N,) for ``reduction="none"``, in the dtype of ``local`` (float16/bfloat16 are computed
        in float32).
    """
    for name, x in (("local", local), ("graph", graph), ("batch", batch)):
        _require_tensor(name, x)
    problem = check_jsd_call(
        local_shape=tuple(local.shape), graph_shape=tuple(graph.shape), batch_shape=tuple(batch.shape),
        local_dtype=dtype_name(local), graph_dtype=dtype_name(graph), batch_dtype=dtype_name(batch),
        beta=beta, tau_plus=tau_plus, convention=convention, reduction=reduction,
    )
    for name, x in (("graph", graph), ("batch", batch)):
        if x.device != local.device:
            raise ValueError(
                f"{name} is on device {x.device} but local is on {local.device}; all tensor arguments of jsd_loss "
                f"must be on the same device (move them with .to(local.device))"
            )
    if not _compiling():
        lo, hi = torch.aminmax(batch)
        check_jsd_batch_values(int(lo), int(hi), problem.graphs)
    out_dtype = local.dtype
    cdt = torch.float32 if out_dtype in (torch.float16, torch.bfloat16) else out_dtype
    terms = _terms(local.to(cdt), graph.to(cdt), batch, float(beta), float(tau_plus), convention)
    if reduction == "mean":
        out = terms.mean()
    elif reduction == "sum":
        out = terms.sum()
    else:
        out = terms
    return out.to(out_dtype)
