"""Tolerances: derived bounds that an honest implementation never exceeds and a wrong one cannot hide under.

No number here is tuned: the bounds come from conformance/tolerances.py's derivation (unit roundoff times the
example's conditioning). These tests check the two properties that make them useful: no false alarm on an honest
float32/float16 implementation, and no blindness to errors well above rounding.
"""

import math

import numpy as np
import pytest

pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402

from conformance import checks  # noqa: E402
from conformance.cases import Case, round_to_dtype  # noqa: E402
from conformance.strategies import Space, cases  # noqa: E402
from conformance.tolerances import anchor_quantities, bounds, spec_gradient  # noqa: E402

EVERYTHING = dict(layouts=("in_batch", "bank", "cross"), banks=("none", "shared", "per_anchor"),
                  symmetric=(True, False), temperature_grad=(False, True), labels=(False, True),
                  estimators=("hard", "easy"), clamps=(True, False), normalizes=(True, False), reductions=("mean", "sum", "none"), betas="any")
QUICK = settings(max_examples=60, database=None, deadline=None, suppress_health_check=list(HealthCheck),
                 phases=[Phase.explicit, Phase.generate])


@QUICK
@seed(11)
@given(cases(Space(dtype="float64", **EVERYTHING)))
def test_conditioning_quantities_match_the_reference(case):
    """The float64 per-anchor quantities the bounds are built from are the reference's own (loss, gradient)."""
    value, grads = case.reference()
    q = anchor_quantities(case)
    loss = checks.reduce(np.where(q.has, q.loss, 0.0), case.params["reduction"])
    b = bounds(case, value, grads)
    if np.isnan(value).any():
        return
    assert np.all(np.abs(loss - value) <= b.value)
    # Spec section 6: gradients are NaN only when some loss is (excluded above); never with finite losses.
    assert not any(np.isnan(getattr(grads, k)).any() for k in case.arrays)
    g = spec_gradient(case)
    for k in case.arrays:
        assert np.all(np.abs(g[k] - getattr(grads, k)) <= b.grads[k]), k
    if case.temperature_grad:  # spec 1.1: d loss / d t, through the logits and the clamp floor
        assert np.abs(g["temperature"] - grads.temperature) <= b.grads["temperature"]


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_an_honest_low_precision_implementation_stays_within_bounds(dtype):
    """The spec transliterated into PyTorch (autograd) never exceeds the bound, over the whole input space."""
    pytest.importorskip("torch")
    from conformance import defects
    from conformance.adapters import get_adapter

    adapter = get_adapter("torch")
    worst = []

    @QUICK
    @seed(12)
    @given(cases(Space(dtype=dtype, **EVERYTHING)))
    def run(case):
        out = adapter.call(defects.transliteration, case)
        res = checks.compare(case, out.value, out.grads, value_dtype=out.value_dtype, grad_dtypes=out.grad_dtypes)
        assert res.ok, f"{case.summary()}: {res.message()}"
        worst.append(max(res.value_frac or 0.0, res.grad_frac or 0.0))

    run()
    assert len(worst) >= 30


def _default_case(dtype):
    rng = np.random.default_rng(0)
    z1, z2 = rng.standard_normal((8, 16)), rng.standard_normal((8, 16))
    return Case(z1=round_to_dtype(z1, dtype), z2=round_to_dtype(z2, dtype), dtype=dtype,
                params=dict(temperature=0.5, beta=1.0, tau_plus=0.1, estimator="hard", clamp=True, normalize=True,
                            reduction="mean"))


@pytest.mark.parametrize("dtype,relative", [("float64", 1e-10), ("float32", 1e-3)])
def test_errors_well_above_rounding_are_rejected(dtype, relative):
    """On a well-conditioned default case an error of `relative` (far above the dtype's rounding) fails,
    in the value alone and in one gradient element alone."""
    case = _default_case(dtype)
    value, g = case.reference()
    grads = {"z1": g.z1, "z2": g.z2}
    assert checks.compare(case, value, grads).ok
    assert not checks.compare(case, value * (1 + relative), grads).ok
    bumped = dict(grads, z2=g.z2.copy())
    bumped["z2"][3, 5] *= 1 + 100 * relative
    assert not checks.compare(case, value, bumped).ok


def test_half_precision_allows_one_rounding_not_two():
    case = _default_case("float16")
    value, g = case.reference()
    grads = {"z1": round_to_dtype(g.z1, "float16"), "z2": round_to_dtype(g.z2, "float16")}
    once = round_to_dtype(value, "float16")
    assert checks.compare(case, once, grads).ok
    ulp = np.spacing(np.float16(once)).astype(np.float64)
    assert not checks.compare(case, once + 2 * ulp, grads).ok


def test_either_branch_of_the_clamp_kink_is_accepted_but_nothing_else():
    """tau+ placed exactly on an anchor's kink: the gradient of either branch conforms (spec section 11)."""
    from conformance.strategies import _tau_at

    rng = np.random.default_rng(3)
    B, d = 4, 3
    z1 = rng.standard_normal((B, d))
    case = Case(z1=z1, z2=z1 + 0.3 * rng.standard_normal((B, d)),
                params=dict(temperature=0.5, beta=1.0, tau_plus=0.1, estimator="hard", clamp=True, normalize=True,
                            reduction="sum"))
    tau = _tau_at(case, "kink", np.random.default_rng(0), 0)
    assert tau is not None
    case.params["tau_plus"] = tau
    value, g = case.reference()
    b = bounds(case, value, g)
    assert b.kink_anchors >= 1 and len(b.alternatives) == b.kink_anchors
    alt = b.alternatives[0]
    other = {k: getattr(g, k) + alt[k] for k in ("z1", "z2")}
    assert max(np.abs(alt[k]).max() for k in alt) > 1e-3  # the branches really differ
    assert checks.compare(case, value, {"z1": g.z1, "z2": g.z2}).ok
    assert checks.compare(case, value, other).ok
    half_way = {k: getattr(g, k) + 0.5 * alt[k] for k in ("z1", "z2")}
    assert not checks.compare(case, value, half_way).ok


def test_tolerance_grows_with_conditioning():
    """Colder temperature and larger beta widen the bound (the logits' magnitude (1+beta)/t enters it)."""
    base = _default_case("float32")
    cold = Case(**{**base.__dict__, "params": dict(base.params, temperature=0.02, beta=20.0)})
    tb = float(bounds(base).value)
    tc = float(bounds(cold).value)
    assert tc > 10 * tb and math.isfinite(tc)


def test_reference_gives_zero_gradient_to_anchors_without_negatives():
    import hardneg

    z1 = np.array([[1.0, 0.0], [0.0, 1.0]])
    v, g = hardneg.hcl_loss_and_grad(z1, z1.copy(), temperature=0.01, tau_plus=0.9, clamp=False,
                                     labels=np.array([0, 0]), reduction="none")
    assert np.all(v == 0.0)  # spec section 6: no negatives, loss 0 ...
    assert np.all(g.z1 == 0.0) and np.all(g.z2 == 0.0)  # ... and all its gradients 0


@pytest.mark.parametrize("dtype,relative", [("float64", 1e-10), ("float32", 1e-3)])
@pytest.mark.parametrize("layout", [None, "cross"])
def test_temperature_gradient_errors_well_above_rounding_are_rejected(dtype, relative, layout):
    """Spec 1.1: d loss / d t has a derived tolerance too; an error of `relative` in it alone fails."""
    case = _default_case(dtype)
    case.temperature_grad = True
    if layout is not None:
        case.params["layout"] = layout
    value, g = case.reference()
    grads = {"z1": g.z1, "z2": g.z2, "temperature": np.asarray(g.temperature)}
    assert checks.compare(case, value, grads).ok
    assert not checks.compare(case, value, dict(grads, temperature=grads["temperature"] * (1 + relative))).ok
    assert not checks.compare(case, value, {"z1": g.z1, "z2": g.z2}).ok  # a missing temperature gradient fails


def test_either_branch_of_the_kink_is_accepted_for_the_temperature_gradient_too():
    """At the clamp's kink the branches differ in d loss / d t by the floor's own term and the logits' terms;
    the target's choice is accepted on both, nothing in between."""
    from conformance.strategies import _tau_at

    rng = np.random.default_rng(3)
    B, d = 4, 3
    z1 = rng.standard_normal((B, d))
    case = Case(z1=z1, z2=z1 + 0.3 * rng.standard_normal((B, d)), temperature_grad=True,
                params=dict(temperature=0.5, beta=1.0, tau_plus=0.1, estimator="hard", clamp=True, normalize=True,
                            reduction="sum"))
    case.params["tau_plus"] = _tau_at(case, "kink", np.random.default_rng(0), 0)
    value, g = case.reference()
    b = bounds(case, value, g)
    alt = b.alternatives[0]
    assert abs(float(alt["temperature"])) > 1e-3
    ref = {"z1": g.z1, "z2": g.z2, "temperature": np.asarray(g.temperature)}
    assert checks.compare(case, value, ref).ok
    assert checks.compare(case, value, {k: ref[k] + alt[k] for k in ref}).ok
    assert not checks.compare(case, value, {k: ref[k] + 0.5 * alt[k] for k in ref}).ok
