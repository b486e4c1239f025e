"""Argument validation shared by every hardneg implementation.

Pure Python on purpose: the reference and each framework backend call :func:`check_call`
with shapes, dtype *names* and hyper-parameters, so every implementation raises the same
exception with the same message for the same bad input (docs/spec.md, section "Errors").

A backend that cannot see a value at trace time (a JAX tracer, a TF symbolic dimension)
passes :data:`UNKNOWN` for a hyper-parameter or ``None`` for a dimension; such checks are
skipped, everything known is still checked.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple

__all__ = [
    "UNKNOWN",
    "ESTIMATORS",
    "REDUCTIONS",
    "FLOAT_DTYPES",
    "INT_DTYPES",
    "NORM_EPS",
    "Problem",
    "check_call",
    "check_hyperparameters",
]


class _Unknown:
    """Sentinel for a value that is not available at trace time."""

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return "UNKNOWN"


UNKNOWN: Any = _Unknown()

ESTIMATORS = ("hard", "easy")
REDUCTIONS = ("mean", "sum", "none")
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
#: Epsilon of the normalisation u = z / max(||z||_2, NORM_EPS) (spec section 2).
NORM_EPS = 1e-12

Shape = Tuple[Optional[int], ...]


@dataclass(frozen=True)
class Problem:
    """What the validated call computes: layout and sizes (``None`` where unknown).

    Attributes
    ----------
    batch : int or None
        B, the number of pairs (rows of z1 and z2).
    dim : int or None
        d, the feature dimension.
    bank : str
        ``"none"`` (in-batch negatives), ``"shared"`` ((K, d) bank) or ``"per_anchor"`` ((B, K, d)).
    bank_size : int or None
        K, rows of the bank; ``None`` without a bank.
    n_anchors : int or None
        2B in-batch, B with a bank: the length of the ``reduction="none"`` output.
    labelled : bool
        Whether ``labels`` were given.
    """

    batch: Optional[int]
    dim: Optional[int]
    bank: str
    bank_size: Optional[int]
    n_anchors: Optional[int]
    labelled: bool


def _fmt_shape(shape: Sequence[Optional[int]]) -> str:
    return "(" + ", ".join("None" if s is None else str(int(s)) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _is_real(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _check_bool(name: str, value: Any) -> None:
    if value is UNKNOWN:
        return
    numpy_bool = type(value).__module__ == "numpy" and type(value).__name__ in ("bool_", "bool")
    if not (isinstance(value, bool) or numpy_bool):
        raise TypeError(f"{name} must be a bool (True or False); got {value!r} of type {type(value).__name__}")


def check_hyperparameters(
    *,
    temperature: Any,
    beta: Any,
    tau_plus: Any,
    estimator: Any,
    clamp: Any,
    normalize: Any,
    reduction: Any,
) -> None:
    """Check the scalar arguments of ``hcl_loss``; raise TypeError/ValueError as the spec says."""
    if temperature is not UNKNOWN:
        if not _is_real(temperature):
            raise TypeError(f"temperature must be a real number; got {temperature!r} of type {type(temperature).__name__}")
        t = float(temperature)
        if not (math.isfinite(t) and t > 0.0 and math.isfinite(1.0 / t)):
            raise ValueError(f"temperature must be finite and > 0 (with 1/temperature finite); got {temperature!r}")
    if beta is not UNKNOWN:
        if not _is_real(beta):
            raise TypeError(f"beta must be a real number; got {beta!r} of type {type(beta).__name__}")
        b = float(beta)
        if math.isnan(b) or b < 0.0:
            raise ValueError(f"beta must be >= 0 (math.inf allowed, NaN not); got {beta!r}")
    if tau_plus is not UNKNOWN:
        if not _is_real(tau_plus):
            raise TypeError(f"tau_plus must be a real number; got {tau_plus!r} of type {type(tau_plus).__name__}")
        tp = float(tau_plus)
        if not (0.0 <= tp < 1.0):
            raise ValueError(f"tau_plus must satisfy 0 <= tau_plus < 1; got {tau_plus!r}")
    if estimator is not UNKNOWN and estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of 'hard', 'easy'; got {estimator!r}")
    if reduction is not UNKNOWN and reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of 'mean', 'sum', 'none'; got {reduction!r}")
    _check_bool("clamp", clamp)
    _check_bool("normalize", normalize)


def _check_float_dtype(name: str, dtype: Optional[str]) -> None:
    if dtype is not None and dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have a floating dtype (float16, bfloat16, float32 or float64); got {dtype}")


def _check_int_dtype(name: str, dtype: Optional[str]) -> None:
    if dtype is not None and dtype not in INT_DTYPES:
        raise TypeError(f"{name} must have an integer dtype; got {dtype}")


def _same(a: Optional[int], b: Optional[int]) -> bool:
    return a is None or b is None or a == b


def check_call(
    *,
    z1_shape: Shape,
    z2_shape: Shape,
    z1_dtype: Optional[str],
    z2_dtype: Optional[str],
    temperature: Any = 0.5,
    beta: Any = 1.0,
    tau_plus: Any = 0.1,
    estimator: Any = "hard",
    clamp: Any = True,
    normalize: Any = True,
    reduction: Any = "mean",
    negatives_shape: Optional[Shape] = None,
    negatives_dtype: Optional[str] = None,
    labels_shape: Optional[Shape] = None,
    labels_dtype: Optional[str] = None,
    negative_labels_shape: Optional[Shape] = None,
    negative_labels_dtype: Optional[str] = None,
) -> Problem:
    """Validate one ``hcl_loss`` call; return its :class:`Problem` or raise.

    Shapes are tuples of ints (``None`` for a dimension unknown at trace time); dtypes are
    canonical names such as ``"float32"`` or ``"bfloat16"`` (``None`` if unknown).
    Raises ``TypeError`` for a wrong type or dtype and ``ValueError`` for a wrong value or shape;
    the messages are part of the spec (docs/spec.md, "Errors").
    """
    check_hyperparameters(
        temperature=temperature,
        beta=beta,
        tau_plus=tau_plus,
        estimator=estimator,
        clamp=clamp,
        normalize=normalize,
        reduction=reduction,
    )
    z1_shape, z2_shape = tuple(z1_shape), tuple(z2_shape)
    for name, shape in (("z1", z1_shape), ("z2", z2_shape)):
        if len(shape) != 2:
            raise ValueError(f"{name} must be 2-D of shape (B, d); got shape {_fmt_shape(shape)}")
    if not (_same(z1_shape[0], z2_shape[0]) and _same(z1_shape[1], z2_shape[1])):
        raise ValueError(
            f"z1 and z2 must have the same shape (B, d); got {_fmt_shape(z1_shape)} and {_fmt_shape(z2_shape)}"
        )
    batch = z1_shape[0] if z1_shape[0] is not None else z2_shape[0]
    dim = z1_shape[1] if z1_shape[1] is not None else z2_shape[1]
    if batch is not None and batch < 1:
        raise ValueError(f"z1 and z2 need at least one row (B >= 1); got shape {_fmt_shape(z1_shape)}")
    if dim is not None and dim < 1:
        raise ValueError(f"the feature dimension d must be >= 1; got shape {_fmt_shape(z1_shape)}")
    _check_float_dtype("z1", z1_dtype)
    _check_float_dtype("z2", z2_dtype)
    if z1_dtype is not None and z2_dtype is not None and z1_dtype != z2_dtype:
        raise TypeError(f"z1 and z2 must have the same dtype; got {z1_dtype} and {z2_dtype}")

    bank, bank_size = "none", None
    if negatives_shape is not None:
        ns = tuple(negatives_shape)
        if len(ns) == 2:
            bank, bank_size = "shared", ns[0]
            ok = _same(ns[1], dim)
        elif len(ns) == 3:
            bank, bank_size = "per_anchor", ns[1]
            ok = _same(ns[0], batch) and _same(ns[2], dim)
        else:
            ok = False
        if not ok:
            raise ValueError(
                "negatives must have shape (K, d) (one bank shared by all anchors) or (B, K, d) (one bank per "
                f"anchor) with d = {dim} and B = {batch}; got shape {_fmt_shape(ns)}"
            )
        if bank_size is not None and bank_size < 1:
            raise ValueError(f"negatives must hold at least one row (K >= 1); got shape {_fmt_shape(ns)}")
        _check_float_dtype("negatives", negatives_dtype)
        if negatives_dtype is not None and z1_dtype is not None and negatives_dtype != z1_dtype:
            raise TypeError(f"negatives must have the dtype of z1 and z2 ({z1_dtype}); got {negatives_dtype}")
    elif batch == 1:
        raise ValueError(
            "one pair (B = 1) and no negatives: every anchor would have no negative; "
            "pass B >= 2 pairs or a negatives bank"
        )

    if labels_shape is not None:
        ls = tuple(labels_shape)
        if len(ls) != 1 or not _same(ls[0], batch):
            raise ValueError(f"labels must have shape (B,) = ({batch},); got shape {_fmt_shape(ls)}")
        _check_int_dtype("labels", labels_dtype)
    if negative_labels_shape is not None:
        if bank == "none":
            raise ValueError("negative_labels is only meaningful with a negatives bank; got negatives=None")
        if labels_shape is None:
            raise ValueError("negative_labels requires labels (the anchors' labels) as well")
        nls = tuple(negative_labels_shape)
        want: Shape = (bank_size,) if bank == "shared" else (batch, bank_size)
        if len(nls) != len(want) or not all(_same(a, b) for a, b in zip(nls, want)):
            raise ValueError(
                f"negative_labels must have shape {_fmt_shape(want)} to match negatives; got shape {_fmt_shape(nls)}"
            )
        _check_int_dtype("negative_labels", negative_labels_dtype)
    elif labels_shape is not None and bank != "none":
        raise ValueError(
            "labels with a negatives bank require negative_labels (the bank rows' labels); in-batch samples are "
            "not negatives when a bank is given"
        )

    if bank == "none":
        n_anchors = None if batch is None else 2 * batch
    else:
        n_anchors = batch
    return Problem(
        batch=batch,
        dim=dim,
        bank=bank,
        bank_size=bank_size,
        n_anchors=n_anchors,
        labelled=labels_shape is not None,
    )
