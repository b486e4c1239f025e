"""Checks callable from a failure snippet: framework outputs in, the same verdict as ``verify``, AssertionError out.

A snippet printed by ``hardneg verify`` builds the inputs, calls the target with explicit framework code and hands
the raw outputs to one of these functions, which convert them to float64 NumPy, evaluate the reference at the
same inputs, derive the same tolerances as the suite (:mod:`conformance.tolerances`) and raise ``AssertionError``
with the discrepancy when the target does not conform.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import numpy as np

from . import checks
from .cases import Case
from .tolerances import bounds

__all__ = ["to_numpy64", "dtype_name", "check", "check_same", "check_permutation", "check_rescaling",
           "check_closed_form", "check_raises", "make_case"]


def dtype_name(x) -> Optional[str]:
    """Canonical dtype name of a NumPy/PyTorch/JAX/TensorFlow array ("float32", "bfloat16", ...)."""
    if x is None or not hasattr(x, "dtype"):
        return None
    dt = x.dtype
    name = getattr(dt, "name", None)
    if isinstance(name, str) and name:
        return name
    return str(dt).replace("torch.", "")


def to_numpy64(x) -> Optional[np.ndarray]:
    """Any framework's array as float64 NumPy (a copy; gradients detached)."""
    if x is None:
        return None
    mod = type(x).__module__
    if mod.startswith("torch"):
        return x.detach().to("cpu").double().numpy()
    if mod.startswith("tensorflow") or hasattr(x, "numpy") and "tensorflow" in mod:
        import tensorflow as tf

        return tf.cast(x, tf.float64).numpy()
    a = np.asarray(x)
    return a.astype(np.float64)


def make_case(z1, z2, *, dtype, cotangent=1.0, negatives=None, labels=None, negative_labels=None,
              exact_ties=False, temperature_grad=False, **params) -> Case:
    full = dict(temperature=0.5, beta=1.0, tau_plus=0.1, estimator="hard", clamp=True, normalize=True,
                reduction="mean")
    full.update({k: v for k, v in params.items() if k in full or k in ("layout", "symmetric")})
    arr = lambda v: None if v is None else np.asarray(v, dtype=np.float64)  # noqa: E731
    return Case(z1=arr(z1), z2=arr(z2), negatives=arr(negatives),
                labels=None if labels is None else np.asarray(labels),
                negative_labels=None if negative_labels is None else np.asarray(negative_labels),
                params=full, dtype=dtype, cotangent=cotangent, temperature_grad=bool(temperature_grad),
                origin={"exact_ties": True} if exact_ties else {})


def _grads64(grads) -> Optional[Dict[str, np.ndarray]]:
    if grads is None:
        return None
    return {k: (None if g is None else to_numpy64(g)) for k, g in grads.items()}


def _finish(res: checks.CheckResult, what: str):
    if res.skipped:
        print(f"{what}: not compared ({res.skipped})")
        return res
    parts = []
    if res.value_frac is not None:
        parts.append(f"worst value error {res.value_frac:.3g} x tolerance")
    if res.grad_frac is not None:
        parts.append(f"worst gradient error {res.grad_frac:.3g} x tolerance")
    print(f"{what}: " + (", ".join(parts) if parts else "compared"))
    if not res.ok:
        raise AssertionError(res.message())
    print("conforms")
    return res


def check(value, grads, z1, z2, *, dtype, cotangent=1.0, negatives=None, labels=None, negative_labels=None,
          check_dtypes: bool = True, exact_ties: bool = False, temperature_grad: bool = False,
          **params) -> checks.CheckResult:
    """Compare a target's outputs on these inputs with the float64 reference; AssertionError if they differ.

    ``value`` and ``grads`` (``{"z1": ..., "z2": ..., "negatives": ...}``, with ``"temperature"`` when
    ``temperature_grad``, or None) are the target's outputs in any framework; the inputs are the float64 arrays
    the target's tensors were made from (exactly).
    """
    case = make_case(z1, z2, dtype=dtype, cotangent=cotangent, negatives=negatives, labels=labels,
                     negative_labels=negative_labels, exact_ties=exact_ties, temperature_grad=temperature_grad,
                     **params)
    g64 = _grads64(grads)
    res = checks.compare(case, to_numpy64(value), g64, value_dtype=dtype_name(value),
                         grad_dtypes=None if grads is None else {k: dtype_name(g) for k, g in grads.items()},
                         check_dtypes=check_dtypes)
    rv, _ = case.reference(want_grad=False)
    print(f"value {np.array2string(to_numpy64(value), precision=17)}  reference "
          f"{np.array2string(rv, precision=17)}")
    return _finish(res, "comparison with the reference")


def check_same(value1, grads1, value2, grads2) -> checks.CheckResult:
    """Determinism: two calls on the same inputs must agree to the bit (NaNs in the same places)."""
    res = checks.CheckResult(check="determinism")
    pairs = [("value", value1, value2)] + [(f"gradient of {k}", grads1[k], grads2[k]) for k in (grads1 or {})]
    for what, a, b in pairs:
        a, b = to_numpy64(a), to_numpy64(b)
        if a.shape != b.shape or not np.array_equal(a, b, equal_nan=True):
            diff = np.nanmax(np.abs(a - b)) if a.shape == b.shape else "shape"
            res.fail(f"{what} differs between two identical calls (max difference {diff})")
    return _finish(res, "determinism")


def _relation(res, what, got, want, tol, dtype):
    frac = checks._value_check(res, what, got, want, tol, dtype)
    return frac


def check_permutation(value1, grads1, value2, grads2, *, inputs1: Dict[str, Any], inputs2: Dict[str, Any],
                      anchor_perm, row_perm, bank_perm=None, dtype, cotangent, cotangent2=None, **params):
    """Permuting the pairs permutes the outputs: ``value2 == value1[anchor_perm]`` ("none") or equal, gradients
    permuted by ``row_perm`` (a shared bank's rows by ``bank_perm``), within the sum of both calls' tolerances."""
    c1 = make_case(dtype=dtype, cotangent=cotangent, **inputs1, **params)
    c2 = make_case(dtype=dtype, cotangent=cotangent if cotangent2 is None else cotangent2, **inputs2, **params)
    res = relation_permutation(c1, to_numpy64(value1), _grads64(grads1), c2, to_numpy64(value2), _grads64(grads2),
                               np.asarray(anchor_perm), np.asarray(row_perm),
                               None if bank_perm is None else np.asarray(bank_perm))
    return _finish(res, "pair permutation")


def relation_permutation(c1, v1, g1, c2, v2, g2, anchor, rows, bank) -> checks.CheckResult:
    res = checks.CheckResult(check="invariance: pair permutation")
    b1 = bounds(c1, want_grad=g1 is not None)
    b2 = bounds(c2, want_grad=g1 is not None)
    if b1.ill_posed or b2.ill_posed:
        res.skipped = "ill-posed (clamp=False boundary)"
        return res
    perm_v = (lambda x: x[anchor]) if c1.params["reduction"] == "none" else (lambda x: x)
    res.value_frac = _relation(res, "value after permuting the pairs", v2, perm_v(v1),
                               perm_v(b1.value) + b2.value, c1.dtype)
    if g1 is None or b1.alternatives or b2.alternatives or b1.tie_anchors or b2.tie_anchors:
        return res  # gradients on either side of a kink / tie may legitimately differ
    worst = 0.0
    for k in c1.arrays:
        p = bank if (k == "negatives" and c1.negatives.ndim == 2) else rows
        worst = max(worst, _relation(res, f"gradient of {k} after permuting the pairs", g2[k], g1[k][p],
                                     b1.grads[k][p] + b2.grads[k], c1.dtype))
    res.grad_frac = worst
    return res


def check_rescaling(value1, grads1, value2, grads2, *, inputs1: Dict[str, Any], inputs2: Dict[str, Any],
                    factors: Dict[str, Any], dtype, cotangent, **params):
    """Under normalize=True, multiplying rows by positive factors leaves the value unchanged and divides each
    row's gradient by its factor."""
    c1 = make_case(dtype=dtype, cotangent=cotangent, **inputs1, **params)
    c2 = make_case(dtype=dtype, cotangent=cotangent, **inputs2, **params)
    res = relation_rescaling(c1, to_numpy64(value1), _grads64(grads1), c2, to_numpy64(value2), _grads64(grads2),
                             {k: np.asarray(v) for k, v in factors.items()})
    return _finish(res, "row rescaling")


def relation_rescaling(c1, v1, g1, c2, v2, g2, factors) -> checks.CheckResult:
    res = checks.CheckResult(check="invariance: row rescaling")
    b1 = bounds(c1, want_grad=g1 is not None)
    b2 = bounds(c2, want_grad=g1 is not None)
    if b1.ill_posed or b2.ill_posed:
        res.skipped = "ill-posed (clamp=False boundary)"
        return res
    res.value_frac = _relation(res, "value after rescaling rows", v2, v1, b1.value + b2.value, c1.dtype)
    if g1 is None or b1.alternatives or b2.alternatives or b1.tie_anchors or b2.tie_anchors:
        return res
    worst = 0.0
    for k in c1.arrays:
        f = factors[k]
        worst = max(worst, _relation(res, f"gradient of {k} x row factor after rescaling rows", g2[k] * f, g1[k],
                                     b1.grads[k] + b2.grads[k] * f, c1.dtype))
    res.grad_frac = worst
    return res


def check_closed_form(value, z1, z2, *, dtype, negatives=None, labels=None, negative_labels=None, **params):
    """The value against an independent closed form (debiased beta = 0, NT-Xent, beta = inf)."""
    case = make_case(z1, z2, dtype=dtype, negatives=negatives, labels=labels, negative_labels=negative_labels,
                     **params)
    res = relation_closed_form(case, to_numpy64(value))
    return _finish(res, "closed form")


def relation_closed_form(case: Case, value: np.ndarray) -> checks.CheckResult:
    res = checks.CheckResult(check="special case: closed form")
    b = bounds(case, want_grad=False)
    if b.ill_posed:
        res.skipped = "ill-posed (clamp=False boundary)"
        return res
    want = checks.reduce(checks.closed_form_loss(case), case.params["reduction"])
    name = "NT-Xent" if case.params["estimator"] == "easy" or case.params["beta"] == 0 and \
        case.params["tau_plus"] == 0 else ("beta = inf" if math.isinf(case.params["beta"]) else "debiased (beta = 0)")
    if name == "NT-Xent" and case.layout == "cross":
        name = "CLIP" if case.symmetric else "MultipleNegativesRankingLoss"
    # the closed form is a second float64 evaluation: its error is within the reference's share of the bound
    res.value_frac = _relation(res, f"value vs the {name} closed form", value, want, 2 * b.value, case.dtype)
    return res


def check_raises(call, expected: BaseException, type_only: bool = False):
    """The error contract: ``call()`` must raise ``expected``'s type with exactly its message (its type only with
    ``type_only``, as ``hardneg verify --errors type``)."""
    try:
        call()
    except Exception as e:  # noqa: BLE001
        got = e
    else:
        got = None
    res = checks.check_error(got, expected, type_only=type_only)
    if got is not None:
        print(f"raised {type(got).__name__}: {got}")
    return _finish(res, "error contract")
