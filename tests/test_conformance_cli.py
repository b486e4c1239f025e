"""`hardneg verify`: the table, the exit status, the JSON report and the failure snippets."""

import json
import subprocess
import sys

import pytest

pytest.importorskip("hypothesis")


def _run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "hardneg", "verify", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_target_that_conforms_exits_0_with_table_and_json(tmp_path):
    out = tmp_path / "report.json"
    proc = _run("--target", "hardneg:hcl_loss", "--framework", "numpy", "--max-examples", "3", "--seed", "5",
                "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    header = proc.stdout.splitlines()[0]
    for col in ("backend", "framework", "device", "features verified", "examples", "worst value err",
                "worst grad err", "verdict"):
        assert col in header
    assert "PASS" in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["ok"] is True and doc["seed"] == 5
    (rep,) = doc["results"].values()
    assert rep["verdict"] == "PASS" and rep["max_examples"] == 3
    # the examples each feature drew, one row per feature
    lines = proc.stdout.splitlines()
    top = next(i for i, line in enumerate(lines) if line.startswith("examples per feature"))
    rows = dict(line.split()[:2] for line in lines[top + 2: top + 2 + len(rep["features"])])
    assert rows == {f["name"]: str(f["examples"]) for f in rep["features"]}
    assert rows["hard"] == "3"


def test_failing_target_exits_1_and_prints_a_snippet():
    pytest.importorskip("torch")
    proc = _run("--target", "conformance.defects:one_direction", "--framework", "torch", "--max-examples", "2")
    assert proc.returncode == 1
    assert "FAIL" in proc.stdout
    assert "--- snippet (paste into Python) ---" in proc.stdout
    assert "from conformance.defects import one_direction as target" in proc.stdout


def test_backend_run_goes_through_a_worker_process(tmp_path):
    """`hardneg verify --backend torch`: the installed-backend path (a worker process, its progress, its report)."""
    pytest.importorskip("torch")
    pytest.importorskip("hardneg_torch")
    out = tmp_path / "r.json"
    proc = _run("--backend", "torch", "--max-examples", "2", "--json", str(out))
    assert proc.returncode in (0, 1), proc.stderr
    assert proc.stdout.splitlines()[2].split()[0] == "torch"
    assert "... torch: hard" in proc.stderr  # progress (plain lines: stderr is not a terminal here)
    rep = json.loads(out.read_text())["results"]["torch"]
    assert [f["name"] for f in rep["features"]][:2] == ["hard", "reductions"]
    assert (proc.returncode == 0) == (rep["verdict"] != "FAIL")
    (worker,) = rep["workers"]  # one worker, whose CPU time is reported
    assert worker["part"] == "all" and worker["cpu_s"] > 0
    assert "CPU time of the workers: torch" in proc.stdout


def test_jax_is_verified_by_two_workers_whose_reports_are_merged(tmp_path, monkeypatch):
    """JAX's verification is split over two workers (hcl_loss's features, the graph objective's) so that it can use
    both cores; `hardneg verify` shows one row with every feature once, in order, and both workers' times. (The
    workers verify the NumPy reference in JAX's place, patched in by a sitecustomize: the split is what is tested.)"""
    import argparse
    import os

    from conformance import cli
    from conformance.suite import FEATURES

    (tmp_path / "sitecustomize.py").write_text(
        "from conformance import backends\nbackends.BACKENDS['jax'] = ('hardneg', 'numpy')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path)] + sys.path))
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    args = p.parse_args(["--backend", "jax", "--max-examples", "1"])
    with open(tmp_path / "progress", "w") as fh:
        results = cli._run_workers(["jax"], args, cli._Progress(1, stream=fh))
    rep = results["jax"]
    assert "jax" in cli.SPLIT and rep["framework"] == "numpy", rep
    assert sorted(w["part"] for w in rep["workers"]) == ["hcl", "jsd"]
    assert [f["name"] for f in rep["features"]] == list(FEATURES)
    assert rep["verdict"] == "PASS" and all(f["examples"] > 0 for f in rep["features"])


def test_target_needs_framework():
    proc = _run("--target", "hardneg:hcl_loss")
    assert proc.returncode == 2 and "--framework" in proc.stderr


def test_unimportable_target_is_an_error_not_a_crash():
    proc = _run("--target", "no_such_module:f", "--framework", "numpy")
    assert proc.returncode == 2 and "cannot import" in proc.stderr


def test_backend_not_installed_row(monkeypatch, capsys):
    """A backend whose module does not import is reported "not installed" (by its worker) and fails nothing."""
    import argparse

    from conformance import backends, cli

    monkeypatch.setitem(backends.BACKENDS, "ghost", ("hardneg_ghost_backend", "numpy"))
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    args = p.parse_args(["--worker"])
    args.backend = "ghost"
    assert cli.run(args) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    row = cli._row("ghost", json.loads(line))
    assert row[0] == "ghost" and row[-1].startswith("not installed")


def test_command_goes_alone_and_timeout_goes_with_command():
    proc = _run("--command", "true", "--target", "hardneg:hcl_loss", "--framework", "numpy")
    assert proc.returncode == 2 and "--command goes alone" in proc.stderr
    proc = _run("--timeout", "5", "--target", "hardneg:hcl_loss", "--framework", "numpy")
    assert proc.returncode == 2 and "--timeout goes with --command" in proc.stderr


def test_profile_and_error_contract_are_named_in_the_report(tmp_path):
    out = tmp_path / "r.json"
    proc = _run("--target", "hardneg:hcl_loss", "--framework", "numpy", "--profile", "practical",
                "--max-examples", "1", "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (rep,) = json.loads(out.read_text())["results"].values()
    assert rep["profile"] == "practical" and rep["errors"] == "type"  # practical: exception types only
    assert "profile practical, error contract: exception type only" in proc.stdout


def test_jax_worker_keeps_a_persistent_compilation_cache_unless_off(tmp_path):
    """The JAX worker reuses compiled programs across runs (in $HARDNEG_CACHE/jax); HARDNEG_CACHE=off disables it."""
    pytest.importorskip("jax")
    import os

    code = ("import jax\nfrom conformance import cli\ncli._jax_compilation_cache()\n"
            "print(jax.config.jax_compilation_cache_dir)")
    for value, want in ((str(tmp_path), str(tmp_path / "jax")), ("off", "None")):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "HARDNEG_CACHE": value})
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip().splitlines()[-1] == want
