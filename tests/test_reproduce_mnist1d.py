"""Tests of ``hardneg reproduce --task mnist1d``: the pinned data, the seeded views, the annealing schedule,
the CNN's forward pass, the training gradient and update against float64 references, the kNN, the
t-intervals of the report, the CLI end to end and its ``--task`` errors."""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import types

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("mnist1d")

import hardneg  # noqa: E402
from hardneg.reproduce import evaluate  # noqa: E402
from hardneg.reproduce.mnist1d import augment, data, encoder, recipe  # noqa: E402

#: What docs/reproduce.md states about the generated data (section "Task: mnist1d").
DOCS_FINGERPRINT = "1aae43057ee20ad5"
DOCS_TRAIN_COUNTS = [788, 788, 789, 800, 807, 803, 815, 804, 797, 809]
DOCS_TEST_COUNTS = [212, 212, 211, 200, 193, 197, 185, 196, 203, 191]


def _torch_trainer():
    pytest.importorskip("torch")
    pytest.importorskip("hardneg_torch")
    from hardneg.reproduce.mnist1d import train_torch as train

    return train


# ---------------------------------------------------------------------------------------------------------
# Data: pinned, deterministic, equal to what the docs state.


def test_generator_args_are_the_package_defaults_except_num_samples():
    from mnist1d.data import get_dataset_args

    defaults = get_dataset_args(as_dict=True)
    defaults.pop("url")  # used only by the download path, which we never call
    assert set(defaults) == set(data.GENERATOR_ARGS)
    changed = {k for k in defaults if defaults[k] != data.GENERATOR_ARGS[k]}
    assert changed == {"num_samples"} and data.GENERATOR_ARGS["num_samples"] == 10_000


def test_data_is_generated_identically_and_matches_the_docs():
    a = data.load()
    data._generate.cache_clear()  # generate a second time from scratch
    state = np.random.get_state()
    py_state = random.getstate()
    b = data.load()
    # make_dataset seeds the global generators; the loader must hand them back untouched
    after = np.random.get_state()
    assert state[0] == after[0] and np.array_equal(state[1], after[1]) and state[2:] == after[2:]
    assert random.getstate() == py_state
    for x, y in ((a.x_train, b.x_train), (a.y_train, b.y_train), (a.x_test, b.x_test), (a.y_test, b.y_test)):
        np.testing.assert_array_equal(x, y)
    assert a.x_train.shape == (8000, 40) and a.x_test.shape == (2000, 40)
    assert a.x_train.dtype == np.float32 and a.y_train.dtype == np.int64
    assert np.bincount(a.y_train, minlength=10).tolist() == DOCS_TRAIN_COUNTS
    assert np.bincount(a.y_test, minlength=10).tolist() == DOCS_TEST_COUNTS
    assert data.fingerprint(b) == DOCS_FINGERPRINT
    assert not a.x_train.flags.writeable  # cached and shared between callers


# ---------------------------------------------------------------------------------------------------------
# Views and the batch stream.


def _neutral(monkeypatch):
    monkeypatch.setattr(augment, "CROP_LENGTH", (1.0, 1.0))
    monkeypatch.setattr(augment, "SHIFT", 0.0)
    monkeypatch.setattr(augment, "AMPLITUDE", (1.0, 1.0))
    monkeypatch.setattr(augment, "NOISE_STD", 0.0)


def test_views_are_seeded_and_random():
    x = data.load().x_train[:64]
    a, b = augment.augment(x, np.random.default_rng(3)), augment.augment(x, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    v1, v2 = augment.two_views(x, np.random.default_rng(3))
    assert v1.shape == v2.shape == x.shape and v1.dtype == np.float32
    assert not np.array_equal(v1, v2)


def test_augment_is_identity_when_neutral(monkeypatch):
    _neutral(monkeypatch)
    x = data.load().x_train[:16]
    np.testing.assert_allclose(augment.augment(x, np.random.default_rng(0)), x, atol=1e-6)


def test_shift_amplitude_and_edge_clamping(monkeypatch):
    _neutral(monkeypatch)
    monkeypatch.setattr(augment, "SHIFT", 2.0)
    monkeypatch.setattr(augment, "AMPLITUDE", (1.5, 1.5))
    x = np.arange(40, dtype=np.float32)[None, :]

    class Fixed:  # s = 1 (no crop), centre offset 0, shift +2, amplitude 1.5, no noise
        def __init__(self):
            self.calls = 0

        def uniform(self, lo, hi, size):
            self.calls += 1
            return np.full(size, {1: 1.0, 2: 0.0, 3: 2.0, 4: 1.5}[self.calls])

        def normal(self, mu, sd, size):
            return np.zeros(size)

    out = augment.augment(x, Fixed())
    # output sample i reads input i - 2; the first two read position < 0, clamped to the first sample
    want = 1.5 * np.concatenate([[0.0, 0.0], np.arange(38.0)])[None, :]
    np.testing.assert_allclose(out, want, atol=1e-5)


def test_batch_stream_is_seeded_and_pairs_views_of_the_same_signals(monkeypatch):
    x = data.load().x_train
    s1 = recipe.batch_list(x, seed=2, epochs=1, batch_size=256)
    s2 = recipe.batch_list(x, seed=2, epochs=1, batch_size=256)
    assert len(s1) == recipe.steps_per_epoch(8000, 256) == 31
    for (a1, b1, i1), (a2, b2, i2) in zip(s1, s2):
        np.testing.assert_array_equal(a1, a2)
        np.testing.assert_array_equal(b1, b2)
        np.testing.assert_array_equal(i1, i2)
    seen = np.concatenate([i for _, _, i in s1])
    assert len(np.unique(seen)) == len(seen) == 31 * 256  # one epoch visits distinct signals
    assert not np.array_equal(recipe.batch_list(x, 3, 1, 256)[0][0], s1[0][0])
    _neutral(monkeypatch)
    for v1, v2, idx in recipe.batch_list(x, seed=2, epochs=1, batch_size=256)[:3]:
        np.testing.assert_allclose(v1, x[idx], atol=1e-6)  # row k of both views is signal idx[k]
        np.testing.assert_allclose(v2, x[idx], atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# The released annealing schedule.


def test_released_beta_matches_the_documented_schedule():
    sched = [recipe.released_beta(e, 400, 1.0) for e in range(1, 401)]
    assert sched[0] == sched[87] == 1.0 and sched[88] == 0.875  # docs/hyperparameters.md
    assert sched[395] == 0.125 and sched[396:] == [0.0] * 4
    ten = [recipe.released_beta(e, 10, 1.0) for e in range(1, 11)]
    assert ten == [1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0]  # docs/reproduce.md
    with pytest.raises(ValueError, match="at least 9 epochs"):
        recipe.released_beta(1, 8, 1.0)


def test_annealed_method_beta_per_step():
    down = next(m for m in recipe.METHODS if m.anneal == "down")
    per_epoch = 31
    got = [down.beta_at(k, per_epoch, 10) for k in range(10 * per_epoch)]
    assert got[0] == got[2 * per_epoch - 1] == 1.0 and got[2 * per_epoch] == 0.875 and got[-1] == 0.0
    assert down.loss_kwargs(0.5, got[-1])["beta"] == 0.0
    # a run shorter than 9 epochs applies the rule to steps: all nine values appear, in order
    short = [down.beta_at(k, per_epoch, 3) for k in range(3 * per_epoch)]
    assert sorted(set(short), reverse=True) == list(np.linspace(1.0, 0.0, 9))
    assert all(a >= b for a, b in zip(short, short[1:]))
    fixed = recipe.METHODS[3]
    assert {fixed.beta_at(k, per_epoch, 10) for k in range(310)} == {1.0}


# ---------------------------------------------------------------------------------------------------------
# The encoder, its gradient and its update against float64 references.


def test_init_params_seeded_and_shaped():
    a, b, c = encoder.init_params(0), encoder.init_params(0), encoder.init_params(1)
    assert list(a) == encoder.param_names()
    for n in a:
        np.testing.assert_array_equal(a[n], b[n])
        assert a[n].dtype == np.float32
    assert not np.array_equal(a["conv0_w"], c["conv0_w"])
    h, z = encoder.forward(a, np.zeros((3, 40), np.float32))
    assert h.shape == (3, 128) and z.shape == (3, 64)


def _float64_reference(params, x1, x2, loss_kwargs):
    """float64: the CNN's forward in torch.float64, hardneg.hcl_loss_and_grad's closed-form dL/dz, then
    the CNN's vector-Jacobian product with that dL/dz (autograd of the float64 network, not of the loss)."""
    import torch

    p = {n: torch.tensor(v, dtype=torch.float64, requires_grad=True) for n, v in params.items()}
    x = torch.tensor(np.concatenate([x1, x2]), dtype=torch.float64)
    h, z = encoder.torch_forward(p, x)
    # the float64 torch network is the NumPy definition
    h_np, z_np = encoder.forward(params, np.concatenate([x1, x2]), dtype=np.float64)
    np.testing.assert_allclose(z.detach().numpy(), z_np, rtol=1e-12, atol=1e-12)
    b = len(x1)
    zz = z.detach().numpy()
    value, g = hardneg.hcl_loss_and_grad(zz[:b], zz[b:], **loss_kwargs)
    dz = torch.from_numpy(np.concatenate([g.z1, g.z2]))
    grads = torch.autograd.grad(z, list(p.values()), grad_outputs=dz)
    return float(value), {n: t.numpy() for n, t in zip(p, grads)}


def _batch(n=64, seed=0):
    x1, x2, _ = recipe.batch_list(data.load().x_train[:512], seed, 1, n)[0]
    return x1, x2


UNDER_TEST = [("ntxent", None), ("debiased", None), ("hard-b1", None), ("hard-b6", None), ("hard-b1-down", 0.375)]


@pytest.mark.parametrize("key,beta", UNDER_TEST)
def test_first_training_gradient_matches_float64_reference(key, beta):
    train = _torch_trainer()
    method = next(m for m in recipe.METHODS if m.key == key)
    kw = method.loss_kwargs(0.5, beta)
    params = encoder.init_params(0)
    x1, x2 = _batch()
    value, grads = train.loss_and_grads(params, x1, x2, kw)
    ref_value, ref_grads = _float64_reference(params, x1, x2, kw)
    # float32 through three convolutions (sums of <= 160 products), three linear layers (<= 320) and a
    # 128 x 128 similarity matrix: a few 1e-7 relative per operation accumulate to ~1e-5; a wrong term (a
    # missing weight, a detached normalisation, a wrong stride) is off by O(1).
    assert value == pytest.approx(ref_value, rel=1e-5)
    for name, g in grads.items():
        assert g.shape == params[name].shape, name
        err = np.linalg.norm(g - ref_grads[name]) / np.linalg.norm(ref_grads[name])
        assert err < 1e-4, (name, err)


def test_torch_representations_match_numpy_forward():
    train = _torch_trainer()
    params = encoder.init_params(4)
    x = data.load().x_test[:200]
    h, z = train.representations(params, x)
    h64, z64 = encoder.forward(params, x, dtype=np.float64)
    # float32 vs float64 through six layers: ~1e-6 relative; a layer out of place is O(1)
    assert np.abs(h - h64).max() <= 1e-5 * np.abs(h64).max()
    assert np.abs(z - z64).max() <= 1e-5 * np.abs(z64).max()


def test_contrastive_update_rule_and_annealed_beta_match_numpy_adam():
    train = _torch_trainer()
    down = next(m for m in recipe.METHODS if m.anneal == "down")
    params = encoder.init_params(1)
    x1, x2 = _batch()
    steps = 3
    betas = [1.0, 0.5, 0.0]  # a schedule that changes every step: the loss must follow it
    lr, wd, adam = 0.05, 0.1, dict(beta1=0.9, beta2=0.999, eps=1.0)  # eps = 1: see tests/test_reproduce.py
    got, curve = train.train_contrastive(params, [(x1, x2, None)] * steps,
                                         loss_kwargs_at=lambda k: down.loss_kwargs(0.5, betas[k]),
                                         lr=lr, weight_decay=wd, adam=adam)
    p = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(v) for k, v in p.items()}
    losses = []
    for k in range(1, steps + 1):
        loss, g = _float64_reference(p, x1, x2, down.loss_kwargs(0.5, betas[k - 1]))
        losses.append(loss)
        for n in p:
            gn = g[n] + wd * p[n]
            m[n] = adam["beta1"] * m[n] + (1 - adam["beta1"]) * gn
            v[n] = adam["beta2"] * v[n] + (1 - adam["beta2"]) * gn * gn
            p[n] = p[n] - lr * (m[n] / (1 - adam["beta1"] ** k)) / (np.sqrt(v[n] / (1 - adam["beta2"] ** k)) + 1.0)
    np.testing.assert_allclose(curve, losses, rtol=1e-5)
    for n in p:
        delta_ref = p[n] - params[n]
        delta = got[n].astype(np.float64) - params[n]
        assert np.linalg.norm(delta - delta_ref) <= 1e-4 * np.linalg.norm(delta_ref) + 1e-6, n


def test_supervised_reference_first_loss_and_frozen_head():
    train = _torch_trainer()
    params = encoder.init_params(2)
    stream = recipe.batch_list(data.load().x_train, 2, 1, 256)[:2]
    y = data.load().y_train
    got, curve = train.train_supervised(params, stream, y, seed=2, lr=1e-3, weight_decay=1e-6,
                                        adam=dict(beta1=0.9, beta2=0.999, eps=1e-8))
    # the first step's loss is the cross-entropy of the initial network, in float64 NumPy
    x1, _, idx = stream[0]
    h, _ = encoder.forward(params, x1, dtype=np.float64)
    cls = encoder.init_classifier(2)
    logits = h @ cls["cls_w"].astype(np.float64) + cls["cls_b"]
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    assert curve[0] == pytest.approx(-np.mean(logp[np.arange(len(idx)), y[idx]]), rel=1e-5)
    for n in params:  # the backbone moved, the unused projection head did not
        moved = not np.array_equal(got[n], params[n])
        assert moved == (n.startswith("conv") or n.startswith("dense0")), n


# ---------------------------------------------------------------------------------------------------------
# Evaluation and statistics.


def test_knn_matmul_equals_scikit_learn():
    rng = np.random.default_rng(0)
    f_tr, f_te = rng.normal(size=(600, 16)), rng.normal(size=(300, 16))
    y_tr, y_te = rng.integers(0, 4, 600), rng.integers(0, 4, 300)
    for k in (1, 5, 6):  # k = 6 produces 3-3 and 2-2-2 ties: both give them to the smaller label
        assert evaluate.knn_accuracy_matmul(f_tr, y_tr, f_te, y_te, k=k, chunk=128) == evaluate.knn_accuracy(
            f_tr, y_tr, f_te, y_te, k=k)


def _record(diffs_by_method, seeds=5):
    """A minimal record whose NT-Xent accuracy is 0.5 and method m's is 0.5 + diffs[m][seed]."""
    methods = [dict(key="ntxent", label="NT-Xent (SimCLR)", estimator="easy", beta=0.0, tau_plus=0.0)]
    runs = [dict(method="ntxent", seed=s, metrics=dict(linear_probe=0.5, knn=0.5)) for s in range(seeds)]
    for key, d in diffs_by_method.items():
        methods.append(dict(key=key, label="Hard", estimator="hard", beta=1.0, tau_plus=0.1, anneal=None))
        runs += [dict(method=key, seed=s, metrics=dict(linear_probe=0.5 + d[s], knn=0.5)) for s in range(seeds)]
    return dict(config=dict(methods=methods, seeds=list(range(seeds))), runs=runs)


def test_paired_differences_t_interval():
    from scipy.stats import t

    from hardneg.reproduce.report import paired_differences
    from hardneg.reproduce.stats import format_interval as _ci

    d = [0.01, 0.03, 0.02, 0.04, 0.00]
    out = paired_differences(_record({"up": d, "flat": [0.01, -0.01, 0.02, -0.02, 0.0]}))
    lp = out["up"]["linear_probe"]
    half = t.ppf(0.975, 4) * np.std(d, ddof=1) / math.sqrt(5)
    assert lp["mean"] == pytest.approx(0.02, abs=1e-15)
    assert (lp["lo"], lp["hi"]) == pytest.approx((0.02 - half, 0.02 + half), abs=1e-12)
    assert lp["excludes_zero"] and not out["flat"]["linear_probe"]["excludes_zero"]
    assert _ci(lp).endswith("✱") and "✱" not in _ci(out["flat"]["linear_probe"])
    assert out["up"]["knn"]["mean"] == 0.0 and not out["up"]["knn"]["excludes_zero"]


def test_paired_differences_diverged_seed_is_not_dropped():
    from hardneg.reproduce.report import paired_differences
    from hardneg.reproduce.stats import format_interval as _ci

    rec = _record({"nan": [0.1, 0.1, 0.1, 0.1, 0.1]})
    rec["runs"][-1]["metrics"]["linear_probe"] = None  # a diverged run, as results.json stores it
    lp = paired_differences(rec)["nan"]["linear_probe"]
    assert math.isnan(lp["mean"]) and not lp["excludes_zero"] and _ci(lp) == "diverged"


# ---------------------------------------------------------------------------------------------------------
# The CLI: --quick end to end, and --task errors.


def _parser():
    from hardneg.reproduce import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli, parser


def test_cli_quick_mnist1d_writes_outputs(tmp_path, capsys, monkeypatch):
    _torch_trainer()
    from hardneg.reproduce.mnist1d import experiment
    from hardneg.reproduce.report import OUTPUT_FILES

    # the CLI's --quick path, shrunk so the test stays short: one epoch of three methods on a subset of the
    # data; two seeds so the paired-difference table is rendered
    full = data.load()
    small = data.Signals(full.x_train[:2560], full.y_train[:2560], full.x_test[:300], full.y_test[:300])  # 10 steps
    monkeypatch.setattr(experiment.data_mod, "load", lambda: small)
    methods = tuple(m for m in recipe.METHODS if m.key in ("ntxent", "hard-b1", "hard-b1-down"))
    monkeypatch.setattr(recipe, "QUICK", recipe.Config(epochs=1, seeds=(0,), methods=methods))
    cli, parser = _parser()
    out = tmp_path / "out"
    args = parser.parse_args(["--task", "mnist1d", "--quick", "--seeds", "2", "--out", str(out), "--no-progress"])
    assert cli.run(args) == 0
    printed = capsys.readouterr().out
    assert "hardneg reproduce --task mnist1d" in printed
    assert "| Hard, annealed down | hard | 1 → 0 (down) | 0.1 |" in printed
    assert "*same encoder trained with labels (supervised)*" in printed
    assert "95 % Student-t interval" in printed
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)
    for name in OUTPUT_FILES:
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((out / "results.json").read_text())
    assert doc["meta"]["task"] == "mnist1d" and doc["meta"]["data_args"] == data.GENERATOR_ARGS
    assert doc["config"]["seeds"] == [0, 1] and doc["config"]["epochs"] == 1
    assert sorted((r["method"], r["seed"]) for r in doc["runs"]) == sorted(
        (m.key, s) for m in methods for s in (0, 1))
    assert set(doc["baselines"]) == {"raw signal", "random-init encoder", "supervised encoder (labels)"}
    for r in doc["runs"]:
        met = r["metrics"]
        assert 0.0 <= met["linear_probe"] <= 1.0 and 0.0 <= met["knn"] <= 1.0
        assert 0.0 <= met["alignment"] <= 4.0 and -8.0 <= met["uniformity"] <= 0.0
        assert len(r["loss_per_epoch"]) == 1
    down = next(r for r in doc["runs"] if r["method"] == "hard-b1-down")
    assert [b for _, b in down["beta_changes"]] == list(np.linspace(1.0, 0.0, 9))  # 1 epoch: per step
    pd = doc["paired_differences"]["hard-b1"]["linear_probe"]
    assert pd["n"] == 2 and pd["lo"] <= pd["mean"] <= pd["hi"]


def test_cli_task_errors(capsys):
    cli, parser = _parser()
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--task", "cifar"])
    assert exc.value.code == 2 and "invalid choice: 'cifar'" in capsys.readouterr().err
    for task in ("mnist1d", "graphs"):
        args = parser.parse_args(["--task", task, "--backend", "jax"])
        assert cli.run(args) == 2
        err = capsys.readouterr().err
        assert f"the {task} task runs in torch only; got --backend jax" in err
    args = parser.parse_args(["--task", "mnist1d", "--seeds", "0"])
    assert cli.run(args) == 2 and "--seeds must be >= 1" in capsys.readouterr().err


def test_cli_graphs_dispatches_to_the_graphs_package(monkeypatch):
    import hardneg.reproduce

    seen = {}
    fake = types.ModuleType("hardneg.reproduce.graphs")
    fake.run = lambda args: seen.setdefault("args", args) and 0
    monkeypatch.setitem(sys.modules, "hardneg.reproduce.graphs", fake)
    monkeypatch.setattr(hardneg.reproduce, "graphs", fake, raising=False)
    cli, parser = _parser()
    args = parser.parse_args(["--task", "graphs", "--quick", "--seeds", "3", "--out", "x", "--no-progress"])
    assert cli.run(args) == 0
    got = seen["args"]
    assert (got.quick, got.seeds, got.out, got.no_progress, got.backend) == (True, 3, "x", True, "torch")
