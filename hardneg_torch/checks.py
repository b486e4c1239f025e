"""Argument checks for the torch backend: the shared :func:`hardneg.validation.check_call` plus the
torch-only conditions (non-tensor arguments, tensors on different devices, the backend extras)."""

from __future__ import annotations

from typing import Any, Optional

import torch

from hardneg.validation import Problem, check_call, check_memory_budget

__all__ = ["dtype_name", "validate"]


def dtype_name(x: Optional[torch.Tensor]) -> Optional[str]:
    """Canonical dtype name (``torch.bfloat16`` -> ``'bfloat16'``) as the shared validation expects."""
    return None if x is None else str(x.dtype).rsplit(".", 1)[-1]


def _shape(x: Optional[torch.Tensor]):
    return None if x is None else tuple(x.shape)


def _require_tensor(name: str, x: Any) -> None:
    if x is not None and not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__} (convert it with torch.as_tensor)")


def validate(z1, z2, negatives, labels, negative_labels, hp: dict, memory_budget, *,
             unknown_batch: bool = False) -> Problem:
    """Validate a call; return the shared :class:`hardneg.validation.Problem`.

    ``unknown_batch`` (used under gather) hides this rank's batch size from the shared checks, so that
    B = 1 on one rank is accepted here and the global batch is checked after the gather.
    """
    for name, x in (("z1", z1), ("z2", z2), ("negatives", negatives), ("labels", labels),
                    ("negative_labels", negative_labels)):
        _require_tensor(name, x)
    hide = (lambda s: None if s is None else (None,) + s[1:]) if unknown_batch else (lambda s: s)
    problem = check_call(
        z1_shape=hide(_shape(z1)),
        z2_shape=hide(_shape(z2)),
        z1_dtype=dtype_name(z1),
        z2_dtype=dtype_name(z2),
        negatives_shape=_shape(negatives) if negatives is None or negatives.dim() != 3 else hide(_shape(negatives)),
        negatives_dtype=dtype_name(negatives),
        labels_shape=_shape(labels),
        labels_dtype=dtype_name(labels),
        negative_labels_shape=(_shape(negative_labels) if negative_labels is None or negative_labels.dim() != 2
                               else hide(_shape(negative_labels))),
        negative_labels_dtype=dtype_name(negative_labels),
        **hp,
    )
    check_memory_budget(memory_budget)
    device = z1.device
    for name, x in (("z2", z2), ("negatives", negatives), ("labels", labels), ("negative_labels", negative_labels)):
        if x is not None and x.device != device:
            raise ValueError(
                f"{name} is on device {x.device} but z1 is on {device}; all tensor arguments of hcl_loss must be "
                f"on the same device (move them with .to(z1.device))"
            )
    return problem
