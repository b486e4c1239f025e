"""Every kind of failure snippet reproduces its failure when pasted into a fresh Python (and only then)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hardneg

pytest.importorskip("hypothesis")
import conformance  # noqa: E402

HERE = Path(__file__).resolve().parent
_calls = {"n": 0}


# Wrong implementations importable by the snippets (module path: this file, with tests/ on PYTHONPATH).
def wrong_message(z1, z2, **kw):
    if kw.get("temperature", 0.5) == 0.0:
        raise ValueError("temperature must be positive")
    return hardneg.hcl_loss(z1, z2, **kw)


def nondeterministic(z1, z2, **kw):
    _calls["n"] += 1
    return hardneg.hcl_loss(z1, z2, **kw) + (_calls["n"] % 2) * 1e-12


def order_dependent(z1, z2, **kw):
    v = hardneg.hcl_loss(z1, z2, **kw)
    return v if kw.get("reduction") == "none" else v + 1e-3 * np.asarray(z1, dtype=np.float64)[0, 0]


def nan_ignorer(z1, z2, **kw):
    clean = lambda x: np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)  # noqa: E731
    if kw.get("negatives") is not None:
        kw["negatives"] = clean(kw["negatives"])
    return hardneg.hcl_loss(clean(z1), clean(z2), **kw)


@pytest.mark.parametrize("name,feature,check", [
    ("wrong_message", "errors", "error contract"),
    ("nondeterministic", "determinism", "determinism"),
    ("order_dependent", "invariances", "invariance"),
    ("nan_ignorer", "nonfinite", "non-finite"),
])
def test_snippet_reproduces(name, feature, check):
    rep = conformance.verify(globals()[name], framework="numpy", max_examples=6, features=[feature])
    assert not rep.ok
    failure = rep.failures[0]
    assert failure.check.startswith(check)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    snippet = failure.snippet.replace("from tests.test_conformance_snippets", "from test_conformance_snippets")
    proc = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0 and "AssertionError" in proc.stderr, proc.stdout + proc.stderr
    # and with the reference in place of the wrong target, the same snippet conforms
    fixed = snippet.replace(f"import {name} as target", "import hcl_loss as target").replace(
        "from test_conformance_snippets import", "from hardneg import")
    proc = subprocess.run([sys.executable, "-c", fixed], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
