"""Golden vectors (conformance/vectors/*.json) are what the reference computes, in a form other languages read."""

import json
import math

import numpy as np
import pytest

import hardneg
from conformance.cases import round_to_dtype
from conformance.vectors import DIRECTORY, case_arrays, decode, load_all

CASES = list(load_all())


def test_every_theme_is_present_and_declares_the_spec_version():
    themes = {p.stem for p in DIRECTORY.glob("*.json")}
    assert {"basic", "clamp", "bank", "labels", "edge", "cross", "temperature"} <= themes
    for p in DIRECTORY.glob("*.json"):
        doc = json.loads(p.read_text())
        assert doc["spec_version"] == hardneg.SPEC_VERSION
        assert doc["generator"] == "python -m conformance.vectors"


@pytest.mark.parametrize("case", CASES, ids=[f"{c['theme']}-{c['name']}" for c in CASES])
def test_reference_reproduces_vector(case):
    call = case_arrays(case)
    cot = decode(case["cotangent"])
    cot = np.asarray(cot, dtype=np.float64) if isinstance(cot, list) else cot
    value, grads = hardneg.hcl_loss_and_grad(cotangent=cot, **call)
    exp, tol = case["expected"], case["tolerance"]
    got = {"value": value, "grad_z1": grads.z1, "grad_z2": grads.z2}
    if "grad_negatives" in exp:
        got["grad_negatives"] = grads.negatives
    if "grad_temperature" in exp:  # spec 1.1: d loss / d temperature
        got["grad_temperature"] = grads.temperature
    assert set(got) == set(exp)
    for k, want in exp.items():
        want = np.asarray(decode(want), dtype=np.float64)
        g = np.asarray(got[k], dtype=np.float64)
        assert g.shape == want.shape, k
        np.testing.assert_array_equal(np.isnan(g), np.isnan(want), err_msg=f"{k}: NaN pattern")
        if tol is None:  # non-finite inputs: every output NaN
            assert np.isnan(g).all(), k
            continue
        t = np.asarray(decode(tol[k]), dtype=np.float64)
        ok = np.isnan(want) | (np.abs(g - want) <= t)
        assert ok.all(), f"{k}: max error {np.nanmax(np.abs(g - want) / t):.3g} x tolerance"


@pytest.mark.parametrize("case", CASES, ids=[f"{c['theme']}-{c['name']}" for c in CASES])
def test_inputs_are_exact_in_the_dtypes_they_claim(case):
    """A float32/float16/bfloat16 port reads exactly the inputs the reference saw."""
    assert "float64" in case["exact_in"]
    for name, v in case["inputs"].items():
        if "labels" in name:
            continue
        x = np.asarray(decode(v), dtype=np.float64)
        for dt in case["exact_in"]:
            r = round_to_dtype(x, dt)
            assert np.array_equal(r, x, equal_nan=True), (name, dt)


def test_non_finite_numbers_are_encoded_as_strings():
    """Strict JSON: no bare NaN/Infinity literals (other languages' parsers reject them)."""

    def reject(const):
        raise AssertionError(f"bare JSON constant {const}")

    for p in DIRECTORY.glob("*.json"):
        json.loads(p.read_text(), parse_constant=reject)
    nonfinite = next(c for c in CASES if c["name"] == "nonfinite")
    assert "NaN" in json.dumps(nonfinite["inputs"]) and nonfinite["expected"]["value"] == "NaN"
    beta_inf = next(c for c in CASES if c["name"] == "beta_inf")
    assert beta_inf["parameters"]["beta"] == "Infinity" and math.isinf(case_arrays(beta_inf)["beta"])
