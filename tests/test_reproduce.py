"""Tests of ``hardneg reproduce``: the metrics on constructed cases, the NumPy data pipeline, each installed
backend's training gradient and update rule against a float64 NumPy reference, and a tiny experiment end to
end in every installed backend (outputs exist and are well-formed)."""

from __future__ import annotations

import argparse
import importlib
import json
import math
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

import hardneg  # noqa: E402
from hardneg.reproduce import augment, encoder, evaluate, recipe  # noqa: E402
from hardneg.reproduce.data import load  # noqa: E402

BACKENDS = ("torch", "jax", "tf")


def _backend(name):
    """The backend's training module, or skip if the framework or its hardneg_<name> is not installed."""
    pytest.importorskip({"torch": "torch", "jax": "jax", "tf": "tensorflow"}[name])
    pytest.importorskip(f"hardneg_{name}")
    return importlib.import_module(f"hardneg.reproduce.train_{name}")


# ---------------------------------------------------------------------------------------------------------
# Metrics on constructed cases (exact answers known in closed form).


def test_alignment_closed_form():
    u = np.eye(3)
    assert evaluate.alignment(u, u) == 0.0
    assert evaluate.alignment(u, -u) == pytest.approx(4.0, abs=1e-15)  # antipodal: ||2u||^2
    assert evaluate.alignment(u, np.roll(u, 1, axis=0)) == pytest.approx(2.0, abs=1e-15)  # orthogonal
    assert evaluate.alignment(u, -u, alpha=1.0) == pytest.approx(2.0, abs=1e-15)


def test_uniformity_closed_form_and_brute_force():
    assert evaluate.uniformity(np.array([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(-8.0, abs=1e-12)
    assert evaluate.uniformity(np.ones((5, 3)) / math.sqrt(3)) == pytest.approx(0.0, abs=1e-12)
    # orthonormal basis: every pair at squared distance 2 -> log e^{-2*2} = -4
    assert evaluate.uniformity(np.eye(6)) == pytest.approx(-4.0, abs=1e-12)
    rng = np.random.default_rng(0)
    u = evaluate.l2_normalize(rng.normal(size=(40, 5)))
    brute = [math.exp(-2.0 * np.sum((u[i] - u[j]) ** 2)) for i in range(40) for j in range(i + 1, 40)]
    assert evaluate.uniformity(u) == pytest.approx(math.log(np.mean(brute)), rel=1e-12)


def _clusters(n_per_class, n_classes, rng, wrong=()):
    """Features = one-hot of the class (+ small noise); rows listed in ``wrong`` carry another class's one-hot."""
    y = np.repeat(np.arange(n_classes), n_per_class)
    f = np.eye(n_classes)[y] + 0.01 * rng.normal(size=(len(y), n_classes))
    for i in wrong:
        f[i] = np.eye(n_classes)[(y[i] + 1) % n_classes] + 0.01 * rng.normal(size=n_classes)
    return f, y


def test_probe_and_knn_accuracy_on_constructed_clusters():
    rng = np.random.default_rng(1)
    f_tr, y_tr = _clusters(20, 4, rng)
    f_te, y_te = _clusters(10, 4, rng, wrong=(0, 11, 25, 37))  # 4 of 40 look like another class
    # Both classifiers must follow the features: exactly the 36 consistent rows are right.
    assert evaluate.linear_probe_accuracy(f_tr, y_tr, f_te, y_te) == pytest.approx(0.9, abs=1e-12)
    assert evaluate.knn_accuracy(f_tr, y_tr, f_te, y_te, k=5) == pytest.approx(0.9, abs=1e-12)


def test_evaluate_features_reports_diverged_runs_as_nan():
    f = np.full((4, 3), np.nan)
    out = evaluate.evaluate_features(f, np.arange(4), f, np.arange(4), f, f, f)
    assert set(out) == {"linear_probe", "knn", "alignment", "uniformity"}
    assert all(math.isnan(v) for v in out.values())


# ---------------------------------------------------------------------------------------------------------
# The NumPy pipeline every backend shares.


def test_data_split_is_fixed_and_disjoint():
    a, b = load(), load()
    assert a.x_train.shape == (1347, 8, 8) and a.x_test.shape == (450, 8, 8)
    assert a.x_train.dtype == np.float32 and 0.0 <= a.x_train.min() and a.x_train.max() <= 1.0
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert set(np.unique(a.y_test)) == set(range(10))
    # stratified: every class keeps its share of the held-out split to within one image
    counts = np.bincount(a.y_test, minlength=10) / np.bincount(np.concatenate([a.y_train, a.y_test]), minlength=10)
    assert np.all(np.abs(counts - 0.25) < 0.02)


def test_augment_is_identity_without_crop_shift_noise(monkeypatch):
    x = load().x_train[:16]
    monkeypatch.setattr(augment, "CROP_SIDE", (1.0, 1.0))
    monkeypatch.setattr(augment, "SHIFT", 0.0)
    monkeypatch.setattr(augment, "NOISE_STD", 0.0)
    np.testing.assert_allclose(augment.augment(x, np.random.default_rng(0)), x, atol=1e-6)


def test_augment_shift_by_one_pixel_moves_the_image(monkeypatch):
    x = np.zeros((1, 8, 8), np.float32)
    x[0, 3, 4] = 1.0
    monkeypatch.setattr(augment, "CROP_SIDE", (1.0, 1.0))
    monkeypatch.setattr(augment, "NOISE_STD", 0.0)
    monkeypatch.setattr(augment, "SHIFT", 1.0)

    class Fixed:  # shifts (dy, dx) = (+1, -1); crop and its centre neutral
        def __init__(self):
            self.calls = 0

        def uniform(self, lo, hi, size):
            self.calls += 1
            return np.full(size, {1: 1.0, 2: 0.0, 3: 0.0, 4: 1.0, 5: -1.0}[self.calls])

        def normal(self, mu, sd, size):
            return np.zeros(size)

    out = augment.augment(x, Fixed())
    want = np.zeros((1, 8, 8), np.float32)
    want[0, 4, 3] = 1.0  # output pixel i reads input i - delta: the bright pixel moves by +delta
    np.testing.assert_allclose(out, want, atol=1e-12)


def test_augment_is_seeded_and_random():
    x = load().x_train[:32]
    v1 = augment.augment(x, np.random.default_rng(5))
    v2 = augment.augment(x, np.random.default_rng(5))
    np.testing.assert_array_equal(v1, v2)
    a, b = augment.two_views(x, np.random.default_rng(5))
    assert a.shape == b.shape == x.shape and a.dtype == np.float32
    assert not np.array_equal(a, b)  # two different views of each image


def test_batches_same_seed_same_stream_and_pairs_are_the_same_images(monkeypatch):
    x = load().x_train
    s1 = recipe.batch_list(x, seed=3, epochs=2, batch_size=256)
    s2 = recipe.batch_list(x, seed=3, epochs=2, batch_size=256)
    assert len(s1) == 2 * recipe.steps_per_epoch(len(x), 256) == 10
    for (a1, b1), (a2, b2) in zip(s1, s2):
        np.testing.assert_array_equal(a1, a2)
        np.testing.assert_array_equal(b1, b2)
        assert a1.shape == (256, 64) and a1.dtype == np.float32
    monkeypatch.setattr(augment, "CROP_SIDE", (1.0, 1.0))
    monkeypatch.setattr(augment, "SHIFT", 0.0)
    monkeypatch.setattr(augment, "NOISE_STD", 0.0)
    for v1, v2 in recipe.batch_list(x, seed=3, epochs=1, batch_size=256):
        np.testing.assert_allclose(v1, v2, atol=1e-6)  # row k of both views is the same image


def test_init_params_seeded():
    a, b, c = encoder.init_params(0), encoder.init_params(0), encoder.init_params(1)
    assert list(a) == encoder.param_names()
    for n in a:
        np.testing.assert_array_equal(a[n], b[n])
        assert a[n].dtype == np.float32
    assert not np.array_equal(a["w0"], c["w0"])
    h, z = encoder.forward(a, np.zeros((3, 8, 8), np.float32))
    assert h.shape == (3, 128) and z.shape == (3, 64)


def test_cli_module_imports_no_framework():
    code = (
        "import argparse, sys; from hardneg.reproduce import cli; cli.add_arguments(argparse.ArgumentParser()); "
        "heavy = [m for m in ('torch', 'jax', 'tensorflow', 'sklearn', 'matplotlib') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------------------
# Each backend against a float64 NumPy reference: forward, gradient, update rule.


def _reference_loss_and_grads(params, x1, x2, loss_kwargs):
    """float64: the encoder's forward, hardneg.reference's closed-form dL/dz, backprop through the MLP."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    a = np.concatenate([x1, x2]).astype(np.float64)
    acts, pre = [a], []
    n = len(encoder.LAYERS)
    for i in range(n):
        s = a @ p[f"w{i}"] + p[f"b{i}"]
        pre.append(s)
        a = np.maximum(s, 0.0) if i < n - 1 else s
        acts.append(a)
    b = len(x1)
    value, g = hardneg.hcl_loss_and_grad(a[:b], a[b:], **loss_kwargs)
    d = np.concatenate([g.z1, g.z2])
    grads = {}
    for i in reversed(range(n)):
        grads[f"w{i}"] = acts[i].T @ d
        grads[f"b{i}"] = d.sum(axis=0)
        if i > 0:
            d = (d @ p[f"w{i}"].T) * (pre[i - 1] > 0)
    return float(value), grads


def _small_batch(n=64):
    stream = recipe.batches(load().x_train, seed=0, epochs=1, batch_size=n)
    return next(iter(stream))


METHODS_UNDER_TEST = [m for m in recipe.METHODS if m.key in ("ntxent", "debiased", "hard-b1", "hard-b6")]


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_gradient_matches_float64_reference(backend):
    trainer = _backend(backend)
    params = encoder.init_params(0)
    x1, x2 = _small_batch()
    for method in METHODS_UNDER_TEST:
        kw = method.loss_kwargs(0.5)
        value, grads = trainer.loss_and_grads(params, x1, x2, kw)
        ref_value, ref_grads = _reference_loss_and_grads(params, x1, x2, kw)
        # float32 forward and backward through 4 layers of width <= 256 and a 128 x 128 similarity matrix:
        # rounding errors of a few 1e-7 relative per operation accumulate to ~1e-5 relative; 1e-4 leaves room
        # while any wrong term (a missing weight, a detached normalisation) is off by O(1).
        assert value == pytest.approx(ref_value, rel=1e-5), method.key
        for name, g in grads.items():
            assert g.shape == params[name].shape, (method.key, name)
            err = np.linalg.norm(g - ref_grads[name]) / np.linalg.norm(ref_grads[name])
            assert err < 1e-4, (method.key, name, err)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_update_rule_matches_numpy_adam(backend):
    trainer = _backend(backend)
    params = encoder.init_params(1)
    x1, x2 = _small_batch()
    kw = recipe.METHODS[3].loss_kwargs(0.5)
    # eps = 1 keeps the update a smooth function of the gradient (with eps = 1e-8 a gradient entry near
    # zero flips the step between +-lr on float32 rounding), so float32 and float64 can be compared closely.
    lr, wd, adam = 0.5, 0.1, dict(beta1=0.9, beta2=0.999, eps=1.0)
    steps = 3
    got, curve = trainer.train(params, [(x1, x2)] * steps, loss_kwargs=kw, lr=lr, weight_decay=wd, adam=adam)
    p = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(v) for k, v in p.items()}
    losses = []
    for k in range(1, steps + 1):
        loss, g = _reference_loss_and_grads(p, x1, x2, kw)
        losses.append(loss)
        for n in p:
            gn = g[n] + wd * p[n]
            m[n] = adam["beta1"] * m[n] + (1 - adam["beta1"]) * gn
            v[n] = adam["beta2"] * v[n] + (1 - adam["beta2"]) * gn * gn
            p[n] = p[n] - lr * (m[n] / (1 - adam["beta1"] ** k)) / (np.sqrt(v[n] / (1 - adam["beta2"] ** k)) + 1.0)
    assert curve.shape == (steps,)
    # losses and parameters after 3 float32 steps: relative rounding ~1e-6 per step, amplified little by
    # this contractive update (|step| <= lr |g| / 1); 1e-4 relative is far below a wrong bias correction
    # (a factor 10 at step 1) or a missing weight decay (0.1 * p, comparable to the gradient here).
    np.testing.assert_allclose(curve, losses, rtol=1e-5)
    for n in p:
        delta_ref = p[n] - params[n]
        delta = got[n].astype(np.float64) - params[n]
        assert np.linalg.norm(delta - delta_ref) <= 1e-4 * np.linalg.norm(delta_ref) + 1e-6, n


# ---------------------------------------------------------------------------------------------------------
# A tiny experiment end to end, in each installed backend.


def _check_outputs(paths, record, config):
    from hardneg.reproduce.report import OUTPUT_FILES

    assert sorted(paths) == sorted(OUTPUT_FILES)
    for name, path in paths.items():
        with open(path, "rb") as f:
            head = f.read(8)
        if name.endswith(".png"):
            assert head == b"\x89PNG\r\n\x1a\n", name
    with open(paths["results.json"], encoding="utf-8") as f:
        doc = json.load(f, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    keys = [m.key for m in config.methods]
    assert [m["key"] for m in doc["config"]["methods"]] == keys
    assert sorted((r["method"], r["seed"]) for r in doc["runs"]) == sorted((k, s) for k in keys for s in config.seeds)
    for r in doc["runs"]:
        met = r["metrics"]
        assert 0.0 <= met["linear_probe"] <= 1.0 and 0.0 <= met["knn"] <= 1.0
        assert 0.0 <= met["alignment"] <= 4.0  # squared distance of unit vectors
        assert -8.0 <= met["uniformity"] <= 0.0  # log-mean of e^{-2 d^2}, d^2 in [0, 4]
        assert len(r["loss_per_epoch"]) == config.epochs and all(math.isfinite(x) for x in r["loss_per_epoch"])
    for k in keys:
        s = doc["summary"][k]["linear_probe"]
        vals = [r["metrics"]["linear_probe"] for r in doc["runs"] if r["method"] == k]
        assert s["n"] == len(config.seeds) and s["mean"] == pytest.approx(np.mean(vals), abs=1e-12)
        assert s["std"] == pytest.approx(np.std(vals, ddof=1), abs=1e-12)
    assert set(doc["baselines"]) == {"raw pixels", "random-init encoder"}
    md = open(paths["results.md"], encoding="utf-8").read()
    assert "| method | estimator | β | τ⁺ | linear probe (%)" in md
    for m in config.methods:
        assert f"| {m.label} | {m.estimator} |" in md
    assert record["meta"]["backend"] in md
    # paired differences to NT-Xent with 95 % t-intervals: in the JSON and in the table (one report path
    # for every task)
    if len(config.seeds) > 1:
        from scipy.stats import t

        assert "95 % Student-t interval" in md and "| method | β | Δ linear probe (pp) | Δ kNN (pp) |" in md
        ref = {r["seed"]: r["metrics"]["linear_probe"] for r in doc["runs"] if r["method"] == "ntxent"}
        for k in keys[1:]:
            d = [r["metrics"]["linear_probe"] - ref[r["seed"]] for r in sorted(doc["runs"], key=lambda r: r["seed"])
                 if r["method"] == k]
            pd = doc["paired_differences"][k]["linear_probe"]
            half = t.ppf(0.975, len(d) - 1) * np.std(d, ddof=1) / math.sqrt(len(d))
            assert pd["mean"] == pytest.approx(np.mean(d), abs=1e-12)
            assert (pd["lo"], pd["hi"]) == pytest.approx((np.mean(d) - half, np.mean(d) + half), abs=1e-12)
            assert pd["excludes_zero"] == (pd["lo"] > 0 or pd["hi"] < 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_experiment_end_to_end(backend, tmp_path):
    _backend(backend)
    from hardneg.reproduce.experiment import run_experiment
    from hardneg.reproduce.report import write_all

    # a subset of the methods keeps the test short (JAX compiles one step per method)
    methods = tuple(m for m in recipe.METHODS if m.key in ("ntxent", "debiased", "hard-b1"))
    config = recipe.Config(epochs=1, seeds=(0, 1), methods=methods)
    results = run_experiment(config, backend, progress=False)
    paths = write_all(results, str(tmp_path / "out"))
    _check_outputs(paths, results.record, config)
    assert set(results.embeddings) == {m.key for m in config.methods} | {"raw pixels"}
    assert all(e.shape == (450, 128) for k, e in results.embeddings.items() if k != "raw pixels")
    assert results.record["meta"]["backend"] == backend


def test_cli_quick_run_writes_outputs(tmp_path, capsys, monkeypatch):
    backend = next((b for b in BACKENDS if importlib.util.find_spec(f"hardneg_{b}") is not None), None)
    if backend is None:
        pytest.skip("no hardneg backend installed")
    _backend(backend)
    from hardneg.reproduce import cli

    # the CLI's --quick preset, shrunk to one epoch so the test stays short; everything else is the CLI's path
    monkeypatch.setattr(recipe, "QUICK", recipe.Config(epochs=1, seeds=(0, 1)))
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    out = tmp_path / "cli-out"
    args = parser.parse_args(["--backend", backend, "--quick", "--seeds", "1", "--out", str(out), "--no-progress"])
    assert cli.run(args) == 0
    printed = capsys.readouterr().out
    assert "| NT-Xent (SimCLR) | easy |" in printed
    doc = json.loads((out / "results.json").read_text())
    assert doc["config"]["epochs"] == recipe.QUICK.epochs and doc["config"]["seeds"] == [0]
