"""``hardneg reproduce --task graphs``: the data, the model's gradient through jsd_loss, the command end to end."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("networkx")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

import torch  # noqa: E402

import hardneg  # noqa: E402
import hardneg_torch  # noqa: E402
from hardneg.reproduce import graphs  # noqa: E402
from hardneg.reproduce.graphs import data as gdata  # noqa: E402
from hardneg.reproduce.graphs import experiment as gexp  # noqa: E402
from hardneg.reproduce.graphs.model_torch import build_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _digest(ds: gdata.GraphSet) -> str:
    h = hashlib.sha256()
    h.update(ds.sizes.tobytes())
    h.update(ds.labels.tobytes())
    for e in ds.edges:
        h.update(np.ascontiguousarray(e, dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------ data


def test_dataset_is_identical_across_calls_and_processes():
    a, b = gdata.make_dataset(), gdata.make_dataset()
    assert np.array_equal(a.sizes, b.sizes) and np.array_equal(a.labels, b.labels)
    assert all(np.array_equal(x, y) for x, y in zip(a.edges, b.edges))
    # A fresh interpreter with a different hash seed (set / dict order of networkx's nodes must not matter).
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from tests.test_reproduce_graphs import _digest;"
        "from hardneg.reproduce.graphs.data import make_dataset; print(_digest(make_dataset()))"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code, ROOT], capture_output=True, text=True, env=env, cwd=ROOT,
                         check=True)
    assert out.stdout.strip() == _digest(a)
    # and the seed matters
    assert _digest(gdata.make_dataset(seed=gdata.DATA_SEED + 1)) != _digest(a)


def test_dataset_shape_balance_and_valid_edges():
    ds = gdata.make_dataset()
    k = len(gdata.FAMILIES)
    assert len(ds) == k * gdata.PER_CLASS
    assert np.array_equal(np.bincount(ds.labels), np.full(k, gdata.PER_CLASS))
    for n, e in zip(ds.sizes, ds.edges):
        assert e.ndim == 2 and e.shape[1] == 2
        assert (e[:, 0] < e[:, 1]).all() and e.min() >= 0 and e.max() < n  # i < j: no self-loops
        assert len({tuple(r) for r in e.tolist()}) == len(e)  # no duplicate edges


def test_noise_keeps_the_edge_count_and_zero_noise_gives_the_families():
    import networkx as nx

    clean = gdata.make_dataset(per_class=3, noise=0.0)
    noisy = gdata.make_dataset(per_class=3, noise=0.3)
    for n, e, y in zip(clean.sizes, clean.edges, clean.labels):
        deg = np.bincount(e.ravel(), minlength=n)
        name = gdata.FAMILIES[y]
        if name == "cycle":
            assert (deg == 2).all()
        elif name == "star":
            assert sorted(deg.tolist()) == [1] * (n - 1) + [n - 1]
        elif name == "clique":
            assert (deg == n - 1).all()
        elif name == "circular ladder":
            assert (deg == 3).all()
        g = nx.Graph()
        g.add_nodes_from(range(n))
        g.add_edges_from(e.tolist())
        if name == "hypercube":
            assert nx.is_isomorphic(g, nx.hypercube_graph(int(np.log2(n))))
    # Noise removes edges and adds as many non-edges: the count is kept except for cliques (no non-edge).
    for n, e, y in zip(noisy.sizes, noisy.edges, noisy.labels):
        name = gdata.FAMILIES[y]
        ref = {
            "cycle": n, "star": n - 1, "wheel": 2 * (n - 1), "circular ladder": 3 * n // 2,
        }.get(name)
        if ref is not None:
            assert len(e) == ref
    assert noisy.sizes.tolist() != [] and _digest(noisy) != _digest(gdata.make_dataset(per_class=3, noise=0.0))


def test_bad_dataset_arguments_raise():
    with pytest.raises(ValueError, match="per_class"):
        gdata.make_dataset(per_class=0)
    with pytest.raises(ValueError, match="noise"):
        gdata.make_dataset(noise=1.0)


def test_collate_is_pyg_style():
    ds = gdata.make_dataset(per_class=1)
    idx = np.array([3, 0, 5])
    edge_index, batch, n = gdata.collate(ds, idx)
    assert n == int(ds.sizes[idx].sum()) and batch.shape == (n,)
    assert np.array_equal(np.bincount(batch), ds.sizes[idx]) and (np.diff(batch) >= 0).all()
    assert edge_index.shape == (2, 2 * sum(len(ds.edges[g]) for g in idx))
    # both directions, and every edge stays inside its graph
    pairs = set(map(tuple, edge_index.T.tolist()))
    assert all((b, a) in pairs for a, b in pairs)
    assert (batch[edge_index[0]] == batch[edge_index[1]]).all()


def test_degree_histogram_counts_nodes():
    ds = gdata.make_dataset(per_class=2)
    h = gdata.degree_histogram(ds)
    assert h.shape == (len(ds), 33)
    assert np.array_equal(h.sum(axis=1), ds.sizes)


def test_batch_order_visits_every_graph_once_per_epoch():
    steps = gexp.batch_order(300, seed=3, epochs=2, batch_size=128)
    assert [len(s) for s in steps] == [128, 128, 44] * 2
    for e in range(2):
        assert np.array_equal(np.sort(np.concatenate(steps[3 * e: 3 * e + 3])), np.arange(300))
    assert not np.array_equal(np.concatenate(steps[:3]), np.concatenate(steps[3:]))
    # a final batch of one graph is dropped (the estimator needs two graphs)
    assert [len(s) for s in gexp.batch_order(129, 0, 1, 128)] == [128]


# ------------------------------------------------------------------------------------------------ gradient


def _first_batch(dtype):
    ds = gdata.make_dataset()  # seed 0's first training batch (128 graphs)
    idx = gexp.batch_order(len(ds), 0, 1, 128)[0]
    ei, b, n, g = gexp._tensors(ds, idx)
    return ei, b, n, g


def _grads(method, dtype, train_mode):
    ei, b, n, g = _first_batch(dtype)
    model = build_model(0, dtype)
    model.train(train_mode)
    local, graph = model(ei, b, n, g)
    local.retain_grad()
    graph.retain_grad()
    loss = hardneg_torch.jsd_loss(local, graph, b, **method.loss_kwargs())
    loss.backward()
    params = {k: p.grad.detach().double().clone() for k, p in model.named_parameters()}
    return loss, local, graph, b, params


@pytest.mark.parametrize("key", ["infograph", "released-b0", "released-b10", "corrected-b1", "corrected-b10"])
def test_model_feeds_jsd_loss_like_the_float64_reference(key):
    """In float64 and in training mode (as training runs), the loss and its gradient w.r.t. the loss's inputs
    (local, graph) equal the NumPy float64 reference ``hardneg.jsd_loss_and_grad`` on the model's own
    embeddings and batch vector: the model hands the estimator the right tensors, the right batch vector and
    the method's arguments. Both sides evaluate the same closed form in float64, so they differ by rounding
    only (~1e-16 relative per operation); 1e-9 relative leaves a wide margin, while a wrong convention, β,
    τ⁺ or batch vector changes the gradient at order 1."""
    method = {m.key: m for m in gexp.METHODS}[key]
    loss, local, graph, b, _ = _grads(method, torch.float64, train_mode=True)
    value, ref = hardneg.jsd_loss_and_grad(local.detach().numpy(), graph.detach().numpy(), b.numpy(),
                                           **method.loss_kwargs())
    assert abs(loss.item() - value) <= 1e-9 * max(1.0, abs(value))
    for ours, theirs in ((local.grad.numpy(), ref.local), (graph.grad.numpy(), ref.graph)):
        scale = np.abs(theirs).max()
        assert scale > 0
        assert np.abs(ours - theirs).max() <= 1e-9 * scale


@pytest.mark.parametrize("key", ["infograph", "released-b0", "released-b10", "corrected-b1", "corrected-b10"])
def test_first_gradient_float32_matches_float64(key):
    """Every parameter's first gradient through ``jsd_loss`` in float32 (the backend path training uses)
    equals the same model's in float64, from the same initial weights on the same first batch.

    The comparison runs with BatchNorm in eval mode (at initialisation an exact identity: running mean 0,
    variance 1). In training mode BatchNorm divides each feature by its batch standard deviation, which for a
    ReLU feature active on a few nodes is tiny: it amplifies float32 rounding about 1e4-fold (measured: 5e-3
    relative gradient difference at initialisation, against 2e-7 in eval mode), so a tolerance there would
    have to be loose enough to hide real errors;
    the float64 training-mode path is checked against the reference in the test above.

    Tolerance, from float32's unit roundoff u = 2^-24 ≈ 6e-8: the gradient is a chain of about L = 20
    matrix products, activations and reductions, each adding a relative error of at most ~sqrt(K)·u for
    reductions of length K (pairwise / random-walk accumulation; K <= 96 inside the layers, the node sums
    are pairwise), so ||g32 − g64|| / ||g64|| <~ L·sqrt(K)·u ≈ 20·10·6e-8 ≈ 1.2e-5: we allow 2e-5 (measured:
    ~2e-7). Per parameter tensor, 1e-4 of its own norm plus 2e-5 of the whole gradient's (small tensors,
    e.g. biases, carry cancellation the global norm hides).
    """
    method = {m.key: m for m in gexp.METHODS}[key]
    *_, g32 = _grads(method, torch.float32, train_mode=False)
    *_, g64 = _grads(method, torch.float64, train_mode=False)
    flat64 = torch.cat([v.ravel() for v in g64.values()])
    flat32 = torch.cat([v.ravel() for v in g32.values()])
    assert torch.isfinite(flat64).all() and flat64.norm() > 0
    rel = ((flat32 - flat64).norm() / flat64.norm()).item()
    assert rel <= 2e-5, rel
    for k, v64 in g64.items():
        assert (g32[k] - v64).norm() <= 1e-4 * v64.norm() + 2e-5 * flat64.norm(), k


def test_weights_are_seeded_and_identical_across_dtypes():
    a, b, c = build_model(4), build_model(4, torch.float64), build_model(5)
    for (k, p), q, r in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(p.double(), q), k
    assert any(not torch.equal(p, r) for p, r in zip(a.parameters(), c.parameters()))


# ------------------------------------------------------------------------------------------------ reference rows


def test_calibrated_random_init_is_deterministic_and_leaves_the_weights_untouched():
    """The reference row "random-init encoder, BatchNorm statistics estimated on the data": the same model and
    embeddings on every call (bit for bit), every parameter exactly build_model(seed)'s (no training), only
    the BatchNorm running statistics changed, counted over training's first-epoch batches, and the
    momentum / mode restored."""
    ds = gdata.make_dataset()
    a, b = gexp.calibrated_random_init(ds, 3), gexp.calibrated_random_init(ds, 3)
    init = build_model(3)
    for (k, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), k
    assert np.array_equal(gexp.embed(a, ds), gexp.embed(b, ds))
    for (k, p), q in zip(a.named_parameters(), init.parameters()):
        assert torch.equal(p, q), k
    bns = [m for m in a.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(bns) == 3
    steps = len(gexp.batch_order(len(ds), 3, 1, 128))
    for m in bns:
        assert int(m.num_batches_tracked) == steps and m.momentum == 0.1
        assert not torch.equal(m.running_mean, torch.zeros_like(m.running_mean))
        assert not torch.equal(m.running_var, torch.ones_like(m.running_var))
    # calibration changes what the evaluation sees: eval-mode BatchNorm now normalises
    assert not np.allclose(gexp.embed(a, ds), gexp.embed(init, ds))
    # "the batches training would see": one pass over exactly the first epoch of the training stream
    for s in (0, 3):
        first = gexp.batch_order(len(ds), s, 1, 128)
        full = gexp.batch_order(len(ds), s, gexp.DEFAULT.epochs, 128)
        assert all(np.array_equal(x, y) for x, y in zip(first, full[: len(first)]))


@pytest.mark.parametrize("batch_size", [16, 6])
def test_calibrated_batchnorm_statistics_equal_the_batch_statistics_of_the_data(batch_size):
    """calibrate_batchnorm's running statistics equal a direct NumPy computation on a tiny data set (16
    graphs, float64): the GIN layers evaluated by hand with each batch's own statistics (training-mode
    BatchNorm), the mean and unbiased variance of every BatchNorm input per batch, averaged over the batches
    (momentum=None: a cumulative average). Batch 16 = one batch holding every graph: the statistics over the
    whole data set; batch 6 = three batches (6, 6, 4). Both sides are float64 evaluations of the same sums
    (~1e-16 relative per operation, a few hundred operations): 1e-10 relative is a wide margin, while a
    wrong count, a biased variance (factor n/(n−1), ≥ 1.01 here), a momentum of 0.1 or an eval-mode pass
    changes the statistics at order 1e-2 or more."""
    ds = gdata.make_dataset(per_class=2)
    stream_idx = gexp.batch_order(len(ds), 7, 1, batch_size)
    assert [len(i) for i in stream_idx] == ([16] if batch_size == 16 else [6, 6, 4])
    model = build_model(7, torch.float64)
    gexp.calibrate_batchnorm(model, [gexp._tensors(ds, idx) for idx in stream_idx])

    layers = model.encoder.layers
    sums = [[np.zeros(32), np.zeros(32)] for _ in layers]
    for idx in stream_idx:
        edge_index, _, n = gdata.collate(ds, idx)
        x = np.ones((n, 1))
        for k, layer in enumerate(layers):
            w1, b1 = layer.mlp[0].weight.detach().numpy(), layer.mlp[0].bias.detach().numpy()
            w2, b2 = layer.mlp[2].weight.detach().numpy(), layer.mlp[2].bias.detach().numpy()
            agg = np.zeros_like(x)
            np.add.at(agg, edge_index[1], x[edge_index[0]])
            h = np.maximum((np.maximum((x + agg) @ w1.T + b1, 0.0)) @ w2.T + b2, 0.0)  # BatchNorm's input
            mu, var = h.mean(axis=0), h.var(axis=0)  # biased: what training-mode BatchNorm divides by
            sums[k][0] += mu
            sums[k][1] += var * n / (n - 1)  # the running variance is the unbiased one
            gamma, beta = layer.bn.weight.detach().numpy(), layer.bn.bias.detach().numpy()
            x = (h - mu) / np.sqrt(var + layer.bn.eps) * gamma + beta
    for k, layer in enumerate(layers):
        mean_ref, var_ref = sums[k][0] / len(stream_idx), sums[k][1] / len(stream_idx)
        assert int(layer.bn.num_batches_tracked) == len(stream_idx)
        np.testing.assert_allclose(layer.bn.running_mean.numpy(), mean_ref, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(layer.bn.running_var.numpy(), var_ref, rtol=1e-10, atol=1e-12)
        assert np.abs(mean_ref).max() > 1e-3  # the statistics are far from the initial (0, 1)


# ------------------------------------------------------------------------------------------------ command


def _args(**kw):
    base = dict(quick=True, seeds=None, out="reproduce-out", no_progress=True, backend="torch")
    base.update(kw)
    return argparse.Namespace(**base)


@pytest.mark.parametrize("backend", ["jax", "tf"])
def test_other_backends_exit_2_with_a_message(backend, tmp_path, capsys):
    assert graphs.run(_args(backend=backend, out=str(tmp_path / "o"))) == 2
    err = capsys.readouterr().err
    assert "only --backend torch" in err and backend in err
    assert not (tmp_path / "o").exists()


def test_seeds_below_one_exit_2(tmp_path, capsys):
    assert graphs.run(_args(seeds=0, out=str(tmp_path / "o"))) == 2
    assert "--seeds must be >= 1" in capsys.readouterr().err


def test_quick_end_to_end_writes_the_outputs(tmp_path, capsys):
    out = tmp_path / "graphs"
    assert graphs.run(_args(out=str(out))) == 0
    printed = capsys.readouterr().out
    from hardneg.reproduce.graphs.report import OUTPUT_FILES

    for name in OUTPUT_FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "graphs_accuracy_vs_beta.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((out / "results.json").read_text(encoding="utf-8"))
    cfg = gexp.QUICK
    keys = [m.key for m in gexp.METHODS]
    assert record["config"]["seeds"] == list(cfg.seeds) and record["config"]["epochs"] == cfg.epochs
    assert sorted((r["method"], r["seed"]) for r in record["runs"]) == sorted((k, s) for k in keys for s in cfg.seeds)
    chance = 1.0 / len(gdata.FAMILIES)
    for r in record["runs"]:
        assert chance < r["accuracy"] <= 1.0 and len(r["loss_per_epoch"]) == cfg.epochs and r["final_loss_finite"]
    assert list(record["baselines"]) == list(gexp.REFERENCE_ROWS)
    for name in gexp.REFERENCE_ROWS:
        assert [row["seed"] for row in record["baselines"][name]] == list(cfg.seeds)
        assert all(chance < row["accuracy"] <= 1.0 for row in record["baselines"][name])
    # every method and the other reference rows, paired with the calibrated random-init encoder on the seed
    base = {row["seed"]: row["accuracy"] for row in record["baselines"][gexp.RANDOM_INIT_BN]}
    vr = record["paired"]["vs_random_init"]
    assert set(vr) == set(keys) | {gexp.DEGREE_HISTOGRAM, gexp.RANDOM_INIT}
    for k in keys:
        diffs = [r["accuracy"] - base[r["seed"]] for r in record["runs"] if r["method"] == k]
        assert vr[k]["values"] == pytest.approx(diffs, abs=1e-15)
    vs = record["paired"]["vs_reference"]
    assert set(vs) == set(keys) - {gexp.REFERENCE}
    ref = {r["seed"]: r["accuracy"] for r in record["runs"] if r["method"] == gexp.REFERENCE}
    for k, p in vs.items():
        diffs = [r["accuracy"] - ref[r["seed"]] for r in record["runs"] if r["method"] == k]
        assert p["values"] == pytest.approx(diffs, abs=1e-15) and p["lo"] <= p["mean"] <= p["hi"]
    assert set(record["paired"]["corrected_minus_released"]) == {"0", "1", "2", "10"}
    assert record["meta"]["backend"] == "torch" and record["meta"]["n_graphs"] == len(gdata.make_dataset())
    md = (out / "results.md").read_text(encoding="utf-8")
    assert md == printed.strip("\n") + "\n" or md.strip() in printed
    assert "InfoGraph (JSD)" in md and all(name in md for name in gexp.REFERENCE_ROWS)
    assert "Δ vs random-init, BN from data" in md
