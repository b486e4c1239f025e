"""``hardneg bench`` end to end on tiny sizes: the baselines compute the loss, the harness measures in
subprocesses, enforces the memory budget, and the CLI writes JSON and PNG. Nothing here asserts on a time."""

from __future__ import annotations

import json
import os
import sys
import textwrap

import numpy as np
import pytest

import hardneg
from hardneg.bench import impls
from hardneg.bench.harness import Harness, Settings, format_bytes, parse_bytes

B, D = 6, 5
HP = dict(temperature=0.5, beta=1.0, tau_plus=0.1)
# float64 throughout: the naive code and the reference differ only by rounding of a few hundred
# operations on O(1) values, so 1e-10 relative is ~10^6 ulps of slack and still catches any formula error.
RTOL = 1e-10


def _views():
    rng = np.random.default_rng(3)
    return rng.standard_normal((B, D)), rng.standard_normal((B, D))


@pytest.mark.parametrize("estimator", ["hard", "easy"])
def test_naive_torch_matches_reference(estimator):
    torch = pytest.importorskip("torch")
    from hardneg.bench import naive_torch

    z1, z2 = _views()
    want, grads = hardneg.hcl_loss_and_grad(z1, z2, estimator=estimator, **HP)
    t1, t2 = (torch.tensor(z, requires_grad=True) for z in (z1, z2))
    loss = naive_torch.hcl_loss(t1, t2, estimator=estimator, **HP)
    loss.backward()
    np.testing.assert_allclose(loss.item(), want, rtol=RTOL)
    np.testing.assert_allclose(t1.grad.numpy(), grads.z1, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(t2.grad.numpy(), grads.z2, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("estimator", ["hard", "easy"])
def test_naive_jax_matches_reference(estimator):
    jax = pytest.importorskip("jax")
    from hardneg.bench import naive_jax

    z1, z2 = _views()
    want, grads = hardneg.hcl_loss_and_grad(z1, z2, estimator=estimator, **HP)
    with jax.enable_x64(True):
        value, (g1, g2) = naive_jax.value_and_grad(jax.numpy.asarray(z1), jax.numpy.asarray(z2),
                                                   HP["temperature"], HP["beta"], HP["tau_plus"],
                                                   estimator=estimator)
        np.testing.assert_allclose(float(value), want, rtol=RTOL)
        np.testing.assert_allclose(np.asarray(g1), grads.z1, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(np.asarray(g2), grads.z2, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("estimator", ["hard", "easy"])
def test_naive_tf_matches_reference(estimator, jit_compile):
    tf = pytest.importorskip("tensorflow")
    from hardneg.bench import naive_tf

    z1, z2 = _views()
    want, grads = hardneg.hcl_loss_and_grad(z1, z2, estimator=estimator, **HP)
    step = naive_tf.make_value_and_grad(estimator=estimator, jit_compile=jit_compile, **HP)
    value, (g1, g2) = step(tf.constant(z1), tf.constant(z2))
    np.testing.assert_allclose(float(value), want, rtol=RTOL)
    np.testing.assert_allclose(g1.numpy(), grads.z1, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(g2.numpy(), grads.z2, rtol=1e-8, atol=1e-12)


def test_floors_compute_the_three_products():
    """Each framework's floor returns (S U, S^T U) with S = U U^T: the products it claims to time."""
    u = np.random.default_rng(0).standard_normal((2 * B, D))
    s = u @ u.T
    want = (s @ u, s.T @ u)
    got = {}
    if impls.availability(impls.IMPLS["floor_torch"]) is None:
        import torch

        from hardneg.bench import naive_torch

        got["torch"] = [x.numpy() for x in naive_torch.floor(torch.tensor(u))]
    if impls.availability(impls.IMPLS["floor_jax"]) is None:
        import jax

        from hardneg.bench import naive_jax

        with jax.enable_x64(True):
            got["jax"] = [np.asarray(x) for x in naive_jax.floor(jax.numpy.asarray(u))]
    if impls.availability(impls.IMPLS["floor_tf"]) is None:
        import tensorflow as tf

        from hardneg.bench import naive_tf

        got["tf"] = [x.numpy() for x in naive_tf.floor_graph(tf.constant(u))]
        got["tf_xla"] = [x.numpy() for x in naive_tf.floor_xla(tf.constant(u))]
    if not got:
        pytest.skip("no framework installed")
    for name, (a, b) in got.items():
        np.testing.assert_allclose(a, want[0], rtol=1e-12, err_msg=name)
        np.testing.assert_allclose(b, want[1], rtol=1e-12, err_msg=name)


def test_symmetric_floors_compute_the_two_products():
    """Each framework's symmetric floor returns S U with S = U U^T (S standing in for the symmetric G + G^T),
    and the torch floors write into the preallocated buffers they are given (the timed step allocates nothing)."""
    u = np.random.default_rng(1).standard_normal((2 * B, D))
    s = u @ u.T
    want = s @ u
    got = {}
    if impls.availability(impls.IMPLS["symfloor_torch"]) is None:
        import torch

        from hardneg.bench import naive_torch

        tu = torch.tensor(u)
        got["torch"] = naive_torch.floor_symmetric(tu).numpy()
        out = (torch.empty(2 * B, 2 * B, dtype=tu.dtype), torch.empty(2 * B, D, dtype=tu.dtype))
        res = naive_torch.floor_symmetric(tu, out=out)
        assert res.data_ptr() == out[1].data_ptr()
        np.testing.assert_allclose(out[0].numpy(), s, rtol=1e-12)
        got["torch_out"] = res.numpy()
        out3 = tuple(torch.empty(*shape, dtype=tu.dtype) for shape in ((2 * B, 2 * B), (2 * B, D), (2 * B, D)))
        a, b = naive_torch.floor(tu, out=out3)
        assert a.data_ptr() == out3[1].data_ptr() and b.data_ptr() == out3[2].data_ptr()
        np.testing.assert_allclose(a.numpy(), want, rtol=1e-12)
        np.testing.assert_allclose(b.numpy(), s.T @ u, rtol=1e-12)
    if impls.availability(impls.IMPLS["symfloor_jax"]) is None:
        import jax

        from hardneg.bench import naive_jax

        with jax.enable_x64(True):
            got["jax"] = np.asarray(naive_jax.floor_symmetric(jax.numpy.asarray(u)))
    if impls.availability(impls.IMPLS["symfloor_tf"]) is None:
        import tensorflow as tf

        from hardneg.bench import naive_tf

        got["tf"] = naive_tf.floor_symmetric_graph(tf.constant(u)).numpy()
        got["tf_xla"] = naive_tf.floor_symmetric_xla(tf.constant(u)).numpy()
    if not got:
        pytest.skip("no framework installed")
    for name, a in got.items():
        assert a.shape == (2 * B, D), name
        np.testing.assert_allclose(a, want, rtol=1e-12, err_msg=name)


def test_every_framework_has_both_floors():
    for fw in impls.FRAMEWORKS:
        for table in (impls.FLOORS, impls.SYMMETRIC_FLOORS):
            entry = impls.IMPLS[table[fw]]
            assert entry.framework == fw and entry.kind == "floor"
    assert set(impls.FLOORS.values()).isdisjoint(impls.SYMMETRIC_FLOORS.values())


def test_every_available_step_runs_in_bfloat16():
    """Every registry entry whose modules are installed builds and runs a bfloat16 forward+backward step
    (float32 runs in the subprocess tests and in the reference comparisons above)."""
    ran = []
    for name, entry in impls.IMPLS.items():
        if impls.availability(entry) is not None:
            continue
        est = "hard" if "hard" in entry.estimators else "easy"
        step = impls.build(name, 8, D, "bfloat16", "cpu", est, HP)
        step()
        ran.append(name)
    if not ran:
        pytest.skip("no framework installed")


def test_missing_module_is_skipped_with_a_message():
    ghost = impls.Impl("ghost", "torch", "backend", ("hardneg_no_such_module",), "ghost", install_hint="pip install x")
    msg = impls.availability(ghost)
    assert msg is not None and "hardneg_no_such_module" in msg and "pip install x" in msg


def test_parse_and_format_bytes():
    assert parse_bytes("8GB") == 8 * 10**9
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("1.5g") == 1_500_000_000
    with pytest.raises(ValueError):
        parse_bytes("eight gigabytes")
    assert format_bytes(2.5e9) == "2.5 GB"


def test_ratios_are_baseline_over_implementation():
    h = Harness(Settings())
    base = dict(batch=64, dim=D, dtype="float32", device="cpu", estimator="hard", status="ok")
    h.measurements = [
        dict(base, impl="naive_torch", framework="torch", kind="naive", median_s=4.0, extra_bytes=1000),
        dict(base, impl="floor_torch", framework="torch", kind="floor", median_s=0.5, extra_bytes=500),
        dict(base, impl="hardneg_torch", framework="torch", kind="backend", median_s=1.0, extra_bytes=50),
    ]
    (r,) = [r for r in h.ratios() if r["impl"] == "hardneg_torch"]
    assert r["speedup_vs_baseline"] == 4.0 and r["time_vs_floor"] == 2.0 and r["memory_vs_baseline"] == 0.05
    # no symmetric floor in this run: its ratio is absent, not made up
    assert r["symmetric_floor"] is None and r["time_vs_symmetric_floor"] is None
    h.measurements.append(dict(base, impl="symfloor_torch", framework="torch", kind="floor", median_s=0.25,
                               extra_bytes=400))
    (r,) = [r for r in h.ratios() if r["impl"] == "hardneg_torch"]
    assert r["time_vs_floor"] == 2.0 and r["time_vs_symmetric_floor"] == 4.0
    assert r["symmetric_floor"] == "symfloor_torch"
    assert not [r for r in h.ratios() if r["impl"] in ("floor_torch", "symfloor_torch")]  # floors get no ratios


def test_report_table_shows_both_floor_ratios():
    from hardneg.bench.report import format_results

    base = dict(batch=64, dim=D, dtype="float32", device="cpu", estimator="hard", status="ok", message="")
    h = Harness(Settings())
    h.measurements = [
        dict(base, impl="floor_torch", framework="torch", kind="floor", median_s=0.5, extra_bytes=500),
        dict(base, impl="symfloor_torch", framework="torch", kind="floor", median_s=0.4, extra_bytes=400),
        dict(base, impl="hardneg_torch", framework="torch", kind="backend", median_s=1.0, extra_bytes=50),
    ]
    text = format_results(h.to_json({"skipped": []}))
    header = next(ln for ln in text.splitlines() if ln.startswith("implementation") and "x floor" in ln)
    assert "x sym floor" in header
    row = next(ln for ln in text.splitlines() if ln.startswith("hardneg_torch") and "2.00x" in ln)
    assert row.split()[-2:] == ["2.00x", "2.50x"]


def _torch_or_skip():
    if impls.availability(impls.IMPLS["naive_torch"]) is not None:
        pytest.skip("torch not installed")


STANDIN = textwrap.dedent("""
    import os

    from hardneg.bench import impls

    def build(**kw):
        # stands in for a backend: the naive step under another name, refusing to run on more than one CPU
        if len(os.sched_getaffinity(0)) != 1 or os.environ.get("OMP_NUM_THREADS") != "1":
            raise RuntimeError("threads=1 was not applied")
        return impls.build("naive_torch", kw["batch"], kw["dim"], kw["dtype"], kw["device"], kw["estimator"],
                           kw["hp"])
""")


def test_custom_implementation_measured_in_a_subprocess(tmp_path, monkeypatch):
    """A stand-in backend given as module:function is measured in its own process, on one CPU when asked."""
    _torch_or_skip()
    (tmp_path / "standin_backend.py").write_text(STANDIN)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setattr(sys, "path", [str(tmp_path)] + sys.path)
    h = Harness(Settings(dim=D, reps=2, min_rep_s=0.0, small_batch=4, threads=1), progress=lambda line: None)
    m = h.measure("standin_backend:build", 8, "float32", "hard")
    assert m["status"] == "ok", m["message"]
    assert len(m["times_s"]) == 2 and all(t > 0 for t in m["times_s"])
    assert m["min_s"] <= m["median_s"] <= m["max_s"]
    assert m["peak_bytes"] > 0 and m["small_peak_bytes"] > 0 and m["extra_bytes"] is not None


def test_budget_kills_and_largest_batch_stops_at_the_budget():
    """With a 40 MB budget, the naive (2B)^2 code fits at small B and not at B = 1024 (~150 MB extra)."""
    _torch_or_skip()
    budget = 40 * 10**6
    h = Harness(Settings(reps=1, min_rep_s=0.0, budget_bytes=budget), progress=lambda line: None)
    over = h.measure("naive_torch", 2048, "float32", "hard")  # ~0.4 GB above the small run: killed
    assert over["status"] == "over_budget"
    rec = h.largest_batch("naive_torch", "float32", "hard", start=128, time_cap_s=1e9)
    assert rec["stopped_by"] == "over_budget"
    assert rec["largest_fit"] is not None and rec["largest_fit"] < 1024
    fits = [t for t in rec["tried"] if t["status"] == "ok"]
    assert fits and all(t["extra_bytes"] <= budget for t in fits)
    assert rec["tried"][-1]["batch"] == 2 * rec["largest_fit"]


def test_cli_writes_json_and_png(tmp_path):
    """``hardneg bench`` on a tiny size: table, results.json with ratios, and both PNG plots."""
    _torch_or_skip()
    out = tmp_path / "out"
    from hardneg.cli import main

    rc = main(["bench", "--backend", "torch", "--impl", "naive_torch,floor_torch,symfloor_torch", "--batch", "8",
               "--dtype", "float32", "--estimator", "hard", "--dim", str(D), "--reps", "1", "--small-batch", "4",
               "--no-max-batch", "--out", str(out)])
    assert rc == 0
    data = json.loads((out / "results.json").read_text())
    got = {(m["impl"], m["batch"]) for m in data["measurements"] if m["status"] == "ok"}
    assert got == {("naive_torch", 8), ("floor_torch", 8), ("symfloor_torch", 8)}
    (r,) = [r for r in data["ratios"] if r["impl"] == "naive_torch"]
    assert r["time_vs_floor"] > 0 and r["time_vs_symmetric_floor"] > 0
    assert data["settings"]["dim"] == D and data["meta"]["machine"]["cpus"]
    for name in ("time_hard.png", "memory_hard.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_reports_time_against_the_symmetric_floor(monkeypatch):
    """benchmarks/bench_<framework>.py (hardneg.bench.compare) quotes each loss against both floors."""
    from hardneg.bench import compare

    times = {"floor_torch": 0.5, "symfloor_torch": 0.25, "naive_torch": 4.0, "hardneg_torch": 1.0}

    def fake_measure(self, impl, batch, dtype, estimator, **kw):
        t = times.get(impl)
        status = "ok" if t else "error"
        return {"impl": impl, "status": status, "times_s": [t] if t else [], "median_s": t, "min_s": t, "max_s": t,
                "extra_bytes": 1000 if t else None, "message": "" if t else "not in this test"}

    monkeypatch.setattr(compare.Harness, "measure", fake_measure)
    monkeypatch.setattr(compare._impls, "availability", lambda impl: None)
    _, lines = compare.compare("torch", batch=64, dim=D, reps=1, rounds=1, budget=10**9, threads=1)
    text = "\n".join(lines)
    assert "hardneg_torch x symmetric floor (symfloor_torch, 2 products): 4.00x" in text
    assert "naive_torch x symmetric floor (symfloor_torch, 2 products): 16.00x" in text
    assert "hardneg_torch x floor vs floor_torch: 2.00x" in text
