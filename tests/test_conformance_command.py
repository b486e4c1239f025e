"""`hardneg verify --command`: a port in any language verified over the JSON-lines protocol (conformance.command).

The reference ports of examples/ports/ (plain NumPy, and JavaScript for Node) must be accepted; the same ports
with one planted defect (switched on by HARDNEG_PORT_DEFECT) must be rejected with a runnable reproduction; a port
that exits, hangs or writes garbage must fail clearly, with its stderr, and never hang the suite.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("hypothesis")

from conformance import command as cc  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PY_PORT = f"{sys.executable} {ROOT / 'examples' / 'ports' / 'numpy_port.py'}"
NODE = shutil.which("node")
NODE_PORT = f"node {ROOT / 'examples' / 'ports' / 'node_port.js'}"
needs_node = pytest.mark.skipif(NODE is None, reason="node (Node.js) is not installed: the JavaScript port is not run")


def _env(defect=None):
    env = {k: v for k, v in os.environ.items() if k != "HARDNEG_PORT_DEFECT"}
    if defect:
        env["HARDNEG_PORT_DEFECT"] = defect
    return env


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "hardneg", "verify", *args], capture_output=True, text=True,
                          timeout=600, env=env or _env(), cwd=ROOT)


# ------------------------------------------------------------------------------------------------ the encoding


def test_nonfinite_numbers_round_trip_as_dollar_float_objects():
    x = np.array([[1.5, np.nan], [np.inf, -np.inf]])
    line = cc.dumps({"v": x, "t": float("nan")})
    assert "NaN" not in line and "Infinity" not in line  # strict JSON only
    back = cc.decode(line)
    assert back["v"][0][1] != back["v"][0][1] and back["v"][1] == [float("inf"), float("-inf")]
    assert back["t"] != back["t"]
    with pytest.raises(ValueError, match=r"\$float"):
        cc.decode('{"id": 1, "value": NaN}')  # a bare NaN is not JSON: the port is told what to write


def test_request_carries_every_keyword_shapes_and_dtypes():
    from conformance.cases import Case

    case = Case(z1=np.zeros((0, 3)) + 0, z2=np.zeros((0, 3)), params=dict(temperature=0.25), dtype="float32")
    req = cc.case_request(case, want_grad=True)
    assert set(req["kwargs"]) == {"temperature", "beta", "tau_plus", "estimator", "clamp", "normalize",
                                  "reduction", "layout", "symmetric"}
    assert req["kwargs"]["temperature"] == 0.25 and req["kwargs"]["layout"] is None
    assert req["shapes"]["z1"] == [0, 3]  # an empty array keeps its shape (the JSON [] alone would not)
    assert req["dtypes"] == {"z1": "float32", "z2": "float32"}
    assert req["inputs"]["negatives"] is None and "negatives" not in req["dtypes"]


# ------------------------------------------------------------------------------------------------ reference ports


def test_reference_bridge_passes_everything_with_exact_errors():
    """The float64 reference behind the protocol (``--serve-reference``) conforms, jsd_loss included."""
    rep = cc.verify_command(f"{sys.executable} -m conformance.command --serve-reference", max_examples=2,
                            features=["hard", "cross_labels", "temperature_grad", "bfloat16", "errors",
                                      "jsd_corrected", "jsd_errors"], env=_env())
    assert rep.ok, rep.summary()
    assert all(f.status == "passed" for f in rep.features), rep.summary()
    assert rep.errors == "exact" and rep.framework == "command"


def test_numpy_port_is_accepted_with_exact_errors(tmp_path):
    out = tmp_path / "r.json"
    proc = _cli("--command", PY_PORT, "--max-examples", "3", "--json", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rep = json.loads(out.read_text())["results"]["port"]
    assert rep["verdict"].startswith("PASS") and rep["errors"] == "exact" and rep["profile"] == "strict"
    by = {f["name"]: f["status"] for f in rep["features"]}
    assert by["errors"] == "passed" and by["cross_bank_per_anchor"] == "passed" and by["bfloat16"] == "passed"
    assert by["jsd_released"] == "not supported"  # the port answers "unsupported" for jsd_loss
    assert "profile strict, error contract: exception type and message" in proc.stdout


def test_numpy_port_with_a_planted_defect_is_rejected_with_a_runnable_snippet(tmp_path):
    env = _env("positive_in_negatives")
    rep = cc.verify_command(PY_PORT, max_examples=3, features=["hard", "cross", "easy"], env=env)
    assert not rep.ok
    groups = __import__("conformance.report", fromlist=["group_failures"]).group_failures(rep.failures)
    assert len(groups) == 1, rep.summary()  # one cause: shown once ...
    failure, feats = groups[0]
    assert feats == ["hard", "cross", "easy"]  # ... listing every feature it affects
    snippet = tmp_path / "repro.py"
    snippet.write_text(failure.snippet)
    run = subprocess.run([sys.executable, str(snippet)], capture_output=True, text=True, timeout=300, env=env,
                         cwd=ROOT)
    assert run.returncode != 0 and "AssertionError" in run.stderr, run.stdout + run.stderr
    assert '"fn":"hcl_loss"' in run.stdout  # the request line is printed, to replay by hand
    fixed = subprocess.run([sys.executable, str(snippet)], capture_output=True, text=True, timeout=300, env=_env(),
                           cwd=ROOT)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr  # without the defect the reproduction passes


@needs_node
def test_node_port_is_accepted_with_error_types(tmp_path):
    out = tmp_path / "r.json"
    proc = _cli("--command", NODE_PORT, "--errors", "type", "--max-examples", "3", "--json", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rep = json.loads(out.read_text())["results"]["port"]
    assert rep["verdict"].startswith("PASS") and rep["errors"] == "type"
    by = {f["name"]: f["status"] for f in rep["features"]}
    assert by["errors"] == "passed" and by["temperature_grad"] == "passed" and by["float32"] == "passed"
    assert by["float16"] == "not supported"  # answered "unsupported"
    assert "error contract: exception type only" in proc.stdout


@needs_node
def test_node_port_messages_fail_the_exact_error_contract():
    """Its messages are its own: held to the spec's exact messages (our backends' default) it fails."""
    rep = cc.verify_command(NODE_PORT, max_examples=1, features=["errors"], env=_env())
    assert not rep.ok and rep.errors == "exact"
    msg = rep.failures[0].message  # the right type, another message
    assert msg.startswith("raised TypeError: temperature must be a real number; got 0.5; expected TypeError"), msg


@needs_node
def test_node_port_with_a_planted_defect_is_rejected():
    proc = _cli("--command", NODE_PORT, "--errors", "type", "--max-examples", "2",
                env=_env("no_normalization"))
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "FAIL" in proc.stdout and "--- snippet (paste into Python) ---" in proc.stdout
    assert "target = cc.port('node " in proc.stdout
    # one failure, one line: the cause is printed once for all the features it breaks
    assert proc.stdout.count("=== port:") < 4, proc.stdout[-3000:]


# ------------------------------------------------------------------------------------------------ broken ports


def _script(tmp_path, body):
    p = tmp_path / "port.py"
    p.write_text(body)
    return f"{sys.executable} {p}"


def test_port_that_exits_fails_with_its_stderr(tmp_path):
    cmd = _script(tmp_path, "import sys\nsys.stderr.write('cannot load weights.bin\\n')\nsys.exit(3)\n")
    rep = cc.verify_command(cmd, max_examples=2, features=["hard", "errors"], env=_env())
    assert not rep.ok
    msg = rep.failures[0].message
    assert "exited with status 3" in msg and "cannot load weights.bin" in msg


def test_port_that_hangs_is_killed_after_the_timeout(tmp_path):
    cmd = _script(tmp_path, "import sys, time\nsys.stdin.readline()\ntime.sleep(600)\n")
    rep = cc.verify_command(cmd, max_examples=2, features=["hard", "errors"], timeout=1.0, env=_env())
    assert not rep.ok
    assert any("did not answer request" in f.message and "within 1 s" in f.message for f in rep.failures)


def test_port_that_writes_garbage_or_null_fails_clearly(tmp_path):
    cmd = _script(tmp_path, "import sys\nfor line in sys.stdin:\n    print('loading...', flush=True)\n")
    rep = cc.verify_command(cmd, max_examples=1, features=["hard"], env=_env())
    assert "not a JSON line" in rep.failures[0].message and "write logs to stderr" in rep.failures[0].message
    # JavaScript's JSON.stringify writes NaN as null: named in the failure
    cmd = _script(tmp_path, "import json, sys\nfor line in sys.stdin:\n    r = json.loads(line)\n"
                            "    print(json.dumps({'id': r['id'], 'value': None, 'grads': None}), flush=True)\n")
    rep = cc.verify_command(cmd, max_examples=1, features=["hard"], env=_env())
    assert "null" in rep.failures[0].message and "$float" in rep.failures[0].message


# ------------------------------------------------------------------------------------------------ profiles


def test_practical_profile_accepts_a_port_that_only_misses_the_overflow_free_norm(tmp_path):
    """A straightforward port (its norm's square overflows for rows of norm ~1e184, its messages its own) fails
    the strict profile and passes the practical one, which says so in the report."""
    src = (ROOT / "examples" / "ports" / "numpy_port.py").read_text()
    naive = src.replace("    scale = np.max(np.abs(z), axis=-1, keepdims=True)\n",
                        "    scale = np.ones(z.shape[:-1] + (1,))  # the naive norm: sqrt(sum z^2) overflows\n")
    naive = naive.replace('raise ValueError(f"temperature must be finite', 'raise ValueError(f"bad temperature')
    assert naive != src
    path = tmp_path / "naive_port.py"
    path.write_text(naive)
    cmd = f"{sys.executable} {path}"
    feats = ["hard", "errors"]
    strict = cc.verify_command(cmd, max_examples=40, features=feats, seed=1, env=_env())
    assert {f.name for f in strict.features if f.status == "failed"} == {"hard", "errors"}, strict.summary()
    practical = cc.verify_command(cmd, max_examples=40, features=feats, seed=1, profile="practical", env=_env())
    assert practical.ok, practical.summary()
    assert practical.profile == "practical" and practical.errors == "type"
    assert "profile practical" in practical.summary()


def test_port_that_stops_reading_cannot_block_a_large_request(tmp_path):
    """A request larger than the pipe's buffer to a port that never reads: a timeout, not a hang."""
    cmd = _script(tmp_path, "import time\ntime.sleep(600)\n")
    big = np.round(np.random.default_rng(0).standard_normal((64, 512)), 3)
    with cc.Port(cmd, timeout=1.0, env=_env()) as port:
        req = cc.raw_request("hcl_loss", {"z1": big, "z2": big}, dict(cc.HCL_KWARGS))
        assert len(cc.dumps(req)) > 200_000
        with pytest.raises(cc.PortError, match="did not answer request 1"):
            port.request(req)
