"""The graph objective in the conformance suite: it accepts correct implementations, rejects planted defects,
reproduces failures from snippets, and its golden vectors are what the reference (and every backend) computes."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("hypothesis")

import conformance  # noqa: E402
import hardneg  # noqa: E402
from conformance import jsd_suite  # noqa: E402
from conformance.cases import round_to_dtype  # noqa: E402
from conformance.jsd_vectors import jsd_case_arrays  # noqa: E402
from conformance.vectors import DIRECTORY, decode, load_all  # noqa: E402

N = 6


def test_the_features_are_part_of_verify():
    assert set(jsd_suite.FEATURES) <= set(conformance.FEATURES)


def test_reference_passes_through_verify_with_its_closed_form_twin():
    rep = conformance.verify(hardneg.hcl_loss, framework="numpy", max_examples=4, seed=1,
                             features=list(jsd_suite.FEATURES))
    assert rep.ok, rep.summary()
    assert all(f.status == "passed" and f.examples > 0 for f in rep.features), rep.summary()


def test_a_target_without_jsd_loss_has_the_features_skipped():
    def plain(z1, z2, **kw):
        return hardneg.hcl_loss(z1, z2, **kw)

    rep = conformance.verify(plain, framework="numpy", max_examples=2, features=["jsd_released", "jsd_errors"])
    assert rep.ok and {f.status for f in rep.features} == {"skipped"}
    assert rep.verdict == "PASS"


torch_only = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")


@torch_only
def test_the_correct_torch_transliteration_passes():
    from conformance import jsd_defects

    rep = jsd_suite.verify_jsd(jsd_defects.jsd_transliteration, framework="torch", max_examples=N, seed=3)
    assert rep.ok, rep.summary()


@torch_only
@pytest.mark.parametrize("name", ["released_sign_flipped", "masked_slots_dropped", "tau_fixed_in_corrected",
                                  "detached_weights"])
def test_every_planted_defect_is_rejected(name):
    from conformance import jsd_defects

    rep = jsd_suite.verify_jsd(jsd_defects.DEFECTS[name], framework="torch", max_examples=N, seed=3,
                               fail_fast=True)
    assert not rep.ok, f"{name} was accepted:\n{rep.summary()}"
    failure = rep.failures[0]
    assert f"from conformance.jsd_defects import {name} as target" in failure.snippet


@torch_only
def test_detached_weights_fail_on_gradients_not_values():
    from conformance import jsd_defects

    rep = jsd_suite.verify_jsd(jsd_defects.detached_weights, framework="torch", max_examples=N, seed=3,
                               features=["jsd_released", "jsd_corrected"])
    assert not rep.ok
    msgs = [f.message for f in rep.failures]
    assert all("gradient" in m and not m.startswith("value") for m in msgs), msgs


@torch_only
def test_failure_snippet_reproduces_the_failure_when_pasted():
    from conformance import jsd_defects

    rep = jsd_suite.verify_jsd(jsd_defects.masked_slots_dropped, framework="torch", max_examples=N, seed=3,
                               fail_fast=True)
    snippet = rep.failures[0].snippet
    proc = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "AssertionError" in proc.stderr
    fixed = snippet.replace("import masked_slots_dropped as target", "import jsd_transliteration as target")
    proc = subprocess.run([sys.executable, "-c", fixed], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "conforms" in proc.stdout


# ---------------------------------------------------------------------------------------------------------
# Golden vectors (conformance/vectors/jsd.json)

DOC = json.loads((DIRECTORY / "jsd.json").read_text())
CASES = DOC["cases"]


def test_the_file_declares_its_objective_and_is_kept_out_of_the_hcl_vectors():
    assert DOC["objective"] == "jsd_loss" and DOC["spec_version"] == hardneg.SPEC_VERSION
    assert DOC["generator"] == "python -m conformance.vectors"
    assert all("local" not in c["inputs"] for c in load_all())
    assert [c["name"] for c in load_all("jsd_loss")] == [c["name"] for c in CASES]


def _check(case, value, grads):
    exp = case["expected"]
    got = {"value": value, "grad_local": grads["local"], "grad_graph": grads["graph"]}
    for k, want in exp.items():
        want = np.asarray(decode(want), dtype=np.float64)
        g = np.asarray(got[k], dtype=np.float64)
        assert g.shape == want.shape, k
        np.testing.assert_array_equal(np.isnan(g), np.isnan(want), err_msg=f"{k}: NaN pattern")
        if "tolerance" not in case:
            continue
        t = np.asarray(decode(case["tolerance"][k]), dtype=np.float64)
        ok = np.isnan(want) | (np.abs(g - want) <= t)
        assert ok.all(), f"{k}: max error {np.nanmax(np.abs(g - want) / t):.3g} x tolerance"


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_reference_reproduces_vector(case):
    call = jsd_case_arrays(case)
    cot = decode(case["cotangent"])
    cot = np.asarray(cot, dtype=np.float64) if isinstance(cot, list) else cot
    value, g = hardneg.jsd_loss_and_grad(cotangent=cot, **call)
    _check(case, value, {"local": g.local, "graph": g.graph})
    for name in ("local", "graph"):
        x = call[name]
        for dt in case["exact_in"]:
            assert np.array_equal(round_to_dtype(x, dt), x, equal_nan=True)


@pytest.mark.parametrize("backend", ["torch", "jax", "tf"])
def test_every_backend_reproduces_the_vectors_in_float64(backend):
    module, framework = {"torch": ("hardneg_torch", "torch"), "jax": ("hardneg_jax", "jax"),
                         "tf": ("hardneg_tf", "tensorflow")}[backend]
    for mod in (framework, module):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} is not installed")
    fn = importlib.import_module(module).jsd_loss
    for case in CASES:
        call = jsd_case_arrays(case)
        cot = decode(case["cotangent"])
        value, grads = jsd_suite.run_jsd(fn, framework, call.pop("local"), call.pop("graph"), call.pop("batch"),
                                         cotangent=cot, **call)
        _check(case, value, grads)


def test_vectors_are_up_to_date():
    from conformance.jsd_vectors import build_jsd, render_jsd

    assert (DIRECTORY / "jsd.json").read_text() == render_jsd(build_jsd())
