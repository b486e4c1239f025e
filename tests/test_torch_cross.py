"""hardneg_torch spec 1.1: the cross layout and a differentiable (tensor) temperature, against the reference.

Values and gradients are compared with :func:`hardneg.hcl_loss_and_grad` (float64, closed form, including
``Grads.temperature``), with the tolerances of tests/torch_check.py: an error budget of
``64 eps (2 + beta) / t`` relative to the magnitude (the logits carry ~eps/t, the exponents (1 + beta) s
amplify it), plus the output's rounding for float16/bfloat16. The identities with CLIP's loss and
sentence-transformers' MultipleNegativesRankingLoss are checked against cross-entropies written here
independently with ``torch.nn.functional.cross_entropy``.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import hardneg  # noqa: E402
from hardneg_torch import HCLLoss, hcl_loss  # noqa: E402

import torch_check  # noqa: E402

B, D, K = torch_check.B, torch_check.D, 4
LABELS = torch_check.LABELS
# the shared comparison (tests/torch_check.py) with a bank of K rows
_inputs = functools.partial(torch_check.inputs, bank_rows=K)
check = functools.partial(torch_check.check, bank_rows=K)
_np, _tol = torch_check.to_np, torch_check.tol


CROSS = [
    dict(),
    dict(symmetric=False),
    dict(beta=0.0),
    dict(beta=2.5, tau_plus=0.2),
    dict(beta=math.inf),
    dict(estimator="easy"),
    dict(clamp=False, tau_plus=0.05),
    dict(temperature=0.1),
    dict(normalize=False, temperature=5.0),
    dict(reduction="sum"),
    dict(reduction="none"),
    dict(reduction="none", symmetric=False, beta=math.inf),
    dict(labels=LABELS),
    dict(labels=LABELS, reduction="none", beta=0.7),
    dict(labels=torch.zeros(B, dtype=torch.int64)),  # no negative anywhere: loss 0, gradient 0
    dict(memory_budget=1),  # one anchor row per block
    dict(memory_budget=1, labels=LABELS, reduction="none"),
]


def _id(kw):
    return ",".join(f"{k}={'L' if isinstance(v, torch.Tensor) else v}" for k, v in kw.items()) or "defaults"


@pytest.mark.parametrize("kw", CROSS, ids=_id)
def test_cross_matches_reference_float64(kw):
    check(torch.float64, layout="cross", **kw)


@pytest.mark.parametrize("bank", ["shared", "per_anchor"])
@pytest.mark.parametrize("kw", [dict(), dict(symmetric=False, reduction="none"), dict(beta=math.inf),
                                dict(estimator="easy", reduction="sum"), dict(beta=3.0, memory_budget=1)], ids=_id)
def test_cross_with_bank_matches_reference_float64(bank, kw):
    check(torch.float64, bank=bank, layout="cross", **kw)


@pytest.mark.parametrize("bank", ["shared", "per_anchor"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_cross_with_bank_and_labels(bank, symmetric):
    nl = torch.tensor([0, 5, 2, 1]) if bank == "shared" else torch.arange(B * K).reshape(B, K) % 4
    check(torch.float64, bank=bank, layout="cross", symmetric=symmetric, labels=LABELS, negative_labels=nl,
          reduction="none")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kw", [dict(), dict(symmetric=False, beta=math.inf, reduction="none"),
                                dict(bank="shared", beta=0.5), dict(temperature=0.02)], ids=_id)
def test_cross_low_precision_matches_reference(dtype, kw):
    value, _ = check(dtype, layout="cross", **kw)
    assert torch.isfinite(value).all()


# --- a tensor temperature: d loss / d t in every layout ---------------------------------------------------------

TEMPERATURE_CASES = [
    dict(),
    dict(beta=0.0, reduction="sum"),
    dict(beta=math.inf, reduction="none"),
    dict(estimator="easy"),
    dict(clamp=False, tau_plus=0.05),
    dict(labels=LABELS, beta=2.0),
    dict(normalize=False, temperature=3.0),
    dict(memory_budget=1, reduction="none"),
    dict(layout="cross"),
    dict(layout="cross", symmetric=False, reduction="none"),
    dict(layout="cross", bank="shared", beta=0.5),
    dict(layout="cross", bank="per_anchor", reduction="sum"),
    dict(bank="shared"),
    dict(bank="per_anchor", reduction="none", beta=math.inf),
]


@pytest.mark.parametrize("kw", TEMPERATURE_CASES, ids=_id)
def test_tensor_temperature_gradient_matches_reference(kw):
    check(torch.float64, tensor_t=True, **kw)


@pytest.mark.parametrize("layout,bank", [(None, None), (None, "shared"), ("cross", None), ("cross", "per_anchor")])
def test_temperature_gradient_through_the_clamp_floor(layout, bank):
    # At t = 0.1 with tau_plus = 0.2 the floor M e^{-1/t} binds for some anchors and not for others, so
    # d loss / d t has both the logits' share and the floor's (1/t^2) share (spec section 8).
    kw = dict(temperature=0.1, tau_plus=0.2, beta=1.0, reduction="none")
    _, ref = check(torch.float64, bank=bank, tensor_t=True, layout=layout, **kw)
    z1, z2, neg = _inputs(torch.float64, bank)
    no_floor = hardneg.hcl_loss(_np(z1), _np(z2), negatives=_np(neg), layout=layout, clamp=False, temperature=0.1,
                                tau_plus=0.2, reduction="none")
    with_floor = hardneg.hcl_loss(_np(z1), _np(z2), negatives=_np(neg), layout=layout, temperature=0.1,
                                  tau_plus=0.2, reduction="none")
    binds = ~np.isclose(no_floor, with_floor, rtol=1e-12, atol=0) | np.isnan(no_floor)
    assert binds.any() and not binds.all(), binds


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", [None, "cross"])
def test_tensor_temperature_low_precision(dtype, layout):
    check(dtype, tensor_t=True, t_dtype=torch.float32, layout=layout, temperature=0.2)


def test_float64_temperature_tensor_with_float32_embeddings():
    # t's gradient comes back in t's dtype; the computation runs in the embeddings' compute dtype
    check(torch.float32, tensor_t=True, t_dtype=torch.float64, layout="cross", temperature=0.3)


def test_temperature_gradient_agrees_with_finite_differences():
    # An independent check of the closed form: central differences of the float64 value in t.
    z1, z2, neg = _inputs(torch.float64, "shared")
    kw = dict(negatives=neg, layout="cross", tau_plus=0.3, beta=2.0)
    t = torch.tensor(0.07, dtype=torch.float64, requires_grad=True)
    (gt,) = torch.autograd.grad(hcl_loss(z1, z2, temperature=t, **kw), t)
    h = 1e-6
    fd = (hcl_loss(z1, z2, temperature=0.07 + h, **kw) - hcl_loss(z1, z2, temperature=0.07 - h, **kw)) / (2 * h)
    np.testing.assert_allclose(gt.item(), fd.item(), rtol=1e-6)


def test_tensor_temperature_equals_float_temperature():
    z1, z2, _ = _inputs(torch.float64)
    for kw in (dict(), dict(layout="cross", symmetric=False)):
        a = hcl_loss(z1, z2, temperature=0.3, reduction="none", **kw)
        b = hcl_loss(z1, z2, temperature=torch.tensor(0.3, dtype=torch.float64), reduction="none", **kw)
        torch.testing.assert_close(a, b, rtol=1e-15, atol=0)


@pytest.mark.parametrize("bad", [0.0, -0.5, math.inf, math.nan])
@pytest.mark.parametrize("layout", [None, "cross"])
def test_bad_tensor_temperature_gives_nan(bad, layout):
    z1, z2, _ = _inputs(torch.float32)
    z1.requires_grad_(True)
    t = torch.tensor(bad, requires_grad=True)
    out = hcl_loss(z1, z2, temperature=t, layout=layout, reduction="none")
    assert torch.isnan(out).all()
    g1, gt = torch.autograd.grad(out.sum(), [z1, t])
    assert torch.isnan(g1).all() and torch.isnan(gt)


def test_temperature_tensor_errors_are_the_shared_ones():
    from hardneg.validation import check_temperature_tensor

    z1, z2, _ = _inputs(torch.float32)
    for t, exc in ((torch.tensor([0.5, 0.5]), ValueError), (torch.tensor(1, dtype=torch.int32), TypeError)):
        with pytest.raises(exc) as ours:
            hcl_loss(z1, z2, temperature=t)
        with pytest.raises(exc) as shared:
            check_temperature_tensor(tuple(t.shape), str(t.dtype).rsplit(".", 1)[-1])
        assert str(ours.value) == str(shared.value)
    with pytest.raises(ValueError, match=r"temperature tensor must be 0-d \(a scalar\); got shape \(2,\)"):
        hcl_loss(z1, z2, temperature=torch.tensor([0.5, 0.5]))


@pytest.mark.parametrize("kw", [dict(layout="diagonal"), dict(layout="in_batch", negatives=True),
                                dict(layout="bank"), dict(symmetric=False), dict(symmetric="yes", layout="cross"),
                                dict(layout="bank", negatives=True, symmetric=False),
                                dict(layout="cross", one_pair=True)], ids=_id)
def test_layout_errors_match_the_reference(kw):
    kw = dict(kw)
    z1, z2, neg = _inputs(torch.float64, "shared")
    if not kw.pop("negatives", False):
        neg = None
    if kw.pop("one_pair", False):
        z1, z2 = z1[:1], z2[:1]
    with pytest.raises((TypeError, ValueError)) as ref:
        hardneg.hcl_loss(_np(z1), _np(z2), negatives=_np(neg), **kw)
    with pytest.raises(ref.type) as ours:
        hcl_loss(z1, z2, negatives=neg, **kw)
    assert str(ours.value) == str(ref.value)


# --- identities (spec 1.1): CLIP's loss and MultipleNegativesRankingLoss ------------------------------------------


def test_easy_symmetric_cross_is_clips_loss():
    z1, z2, _ = _inputs(torch.float64)
    t = 0.07
    u1, u2 = torch.nn.functional.normalize(z1, dim=1), torch.nn.functional.normalize(z2, dim=1)
    logits = u1 @ u2.T / t
    target = torch.arange(B)
    clip = (torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)) / 2
    ours = hcl_loss(z1, z2, temperature=t, estimator="easy", layout="cross")
    torch.testing.assert_close(ours, clip, rtol=1e-13, atol=0)


def test_easy_one_way_cross_with_bank_is_mnrl_with_hard_negatives():
    z1, z2, neg = _inputs(torch.float64, "shared")
    scale = 20.0  # sentence-transformers' default: cos_sim * 20, i.e. t = 0.05
    u1, u2, v = (torch.nn.functional.normalize(x, dim=1) for x in (z1, z2, neg))
    scores = torch.cat([u1 @ u2.T, u1 @ v.T], dim=1) * scale
    mnrl = torch.nn.functional.cross_entropy(scores, torch.arange(B))
    ours = hcl_loss(z1, z2, negatives=neg, temperature=1.0 / scale, estimator="easy", layout="cross",
                    symmetric=False)
    torch.testing.assert_close(ours, mnrl, rtol=1e-13, atol=0)


# --- torch machinery with a tensor temperature ------------------------------------------------------------------


@pytest.mark.parametrize("kw", [dict(layout="cross"), dict(reduction="none", beta=math.inf),
                                dict(layout="cross", symmetric=False, reduction="none")], ids=_id)
def test_torch_compile_fullgraph_with_tensor_temperature(kw):
    torch._dynamo.reset()
    z1, z2, _ = _inputs(torch.float64)
    fn = torch.compile(lambda a, b, t: hcl_loss(a, b, temperature=t, **kw).sum(), backend="aot_eager", fullgraph=True)
    a = z1.clone().requires_grad_(True)
    t = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    value = fn(a, z2, t)
    value.backward()
    ref_kw = dict(kw)
    if kw.get("reduction") == "none":
        ref_kw["cotangent"] = np.ones(B * (1 if kw.get("symmetric") is False else 2))
    ref_value, ref = hardneg.hcl_loss_and_grad(_np(z1), _np(z2), temperature=0.4, **ref_kw)
    np.testing.assert_allclose(value.item(), np.sum(ref_value), rtol=1e-12)
    np.testing.assert_allclose(a.grad.numpy(), ref.z1, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(t.grad.item(), ref.temperature, rtol=1e-12)


def test_torch_func_grad_with_respect_to_the_temperature():
    z1, z2, _ = _inputs(torch.float64)
    gt = torch.func.grad(lambda t: hcl_loss(z1, z2, temperature=t, layout="cross"))(torch.tensor(0.3,
                                                                                             dtype=torch.float64))
    _, ref = hardneg.hcl_loss_and_grad(_np(z1), _np(z2), temperature=0.3, layout="cross")
    np.testing.assert_allclose(gt.item(), ref.temperature, rtol=1e-12)


def test_temperature_without_requires_grad_and_under_no_grad():
    z1, z2, _ = _inputs(torch.float64)
    z1.requires_grad_(True)
    t = torch.tensor(0.3, dtype=torch.float64)
    out = hcl_loss(z1, z2, temperature=t, layout="cross")
    (g1,) = torch.autograd.grad(out, z1)
    ref_value, ref = hardneg.hcl_loss_and_grad(_np(z1), _np(z2), temperature=0.3, layout="cross")
    np.testing.assert_allclose(out.item(), ref_value, rtol=1e-13)
    np.testing.assert_allclose(g1.numpy(), ref.z1, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        np.testing.assert_allclose(hcl_loss(z1, z2, temperature=t.requires_grad_(True)).item(),
                                   hardneg.hcl_loss(_np(z1), _np(z2), temperature=0.3), rtol=1e-13)


# --- HCLLoss with a learnable temperature ---------------------------------------------------------------------


def test_learnable_temperature_is_a_log_parameter_with_the_reference_gradient():
    z1, z2, _ = _inputs(torch.float64)
    loss_fn = HCLLoss(temperature=0.2, learn_temperature=True, layout="cross").double()
    (p,) = list(loss_fn.parameters())
    assert p is loss_fn.logit_scale and p.shape == ()
    np.testing.assert_allclose(p.item(), math.log(1 / 0.2), rtol=2**-23)  # created in the default dtype
    t = math.exp(-p.item())
    loss = loss_fn(z1, z2)
    loss.backward()
    ref_value, ref = hardneg.hcl_loss_and_grad(_np(z1), _np(z2), temperature=t, layout="cross")
    np.testing.assert_allclose(loss.item(), ref_value, rtol=1e-13)
    # t = exp(-logit_scale): dL/dlogit_scale = -t dL/dt
    np.testing.assert_allclose(p.grad.item(), -t * ref.temperature, rtol=1e-12)
    assert "learn_temperature=True" in repr(loss_fn)


def test_learnable_temperature_trains_and_respects_the_minimum():
    z1, z2, _ = _inputs(torch.float32)
    loss_fn = HCLLoss(temperature=0.5, learn_temperature=True, min_temperature=0.1, estimator="easy",
                      layout="cross")
    opt = torch.optim.SGD(loss_fn.parameters(), lr=5.0)
    start = loss_fn(z1, z2).item()
    for _ in range(20):
        opt.zero_grad()
        loss_fn(z1, z2).backward()
        opt.step()
    assert loss_fn(z1, z2).item() < start  # the temperature was learned
    assert loss_fn.effective_temperature().item() >= 0.1 - 1e-7
    # pushed far below the minimum: the clamp holds the temperature and no gradient reaches the parameter
    with torch.no_grad():
        loss_fn.logit_scale.fill_(math.log(1 / 0.01))
    loss_fn.logit_scale.grad = None
    loss_fn(z1, z2).backward()
    assert loss_fn.logit_scale.grad.item() == 0.0
    torch.testing.assert_close(loss_fn(z1, z2), hcl_loss(z1, z2, temperature=0.1, estimator="easy", layout="cross"))


def test_learnable_temperature_options_are_validated():
    with pytest.raises(ValueError, match="temperature must be finite and > 0"):
        HCLLoss(temperature=-1.0, learn_temperature=True)
    with pytest.raises(ValueError, match="min_temperature must be None or finite and > 0"):
        HCLLoss(learn_temperature=True, min_temperature=0.0)
    with pytest.raises(ValueError, match="min_temperature needs learn_temperature=True"):
        HCLLoss(min_temperature=0.01)
    with pytest.raises(TypeError, match="learn_temperature must be a bool"):
        HCLLoss(learn_temperature=1)
    assert list(HCLLoss().parameters()) == []


def test_naive_cross_benchmark_baseline_is_the_released_arithmetic():
    # hardneg.bench.naive_torch.hcl_loss_cross (the bench's CLIP-style baseline) computes the same loss.
    from hardneg.bench import naive_torch

    z1, z2, _ = _inputs(torch.float64)
    for est in ("hard", "easy"):
        np.testing.assert_allclose(naive_torch.hcl_loss_cross(z1, z2, estimator=est).item(),
                                   hardneg.hcl_loss(_np(z1), _np(z2), layout="cross", estimator=est), rtol=1e-13)


def test_learnable_temperature_module_under_torch_compile_fullgraph():
    torch._dynamo.reset()
    z1, z2, _ = _inputs(torch.float64)
    loss_fn = HCLLoss(temperature=0.1, layout="cross", learn_temperature=True, min_temperature=0.01).double()
    a = z1.clone().requires_grad_(True)
    torch.compile(lambda x, y: loss_fn(x, y), backend="aot_eager", fullgraph=True)(a, z2).backward()
    compiled = (a.grad.clone(), loss_fn.logit_scale.grad.clone())
    a.grad, loss_fn.logit_scale.grad = None, None
    loss_fn(a, z2).backward()
    torch.testing.assert_close(compiled[0], a.grad, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(compiled[1], loss_fn.logit_scale.grad, rtol=1e-13, atol=0)


def test_double_backward_through_the_temperature_gradient_is_refused():
    z1, z2, _ = _inputs(torch.float64)
    t = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    (gt,) = torch.autograd.grad(hcl_loss(z1, z2, temperature=t, layout="cross"), t, create_graph=True)
    _, ref = hardneg.hcl_loss_and_grad(_np(z1), _np(z2), temperature=0.3, layout="cross")
    np.testing.assert_allclose(gt.item(), ref.temperature, rtol=1e-12)  # first order works with create_graph
    with pytest.raises(RuntimeError, match="does not support double backward"):
        gt.backward()
