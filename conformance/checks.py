"""The checks: agreement with the reference, the error contract, special cases, invariances, non-finite inputs.

Each check returns a :class:`CheckResult`; ``fractions`` are ``max |target - expected| / tolerance`` (1 is the
limit) with the tolerances of :mod:`conformance.tolerances`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .cases import HUGE, Case
from .tolerances import Bounds, bounds, representable

__all__ = [
    "CheckResult", "compare", "error_cases", "ErrorCase", "check_error", "closed_form_loss", "permuted",
    "rescaled", "with_nonfinite", "exact_tie_cases",
]


@dataclass
class CheckResult:
    """Outcome of one check on one example."""

    ok: bool = True
    value_frac: Optional[float] = None
    grad_frac: Optional[float] = None
    problems: List[str] = field(default_factory=list)
    skipped: Optional[str] = None
    check: str = "comparison with the reference"

    def fail(self, msg: str) -> "CheckResult":
        self.ok = False
        self.problems.append(msg)
        return self

    def message(self) -> str:
        return "; ".join(self.problems)


def _frac(err: np.ndarray, tol: np.ndarray) -> float:
    if err.size == 0:
        return 0.0
    with np.errstate(all="ignore"):
        r = np.where(err == 0, 0.0, err / tol)
    return float(np.max(r)) if r.size else 0.0


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def compare(case: Case, value: np.ndarray, grads: Optional[Dict[str, np.ndarray]], *,
            value_dtype: Optional[str] = None, grad_dtypes: Optional[Dict[str, str]] = None,
            check_dtypes: bool = True, expected: Optional[Tuple[Any, Any]] = None,
            tol: Optional[Bounds] = None) -> CheckResult:
    """Compare a target's value (and gradients, when given) on ``case`` with the float64 reference.

    ``expected`` overrides the reference ``(value, Grads)``; ``tol`` the bounds.
    """
    res = CheckResult()
    rv, rg = expected if expected is not None else case.reference(want_grad=grads is not None)
    rv = np.asarray(rv, dtype=np.float64)
    finite_inputs = case.finite_inputs
    if tol is None and not finite_inputs:  # every expected output is NaN (spec section 6): nothing to bound
        tol = Bounds(value=np.zeros_like(rv), grads={k: np.zeros_like(v) for k, v in case.arrays.items()})
        if case.temperature_grad:
            tol.grads["temperature"] = np.zeros(())
    b = tol if tol is not None else bounds(case, rv, rg, want_grad=grads is not None)
    if b.ill_posed:
        res.skipped = ("an anchor sits on the clamp=False boundary D = 0 within rounding: the spec's value is NaN "
                       "on one side")
        return res
    value = np.asarray(value, dtype=np.float64)
    # shapes and dtypes (spec section 7)
    if value.shape != rv.shape:
        return res.fail(f"value has shape {value.shape}, expected {rv.shape} (reduction={case.params['reduction']!r})")
    if check_dtypes and value_dtype is not None and value_dtype != case.dtype:
        res.fail(f"value returned as {value_dtype}, expected the input dtype {case.dtype}")
    res.value_frac = _value_check(res, "value", value, rv, b.value, case.dtype)
    if grads is None:
        return res
    names = list(case.arrays) + (["temperature"] if case.temperature_grad else [])
    for k in names:
        returned_grad(res, k, grads.get(k), _ref_grad(rg, k), grad_dtypes, case.dtype, check_dtypes)
    if not res.ok:
        return res
    # the clamp's kink: accept the branch the target chose (every subset of kink anchors flipped)
    best, best_detail = math.inf, None
    alts = b.alternatives
    for r in range(len(alts) + 1):
        for subset in itertools.combinations(range(len(alts)), r):
            sub = CheckResult()
            worst = 0.0
            for k in names:
                delta = sum((alts[i][k] for i in subset), np.zeros_like(_ref_grad(rg, k)))
                # the other branch's value is rounded to the output dtype too
                tol_k = b.grads[k] + b.output_roundoff * np.abs(delta)
                worst = max(worst, _value_check(sub, f"gradient of {k}", np.asarray(grads[k], dtype=np.float64),
                                                _ref_grad(rg, k) + delta, tol_k, case.dtype))
            key = (not sub.ok, worst)
            if best_detail is None or key < (not best_detail.ok, best):
                best, best_detail = worst, sub
        if best_detail is not None and best_detail.ok and best <= 1.0:
            break
    fr = best
    res.grad_frac = fr
    for p in best_detail.problems:
        res.fail(p)
    return res


def returned_grad(res: CheckResult, k: str, got: Any, want: np.ndarray, grad_dtypes: Optional[Dict[str, str]],
                  dtype: str, check_dtypes: bool) -> Optional[np.ndarray]:
    """The target's gradient of input ``k`` as float64, or None (the reason recorded in ``res``) when it is
    missing or has the wrong shape; a wrong dtype is recorded too, but the values are still returned."""
    if got is None:
        res.fail(f"no gradient for {k}")
        return None
    g = np.asarray(got, dtype=np.float64)
    if g.shape != want.shape:
        res.fail(f"gradient of {k} has shape {g.shape}, expected {want.shape}")
        return None
    if check_dtypes and grad_dtypes and grad_dtypes.get(k) not in (None, dtype):
        res.fail(f"gradient of {k} returned as {grad_dtypes[k]}, expected the input dtype {dtype}")
    return g


def _ref_grad(rg, k: str) -> np.ndarray:
    """The reference's gradient of input ``k`` ("temperature": d loss / d t, a 0-d array) as float64."""
    return np.asarray(getattr(rg, k), dtype=np.float64)


def _value_check(res: CheckResult, what: str, got: np.ndarray, want: np.ndarray, tol: np.ndarray, dtype: str) -> float:
    """NaN pattern, finiteness where representable, then |got - want| <= tol; returns the worst fraction."""
    want_nan = np.isnan(want)
    got_nan = np.isnan(got)
    if np.any(want_nan & ~got_nan):
        idx = np.argwhere(want_nan & ~got_nan)[0]
        res.fail(f"{what}: expected NaN (spec section 6) at {tuple(int(i) for i in idx)}, got {got[tuple(idx)]!r}")
    # finite required where every value within the tolerance of the reference fits the output dtype
    rep = representable(np.abs(want) + np.broadcast_to(tol, want.shape), dtype) & ~want_nan
    bad = rep & ~np.isfinite(got)
    if np.any(bad):
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        res.fail(f"{what}: non-finite {got[idx]!r} at {idx} where the reference is finite ({want[idx]!r})")
    err = np.where(rep & np.isfinite(got), np.abs(got - want), 0.0)
    tolb = np.broadcast_to(tol, err.shape)
    frac = _frac(err, tolb)
    if frac > 1.0:
        with np.errstate(all="ignore"):
            r = np.where(err == 0, 0.0, err / tolb)
        idx = tuple(int(i) for i in np.unravel_index(np.argmax(r), r.shape)) if r.ndim else ()
        g, w, t = (float(np.asarray(x)[idx]) for x in (got, want, tolb))
        where = f" at {idx}" if idx else ""
        res.fail(f"{what}{where}: {g!r} vs reference {w!r}, error {_fmt(abs(g - w))} = {_fmt(frac)} x tolerance "
                 f"{_fmt(t)}")
    return frac


# ---------------------------------------------------------------------------------------------------------------
# The error contract (spec section 10): every bad input raises the reference's exception and message.


@dataclass
class ErrorCase:
    """A bad call: NumPy arrays (any dtype/shape) and keyword arguments, and the options it needs."""

    name: str
    arrays: Dict[str, Optional[np.ndarray]]
    kwargs: Dict[str, Any]
    needs: Tuple[str, ...] = ()


def error_cases(dtype: str = "float64") -> List[ErrorCase]:
    """Every condition of spec section 10 (and validation.py), on a small valid base call in ``dtype``
    (float64, or float32 for a target without float64)."""
    rng = np.random.default_rng(0)
    B, d, K = 3, 4, 5
    f = lambda *s: rng.standard_normal(s).round(2).astype(dtype)  # noqa: E731
    z1, z2 = f(B, d), f(B, d)
    base = {"z1": z1, "z2": z2}
    other = "float32" if dtype == "float64" else "float64"
    lab = np.array([0, 1, 0])
    out: List[ErrorCase] = []

    def add(name, arrays=None, needs=(), **kw):
        out.append(ErrorCase(name, {**base, **(arrays or {})}, kw, needs))

    for v in ("0.5", None):
        add(f"temperature={v!r}", temperature=v)
    for v in (0.0, -1.0, math.nan, math.inf, 1e-320):
        add(f"temperature={v!r}", temperature=v)
    for v in ("1", -0.5, math.nan):
        add(f"beta={v!r}", beta=v)
    for v in ("0.1", -0.1, 1.0, 1.5, math.nan):
        add(f"tau_plus={v!r}", tau_plus=v)
    add("estimator='medium'", estimator="medium")
    add("reduction='avg'", reduction="avg")
    add("clamp=1", clamp=1)
    add("clamp='yes'", clamp="yes")
    add("normalize=0", normalize=0)
    add("z1, z2 1-D", {"z1": z1[0], "z2": z2[0]})
    add("z1, z2 3-D", {"z1": z1[None], "z2": z2[None]})
    add("z1, z2 shapes differ", {"z2": f(B, d + 1)})
    add("B = 0", {"z1": f(0, d), "z2": f(0, d)})
    add("d = 0", {"z1": f(B, 0), "z2": f(B, 0)})
    add("integer z1, z2", {"z1": np.ones((B, d), dtype=np.int64), "z2": np.ones((B, d), dtype=np.int64)})
    add("z1, z2 dtypes differ", {"z2": z2.astype(other)}, needs=(other,))
    add("B = 1 without a bank", {"z1": z1[:1], "z2": z2[:1]})
    add("negatives (K, d+1)", {"negatives": f(K, d + 1)}, needs=("shared",))
    add("negatives (B+1, K, d)", {"negatives": f(B + 1, K, d)}, needs=("per_anchor",))
    add("negatives 4-D", {"negatives": f(B, K, d, 1)}, needs=("shared",))
    add("negatives K = 0", {"negatives": f(0, d)}, needs=("shared",))
    add("negatives of another dtype", {"negatives": f(K, d).astype(other)}, needs=("shared", other))
    add("integer negatives", {"negatives": np.ones((K, d), dtype=np.int64)}, needs=("shared",))
    add("labels of length B+1", {"labels": np.array([0, 1, 0, 1])}, needs=("labels",))
    add("labels 2-D", {"labels": lab[:, None]}, needs=("labels",))
    add("float labels", {"labels": lab.astype(np.float64)}, needs=("labels",))
    add("negative_labels without a bank", {"labels": lab, "negative_labels": np.zeros(K, dtype=np.int64)},
        needs=("labels",))
    add("negative_labels without labels", {"negatives": f(K, d), "negative_labels": np.zeros(K, dtype=np.int64)},
        needs=("shared",))
    add("negative_labels of the wrong shape",
        {"negatives": f(K, d), "labels": lab, "negative_labels": np.zeros(K + 1, dtype=np.int64)},
        needs=("labels_bank", "shared"))
    add("labels with a bank, no negative_labels", {"negatives": f(K, d), "labels": lab},
        needs=("labels_bank", "shared"))
    add("float negative_labels",
        {"negatives": f(K, d), "labels": lab, "negative_labels": np.zeros(K, dtype=np.float64)},
        needs=("labels_bank", "shared"))
    # spec 1.1: layouts, symmetric, a temperature tensor
    add("layout='clip'", needs=("layout",), layout="clip")
    add("layout='in_batch' with a bank", {"negatives": f(K, d)}, needs=("layout", "shared"), layout="in_batch")
    add("layout='bank' without a bank", needs=("layout",), layout="bank")
    add("symmetric=1", needs=("cross",), layout="cross", symmetric=1)
    add("symmetric=False without layout", needs=("layout",), symmetric=False)
    add("symmetric=False with layout='bank'", {"negatives": f(K, d)}, needs=("layout", "shared"), layout="bank",
        symmetric=False)
    add("layout='cross', B = 1 without a bank", {"z1": z1[:1], "z2": z2[:1]}, needs=("cross",), layout="cross")
    add("layout='cross', labels with a bank, no negative_labels", {"negatives": f(K, d), "labels": lab},
        needs=("cross_bank_shared", "cross_labels"), layout="cross")
    add("temperature tensor of an integer dtype", {"temperature": np.array(1, dtype=np.int32)},
        needs=("temperature_tensor",))
    add("temperature tensor of shape (2,)", {"temperature": np.array([0.5, 0.5], dtype=dtype)},
        needs=("temperature_tensor",))
    return out


def expected_error(ec: ErrorCase) -> Optional[BaseException]:
    """The reference's exception for this bad call (None if the reference accepts it)."""
    import hardneg
    from hardneg.validation import check_temperature_tensor

    arrays = ec.arrays
    if "temperature" in arrays:  # a framework tensor temperature: its dtype and rank are checked (spec 1.1)
        t = np.asarray(arrays["temperature"])
        try:
            check_temperature_tensor(t.shape, t.dtype.name)
        except Exception as e:  # noqa: BLE001
            return e
        arrays = {k: v for k, v in arrays.items() if k != "temperature"}
    try:
        hardneg.hcl_loss(arrays["z1"], arrays["z2"], **{k: v for k, v in arrays.items() if k not in ("z1", "z2")},
                         **ec.kwargs)
    except Exception as e:  # noqa: BLE001 - the exception is the expected result
        return e
    return None


def check_error(got: Optional[BaseException], want: BaseException, type_only: bool = False) -> CheckResult:
    """``got`` must be ``want``'s type and (unless ``type_only``, ``--errors type``) carry exactly its message."""
    res = CheckResult(check="error contract")
    if got is None:
        return res.fail(f"accepted the bad input; expected {type(want).__name__}: {want}")
    if not isinstance(got, type(want)) or (not type_only and str(got) != str(want)):
        res.fail(f"raised {type(got).__name__}: {got}; expected {type(want).__name__}: {want}")
    return res


# ---------------------------------------------------------------------------------------------------------------
# Special cases (spec section 4) by closed forms written independently of the reference.


def closed_form_loss(case: Case) -> np.ndarray:
    """Per-anchor loss of the debiased loss (beta = 0), NT-Xent (easy, or beta = tau+ = 0 unclamped) or beta = inf.

    Direct float64 formulas (log-sum-exp and the clamp as a max), not the reference's code path.
    """
    from .tolerances import _layout

    lay = _layout(case)
    p = case.params
    t = float(p["temperature"])
    S, mask, a = lay["S"], lay["mask"], lay["a"]
    M = mask.sum(1)
    out = np.zeros(len(a))
    for i in range(len(a)):
        if M[i] == 0:
            continue
        s = S[i, mask[i]]
        mx = s.max()
        if p["estimator"] == "easy":
            logng = math.log(np.exp(s - mx).sum()) + mx  # NT-Xent: Ng = sum of e^s
            out[i] = np.logaddexp(0.0, logng - a[i])
            continue
        beta, tau = float(p["beta"]), float(p["tau_plus"])
        if math.isinf(beta):
            logR = math.log(M[i]) + mx
        else:  # beta = 0 here: R = sum_j e^{s_j}
            logR = math.log(np.exp((1 + beta) * (s - mx)).sum()) - math.log(np.exp(beta * (s - mx)).sum()) \
                + math.log(M[i]) + mx
        # Ng = (R - tau M e^a)/(1 - tau), relative to e^a to stay finite
        ng_rel = (math.exp(logR - a[i]) - tau * M[i]) / (1 - tau)
        if p["clamp"]:
            ng_rel = max(ng_rel, M[i] * math.exp(-1 / t - a[i]))
        out[i] = math.log1p(ng_rel) if ng_rel > -1 else math.nan
    return out


def reduce(loss: np.ndarray, reduction: str) -> np.ndarray:
    if reduction == "mean":
        return np.asarray(loss.mean())
    if reduction == "sum":
        return np.asarray(loss.sum())
    return loss


def exact_tie_cases(dtype: str = "float64") -> List[Case]:
    """beta = inf with maxima tied in *exact* arithmetic: signed basis vectors, temperatures powers of 2.

    Every dot product is -1, 0 or 1 exactly and every norm 1, whatever the summation order, so the target's
    logits tie exactly and the spec's even split of the gradient over tied maxima is checked without slack.
    """
    out = []
    e = np.eye(4)
    configs = [
        # z1 rows, z2 rows, bank (None = in-batch)
        (np.stack([e[0], e[1], e[0]]), np.stack([e[0], e[1], e[2]]), None),
        (np.stack([e[0], e[1]]), np.stack([e[0], -e[1]]), None),
        (np.stack([e[0], e[2]]), np.stack([e[1], e[2]]), np.stack([e[0], e[0], e[3], -e[0]])),
        (np.stack([e[0], e[1]]), np.stack([e[0], e[1]]), np.stack([[e[2], e[2], e[1]], [e[0], e[0], e[0]]])),
    ]
    for i, (z1, z2, bank) in enumerate(configs):
        t, tau = (0.5, 0.25)[i % 2], (0.0, 0.1, 0.5, 0.9)[i]
        for red, cot in (("mean", 1.0), ("none", None)):
            A = 2 * len(z1) if bank is None else len(z1)
            c = np.round(np.linspace(-1.0, 2.0, A) * 4) / 4 if cot is None else cot
            out.append(Case(
                z1=z1.copy(), z2=z2.copy(), negatives=None if bank is None else bank.copy(), dtype=dtype,
                params=dict(temperature=t, beta=math.inf, tau_plus=tau, estimator="hard", clamp=True,
                            normalize=True, reduction=red),
                cotangent=c, origin={"exact_ties": True},
            ))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Metamorphic relations.


def permuted(case: Case, rng: np.random.Generator):
    """The case with its pairs (and a shared bank's rows) permuted; maps to compare the two outputs.

    Returns ``(case2, anchor_perm, row_perm, bank_perm)``: ``value2 == value[anchor_perm]`` ("none"),
    ``grad2.z* == grad.z*[row_perm]`` and ``grad2.negatives == grad.negatives[bank_perm]``.
    """
    B = case.z1.shape[0]
    P = rng.permutation(B)
    if B > 1 and np.array_equal(P, np.arange(B)):  # the identity would check nothing
        P = np.roll(P, 1)
    c2 = replace(case, z1=case.z1[P], z2=case.z2[P], params=dict(case.params), extras=dict(case.extras),
                 origin=dict(case.origin))
    c2.labels = None if case.labels is None else case.labels[P]
    Q = None
    if case.negatives is not None:
        if case.negatives.ndim == 3:
            c2.negatives = case.negatives[P]
            c2.negative_labels = None if case.negative_labels is None else case.negative_labels[P]
            Q = P
        else:
            Q = rng.permutation(case.negatives.shape[0])
            c2.negatives = case.negatives[Q]
            c2.negative_labels = None if case.negative_labels is None else case.negative_labels[Q]
    anchor = np.concatenate([P, P + B]) if case.n_anchors == 2 * B else P
    if case.params["reduction"] == "none":
        c2.cotangent = np.asarray(case.cotangent)[anchor]
    return c2, anchor, P, Q


def rescaled(case: Case, rng: np.random.Generator):
    """The case with each row multiplied by a power of two (exact), and the factors ``{name: (rows, 1) array}``.

    Under normalize=True the value is unchanged and each row's gradient divides by its factor.
    """
    from .cases import TINY

    factors = {}
    c2 = replace(case, params=dict(case.params), extras=dict(case.extras), origin=dict(case.origin))
    for k, x in case.arrays.items():
        f = 2.0 ** rng.integers(-3, 4, size=x.shape[:-1] + (1,))
        # rows at or below the normalisation epsilon are not scale-invariant (u = z / 1e-12): keep them
        norm = np.linalg.norm(x, axis=-1, keepdims=True)
        f = np.where((norm > 2e-12) & (norm * f > 2e-12), f, 1.0)
        y = x * f
        # stay inside the dtype's normal range so that the scaling is exact
        nz = x != 0
        if np.any(np.abs(y) > HUGE[case.dtype]) or np.any(nz & (np.abs(y) < TINY[case.dtype])) or \
                np.any(nz & (np.abs(x) < TINY[case.dtype])):
            f = np.ones_like(f)
            y = x
        factors[k] = f
        setattr(c2, k, y)
    return c2, factors


#: Values of a tensor temperature that the spec (1.1, section 6) maps to NaN outputs.
BAD_TEMPERATURES = {"t=0": 0.0, "t<0": -0.5, "t=nan": math.nan, "t=inf": math.inf}


def with_nonfinite(case: Case, rng: np.random.Generator, kind: str) -> Case:
    """The case with one element of z1, z2 or the bank replaced by NaN, inf or -inf; or (kinds of
    :data:`BAD_TEMPERATURES`) with a tensor temperature that is <= 0 or not finite."""
    c2 = replace(case, params=dict(case.params), extras=dict(case.extras), origin=dict(case.origin))
    if kind in BAD_TEMPERATURES:
        c2.params["temperature"] = BAD_TEMPERATURES[kind]
        c2.temperature_grad = True
        c2.origin["nonfinite"] = ("temperature", (), kind)
        return c2
    names = list(case.arrays)
    name = names[int(rng.integers(0, len(names)))]
    x = getattr(case, name).copy()
    idx = tuple(int(rng.integers(0, s)) for s in x.shape)
    x[idx] = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}[kind]
    setattr(c2, name, x)
    c2.origin["nonfinite"] = (name, idx, kind)
    return c2
