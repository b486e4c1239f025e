"""Row normalisation u = z / max(||z||_2, 1e-12) with its explicit backward (docs/spec.md, sections 2 and 8)."""

from __future__ import annotations

from typing import Tuple

import torch

from hardneg.validation import NORM_EPS

__all__ = ["normalize_rows", "normalize_backward"]


def normalize_rows(z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Normalise the last dimension of ``z`` without overflow or underflow.

    Parameters
    ----------
    z : (..., d) tensor in the compute dtype.

    Returns
    -------
    u : (..., d) tensor, ``z / max(||z||, 1e-12)``; a zero row gives u = 0.
    norm : (..., 1) tensor, ``||z||`` computed as ``max|z| * ||z / max|z|||`` so that every finite row has a
        finite norm (squares of 1e30 or 1e-30 would overflow or underflow float32).
    """
    scale = z.abs().amax(dim=-1, keepdim=True)
    safe = torch.where(scale > 0, scale, torch.ones((), dtype=z.dtype, device=z.device))
    norm = scale * torch.linalg.vector_norm(z / safe, dim=-1, keepdim=True)
    return z / norm.clamp_min(NORM_EPS), norm


def normalize_backward(gu: torch.Tensor, u: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """dL/dz from dL/du: ``(gu - u (u . gu)) / ||z||``, or ``gu / 1e-12`` below the epsilon.

    Like ``torch.clamp_min``'s gradient, the tie ``||z|| == 1e-12`` takes the norm's branch.
    """
    radial = (gu * u).sum(dim=-1, keepdim=True)
    above = norm >= NORM_EPS
    # one (.., d) result, scaled in place: rows below the epsilon keep gu (their radial part is dropped)
    out = torch.addcmul(gu, u, torch.where(above, radial, 0.0), value=-1.0)
    return out.div_(torch.where(above, norm, NORM_EPS))
