"""The per-device default ``memory_budget`` (hardneg.budget) and how each backend applies it.

No GPU is needed: the rule is checked with made-up device facts, and each backend's device probe with fake
devices; on CPU every backend must keep passing None (its own CPU default, unchanged) to its block planner.
"""

from __future__ import annotations

import types

import numpy as np
import pytest

from hardneg import budget as hb

MiB, GiB = 2**20, 2**30
B, D = 6, 5


# ---------------------------------------------------------------------------------------------------------
# the rule


@pytest.mark.parametrize("platform", ["cpu", "CPU", "mps", "xpu", "METAL"])
def test_cpu_and_unknown_platforms_keep_the_cpu_default(platform):
    assert hb.default_memory_budget(platform, 32 * MiB, 80 * GiB) == 32 * MiB
    assert hb.default_memory_budget(platform, 16 * MiB) == 16 * MiB


@pytest.mark.parametrize("total, want", [
    (141 * GiB, 2 * GiB),  # H200: capped
    (80 * GiB, 2 * GiB),  # A100/H100 80 GB: capped
    (32 * GiB, 2 * GiB),  # 32 GiB / 16 = 2 GiB exactly
    (16 * GiB, 1 * GiB),  # a sixteenth of the card
    (8 * GiB, 512 * MiB),
    (256 * MiB, 32 * MiB),  # a sixteenth (16 MiB) would be below the CPU default: never smaller than it
])
@pytest.mark.parametrize("platform", ["cuda", "gpu", "GPU", "rocm", "tpu"])
def test_accelerator_budget_is_a_sixteenth_of_the_card_capped_at_2_gib(platform, total, want):
    assert hb.default_memory_budget(platform, 32 * MiB, total) == want


@pytest.mark.parametrize("total", [None, 0])
def test_accelerator_of_unknown_size_gets_1_gib(total):
    assert hb.default_memory_budget("GPU", 64 * MiB, total) == GiB
    assert hb.default_memory_budget("GPU", 4 * GiB, total) == 4 * GiB  # a larger CPU default is kept


def test_gpu_default_gives_at_least_1024_rows_at_65536_pairs():
    """The point of the rule: at B = 65,536 (C = 131,072, float32) hardneg_torch's blocks (two (rows x C)
    buffers) hold >= 1024 rows, i.e. <= 128 blocks per pass instead of 4,096 with the CPU default."""
    C, itemsize = 2 * 65536, 4
    per_row = C * itemsize * 2
    gpu = hb.default_memory_budget("cuda", 32 * MiB, 80 * GiB)
    assert gpu // per_row >= 1024 and 2 * 65536 // (gpu // per_row) <= 128
    assert (32 * MiB) // per_row == 32


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "32MiB", None])
def test_bad_cpu_default_is_refused(bad):
    with pytest.raises(ValueError, match="cpu_default"):
        hb.default_memory_budget("cuda", bad, GiB)


@pytest.mark.parametrize("bad", [-1, 1.0e9, True, "80GB"])
def test_bad_total_memory_is_refused(bad):
    with pytest.raises(ValueError, match="total_memory"):
        hb.default_memory_budget("cuda", 32 * MiB, bad)


def test_platform_must_be_a_string():
    with pytest.raises(TypeError, match="platform"):
        hb.default_memory_budget(None, 32 * MiB)


# ---------------------------------------------------------------------------------------------------------
# torch


def test_torch_device_probe():
    torch = pytest.importorskip("torch")
    from hardneg_torch import blocks

    assert blocks.device_default_budget(torch.device("cpu")) is None
    assert blocks.device_default_budget(torch.device("meta")) is None


def test_torch_cuda_probe_uses_the_cards_total_memory(monkeypatch):
    torch = pytest.importorskip("torch")
    from hardneg_torch import blocks

    seen = []

    def props(device):
        seen.append(device)
        return types.SimpleNamespace(total_memory=8 * GiB)

    monkeypatch.setattr(torch.cuda, "get_device_properties", props)
    assert blocks.device_default_budget(torch.device("cuda", 1)) == 512 * MiB
    assert seen == [torch.device("cuda", 1)]  # the tensor's card, not card 0
    # the torch block planner turns it into >= 1024 rows at B = 65,536, float32, beta != 0
    hp = types.SimpleNamespace(beta=1.0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: types.SimpleNamespace(total_memory=80 * GiB))
    gpu = blocks.device_default_budget(torch.device("cuda"))
    assert blocks.block_rows(gpu, 2 * 65536, 2 * 65536, 4, hp, False) == 2048
    assert blocks.block_rows(None, 2 * 65536, 2 * 65536, 4, hp, False) == 32  # the CPU default


def _torch_views(torch):
    rng = np.random.default_rng(0)
    return (torch.tensor(rng.standard_normal((B, D)), requires_grad=True),
            torch.tensor(rng.standard_normal((B, D)), requires_grad=True))


@pytest.mark.parametrize("layout", ["in_batch", "cross"])
def test_torch_cpu_tensors_reach_the_block_planner_with_none(monkeypatch, layout):
    """CPU behaviour unchanged: memory_budget=None arrives at block_rows as None (DEFAULT_MEMORY_BUDGET), and a
    device default, when there is one, arrives instead (checked by pretending the CPU were an accelerator)."""
    torch = pytest.importorskip("torch")
    import hardneg_torch
    from hardneg_torch import blocks
    from hardneg_torch import loss as tloss

    got = []
    real = blocks.block_rows
    monkeypatch.setattr(blocks, "block_rows", lambda budget, *a: got.append(budget) or real(budget, *a))
    z1, z2 = _torch_views(torch)
    kw = {} if layout == "in_batch" else {"layout": "cross"}
    want = hardneg_torch.hcl_loss(z1, z2, **kw)
    want.backward()
    assert got and set(got) == {None}
    got.clear()
    monkeypatch.setattr(tloss, "device_default_budget", lambda device: 12345)
    again = hardneg_torch.hcl_loss(z1, z2, **kw)
    assert got and set(got) == {12345}
    torch.testing.assert_close(again, want, rtol=1e-12, atol=0)  # the budget changes blocks, not the value
    got.clear()
    hardneg_torch.hcl_loss(z1, z2, memory_budget=777, **kw)  # an explicit budget always wins
    assert set(got) == {777}


# ---------------------------------------------------------------------------------------------------------
# jax


def test_jax_device_probe(monkeypatch):
    jax = pytest.importorskip("jax")
    from hardneg_jax import blocks

    x = jax.numpy.ones((B, D))
    assert blocks.device_default_budget(x) is None
    seen = []
    jax.jit(lambda a: seen.append(blocks.device_default_budget(a)) or a)(x)  # a tracer: the default backend
    assert seen == [None]

    gpu = types.SimpleNamespace(platform="gpu", memory_stats=lambda: {"bytes_limit": 60 * GiB})
    fake = types.SimpleNamespace(devices=lambda: [gpu])  # jax returns a set of devices
    assert blocks.device_default_budget(fake) == 2 * GiB
    tpu = types.SimpleNamespace(platform="tpu", memory_stats=lambda: None)  # no statistics: size unknown
    assert blocks.device_default_budget(types.SimpleNamespace(devices=lambda: [tpu])) == GiB
    # >= 960 anchor rows per block at B = 65,536 float32 (4 live (rows x C) arrays + a mask)
    assert blocks.rows_per_block(2 * 65536, 2 * 65536, 4, 2 * GiB) == 960


def test_jax_cpu_arrays_keep_the_cpu_default(monkeypatch):
    jax = pytest.importorskip("jax")
    import hardneg_jax
    from hardneg_jax import loss as jloss

    got = []
    real = jloss.rows_per_block
    monkeypatch.setattr(jloss, "rows_per_block", lambda *a, **k: got.append(a[3]) or real(*a, **k))
    rng = np.random.default_rng(0)
    z1, z2 = (jax.numpy.asarray(rng.standard_normal((B, D)), dtype="float32") for _ in range(2))
    want = hardneg_jax.hcl_loss(z1, z2)
    assert got == [None]
    got.clear()
    monkeypatch.setattr(jloss, "device_default_budget", lambda x: 12345)
    again = hardneg_jax.hcl_loss(z1, z2)
    assert got == [12345]
    np.testing.assert_allclose(float(again), float(want), rtol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# tensorflow


def test_tf_device_probe(monkeypatch):
    tf = pytest.importorskip("tensorflow")
    from hardneg_tf import blocks

    with tf.device("/CPU:0"):
        x = tf.ones((B, D))
    assert blocks.device_default_budget(x) is None
    fake = types.SimpleNamespace(device="/job:localhost/replica:0/task:0/device:GPU:0")
    assert blocks.device_default_budget(fake) == GiB  # TensorFlow does not report the card's size
    # a symbolic tensor not yet placed: GPU when TensorFlow sees one
    unplaced = types.SimpleNamespace(device="")
    monkeypatch.setattr(tf.config, "list_logical_devices", lambda kind=None: [])
    assert blocks.device_default_budget(unplaced) is None
    monkeypatch.setattr(tf.config, "list_logical_devices", lambda kind=None: ["GPU:0"] if kind == "GPU" else [])
    assert blocks.device_default_budget(unplaced) == GiB


def test_tf_cpu_tensors_keep_the_cpu_default(monkeypatch):
    tf = pytest.importorskip("tensorflow")
    import hardneg_tf
    from hardneg_tf import blocks

    got = []
    real = blocks.plan_blocks
    monkeypatch.setattr(blocks, "plan_blocks", lambda n, rb, budget, *a, **k: got.append(budget) or real(n, rb, budget,
                                                                                                          *a, **k))
    rng = np.random.default_rng(0)
    z1, z2 = (tf.constant(rng.standard_normal((B, D)), dtype=tf.float32) for _ in range(2))
    want = hardneg_tf.hcl_loss(z1, z2)
    assert got and set(got) == {blocks.DEFAULT_BUDGET}  # the in-batch layout's CPU default
    got.clear()
    monkeypatch.setattr(blocks, "device_default_budget", lambda x: 12345)
    again = hardneg_tf.hcl_loss(z1, z2)
    assert got and set(got) == {12345}
    np.testing.assert_allclose(float(again), float(want), rtol=1e-6)
