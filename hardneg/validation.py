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
    "LAYOUTS",
    "FLOAT_DTYPES",
    "INT_DTYPES",
    "NORM_EPS",
    "Problem",
    "check_call",
    "check_hyperparameters",
    "check_temperature_tensor",
    "check_memory_budget",
    "check_learned_temperature",
    "CONVENTIONS",
    "JsdProblem",
    "check_jsd_call",
    "check_jsd_batch_values",
]


class _Unknown:
    """Sentinel for a value that is not available at trace time."""

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return "UNKNOWN"


UNKNOWN: Any = _Unknown()

ESTIMATORS = ("hard", "easy")
REDUCTIONS = ("mean", "sum", "none")
#: Values of the ``layout`` keyword (spec 1.1, section 3); ``None`` resolves to "in_batch" or "bank".
LAYOUTS = ("in_batch", "bank", "cross")
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
        ``"none"`` (no bank), ``"shared"`` ((K, d) bank) or ``"per_anchor"`` ((B, K, d)).
    bank_size : int or None
        K, rows of the bank; ``None`` without a bank.
    n_anchors : int or None
        The length of the ``reduction="none"`` output: 2B in-batch, B with layout "bank",
        2B cross symmetric, B cross one-way (``None`` when B is unknown).
    labelled : bool
        Whether ``labels`` were given.
    layout : str
        The resolved layout, one of :data:`LAYOUTS`: ``layout=None`` gives "in_batch" without a bank
        and "bank" with one (spec 1.0).
    symmetric : bool
        The ``symmetric`` argument: False only for the one-way cross layout (always True otherwise).
    """

    batch: Optional[int]
    dim: Optional[int]
    bank: str
    bank_size: Optional[int]
    n_anchors: Optional[int]
    labelled: bool
    layout: str = "in_batch"
    symmetric: Any = True


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


def check_memory_budget(memory_budget: Any) -> Optional[int]:
    """Check the backends' ``memory_budget`` keyword: None (the backend's default) or a positive int of bytes.

    Returns it as a Python int (or None). The backends' extra keyword, checked here so that every backend and
    both ``HCLLoss`` classes raise the same message.
    """
    if memory_budget is None:
        return None
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, numbers.Integral):
        raise TypeError(f"memory_budget must be None or a positive int (bytes); got {memory_budget!r} of type "
                        f"{type(memory_budget).__name__}")
    if memory_budget < 1:
        raise ValueError(f"memory_budget must be None or a positive int (bytes); got {memory_budget!r}")
    return int(memory_budget)


def check_learned_temperature(learn_temperature: Any, min_temperature: Any) -> None:
    """Check the loss classes' ``learn_temperature`` (a bool) and ``min_temperature`` (None, or a temperature —
    finite and > 0 — that only a learned temperature can use)."""
    _check_bool("learn_temperature", learn_temperature)
    if min_temperature is None:
        return
    if not _is_real(min_temperature):
        raise TypeError(f"min_temperature must be None or a real number; got {min_temperature!r} of type "
                        f"{type(min_temperature).__name__}")
    m = float(min_temperature)
    if not (math.isfinite(m) and m > 0.0 and math.isfinite(1.0 / m)):
        raise ValueError(f"min_temperature must be None or finite and > 0; got {min_temperature!r}")
    if not learn_temperature:
        raise ValueError(f"min_temperature needs learn_temperature=True (a fixed temperature has no minimum to "
                         f"enforce); got min_temperature={min_temperature!r}")


def check_temperature_tensor(shape: Sequence[Optional[int]], dtype: Optional[str]) -> None:
    """Check a framework tensor passed as ``temperature`` (spec 1.1): floating dtype, 0-d.

    Its *value* is not checked (no host synchronisation; it may be traced): a tensor temperature
    that is <= 0 or not finite yields NaN for the loss and every gradient. ``dtype`` is a canonical
    name (``None`` if unknown); ``shape`` a tuple (``None`` for an unknown dimension).
    """
    if dtype is not None and dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"temperature tensor must have a floating dtype (float16, bfloat16, float32 or float64); got {dtype}"
        )
    shape = tuple(shape)
    if len(shape) != 0:
        raise ValueError(f"temperature tensor must be 0-d (a scalar); got shape {_fmt_shape(shape)}")


def _check_layout(layout: Any, symmetric: Any, bank: str, negatives_shape: Optional[Shape]) -> str:
    """Resolve ``layout`` against the bank; check ``symmetric``; return the resolved layout."""
    if layout is not None and (not isinstance(layout, str) or layout not in LAYOUTS):
        raise ValueError(f"layout must be one of None, 'in_batch', 'bank', 'cross'; got {layout!r}")
    _check_bool("symmetric", symmetric)
    if layout == "in_batch" and bank != "none":
        raise ValueError(
            "layout='in_batch' takes no negatives bank (the negatives are the other in-batch samples); got "
            f"negatives of shape {_fmt_shape(tuple(negatives_shape or ()))}; use layout='bank' or 'cross', or "
            "layout=None"
        )
    if layout == "bank" and bank == "none":
        raise ValueError("layout='bank' needs a negatives bank of shape (K, d) or (B, K, d); got negatives=None")
    resolved = layout if layout is not None else ("in_batch" if bank == "none" else "bank")
    if symmetric is not UNKNOWN and not symmetric and resolved != "cross":
        raise ValueError(
            f"symmetric=False is only meaningful with layout='cross'; got layout={layout!r} (the in-batch layout "
            "is symmetric by construction, the bank layout has z1's anchors only)"
        )
    return resolved


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
    layout: Any = None,
    symmetric: Any = True,
) -> Problem:
    """Validate one ``hcl_loss`` call; return its :class:`Problem` or raise.

    Shapes are tuples of ints (``None`` for a dimension unknown at trace time); dtypes are
    canonical names such as ``"float32"`` or ``"bfloat16"`` (``None`` if unknown).
    Raises ``TypeError`` for a wrong type or dtype and ``ValueError`` for a wrong value or shape;
    the messages are part of the spec (docs/spec.md, "Errors").
    ``layout`` and ``symmetric`` (spec 1.1) must be known values (``symmetric`` may be UNKNOWN).
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
    resolved = _check_layout(layout, symmetric, bank, negatives_shape)
    if bank == "none" and batch == 1:
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
        if resolved == "cross":  # z2's rows are candidates too: their labels are `labels`; the bank's are missing
            raise ValueError("labels with a negatives bank require negative_labels (the bank rows' labels)")
        raise ValueError(
            "labels with a negatives bank require negative_labels (the bank rows' labels); in-batch samples are "
            "not negatives when a bank is given"
        )

    if batch is None:
        n_anchors = None
    elif resolved == "in_batch":
        n_anchors = 2 * batch
    elif resolved == "bank":
        n_anchors = batch
    elif symmetric is UNKNOWN:
        n_anchors = None
    else:
        n_anchors = 2 * batch if symmetric else batch
    return Problem(
        batch=batch,
        dim=dim,
        bank=bank,
        bank_size=bank_size,
        n_anchors=n_anchors,
        labelled=labels_shape is not None,
        layout=resolved,
        symmetric=symmetric if symmetric is UNKNOWN else bool(symmetric),
    )


# ---------------------------------------------------------------------------------------------
# The graph objective (spec 1.1, section 14): jsd_loss(local, graph, batch, ...).

#: Values of ``jsd_loss``'s ``convention`` keyword (spec section 14).
CONVENTIONS = ("released", "corrected")


@dataclass(frozen=True)
class JsdProblem:
    """What a validated ``jsd_loss`` call computes (``None`` where unknown at trace time).

    Attributes
    ----------
    nodes : int or None
        N, the rows of ``local`` (the length of the ``reduction="none"`` output).
    graphs : int or None
        G, the rows of ``graph`` (each node's negatives are the G - 1 other graphs).
    dim : int or None
        d, the feature dimension.
    """

    nodes: Optional[int]
    graphs: Optional[int]
    dim: Optional[int]


def check_jsd_call(
    *,
    local_shape: Shape,
    graph_shape: Shape,
    batch_shape: Shape,
    local_dtype: Optional[str],
    graph_dtype: Optional[str],
    batch_dtype: Optional[str],
    beta: Any = 1.0,
    tau_plus: Any = 0.5,
    convention: Any = "released",
    reduction: Any = "mean",
) -> JsdProblem:
    """Validate one ``jsd_loss`` call (spec section 14.7); return its :class:`JsdProblem` or raise.

    Shapes are tuples (``None`` for a dimension unknown at trace time), dtypes canonical names (``None`` if
    unknown); ``beta``/``tau_plus`` may be :data:`UNKNOWN`. The values of ``batch`` are checked separately by
    :func:`check_jsd_batch_values`, where they are concrete.
    """
    if beta is not UNKNOWN:
        if not _is_real(beta):
            raise TypeError(f"beta must be a real number; got {beta!r} of type {type(beta).__name__}")
        b = float(beta)
        if not (math.isfinite(b) and b >= 0.0):
            raise ValueError(f"beta must be finite and >= 0 (jsd_loss); got {beta!r}")
    if tau_plus is not UNKNOWN:
        if not _is_real(tau_plus):
            raise TypeError(f"tau_plus must be a real number; got {tau_plus!r} of type {type(tau_plus).__name__}")
        tp = float(tau_plus)
        if not (0.0 <= tp < 1.0):
            raise ValueError(f"tau_plus must satisfy 0 <= tau_plus < 1; got {tau_plus!r}")
    if convention is not UNKNOWN and (not isinstance(convention, str) or convention not in CONVENTIONS):
        raise ValueError(f"convention must be one of 'released', 'corrected'; got {convention!r}")
    if reduction is not UNKNOWN and reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of 'mean', 'sum', 'none'; got {reduction!r}")
    ls, gs, bs = tuple(local_shape), tuple(graph_shape), tuple(batch_shape)
    if len(ls) != 2:
        raise ValueError(f"local must be 2-D of shape (N, d); got shape {_fmt_shape(ls)}")
    if len(gs) != 2:
        raise ValueError(f"graph must be 2-D of shape (G, d); got shape {_fmt_shape(gs)}")
    if not _same(ls[1], gs[1]):
        raise ValueError(
            f"local and graph must have the same feature dimension d; got shapes {_fmt_shape(ls)} and {_fmt_shape(gs)}"
        )
    nodes, graphs = ls[0], gs[0]
    dim = ls[1] if ls[1] is not None else gs[1]
    if nodes is not None and nodes < 1:
        raise ValueError(f"local needs at least one row (N >= 1); got shape {_fmt_shape(ls)}")
    if dim is not None and dim < 1:
        raise ValueError(f"the feature dimension d must be >= 1; got shape {_fmt_shape(ls)}")
    if graphs is not None and graphs < 2:
        raise ValueError(
            f"graph needs at least two rows (G >= 2): with one graph no node has a negative; got shape {_fmt_shape(gs)}"
        )
    _check_float_dtype("local", local_dtype)
    _check_float_dtype("graph", graph_dtype)
    if local_dtype is not None and graph_dtype is not None and local_dtype != graph_dtype:
        raise TypeError(f"local and graph must have the same dtype; got {local_dtype} and {graph_dtype}")
    if len(bs) != 1 or not _same(bs[0], nodes):
        raise ValueError(
            f"batch must be 1-D of shape (N,) = ({'None' if nodes is None else nodes},), one graph index per row of "
            f"local; got shape {_fmt_shape(bs)}"
        )
    if batch_dtype is not None and batch_dtype not in INT_DTYPES:
        raise TypeError(f"batch must have an integer dtype (the graph index of each node); got {batch_dtype}")
    return JsdProblem(nodes=nodes, graphs=graphs, dim=dim)


def check_jsd_batch_values(batch_min: Any, batch_max: Any, graphs: Optional[int]) -> None:
    """Check that concrete ``batch`` values lie in [0, G) (skipped for a traced batch or an unknown G)."""
    if graphs is None or batch_min is None or batch_max is None:
        return
    lo, hi = int(batch_min), int(batch_max)
    if lo < 0 or hi >= graphs:
        raise ValueError(f"batch values must lie in [0, G) = [0, {graphs}); got values from {lo} to {hi}")
