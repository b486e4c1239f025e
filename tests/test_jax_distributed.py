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

import hardneg  # noqa: E402
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


CROSS_VMAP = [
    # (bank, symmetric, reduction, labels)
    (None, True, "mean", True),
    ("per_anchor", True, "sum", False),
    ("shared", False, "mean", True),
]


@pytest.mark.parametrize("bank,symmetric,reduction,use_labels", CROSS_VMAP)
def test_vmap_axis_cross_layout_equals_single_device(bank, symmetric, reduction, use_labels):
    # cross layout: z2 (and for the reverse direction z1) rows of every device are candidates; a per-anchor
    # bank is split with its anchors, a shared bank is the same on every device. Temperature gradient too.
    B_l = 2
    x1, x2, W, labels = _data(B_l, seed=3)
    rng = np.random.default_rng(4)
    bank_x = None if bank is None else rng.standard_normal((P * B_l, 3, H) if bank == "per_anchor" else (3, H))
    nlab = None
    if use_labels and bank is not None:
        nlab = rng.integers(0, 3, bank_x.shape[:-1])
    lab = labels if use_labels else None
    kw = dict(layout="cross", symmetric=symmetric, reduction=reduction)

    def single(W, t):
        n = None if bank is None else _encode(W, bank_x)
        return hardneg_jax.hcl_loss(_encode(W, x1), _encode(W, x2), negatives=n, labels=lab, negative_labels=nlab,
                                    temperature=t, **kw)

    def local(W, t, a, b, lab_, n, nl):
        n = None if n is None else _encode(W, n)
        return hardneg_jax.hcl_loss(_encode(W, a), _encode(W, b), negatives=n, labels=lab_, negative_labels=nl,
                                    temperature=t, axis_name="dev", memory_budget=300, **kw)

    per = bank == "per_anchor"
    split = lambda x: None if x is None else x.reshape((P, B_l) + x.shape[1:])  # noqa: E731
    with jax.enable_x64(True):
        want_v, (want_g, want_t) = jax.value_and_grad(single, argnums=(0, 1))(W, 0.4)
        v, (g, gt) = jax.vmap(jax.value_and_grad(local, argnums=(0, 1)),
                              in_axes=(None, None, 0, 0, 0 if use_labels else None, 0 if per else None,
                                       0 if per and nlab is not None else None), axis_name="dev")(
            W, 0.4, split(x1), split(x2), split(lab), split(bank_x) if per else bank_x,
            split(nlab) if per else nlab)
        want_v, want_g, want_t, v, g, gt = map(np.asarray, (want_v, want_g, want_t, v, g, gt))
    np.testing.assert_allclose(np.mean(v), want_v, rtol=RTOL)
    np.testing.assert_allclose(np.mean(g, axis=0), want_g, rtol=RTOL, atol=RTOL * np.abs(want_g).max())
    np.testing.assert_allclose(np.mean(gt), want_t, rtol=RTOL)


@pytest.mark.parametrize("layout", [None, "cross"])
def test_vmap_axis_none_reduction_gives_the_local_anchors_exact_losses(layout):
    x1, x2, W, _ = _data(3)
    with jax.enable_x64(True):
        full = np.asarray(hardneg_jax.hcl_loss(_encode(W, x1), _encode(W, x2), reduction="none", layout=layout))
        per = jax.vmap(lambda a, b: hardneg_jax.hcl_loss(_encode(W, a), _encode(W, b), reduction="none",
                                                         layout=layout, axis_name="dev"), axis_name="dev")(
            x1.reshape(P, 3, H), x2.reshape(P, 3, H))
        per = np.asarray(per)
    n = P * 3
    for k in range(P):  # device k: its z1 rows (anchors), then its z2 rows (anchors), in both layouts
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

    # the cross layout (spec 1.1): z2 rows gathered as candidates of z1's anchors, then a replicated shared bank;
    # symmetric (z1 rows gathered as candidates of z2's anchors); labels; a learnable temperature
    for B_l, symmetric, reduction in [(2, True, "mean"), (1, False, "sum")]:
        rng = np.random.default_rng(10 + B_l)
        x1, x2 = rng.standard_normal((4 * B_l, 6)), rng.standard_normal((4 * B_l, 6))
        W, bank = rng.standard_normal((6, 5)), rng.standard_normal((3, 6))
        labels, nlab = rng.integers(0, 3, 4 * B_l), rng.integers(0, 3, 3)
        kw = dict(layout="cross", symmetric=symmetric, reduction=reduction, negative_labels=nlab)
        single = lambda W, t: hardneg_jax.hcl_loss(enc(W, x1), enc(W, x2), negatives=enc(W, bank), labels=labels,
                                                   temperature=t, **kw)
        v, g = jax.value_and_grad(single, argnums=(0, 1))(W, 0.3)
        local = lambda W, t, a, b, l: hardneg_jax.hcl_loss(enc(W, a), enc(W, b), negatives=enc(W, bank), labels=l,
                                                           temperature=t, axis_name="dev", memory_budget=300, **kw)
        key = f"cross_{B_l}_{reduction}"
        out[key] = {"single_loss": float(v), "single_grad": np.asarray(g[0]).tolist(), "single_dt": float(g[1])}

        @jax.jit
        @jax.shard_map(mesh=mesh, in_specs=(P(), P(), P("dev"), P("dev"), P("dev")), out_specs=(P(), P()))
        def step(W, t, a, b, l):
            return jax.value_and_grad(lambda W, t: lax.pmean(local(W, t, a, b, l), "dev"), argnums=(0, 1))(W, t)

        loss, (gW, gt) = step(replicate(W), replicate(np.float64(0.3)), shard(x1), shard(x2), shard(labels))
        out[key]["replicated_loss"] = float(loss)
        out[key]["replicated_grad"] = np.asarray(gW).tolist()
        out[key]["replicated_dt"] = float(gt)

        split = lambda x: x.reshape((4, B_l) + x.shape[1:])
        pl, (pg, pt) = jax.pmap(jax.value_and_grad(local, argnums=(0, 1)), axis_name="dev",
                                in_axes=(None, None, 0, 0, 0))(W, 0.3, split(x1), split(x2), split(labels))
        out[key]["pmap_losses"] = np.asarray(pl).tolist()
        out[key]["pmap_grads"] = np.asarray(pg).tolist()
        out[key]["pmap_dts"] = np.asarray(pt).tolist()

    # empty shards: every shard has the same static shape, so a 0-row shard means an empty global batch
    try:
        jax.shard_map(lambda a: hardneg_jax.hcl_loss(a, a, layout="cross", axis_name="dev"), mesh=mesh,
                      in_specs=P("dev"), out_specs=P())(shard(np.ones((0, 5))))
        out["empty"] = "no error"
    except ValueError as e:
        out["empty"] = str(e)

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


@pytest.mark.parametrize("key", ["cross_2_mean", "cross_1_sum"])
def test_cross_layout_shard_map_and_pmap_equal_single_device(four_devices, key):
    # cross layout with a replicated shared bank and labels; the temperature's gradient too
    r = four_devices[key]
    want_v, want_g, want_t = r["single_loss"], np.array(r["single_grad"]), r["single_dt"]
    atol = RTOL * np.abs(want_g).max()
    np.testing.assert_allclose(r["replicated_loss"], want_v, rtol=RTOL)
    np.testing.assert_allclose(np.array(r["replicated_grad"]), want_g, rtol=RTOL, atol=atol)
    np.testing.assert_allclose(r["replicated_dt"], want_t, rtol=RTOL)
    np.testing.assert_allclose(np.mean(r["pmap_losses"]), want_v, rtol=RTOL)
    np.testing.assert_allclose(np.mean(r["pmap_grads"], axis=0), want_g, rtol=RTOL, atol=atol)
    np.testing.assert_allclose(np.mean(r["pmap_dts"]), want_t, rtol=RTOL)
    assert abs(_scale(np.mean(r["pmap_grads"], axis=0), want_g) - 1.0) < 1e-12


def test_an_empty_shard_is_an_empty_global_batch_with_the_reference_error(four_devices):
    # shard_map and pmap give every device the same static shape: one device cannot hold 0 rows while
    # another holds some (test_uneven_shards_are_rejected_by_jax_with_a_clear_error), so B = 0 on a device
    # means B = 0 everywhere, and the loss is undefined exactly as for a single process with no pairs.
    with pytest.raises(ValueError) as ref:
        hardneg.hcl_loss(np.ones((0, 5)), np.ones((0, 5)), layout="cross")
    assert four_devices["empty"] == str(ref.value)


def test_shard_map_program_is_linear_in_the_global_batch(four_devices):
    n = 2 * 256  # candidates per anchor (the gathered rows); each device walks 8 anchor rows at a time
    assert four_devices["largest"] <= max(8 * n, n * 6) < n * n // 8


def test_uneven_shards_are_rejected_by_jax_with_a_clear_error(four_devices):
    assert "evenly divide" in four_devices["uneven"] or "divisible" in four_devices["uneven"], four_devices["uneven"]
