"""The suite proves it can fail: every planted wrong implementation is rejected; their correct base passes.

conformance.defects holds the spec transliterated into differentiable PyTorch and twelve classic mistakes (the
paper's pseudo-code typos, detached weights, a missing M, the partner among the negatives, one direction only,
raw exp arithmetic, no normalisation; spec 1.1: the positive among its own negatives in the cross layout, the
reverse direction scoring the bank, d loss / d t without the clamp floor's term). A suite that accepted any of
them would not protect anyone.
"""

import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("hypothesis")

import conformance  # noqa: E402
from conformance import defects  # noqa: E402

N = 6  # examples per feature; every defect is found within the first few features


def test_the_correct_transliteration_passes():
    rep = conformance.verify(defects.transliteration, framework="torch", max_examples=N, seed=3)
    assert rep.ok, rep.summary()


@pytest.mark.parametrize("name", sorted(defects.DEFECTS))
def test_every_planted_defect_is_rejected(name):
    rep = conformance.verify(defects.DEFECTS[name], framework="torch", max_examples=N, seed=3, fail_fast=True)
    assert not rep.ok, f"{name} was accepted:\n{rep.summary()}"
    failure = rep.failures[0]
    assert failure.snippet and f"conformance.defects import {name}" in failure.snippet


def test_detached_weights_fail_on_gradients_not_values():
    """Values right, gradients wrong: the failure must name a gradient."""
    rep = conformance.verify(defects.detached_weights, framework="torch", max_examples=N, seed=3,
                             features=["hard"])
    assert not rep.ok
    msg = rep.failures[0].message
    assert "gradient" in msg and not msg.startswith("value")


def test_raw_exp_overflows_in_float32_at_small_temperature():
    rep = conformance.verify(defects.raw_exp, framework="torch", max_examples=2 * N, seed=3,
                             features=["float32"])
    assert not rep.ok
    assert any("non-finite" in f.message or "x tolerance" in f.message for f in rep.failures)


def test_failure_snippet_reproduces_the_failure_when_pasted():
    rep = conformance.verify(defects.beta_on_cosine, framework="torch", max_examples=N, seed=3, fail_fast=True)
    snippet = rep.failures[0].snippet
    proc = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "AssertionError" in proc.stderr
    # the snippet run against the correct implementation conforms
    fixed = snippet.replace("import beta_on_cosine as target", "import transliteration as target")
    proc = subprocess.run([sys.executable, "-c", fixed], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "conforms" in proc.stdout


def test_dt_without_floor_fails_on_the_temperature_gradient_and_its_snippet_reproduces():
    """Values and input gradients right, d loss / d t wrong where the floor binds: the failure names the
    temperature's gradient, and the pasted snippet (a tensor temperature) fails until the target is fixed."""
    rep = conformance.verify(defects.dt_without_floor, framework="torch", max_examples=N, seed=3,
                             features=["temperature_grad"])
    assert not rep.ok
    failure = rep.failures[0]
    assert failure.message.startswith("gradient of temperature"), failure.message
    proc = subprocess.run([sys.executable, "-c", failure.snippet], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "AssertionError" in proc.stderr
    fixed = failure.snippet.replace("import dt_without_floor as target", "import transliteration as target")
    proc = subprocess.run([sys.executable, "-c", fixed], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "conforms" in proc.stdout
