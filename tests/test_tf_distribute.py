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
with strategy.scope():
    W = tf.Variable(W0)
W1 = tf.Variable(W0)

def loss_fn(w, a, b, l, kw):
    extra = dict(labels=l) if kw.pop("labelled", False) else {}
    if kw.pop("bank", False):
        extra["negatives"] = tf.constant(bank)
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
]:
    @tf.function
    def step(a, b, l):
        def local(a, b, l):
            with tf.GradientTape() as tape:
                v = loss_fn(W, a, b, l, dict(kw, gather=True))
            return v, tape.gradient(v, W)
        return strategy.run(local, args=(a, b, l))
    v, g = step(shard(x1, sizes), shard(x2, sizes), shard(labels, sizes))
    with tf.GradientTape() as tape:
        v1 = loss_fn(W1, tf.constant(x1), tf.constant(x2), tf.constant(labels), dict(kw))
    out[name] = dict(
        values=[float(t) for t in strategy.experimental_local_results(v)],
        grads=[t.numpy().tolist() for t in strategy.experimental_local_results(g)],
        single_value=float(v1), single_grad=tape.gradient(v1, W1).numpy().tolist())

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
print("RESULT " + json.dumps(dict(value=float(v), grad=g.numpy().tolist())))
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


@pytest.mark.parametrize("case", ["even_labels", "uneven", "uneven_sum", "shared_bank"])
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
    # ... and neither replica alone carries it (the cross-replica terms flow through the all-gather)
    assert all(np.abs(g - single).max() > 1e3 * atol for g in grads)


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
