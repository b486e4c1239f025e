"""Cross-device negatives (``axis_name``): the averaged per-device loss and the averaged per-device gradient of
an encoder weight equal single-device training on the concatenated batch, in float64.

Two harnesses. ``jax.vmap(..., axis_name=...)`` maps the same collectives on one device (fast, in process).
``shard_map`` and ``pmap`` over 4 host CPU devices need ``--xla_force_host_platform_device_count`` before JAX
initialises, hence a subprocess that prints its results as JSON; the assertions run here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

import hardneg_jax  # noqa: E402

# float64 on both sides; the sums run in different orders (per device vs whole batch): a few ulps.
RTOL = 1e-10
P, H, D = 4, 6, 5


def _data(B_l, seed=0):
    rng = np.random.default_rng(seed)
    x1, x2 = rng.standard_normal((P * B_l, H)), rng.standard_normal((P * B_l, H))
    W = rng.standard_normal((H, D))
    labels = rng.integers(0, 3, P * B_l)
    return x1, x2, W, labels


def _encode(W, x):
    return jnp.tanh(x @ W)


def _scale(g, want):
    """<g, want> / <want, want>: 1 when g == want; P when per-device gradients were summed instead of averaged."""
    return float(np.vdot(g, want) / np.vdot(want, want))


@pytest.mark.parametrize("B_l,reduction,use_labels", [(3, "mean", False), (1, "sum", True)])
def test_vmap_axis_average_equals_single_device(B_l, reduction, use_labels):
    x1, x2, W, labels = _data(B_l)
    lab = labels if use_labels else None

    def single(W):
        return hardneg_jax.hcl_loss(_encode(W, x1), _encode(W, x2), labels=lab, reduction=reduction)

    def local(W, a, b, l):
        return hardneg_jax.hcl_loss(_encode(W, a), _encode(W, b), labels=l if use_labels else None,
                                    reduction=reduction, axis_name="dev", memory_budget=1000)

    with jax.enable_x64(True):
        want_v, want_g = jax.value_and_grad(single)(W)
        split = lambda x: x.reshape((P, B_l) + x.shape[1:])  # noqa: E731
        v, g = jax.vmap(jax.value_and_grad(local), in_axes=(None, 0, 0, 0), axis_name="dev")(
            W, split(x1), split(x2), split(labels))
        want_v, want_g, v, g = map(np.asarray, (want_v, want_g, v, g))
    np.testing.assert_allclose(np.mean(v), want_v, rtol=RTOL)
    np.testing.assert_allclose(np.mean(g, axis=0), want_g, rtol=RTOL, atol=RTOL * np.abs(want_g).max())
    assert abs(_scale(np.mean(g, axis=0), want_g) - 1.0) < 1e-12


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_vmap_axis_with_a_per_anchor_bank_gathers_nothing_and_keeps_the_scale(reduction):
    x1, x2, W, _ = _data(2)
    bank = np.random.default_rng(1).standard_normal((P * 2, 3, H))

    def single(W):
        return hardneg_jax.hcl_loss(_encode(W, x1), _encode(W, x2), negatives=_encode(W, bank), reduction=reduction)

    def local(W, a, b, n):
        return hardneg_jax.hcl_loss(_encode(W, a), _encode(W, b), negatives=_encode(W, n), reduction=reduction,
                                    axis_name="dev")

    with jax.enable_x64(True):
        want_v, want_g = map(np.asarray, jax.value_and_grad(single)(W))
        split = lambda x: x.reshape((P, 2) + x.shape[1:])  # noqa: E731
        v, g = map(np.asarray, jax.vmap(jax.value_and_grad(local), in_axes=(None, 0, 0, 0), axis_name="dev")(
            W, split(x1), split(x2), split(bank)))
    np.testing.assert_allclose(v.mean(), want_v, rtol=RTOL)
    np.testing.assert_allclose(g.mean(axis=0), want_g, rtol=RTOL, atol=RTOL * np.abs(want_g).max())


def test_vmap_axis_none_reduction_gives_the_local_anchors_exact_losses():
    x1, x2, W, _ = _data(3)
    with jax.enable_x64(True):
        full = np.asarray(hardneg_jax.hcl_loss(_encode(W, x1), _encode(W, x2), reduction="none"))
        per = jax.vmap(lambda a, b: hardneg_jax.hcl_loss(_encode(W, a), _encode(W, b), reduction="none",
                                                         axis_name="dev"), axis_name="dev")(
            x1.reshape(P, 3, H), x2.reshape(P, 3, H))
        per = np.asarray(per)
    n = P * 3
    for k in range(P):  # device k: its z1 rows, then its z2 rows
        want = np.concatenate([full[3 * k:3 * k + 3], full[n + 3 * k:n + 3 * k + 3]])
        np.testing.assert_allclose(per[k], want, rtol=RTOL)


_SCRIPT = textwrap.dedent(
    r"""
    import json, os
    import numpy as np
    import jax, jax.numpy as jnp
    from jax import lax
    from jax.sharding import NamedSharding, PartitionSpec as P
    import hardneg_jax

    jax.config.update("jax_enable_x64", True)
    assert jax.device_count() == 4, jax.devices()
    out = {}
    mesh = jax.make_mesh((4,), ("dev",))
    shard = lambda x: jax.device_put(x, NamedSharding(mesh, P("dev")))
    replicate = lambda x: jax.device_put(x, NamedSharding(mesh, P()))
    enc = lambda W, x: jnp.tanh(x @ W)

    for B_l, reduction, use_labels in [(3, "mean", False), (1, "mean", False), (2, "sum", True)]:
        rng = np.random.default_rng(B_l)
        x1, x2 = rng.standard_normal((4 * B_l, 6)), rng.standard_normal((4 * B_l, 6))
        W = rng.standard_normal((6, 5))
        labels = rng.integers(0, 3, 4 * B_l)
        kw = lambda l: dict(labels=l if use_labels else None, reduction=reduction)
        single = lambda W: hardneg_jax.hcl_loss(enc(W, x1), enc(W, x2), **kw(labels))
        v, g = jax.value_and_grad(single)(W)
        local = lambda W, a, b, l: hardneg_jax.hcl_loss(enc(W, a), enc(W, b), axis_name="dev", memory_budget=2000,
                                                        **kw(l))
        key = f"{B_l}_{reduction}"
        out[key] = {"single_loss": float(v), "single_grad": np.asarray(g).tolist()}

        # shard_map, one copy of W per device: truly per-device gradients, averaged on the host
        @jax.jit
        @jax.shard_map(mesh=mesh, in_specs=(P("dev"),) * 4, out_specs=(P("dev"), P("dev")))
        def per_device(Ws, a, b, l):
            loss, grad = jax.value_and_grad(local)(Ws[0], a, b, l)
            return loss[None], grad[None]

        Ws = np.broadcast_to(W, (4,) + W.shape)
        losses, grads = per_device(shard(Ws), shard(x1), shard(x2), shard(labels))
        out[key]["shard_map_losses"] = np.asarray(losses).tolist()
        out[key]["shard_map_grads"] = np.asarray(grads).tolist()

        # shard_map with replicated W: the usual training step, gradient of the pmean'd loss
        @jax.jit
        @jax.shard_map(mesh=mesh, in_specs=(P(), P("dev"), P("dev"), P("dev")), out_specs=(P(), P()))
        def step(W, a, b, l):
            return jax.value_and_grad(lambda W: lax.pmean(local(W, a, b, l), "dev"))(W)

        loss, grad = step(replicate(W), shard(x1), shard(x2), shard(labels))
        out[key]["replicated_loss"] = float(loss)
        out[key]["replicated_grad"] = np.asarray(grad).tolist()

        # pmap: per-device loss and gradient
        split = lambda x: x.reshape((4, B_l) + x.shape[1:])
        pl, pg = jax.pmap(jax.value_and_grad(local), axis_name="dev", in_axes=(None, 0, 0, 0))(
            W, split(x1), split(x2), split(labels))
        out[key]["pmap_losses"] = np.asarray(pl).tolist()
        out[key]["pmap_grads"] = np.asarray(pg).tolist()

    # memory: the per-device gradient program holds no (2N x 2N) array (N = 4 * 64 global pairs)
    from jax.extend import core as jcore

    def largest(j):
        best = 0
        for e in j.eqns:
            best = max([best] + [int(np.prod(v.aval.shape)) for v in e.outvars if hasattr(v.aval, "shape")])
            for p in e.params.values():
                for s in p if isinstance(p, (tuple, list)) else (p,):
                    if isinstance(s, jcore.ClosedJaxpr):
                        best = max(best, largest(s.jaxpr))
                    elif isinstance(s, jcore.Jaxpr):
                        best = max(best, largest(s))
        return best

    x = np.zeros((256, 6))
    W = np.zeros((6, 5))
    prog = jax.make_jaxpr(jax.shard_map(lambda W, a, b: jax.grad(lambda W: lax.pmean(hardneg_jax.hcl_loss(
        enc(W, a), enc(W, b), axis_name="dev", memory_budget=8 * 512 * 17), "dev"))(W),
        mesh=mesh, in_specs=(P(), P("dev"), P("dev")), out_specs=P()))(replicate(W), shard(x), shard(x))
    out["largest"] = largest(prog.jaxpr)

    # uneven shards: JAX maps equal shards only
    try:
        jax.shard_map(lambda a: hardneg_jax.hcl_loss(a, a, axis_name="dev"), mesh=mesh, in_specs=P("dev"),
                      out_specs=P())(shard(np.ones((10, 5))))
        out["uneven"] = "no error"
    except ValueError as e:
        out["uneven"] = str(e)
    print("RESULT " + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def four_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


@pytest.mark.parametrize("key", ["3_mean", "1_mean", "2_sum"])
def test_shard_map_and_pmap_average_equals_single_device(four_devices, key):
    r = four_devices[key]
    want_v, want_g = r["single_loss"], np.array(r["single_grad"])
    atol = RTOL * np.abs(want_g).max()
    for how in ("shard_map", "pmap"):
        losses, grads = np.array(r[f"{how}_losses"]), np.array(r[f"{how}_grads"])
        np.testing.assert_allclose(losses.mean(), want_v, rtol=RTOL, err_msg=how)
        np.testing.assert_allclose(grads.mean(axis=0), want_g, rtol=RTOL, atol=atol, err_msg=how)
        # the scale, explicitly: the average is the gradient; the sum is P times it (the classic bug's factor)
        assert abs(_scale(grads.mean(axis=0), want_g) - 1.0) < 1e-12, how
        assert abs(_scale(grads.sum(axis=0), want_g) - P) < 1e-11, how
    # replicated weights: the gradient of the pmean'd loss is the single-device gradient on every device
    np.testing.assert_allclose(r["replicated_loss"], want_v, rtol=RTOL)
    np.testing.assert_allclose(np.array(r["replicated_grad"]), want_g, rtol=RTOL, atol=atol)
    assert abs(_scale(np.array(r["replicated_grad"]), want_g) - 1.0) < 1e-12


def test_shard_map_program_is_linear_in_the_global_batch(four_devices):
    n = 2 * 256  # candidates per anchor (the gathered rows); each device walks 8 anchor rows at a time
    assert four_devices["largest"] <= max(8 * n, n * 6) < n * n // 8


def test_uneven_shards_are_rejected_by_jax_with_a_clear_error(four_devices):
    assert "evenly divide" in four_devices["uneven"] or "divisible" in four_devices["uneven"], four_devices["uneven"]
