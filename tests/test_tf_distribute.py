"""hcl_loss(gather=True) under tf.distribute equals single-replica training on the concatenated batch (issue 7).

Each check runs in a subprocess: logical CPU devices must be configured before TensorFlow runs any op, and
MultiWorkerMirroredStrategy needs one process per worker. Everything is float64, so agreement is to rounding.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("tensorflow")

# Mirrored: 2 logical CPU devices. Prints one JSON line with, per case, the per-replica values and the
# per-replica gradients of a shared encoder weight W (z = x @ W), and the same on one replica.
MIRRORED = r"""
import json, numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import hardneg_tf

strategy = tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
rng = np.random.default_rng(0)
B, din, d, K = 8, 5, 4, 6
x1, x2, W0 = rng.normal(size=(B, din)), rng.normal(size=(B, din)), rng.normal(size=(din, d))
labels, bank = rng.integers(0, 3, size=B), rng.normal(size=(K, d))
per, per_labels = rng.normal(size=(B, K, d)), rng.integers(0, 3, size=(B, K))
with strategy.scope():
    W, T = tf.Variable(W0), tf.Variable(0.3, dtype=tf.float64)
W1, T1 = tf.Variable(W0), tf.Variable(0.3, dtype=tf.float64)

def loss_fn(w, t, a, b, l, p, pl, kw):
    extra = dict(labels=l) if kw.pop("labelled", False) else {}
    if kw.pop("bank", False):
        extra["negatives"] = tf.constant(bank)
    if kw.pop("per", False):  # a per-anchor bank, sharded with the rows
        extra["negatives"] = p
        if "labels" in extra:
            extra["negative_labels"] = pl
    if kw.pop("t", False):  # a learnable temperature (a mirrored variable): its gradient is compared too
        extra["temperature"] = t
    return hardneg_tf.hcl_loss(a @ w, b @ w, **extra, **kw)

def shard(x, sizes):
    parts = np.split(x, np.cumsum(sizes)[:-1])
    return strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(parts[ctx.replica_id_in_sync_group]))

out = {}
for name, sizes, kw in [
    ("even_labels", (4, 4), dict(labelled=True, memory_budget=200)),
    ("uneven", (5, 3), dict()),
    ("uneven_sum", (5, 3), dict(reduction="sum", beta=2.0)),
    ("shared_bank", (5, 3), dict(bank=True)),
    # spec 1.1: the cross layout, its banks and labels, a tensor temperature; issue 19: an empty shard
    ("cross_labels_t", (5, 3), dict(layout="cross", labelled=True, t=True, memory_budget=200)),
    ("cross_shared_bank_t", (3, 5), dict(layout="cross", bank=True, t=True, tau_plus=0.5)),
    ("cross_one_way_per_anchor_labels", (5, 3), dict(layout="cross", symmetric=False, per=True, labelled=True,
                                                     reduction="sum")),
    ("empty_shard", (8, 0), dict(labelled=True)),
    ("empty_shard_cross_per_anchor_t", (0, 8), dict(layout="cross", per=True, t=True)),
]:
    @tf.function
    def step(a, b, l, p, pl):
        def local(a, b, l, p, pl):
            with tf.GradientTape() as tape:
                v = loss_fn(W, T, a, b, l, p, pl, dict(kw, gather=True))
            return v, tape.gradient(v, [W, T])
        return strategy.run(local, args=(a, b, l, p, pl))
    v, (g, gt) = step(*(shard(x, sizes) for x in (x1, x2, labels, per, per_labels)))
    with tf.GradientTape() as tape:
        v1 = loss_fn(W1, T1, *(tf.constant(x) for x in (x1, x2, labels, per, per_labels)), dict(kw))
    g1, gt1 = tape.gradient(v1, [W1, T1])
    out[name] = dict(
        values=[float(t) for t in strategy.experimental_local_results(v)],
        grads=[t.numpy().tolist() for t in strategy.experimental_local_results(g)],
        single_value=float(v1), single_grad=g1.numpy().tolist(),
        t_grads=None if gt1 is None else [float(t) for t in strategy.experimental_local_results(gt)],
        single_t_grad=None if gt1 is None else float(gt1))

# issue 19: replicas that disagree on what the gathered shapes depend on get a ValueError naming it
def mixed(f):
    return strategy.experimental_distribute_values_from_function(lambda ctx: f(ctx.replica_id_in_sync_group))
good = mixed(lambda r: tf.constant(x1[4 * r:4 * r + 4]))
for name, args, kw in [
    ("dtype", (mixed(lambda r: tf.constant(x1[4 * r:4 * r + 4], tf.float64 if r else tf.float32)),) * 2, {}),
    ("dim", (mixed(lambda r: tf.constant(x1[4 * r:4 * r + 4, : 4 + r])),) * 2, dict(layout="cross")),
    ("labels", (good, good, mixed(lambda r: tf.constant(labels[4 * r:4 * r + 4]))), dict(labels_on=0)),
]:
    def local(a, b, l=None):
        r = tf.get_static_value(tf.distribute.get_replica_context().replica_id_in_sync_group)
        extra = dict(kw)
        if "labels_on" in extra:  # labels on replica 0 only
            extra = dict(labels=l) if r == extra.pop("labels_on") else {}
        return hardneg_tf.hcl_loss(a, b, gather=True, **extra)
    try:
        tf.function(lambda *a: strategy.run(local, args=a))(*args)
        out["disagree_" + name] = None
    except ValueError as exc:
        out["disagree_" + name] = str(exc).strip().splitlines()[-1]

# Keras: model.fit with HCLLoss(gather=True), 13 samples in batches of 8 and 5 (the last one split 3/2),
# against fit on one device; compared through the trained weights.
import keras
keras.backend.set_floatx("float64")
x = rng.normal(size=(13, 2, din))
def fit(strat, gather):
    with strat.scope():
        model = keras.Sequential([keras.Input((2, din)), keras.layers.Dense(d, use_bias=False)])
        model.layers[0].kernel.assign(W0)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=hardneg_tf.HCLLoss(gather=gather))
    model.fit(x, np.zeros(13), batch_size=8, epochs=1, shuffle=False, verbose=0)
    return model.layers[0].kernel.numpy().tolist()
out["keras"] = dict(W0=W0.tolist(), single=fit(tf.distribute.get_strategy(), False), mirrored=fit(strategy, True))

try:  # outside strategy.run: a clear error, not a hang
    with strategy.scope():
        hardneg_tf.hcl_loss(tf.constant(x1), tf.constant(x2), gather=True)
except RuntimeError as exc:
    out["cross_replica_error"] = str(exc)
print("RESULT " + json.dumps(out))
"""

WORKER = r"""
import json, os, sys
index, ports = int(sys.argv[1]), sys.argv[2].split(",")
os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"localhost:{p}" for p in ports]},
                                      "task": {"type": "worker", "index": index}})
import numpy as np, tensorflow as tf
import hardneg_tf
strategy = tf.distribute.MultiWorkerMirroredStrategy()
rng = np.random.default_rng(0)
x1, x2, W0 = rng.normal(size=(8, 5)), rng.normal(size=(8, 5)), rng.normal(size=(5, 4))
sizes = [5, 3]
lo = sum(sizes[:index])
with strategy.scope():
    W = tf.Variable(W0)
@tf.function
def step(a, b):
    def local(a, b):
        with tf.GradientTape() as tape:
            v = hardneg_tf.hcl_loss(a @ W, b @ W, gather=True)
        return v, tape.gradient(v, W)
    return strategy.run(local, args=(a, b))
v, g = step(tf.constant(x1[lo:lo + sizes[index]]), tf.constant(x2[lo:lo + sizes[index]]))
# issue 19: worker 1 in float32 (e.g. autocast on one worker only) is refused on both workers before the
# views are gathered, instead of breaking the collective
dt = tf.float32 if index else tf.float64
@tf.function
def mismatched(a, b):
    return strategy.run(lambda a, b: hardneg_tf.hcl_loss(tf.cast(a @ W, dt), tf.cast(b @ W, dt), gather=True,
                                                         layout="cross"), args=(a, b))
try:
    mismatched(tf.constant(x1[lo:lo + sizes[index]]), tf.constant(x2[lo:lo + sizes[index]]))
    err = None
except tf.errors.InvalidArgumentError as exc:
    err = exc.message
print("RESULT " + json.dumps(dict(value=float(v), grad=g.numpy().tolist(), mismatch=err)))
"""


def _result(proc_out: str) -> dict:
    lines = [ln for ln in proc_out.splitlines() if ln.startswith("RESULT ")]
    assert lines, proc_out[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def _env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    return env


@pytest.fixture(scope="module")
def mirrored():
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(MIRRORED)], capture_output=True, text=True,
                          timeout=600, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _result(proc.stdout)


@pytest.mark.parametrize("case", ["even_labels", "uneven", "uneven_sum", "shared_bank", "cross_labels_t",
                                  "cross_shared_bank_t", "cross_one_way_per_anchor_labels", "empty_shard",
                                  "empty_shard_cross_per_anchor_t"])
def test_mirrored_equals_single_replica(mirrored, case):
    r = mirrored[case]
    R = len(r["values"])
    assert R == 2
    # float64 throughout: agreement to a few hundred roundings of O(1) quantities
    np.testing.assert_allclose(np.mean(r["values"]), r["single_value"], rtol=1e-12)
    grads, single = np.array(r["grads"]), np.array(r["single_grad"])
    atol = 1e-12 * np.abs(single).max()
    np.testing.assert_allclose(grads.mean(axis=0), single, rtol=0, atol=atol)
    # The scale, explicitly: the replicas' gradients SUM to R times the single-replica gradient (what an
    # optimizer under tf.distribute applies unless the loss is divided by R, as HCLLoss does) ...
    np.testing.assert_allclose(grads.sum(axis=0), R * single, rtol=0, atol=R * atol)
    # ... and neither replica alone carries it (the cross-replica terms flow through the all-gather; a replica
    # with an empty shard has no anchors, but its encoder weights still receive the gradient of its negatives'
    # role in the other replica's anchors)
    assert all(np.abs(g - single).max() > 1e3 * atol for g in grads)
    if r["single_t_grad"] is not None:  # d loss / d t of a mirrored temperature variable: the same rule
        np.testing.assert_allclose(np.mean(r["t_grads"]), r["single_t_grad"], rtol=1e-12)
    if "empty" in case:  # the empty replica's value is 0 (no anchors of its own)
        assert 0.0 in r["values"]


@pytest.mark.parametrize("what,expect", [("dtype", "the dtype (replica 0: float32, replica 1: float64)"),
                                         ("dim", "the feature dimension d (replica 0: 4, replica 1: 5)"),
                                         ("labels", "the labels given (replica 0: True, replica 1: False)")])
def test_replicas_that_disagree_get_a_value_error(mirrored, what, expect):
    """Issue 19: a mismatch that would break (or hang) the all-gather is refused first, naming what differs."""
    assert expect in mirrored["disagree_" + what]


def test_mirrored_keras_fit_trains_like_one_device(mirrored):
    r = mirrored["keras"]
    single, mirrored_w, W0 = (np.array(r[k]) for k in ("single", "mirrored", "W0"))
    assert np.abs(single - W0).max() > 1e-3  # the two steps did move the weights
    np.testing.assert_allclose(mirrored_w, single, rtol=0, atol=1e-12)


def test_gather_outside_replica_context_is_a_clear_error(mirrored):
    assert "inside strategy.run" in mirrored["cross_replica_error"]


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def test_multi_worker_mirrored_two_processes():
    """Two workers (TF_CONFIG on localhost), uneven shards 5/3: the worker average equals one process."""
    ports = ",".join(map(str, _free_ports(2)))
    procs = [
        subprocess.Popen([sys.executable, "-c", textwrap.dedent(WORKER), str(i), ports], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=_env())
        for i in range(2)
    ]
    outs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("MultiWorkerMirroredStrategy workers did not finish")
        assert p.returncode == 0, err[-3000:]
        outs.append(_result(out))

    import tensorflow as tf

    import hardneg_tf

    rng = np.random.default_rng(0)
    x1, x2, W0 = rng.normal(size=(8, 5)), rng.normal(size=(8, 5)), rng.normal(size=(5, 4))
    W = tf.Variable(W0)
    with tf.GradientTape() as tape:
        v = hardneg_tf.hcl_loss(tf.constant(x1) @ W, tf.constant(x2) @ W)
    g = tape.gradient(v, W).numpy()
    np.testing.assert_allclose(np.mean([o["value"] for o in outs]), float(v), rtol=1e-12)
    grads = np.array([o["grad"] for o in outs])
    np.testing.assert_allclose(grads.sum(axis=0), 2 * g, rtol=0, atol=2e-12 * np.abs(g).max())
    for o in outs:  # a worker cannot see the other's dtype when tracing: the run-time check names it
        assert "the replicas disagree on the dtype" in o["mismatch"] and "[[3 4 0 2 1 0]" in o["mismatch"]


def test_default_strategy_gather_is_the_plain_loss():
    """Without a strategy there is one replica: gather=True changes nothing."""
    import tensorflow as tf

    import hardneg_tf

    rng = np.random.default_rng(1)
    z1, z2 = tf.constant(rng.normal(size=(6, 3))), tf.constant(rng.normal(size=(6, 3)))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([z1, z2])
        a = hardneg_tf.hcl_loss(z1, z2, gather=True)
        b = hardneg_tf.hcl_loss(z1, z2)
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-14)
    np.testing.assert_allclose(tape.gradient(a, z1).numpy(), tape.gradient(b, z1).numpy(), rtol=1e-13)
