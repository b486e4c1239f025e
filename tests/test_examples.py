"""Every script in examples/ runs as documented and learns something measurable on held-out data.

- **Discovery.** Every ``examples/*.py`` (not ``examples/ports/``, which holds ports checked by the conformance
  tests) is found automatically, so a new example is run without registering it; examples/README.md must
  list each one.
- **The interface** (shared by all examples): ``python examples/NAME.py`` with no arguments, run here in a
  fresh interpreter from the repository root, exits with status 0 and its last stdout line is
  ``RESULT {"metric": str, "value": float, "chance": float, "threshold": float}`` (JSON). The test asserts
  ``value > threshold`` and ``threshold > chance``: the example's own threshold, chosen and justified in its
  docstring from the numbers it measured, must say more than "above chance" by construction, and the run must
  pass it. A missing or malformed RESULT line fails with the tail of the script's output.
- **Skips.** An example is skipped, with the reason, only when a third-party module it imports is not
  installed (found by reading its imports; Keras also needs its configured backend). A missing or broken
  hardneg package is a failure, never a skip.
- **Offline.** HF_HUB_OFFLINE=1 and TRANSFORMERS_OFFLINE=1 are set: an example that tried to download
  anything fails instead.

No wall-clock limit is asserted (the machine's load is not the example's fault); each example states its
run time in its docstring.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_DIR = ROOT / "examples"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.py"))  # top level only: examples/ports/ is not globbed
OURS = {"hardneg", "hardneg_torch", "hardneg_jax", "hardneg_tf", "hardneg_keras", "conformance"}
RESULT_KEYS = {"metric", "value", "chance", "threshold"}


def _third_party_imports(path: Path) -> set:
    """Top-level names of the non-stdlib, non-hardneg modules the script imports (anywhere in the file)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return {r for r in roots if r not in sys.stdlib_module_names and r not in OURS and r != "__future__"}


def _missing_modules(path: Path) -> list:
    missing = sorted(m for m in _third_party_imports(path) if importlib.util.find_spec(m) is None)
    if "keras" in _third_party_imports(path) and not missing:
        # Keras 3 imports its backend when it is imported: the backend chosen by KERAS_BACKEND (default
        # tensorflow) must be installed too.
        backend = os.environ.get("KERAS_BACKEND", "tensorflow")
        if importlib.util.find_spec(backend) is None:
            missing.append(f"{backend} (the Keras backend)")
    return missing


def parse_result(stdout: str) -> dict:
    """The JSON of the last non-empty stdout line ``RESULT {...}``; ValueError saying what is wrong."""
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    if not lines or not lines[-1].startswith("RESULT "):
        raise ValueError(f"the last stdout line is not 'RESULT {{...}}': {lines[-1] if lines else '(no output)'!r}")
    result = json.loads(lines[-1][len("RESULT "):])
    if not isinstance(result, dict) or set(result) != RESULT_KEYS:
        raise ValueError(f"RESULT must be a JSON object with exactly the keys {sorted(RESULT_KEYS)}; got {result!r}")
    if not isinstance(result["metric"], str) or not result["metric"]:
        raise ValueError(f"RESULT's metric must be a non-empty string; got {result['metric']!r}")
    for key in ("value", "chance", "threshold"):
        v = result[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"RESULT's {key} must be a finite number; got {v!r}")
    return result


def test_examples_are_found():
    # The five examples of issue 15; a lost or renamed file would otherwise pass silently.
    names = {p.name for p in EXAMPLES}
    assert {"simclr_digits_torch.py", "clip_jax_optax.py", "infograph_graphs.py", "st_hard_negatives.py",
            "keras_moco_queue.py"} <= names, names


def test_readme_lists_every_example():
    readme = (EXAMPLES_DIR / "README.md").read_text(encoding="utf-8")
    missing = [p.name for p in EXAMPLES if f"examples/{p.name}" not in readme]
    assert missing == [], f"examples/README.md does not list {missing}"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_states_its_dependencies(path):
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    assert "Dependencies" in doc, f"{path.name}: the module docstring must state the example's dependencies"
    assert re.search(r"^Threshold", doc, re.MULTILINE), f"{path.name}: the docstring must justify its threshold"


def test_parse_result_rejects_what_it_should():
    ok = 'log line\nRESULT {"metric": "acc", "value": 0.9, "chance": 0.1, "threshold": 0.5}\n\n'
    assert parse_result(ok) == {"metric": "acc", "value": 0.9, "chance": 0.1, "threshold": 0.5}
    for bad in ("", "RESULT {}\nlater line", 'RESULT {"metric": "a", "value": NaN, "chance": 0, "threshold": 0}',
                'RESULT {"metric": "a", "value": 1, "chance": 0}',
                'RESULT {"metric": "a", "value": true, "chance": 0, "threshold": 0}'):
        with pytest.raises(ValueError):
            parse_result(bad)


def test_skip_reasons_name_the_missing_module(tmp_path, monkeypatch):
    # What decides a skip: third-party imports anywhere in the file (stdlib and hardneg packages never skip),
    # and Keras' configured backend.
    script = tmp_path / "demo.py"
    script.write_text("import json\nimport numpy\nimport hardneg_torch\n\n\ndef f():\n"
                      "    from no_such_module_xyz.sub import thing\n", encoding="utf-8")
    assert _third_party_imports(script) == {"numpy", "no_such_module_xyz"}
    assert _missing_modules(script) == ["no_such_module_xyz"]
    script.write_text("import keras\n", encoding="utf-8")
    monkeypatch.setenv("KERAS_BACKEND", "no_such_backend_xyz")
    if importlib.util.find_spec("keras") is None:
        assert _missing_modules(script) == ["keras"]
    else:
        assert _missing_modules(script) == ["no_such_backend_xyz (the Keras backend)"]


@pytest.mark.slow
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_and_learns(path):
    missing = _missing_modules(path)
    if missing:
        pytest.skip(f"{path.name} needs {', '.join(missing)}, which is not installed")
    # The checkout's packages come first (as for `python -c` in the root, which tests/test_docs.py uses): a
    # script's directory, not the working directory, starts sys.path, and an installed copy may be stale.
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=pythonpath, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, str(path.relative_to(ROOT))], cwd=ROOT, env=env, capture_output=True,
                          text=True, check=False)
    tail = f"--- stdout (tail) ---\n{proc.stdout[-2000:]}\n--- stderr (tail) ---\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, f"{path.name} exited with status {proc.returncode}\n{tail}"
    try:
        result = parse_result(proc.stdout)
    except ValueError as exc:
        pytest.fail(f"{path.name}: {exc}\n{tail}")
    assert result["threshold"] > result["chance"], (
        f"{path.name}: its threshold {result['threshold']} must exceed chance {result['chance']}")
    assert result["value"] > result["threshold"], (
        f"{path.name}: {result['metric']} = {result['value']:.4f} is not above its threshold "
        f"{result['threshold']} (chance {result['chance']})\n{tail}")
