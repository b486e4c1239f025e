"""GPU readiness (issue 17.4): benchmarks/gpu_check.sh without a GPU, and checks that need CUDA.

The ``cuda`` tests run only where a framework's GPU build sees a GPU (``-m cuda`` selects them); elsewhere
they are skipped with the reason. They compare each backend on the GPU with the float64 reference and check
that the per-device default budget (hardneg.budget) is the one in use there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import hardneg
from hardneg import budget as hb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.sh")
HP = dict(temperature=0.5, beta=1.0, tau_plus=0.1)


def _torch_cuda():
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _jax_gpu():
    try:
        import jax

        return bool(jax.devices("gpu"))
    except (ImportError, RuntimeError):
        return False


def _tf_gpu():
    try:
        import tensorflow as tf
    except ImportError:
        return False
    return bool(tf.config.list_physical_devices("GPU"))


def _views(b=64, d=32):
    rng = np.random.default_rng(0)
    return rng.standard_normal((b, d)), rng.standard_normal((b, d))


# float32 on the GPU against the float64 reference: the loss is a mean of O(1) logs of sums over 2B - 2
# terms, each computed with float32 products of d = 32 terms; 1e-4 relative is ~1000 ulps of float32 and
# still catches a wrong block or a missing term (either moves the value by > 1e-2 at B = 64).
RTOL = 1e-4


@pytest.mark.slow  # imports torch, jax and tensorflow twice (~40 s on 2 cores)
def test_gpu_check_without_a_gpu_reports_each_framework_and_exits_0(tmp_path):
    if _torch_cuda() or _jax_gpu() or _tf_gpu():
        pytest.skip("a GPU is present: the script would run the whole check")
    env = dict(os.environ, PYTHON=sys.executable, TOTAL_S="120")
    proc = subprocess.run(["bash", SCRIPT, str(tmp_path / "out")], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["gpu_found"] is False and summary["passed"] is True and summary["device"] == "cuda"
    assert set(summary["frameworks"]) == {"torch", "jax", "tf"}
    for fw, entry in summary["frameworks"].items():
        assert entry["probe"]["status"] == "no GPU build found", (fw, entry)
        assert entry["probe"]["detail"]  # why: the framework's own message
        assert "verify" not in entry and "bench" not in entry  # nothing ran on a missing GPU
    assert "no GPU build found" in proc.stderr
    # asked to insist on a GPU, the script says so with its documented status
    proc = subprocess.run(["bash", SCRIPT, str(tmp_path / "out2")], env=dict(env, REQUIRE_GPU="1"),
                          capture_output=True, text=True)
    assert proc.returncode == 3


def test_gpu_check_refuses_an_unknown_device(tmp_path):
    proc = subprocess.run(["bash", SCRIPT, str(tmp_path)], env=dict(os.environ, DEVICE="tpu"),
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "DEVICE must be cuda or cpu" in proc.stderr


@pytest.mark.cuda
@pytest.mark.skipif(not _torch_cuda(), reason="needs torch with CUDA and a GPU")
def test_torch_on_cuda_matches_the_reference_and_uses_the_gpu_budget(monkeypatch):
    import torch

    import hardneg_torch
    from hardneg_torch import blocks

    z1, z2 = _views()
    want, grads = hardneg.hcl_loss_and_grad(z1, z2, **HP)
    t1, t2 = (torch.tensor(z, dtype=torch.float32, device="cuda", requires_grad=True) for z in (z1, z2))
    got = []
    real = blocks.block_rows
    monkeypatch.setattr(blocks, "block_rows", lambda budget, *a: got.append(budget) or real(budget, *a))
    loss = hardneg_torch.hcl_loss(t1, t2, **HP)
    loss.backward()
    np.testing.assert_allclose(loss.item(), want, rtol=RTOL)
    np.testing.assert_allclose(t1.grad.cpu().numpy(), grads.z1, rtol=1e-3, atol=1e-6)
    total = torch.cuda.get_device_properties(0).total_memory
    assert set(got) == {hb.default_memory_budget("cuda", blocks.DEFAULT_MEMORY_BUDGET, total)}


@pytest.mark.cuda
@pytest.mark.skipif(not _jax_gpu(), reason="needs jax with a GPU backend")
def test_jax_on_gpu_matches_the_reference_and_uses_the_gpu_budget():
    import jax

    import hardneg_jax
    from hardneg_jax import blocks

    z1, z2 = _views()
    want, _ = hardneg.hcl_loss_and_grad(z1, z2, **HP)
    dev = jax.devices("gpu")[0]
    a, b = (jax.device_put(jax.numpy.asarray(z, dtype="float32"), dev) for z in (z1, z2))
    np.testing.assert_allclose(float(hardneg_jax.hcl_loss(a, b, **HP)), want, rtol=RTOL)
    limit = (dev.memory_stats() or {}).get("bytes_limit", 0)
    assert blocks.device_default_budget(a) == hb.default_memory_budget(dev.platform, blocks.DEFAULT_MEMORY_BUDGET,
                                                                        int(limit))
    assert blocks.device_default_budget(a) > blocks.DEFAULT_MEMORY_BUDGET


@pytest.mark.cuda
@pytest.mark.skipif(not _tf_gpu(), reason="needs TensorFlow with a GPU")
def test_tf_on_gpu_matches_the_reference_and_uses_the_gpu_budget():
    import tensorflow as tf

    import hardneg_tf
    from hardneg_tf import blocks

    z1, z2 = _views()
    want, _ = hardneg.hcl_loss_and_grad(z1, z2, **HP)
    with tf.device("/GPU:0"):
        a, b = (tf.constant(z, dtype=tf.float32) for z in (z1, z2))
        value = hardneg_tf.hcl_loss(a, b, **HP)
    assert "GPU" in value.device
    np.testing.assert_allclose(float(value), want, rtol=RTOL)
    assert blocks.device_default_budget(a) == hb.ACCELERATOR_BUDGET_UNKNOWN_MEMORY


# ---------------------------------------------------------------------------------------------------------
# hardneg verify --device (the conformance suite on the GPU)


def test_verify_help_describes_the_device_option():
    from hardneg.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    text = " ".join(sub.choices["verify"].format_help().split())
    assert "--device {cpu,cuda}" in text and "first GPU" in text


def test_verify_on_cuda_without_a_gpu_fails_saying_so():
    pytest.importorskip("torch")
    if _torch_cuda():
        pytest.skip("a GPU is present")
    proc = subprocess.run([sys.executable, "-m", "hardneg", "verify", "--backend", "torch", "--device", "cuda",
                           "--max-examples", "1"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode != 0
    assert "torch.cuda.is_available() is False" in proc.stdout + proc.stderr


def test_torch_adapter_takes_the_device_from_the_environment(monkeypatch):
    pytest.importorskip("torch")
    from conformance import adapters

    monkeypatch.setenv(adapters.DEVICE_ENV, "cpu")
    assert adapters.TorchAdapter().device() == "cpu"
    monkeypatch.delenv(adapters.DEVICE_ENV)
    assert adapters.TorchAdapter().device() == "cpu"  # the default
    if not _torch_cuda():
        monkeypatch.setenv(adapters.DEVICE_ENV, "cuda")
        with pytest.raises(RuntimeError, match="is_available"):
            adapters.TorchAdapter()
