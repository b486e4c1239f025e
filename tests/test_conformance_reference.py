"""The conformance suite accepts the reference in every framework and reports what it checked.

The reference is exact by construction, so any failure here is a bug of the suite (an adapter, a strategy, a
tolerance), not of the target. Frameworks that are not installed are skipped.
"""

import importlib.util
import json
import math

import numpy as np
import pytest

import conformance
import hardneg
from conformance import wrappers
from conformance.report import UNSUPPORTED

pytest.importorskip("hypothesis")

FRAMEWORKS = {
    "torch": (wrappers.torch_hcl_loss, 4),
    "jax": (wrappers.jax_hcl_loss, 2),  # pure_callback programs compile per shape: keep it short
    "tensorflow": (wrappers.tf_hcl_loss, 3),
}


def _assert_ok(report):
    assert report.ok, report.summary()


def test_numpy_reference_passes_with_its_closed_form_twin():
    rep = conformance.verify(hardneg.hcl_loss, framework="numpy", max_examples=8, seed=1)
    _assert_ok(rep)
    assert rep.gradients.startswith("closed form")
    assert rep.features_verified() == f"{len(conformance.FEATURES)}/{len(conformance.FEATURES)}"
    # the reference against itself: every comparison is exact up to its own float64 rounding
    assert rep.worst_grad is not None and rep.worst_grad < 1e-3


@pytest.mark.parametrize("framework", list(FRAMEWORKS))
def test_reference_wrapped_in_each_framework_passes(framework):
    if importlib.util.find_spec(framework) is None:
        pytest.skip(f"{framework} is not installed")
    fn, n = FRAMEWORKS[framework]
    rep = conformance.verify(fn, framework=framework, max_examples=n, seed=2)
    _assert_ok(rep)
    assert rep.gradients == "autodiff"
    # half precision was exercised (inputs and results in float16/bfloat16)
    statuses = {f.name: f.status for f in rep.features}
    assert statuses["float16"] == statuses["bfloat16"] == "passed"


def test_a_numpy_target_without_twin_is_checked_on_values_only():
    def values_only(z1, z2, **kw):
        return hardneg.hcl_loss(z1, z2, **kw)

    rep = conformance.verify(values_only, framework="numpy", max_examples=3,
                             features=["hard", "bank_shared", "errors"])
    _assert_ok(rep)
    assert rep.gradients.startswith("not checked")
    assert rep.worst_grad is None


def test_not_implemented_options_are_reported_as_not_supported():
    def no_labels_no_halves(z1, z2, *, labels=None, **kw):
        if labels is not None or np.asarray(z1).dtype.name in ("float16", "bfloat16"):
            raise NotImplementedError("labels and half precision are not supported")
        return hardneg.hcl_loss(z1, z2, **kw)

    rep = conformance.verify(no_labels_no_halves, framework="numpy", max_examples=3)
    statuses = {f.name: f.status for f in rep.features}
    assert statuses["labels"] == statuses["labels_bank"] == statuses["cross_labels"] == UNSUPPORTED
    assert statuses["float16"] == statuses["bfloat16"] == UNSUPPORTED
    assert statuses["temperature_grad"] == UNSUPPORTED  # values only: no *_and_grad twin
    assert statuses["hard"] == statuses["cross_symmetric"] == "passed"
    assert rep.ok and rep.verdict == "PASS (6 not supported)"


def test_a_spec_1_0_target_gets_the_1_1_features_reported_as_not_supported():
    """A port written for spec 1.0 (no `layout` keyword, a real temperature only) still conforms to 1.0."""
    from conformance import wrappers

    torch = pytest.importorskip("torch")

    def spec_1_0(z1, z2, *, temperature=0.5, beta=1.0, tau_plus=0.1, estimator="hard", clamp=True, normalize=True,
                 negatives=None, labels=None, negative_labels=None, reduction="mean"):
        if isinstance(temperature, torch.Tensor):  # what a spec 1.0 backend says to a tensor temperature
            raise TypeError(f"temperature must be a real number; got {temperature!r} of type Tensor")
        return wrappers.torch_hcl_loss(z1, z2, temperature=temperature, beta=beta, tau_plus=tau_plus,
                                       estimator=estimator, clamp=clamp, normalize=normalize, negatives=negatives,
                                       labels=labels, negative_labels=negative_labels, reduction=reduction)

    new = ["cross", "cross_symmetric", "cross_bank_shared", "cross_bank_per_anchor", "cross_labels",
           "temperature_grad"]
    rep = conformance.verify(spec_1_0, framework="torch", max_examples=2, features=["hard", "errors"] + new)
    statuses = {f.name: f.status for f in rep.features}
    assert all(statuses[f] == UNSUPPORTED for f in new), statuses
    assert statuses["hard"] == statuses["errors"] == "passed"
    assert rep.ok and rep.verdict == f"PASS ({len(new)} not supported)"


def test_report_json_round_trips_and_names_every_feature():
    rep = conformance.verify(hardneg.hcl_loss, framework="numpy", max_examples=2, features=["hard", "errors"])
    d = json.loads(rep.to_json())
    assert d["ok"] is True and d["verdict"] == "PASS"
    assert [f["name"] for f in d["features"]] == ["hard", "errors"]
    assert d["spec_version"] == hardneg.SPEC_VERSION
    assert d["features"][1]["examples"] >= 30  # every condition of the spec's error table


def test_same_seed_draws_the_same_examples():
    seen = []

    def recording(z1, z2, **kw):
        seen.append((np.asarray(z1).tobytes(), repr(sorted(kw.items(), key=lambda x: x[0])[:3])))
        return hardneg.hcl_loss(z1, z2, **kw)

    conformance.verify(recording, framework="numpy", max_examples=5, seed=7, features=["hard"])
    first = list(seen)
    seen.clear()
    conformance.verify(recording, framework="numpy", max_examples=5, seed=7, features=["hard"])
    assert seen == first


def test_missing_backend_is_reported_not_installed(monkeypatch):
    from conformance import backends

    monkeypatch.setitem(backends.BACKENDS, "nope", ("hardneg_does_not_exist", "numpy"))
    fn, framework, why = backends.backend_target("nope")
    assert fn is None and why.startswith("not installed")
    assert "nope" not in backends.installed_backends()


def test_beta_inf_even_split_is_checked_exactly():
    """A beta = inf target that gives all the weight to the first of tied maxima must fail (spec section 8)."""
    from conformance import checks

    case = next(c for c in checks.exact_tie_cases() if c.negatives is None and c.params["reduction"] == "mean")
    value, grads = case.reference()
    # move the tie's weight: compare against a gradient that differs from the even split on the tied negatives
    res = checks.compare(case, value, {"z1": grads.z1 * 1.0, "z2": grads.z2 * 1.0})
    assert res.ok
    wrong = {"z1": grads.z1 + 1e-3 * np.sign(grads.z1 + 1e-300), "z2": grads.z2}
    assert not checks.compare(case, value, wrong).ok
    assert math.isinf(case.params["beta"])


@pytest.mark.parametrize("kind", ["t=0", "t<0", "t=nan", "t=inf"])
def test_a_bad_tensor_temperature_must_give_nan(kind):
    """Spec 1.1 section 6: a tensor temperature <= 0 or not finite gives NaN for the value and every gradient;
    the wrapped reference does, a target that takes |t| (or ignores the problem) is rejected."""
    torch = pytest.importorskip("torch")
    from conformance import checks, wrappers
    from conformance.adapters import get_adapter
    from conformance.suite import _probe_case

    adapter = get_adapter("torch")
    case = checks.with_nonfinite(_probe_case("float64", layout="cross"), np.random.default_rng(0), kind)
    assert case.temperature_grad and not case.finite_inputs
    out = adapter.call(wrappers.torch_hcl_loss, case)
    assert checks.compare(case, out.value, out.grads).ok
    assert np.isnan(out.value).all() and all(np.isnan(g).all() for g in out.grads.values())

    def abs_temperature(z1, z2, *, temperature=0.5, **kw):
        ok = torch.isfinite(temperature) & (temperature != 0)
        t = torch.where(ok, temperature.abs(), torch.ones_like(temperature))
        return wrappers.torch_hcl_loss(z1, z2, temperature=t, **kw)

    out = adapter.call(abs_temperature, case)
    res = checks.compare(case, out.value, out.grads)
    assert not res.ok and "expected NaN" in res.message()
