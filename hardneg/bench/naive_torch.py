"""The released HCL arithmetic transliterated into PyTorch (eager): the baseline the torch backend is measured against.

This is what a user gets by copying the authors' loss into a training script: raw ``exp`` of every
similarity, a boolean mask, and about eight (2B x 2B) float32 buffers kept alive for autograd.
It is deliberately *not* stabilised (it overflows for small temperatures, see docs/benchmarks.md).

For anchors i (2B rows of u = [u1; u2], u = z / ||z||), with s_ij = u_i . u_j / t and M = 2B - 2::

    neg_ij = e^{s_ij} (j not in {i, p(i)}),  pos_i = e^{s_i,p(i)}
    easy:  Ng_i = sum_j neg_ij
    hard:  imp_ij = exp(beta * log neg_ij)
           Ng_i = (sum_j imp_ij neg_ij / mean_j imp_ij - tau+ M pos_i) / (1 - tau+),  Ng_i >= M e^{-1/t}
    loss = mean_i -log(pos_i / (pos_i + Ng_i))

References
----------
Robinson, Chuang, Sra, Jegelka. Contrastive Learning with Hard Negative Samples. ICLR 2021 (released code).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["hcl_loss", "floor", "floor_symmetric", "negative_mask", "hcl_loss_cross", "floor_cross",
           "build_backend_cross", "build_naive_cross", "build_floor_cross"]


def negative_mask(batch: int, device=None) -> torch.Tensor:
    """(2B, 2B) bool mask, False on the diagonal and on the partner (i, i +- B), True elsewhere."""
    n = 2 * batch
    idx = torch.arange(n, device=device)
    mask = torch.ones((n, n), dtype=torch.bool, device=device)
    mask[idx, idx] = False
    mask[idx, (idx + batch) % n] = False
    return mask


def hcl_loss(z1, z2, temperature=0.5, beta=1.0, tau_plus=0.1, estimator="hard"):
    """Naive HCL loss, mean over the 2B in-batch anchors.

    Parameters
    ----------
    z1, z2 : torch.Tensor, shape (B, d)
        The two views (not yet normalised; normalised here like the released model's output).
    temperature, beta, tau_plus : float
    estimator : {"hard", "easy"}

    Returns
    -------
    torch.Tensor, scalar, in the input's dtype.
    """
    batch = z1.shape[0]
    out1, out2 = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)
    out = torch.cat([out1, out2], dim=0)
    neg = torch.exp(torch.mm(out, out.t().contiguous()) / temperature)
    mask = negative_mask(batch, device=z1.device)
    neg = neg.masked_select(mask).view(2 * batch, -1)

    pos = torch.exp(torch.sum(out1 * out2, dim=-1) / temperature)
    pos = torch.cat([pos, pos], dim=0)

    if estimator == "hard":
        n_neg = 2 * batch - 2
        imp = (beta * neg.log()).exp()
        reweight_neg = (imp * neg).sum(dim=-1) / imp.mean(dim=-1)
        ng = (-tau_plus * n_neg * pos + reweight_neg) / (1 - tau_plus)
        ng = torch.clamp(ng, min=n_neg * math.e ** (-1 / temperature))
    elif estimator == "easy":
        ng = neg.sum(dim=-1)
    else:
        raise ValueError(f"estimator must be 'hard' or 'easy'; got {estimator!r}")
    return (-torch.log(pos / (pos + ng))).mean()


def floor(u: torch.Tensor, out=None):
    """The three (2B x d)(d x 2B)-class products the loss needs: S = U U^T, then G U and G^T U.

    ``G`` stands for the (2B x 2B) gradient with respect to S; S itself is reused for it, so one
    (2B x 2B) buffer is live. An implementation that computes G U and G^T U separately cannot do less
    arithmetic than this (see :func:`floor_symmetric` for one that uses the symmetry of S).

    Parameters
    ----------
    u : torch.Tensor, shape (2B, d)
    out : optional (S, GU, GTU) preallocated tensors of shapes (2B, 2B), (2B, d), (2B, d): the products are
        written into them, so a timed step allocates nothing (the benchmark's floor; allocating a fresh
        (2B)^2 buffer costs page faults on CPU that are not arithmetic).

    Returns
    -------
    (G U, G^T U) : two tensors of shape (2B, d).
    """
    if out is None:
        s = u @ u.T
        return s @ u, s.T @ u
    s, a, b = out
    torch.mm(u, u.T, out=s)
    torch.mm(s, u, out=a)
    torch.mm(s.T, u, out=b)
    return a, b


def floor_symmetric(u: torch.Tensor, out=None):
    """The two products a loss on the symmetric in-batch layout needs: S = U U^T, then (G + G^T) U.

    With S = U U^T, dL/dU = (G + G^T) U, where G = dL/dS; an implementation that forms G + G^T block by
    block (it is symmetric, like S) needs one (2B x 2B)(2B x d) product in the backward pass instead of two.
    S stands in for G + G^T.

    Parameters
    ----------
    u : torch.Tensor, shape (2B, d)
    out : optional (S, GU) preallocated tensors of shapes (2B, 2B) and (2B, d).

    Returns
    -------
    (G + G^T) U : tensor of shape (2B, d).
    """
    if out is None:
        return (u @ u.T) @ u
    s, a = out
    torch.mm(u, u.T, out=s)
    torch.mm(s, u, out=a)
    return a


# ---------------------------------------------------------------------------------------------------------
# The cross layout (CLIP / sentence-transformers), spec 1.1


def _released_direction(logits: torch.Tensor, temperature, beta, tau_plus, estimator) -> torch.Tensor:
    """The released per-anchor formula on one (B x B) logit matrix whose diagonal holds the positives."""
    batch = logits.shape[0]
    neg_all = torch.exp(logits)
    pos = neg_all.diagonal()
    mask = ~torch.eye(batch, dtype=torch.bool, device=logits.device)
    neg = neg_all.masked_select(mask).view(batch, -1)
    if estimator == "hard":
        n_neg = batch - 1
        imp = (beta * neg.log()).exp()
        reweight_neg = (imp * neg).sum(dim=-1) / imp.mean(dim=-1)
        ng = (-tau_plus * n_neg * pos + reweight_neg) / (1 - tau_plus)
        ng = torch.clamp(ng, min=n_neg * math.e ** (-1 / temperature))
    elif estimator == "easy":
        ng = neg.sum(dim=-1)
    else:
        raise ValueError(f"estimator must be 'hard' or 'easy'; got {estimator!r}")
    return -torch.log(pos / (pos + ng))


def hcl_loss_cross(z1, z2, temperature=0.5, beta=1.0, tau_plus=0.1, estimator="hard"):
    """Naive symmetric cross-layout HCL loss, written as CLIP code is: two full (B x B) logit matrices.

    ``logits_per_1 = u1 u2^T / t`` and ``logits_per_2 = u2 u1^T / t`` (as CLIP's ``logits_per_image`` and
    ``logits_per_text``), the released HCL formula applied to each (positives on the diagonal,
    M = B - 1), mean over the 2B anchors. Raw ``exp``, autograd's backward; memory quadratic in B.

    Parameters
    ----------
    z1, z2 : torch.Tensor, shape (B, d)
    temperature, beta, tau_plus : float
    estimator : {"hard", "easy"}

    Returns
    -------
    torch.Tensor, scalar.
    """
    u1, u2 = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)
    l1 = _released_direction(u1 @ u2.t() / temperature, temperature, beta, tau_plus, estimator)
    l2 = _released_direction(u2 @ u1.t() / temperature, temperature, beta, tau_plus, estimator)
    return torch.cat([l1, l2]).mean()


def floor_cross(u1: torch.Tensor, u2: torch.Tensor):
    """The three (B x d)(d x B)-class products both directions of the cross layout need at least.

    ``S = U1 U2^T`` serves both directions (the reverse direction's logits are ``S^T``), and the gradient
    takes ``G U2`` and ``G^T U1``, with ``G`` (B x B) standing for the gradient with respect to S.

    Returns
    -------
    (G U2, G^T U1) : two tensors of shape (B, d).
    """
    s = u1 @ u2.T
    return s @ u2, s.T @ u1


def build_backend_cross(batch, dim, dtype, device, estimator, hp, seed):
    """``hardneg bench`` builder (``hardneg.bench.naive_torch:build_backend_cross``): hardneg_torch, symmetric
    cross layout, one forward+backward step."""
    import hardneg_torch

    from .impls import _torch_inputs, _torch_loss_step

    z1, z2 = _torch_inputs(batch, dim, dtype, device, seed)
    return _torch_loss_step(lambda a, b: hardneg_torch.hcl_loss(a, b, estimator=estimator, layout="cross", **hp),
                            z1, z2, device)


def build_naive_cross(batch, dim, dtype, device, estimator, hp, seed):
    """Builder of :func:`hcl_loss_cross`, one forward+backward step."""
    from .impls import _torch_inputs, _torch_loss_step

    z1, z2 = _torch_inputs(batch, dim, dtype, device, seed)
    return _torch_loss_step(lambda a, b: hcl_loss_cross(a, b, estimator=estimator, **hp), z1, z2, device)


def build_floor_cross(batch, dim, dtype, device, estimator, hp, seed):
    """Builder of :func:`floor_cross` on (B, d) inputs."""
    from .impls import _torch_inputs, _torch_sync

    u1, u2 = _torch_inputs(batch, dim, dtype, device, seed, grad=False)

    def step():
        with torch.no_grad():
            floor_cross(u1, u2)
        _torch_sync(device)

    return step
