"""hardneg_torch inside PyTorch: autocast, torch.compile, torch.func, double backward, nn.Module, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import hardneg  # noqa: E402
from hardneg_torch import HCLLoss, hcl_loss  # noqa: E402


def _pair(dtype=torch.float64, B=6, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, d, generator=g, dtype=dtype), torch.randn(B, d, generator=g, dtype=dtype)


def _ref(z1, z2, **kw):
    return hardneg.hcl_loss_and_grad(z1.detach().double().numpy(), z2.detach().double().numpy(), **kw)


# float64 comparisons at rounding level: a few hundred ulps of the O(1) values and gradients.
RTOL64 = 1e-12


@pytest.mark.parametrize("fast", [torch.bfloat16, torch.float16])
def test_autocast_does_not_change_the_result(fast):
    # Under autocast the matmuls would run in half precision; the loss disables autocast inside, so a
    # float32 input gives float32 results equal to those without autocast.
    z1, z2 = _pair(torch.float32)
    a = z1.clone().requires_grad_(True)
    plain = hcl_loss(a, z2)
    plain.backward()
    b = z1.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=fast):
        under = hcl_loss(b, z2)
    under.backward()
    assert under.dtype == torch.float32 and b.grad.dtype == torch.float32
    torch.testing.assert_close(under, plain, rtol=0, atol=0)
    torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=0)


def test_autocast_with_half_encoder_output():
    # A typical autocast step: the encoder emits bfloat16; value and gradient come back in bfloat16 and
    # match the reference on those bfloat16 inputs (bfloat16 rounding of the output: 2^-7 relative).
    lin = torch.nn.Linear(5, 5)
    x1, x2 = _pair(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z1, z2 = lin(x1), lin(x2)
        assert z1.dtype == torch.bfloat16
        loss = hcl_loss(z1, z2)
    assert loss.dtype == torch.bfloat16
    ref, _ = _ref(z1, z2)
    np.testing.assert_allclose(loss.item(), ref, rtol=2**-7)
    loss.backward()
    assert lin.weight.grad is not None and torch.isfinite(lin.weight.grad).all()


@pytest.mark.parametrize("kw", [dict(), dict(reduction="none", beta=math.inf)], ids=["mean", "none-inf"])
def test_torch_compile_fullgraph(kw):
    # fullgraph=True: dynamo traces hcl_loss, the validation and the autograd.Function without a graph break.
    # aot_eager exercises dynamo and AOTAutograd; inductor's code generation of these ops is torch's own
    # business (and takes a minute to compile on a small CPU), see docs/backends/torch.md.
    torch._dynamo.reset()
    z1, z2 = _pair()
    fn = torch.compile(lambda a, b: hcl_loss(a, b, **kw).sum(), backend="aot_eager", fullgraph=True)
    a = z1.clone().requires_grad_(True)
    value = fn(a, z2)
    value.backward()
    ref_kw = dict(kw)
    if kw.get("reduction") == "none":
        ref_kw["cotangent"] = np.ones(12)
    ref_value, ref_grads = _ref(z1, z2, **ref_kw)
    np.testing.assert_allclose(value.item(), np.sum(ref_value), rtol=RTOL64)
    np.testing.assert_allclose(a.grad.numpy(), ref_grads.z1, rtol=RTOL64, atol=RTOL64)


def test_torch_func_grad():
    z1, z2 = _pair()
    negatives = torch.randn(4, 5, dtype=torch.float64)
    g1, gn = torch.func.grad(lambda a, n: hcl_loss(a, z2, negatives=n), argnums=(0, 1))(z1, negatives)
    _, ref = hardneg.hcl_loss_and_grad(z1.numpy(), z2.numpy(), negatives=negatives.numpy())
    np.testing.assert_allclose(g1.numpy(), ref.z1, rtol=RTOL64, atol=RTOL64)
    np.testing.assert_allclose(gn.numpy(), ref.negatives, rtol=RTOL64, atol=RTOL64)


def test_first_order_gradient_with_create_graph_works():
    z1, z2 = _pair()
    a = z1.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(hcl_loss(a, z2), a, create_graph=True)
    _, ref = _ref(z1, z2)
    np.testing.assert_allclose(g.detach().numpy(), ref.z1, rtol=RTOL64, atol=RTOL64)


def test_double_backward_is_refused_clearly():
    z1, z2 = _pair()
    a = z1.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(hcl_loss(a, z2), a, create_graph=True)
    with pytest.raises(RuntimeError, match="does not support double backward"):
        g.pow(2).sum().backward()
    with pytest.raises(RuntimeError, match="does not support double backward"):
        torch.func.grad(lambda x: torch.func.grad(lambda y: hcl_loss(y, z2))(x).sum())(z1)


def test_module_holds_hyperparameters_and_matches_function():
    z1, z2 = _pair()
    loss_fn = HCLLoss(temperature=0.2, beta=2.0, tau_plus=0.05, reduction="sum")
    assert list(loss_fn.parameters()) == [] and "beta=2.0" in repr(loss_fn)
    expected = hcl_loss(z1, z2, temperature=0.2, beta=2.0, tau_plus=0.05, reduction="sum")
    torch.testing.assert_close(loss_fn(z1, z2), expected, rtol=0, atol=0)
    loss_fn.beta = 0.0  # annealing: attributes are read on every call
    torch.testing.assert_close(loss_fn(z1, z2), hcl_loss(z1, z2, temperature=0.2, beta=0.0, tau_plus=0.05,
                                                         reduction="sum"), rtol=0, atol=0)
    neg, lab, nlab = torch.randn(3, 5, dtype=torch.float64), torch.tensor([0, 1, 0, 1, 2, 2]), torch.tensor([0, 1, 2])
    torch.testing.assert_close(loss_fn(z1, z2, neg, lab, nlab),
                               hcl_loss(z1, z2, temperature=0.2, beta=0.0, tau_plus=0.05, reduction="sum",
                                        negatives=neg, labels=lab, negative_labels=nlab), rtol=0, atol=0)


def test_module_validates_at_construction_with_the_shared_messages():
    with pytest.raises(ValueError, match=r"tau_plus must satisfy 0 <= tau_plus < 1; got 1.0"):
        HCLLoss(tau_plus=1.0)
    with pytest.raises(ValueError, match="estimator must be one of 'hard', 'easy'"):
        HCLLoss(estimator="soft")


def test_shared_validation_messages():
    z1, z2 = _pair()
    with pytest.raises(ValueError, match=r"z1 and z2 must have the same shape \(B, d\)"):
        hcl_loss(z1, z2[:, :3])
    with pytest.raises(TypeError, match="z1 and z2 must have the same dtype; got float64 and float32"):
        hcl_loss(z1, z2.float())
    with pytest.raises(TypeError, match="z1 must have a floating dtype .*; got int64"):
        hcl_loss(z1.long(), z2.long())
    with pytest.raises(TypeError, match="labels must have an integer dtype; got float32"):
        hcl_loss(z1, z2, labels=torch.zeros(6))
    with pytest.raises(TypeError, match="labels must have an integer dtype; got bool"):
        hcl_loss(z1, z2, labels=torch.zeros(6, dtype=torch.bool))
    with pytest.raises(TypeError, match="negatives must have the dtype of z1 and z2"):
        hcl_loss(z1, z2, negatives=torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"one pair \(B = 1\) and no negatives"):
        hcl_loss(z1[:1], z2[:1])


def test_torch_only_errors():
    z1, z2 = _pair()
    with pytest.raises(ValueError, match="z2 is on device meta but z1 is on cpu"):
        hcl_loss(z1, z2.to("meta"))
    with pytest.raises(ValueError, match="labels is on device meta but z1 is on cpu"):
        hcl_loss(z1, z2, labels=torch.zeros(6, dtype=torch.int64, device="meta"))
    with pytest.raises(TypeError, match="z2 must be a torch.Tensor; got ndarray"):
        hcl_loss(z1, z2.numpy())
    with pytest.raises(ValueError, match="group is only used with gather=True"):
        hcl_loss(z1, z2, group=object())
    with pytest.raises(RuntimeError, match="gather=True needs an initialised torch.distributed process group"):
        hcl_loss(z1, z2, gather=True)


def test_results_stay_on_the_input_device_and_dtype():
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        z1, z2 = _pair(dtype)
        z1.requires_grad_(True)
        out = hcl_loss(z1, z2, reduction="none")
        out.sum().backward()
        assert out.dtype == dtype and out.shape == (12,) and out.device == z1.device
        assert z1.grad.dtype == dtype and z1.grad.device == z1.device
