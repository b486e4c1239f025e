"""hardneg_torch values and gradients equal the NumPy reference, feature by feature and dtype by dtype.

The conformance suite (``hardneg verify --backend torch``) sweeps the whole parameter space; these tests pin
each feature of the torch backend once, including its own machinery (row blocks of one row, the fused
forward for "mean"/"sum" vs. the recomputing backward for "none", half precision in float32 inside).

Tolerances: tests/torch_check.py (an error budget of ``64 eps (2 + beta) / t`` relative to the magnitude).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import hardneg  # noqa: E402
from hardneg_torch import hcl_loss  # noqa: E402

from torch_check import B, LABELS, check, to_np as _np, tol as _tol  # noqa: E402
from torch_check import inputs as _inputs  # noqa: E402


FEATURES = [
    dict(),
    dict(beta=0.0),
    dict(beta=2.5, tau_plus=0.2),
    dict(beta=math.inf),
    dict(estimator="easy"),
    dict(beta=0.0, tau_plus=0.0, clamp=False),
    dict(clamp=False, tau_plus=0.05),
    dict(temperature=0.1),
    dict(normalize=False, temperature=5.0),
    dict(reduction="sum"),
    dict(reduction="none"),
    dict(reduction="none", beta=math.inf),
    dict(labels=LABELS),
    dict(labels=LABELS, reduction="none", beta=0.7),
    dict(labels=torch.zeros(B, dtype=torch.int64)),  # every anchor has M = 0: loss 0, gradient 0
    dict(memory_budget=1),  # one anchor row per block
    dict(memory_budget=1, labels=LABELS, reduction="none"),
]


@pytest.mark.parametrize("kw", FEATURES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "defaults")
def test_in_batch_matches_reference_float64(kw):
    check(torch.float64, **kw)


BANK_FEATURES = [
    dict(),
    dict(beta=0.0, reduction="sum"),
    dict(beta=math.inf, reduction="none"),
    dict(estimator="easy"),
    dict(beta=3.0, memory_budget=1),
]


@pytest.mark.parametrize("bank", ["shared", "per_anchor"])
@pytest.mark.parametrize("kw", BANK_FEATURES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "defaults")
def test_banks_match_reference_float64(bank, kw):
    check(torch.float64, bank=bank, **kw)


@pytest.mark.parametrize("bank", ["shared", "per_anchor"])
def test_banks_with_labels(bank):
    nl = torch.tensor([0, 1, 2, 3, 4, 5, 0]) if bank == "shared" else torch.arange(B * 7).reshape(B, 7) % 4
    check(torch.float64, bank=bank, labels=LABELS, negative_labels=nl)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kw", [dict(), dict(beta=math.inf, reduction="none"), dict(bank="shared", beta=0.5)],
                         ids=["defaults", "inf-none", "bank"])
def test_low_precision_matches_reference(dtype, kw):
    check(dtype, **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_small_temperature_is_finite(dtype):
    # t = 0.01: e^{(1+beta) s} would overflow float32 (and e^s float16); log space keeps everything finite.
    value, _ = check(dtype, temperature=0.01, beta=1.0)
    assert torch.isfinite(value)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("bank", [None, "shared"])
def test_beta_below_the_dtypes_smallest_number(dtype, bank):
    """A positive beta that rounds to 0 in the compute dtype is the beta = 0 case, not -inf * 0 = NaN.

    Found by ``hardneg verify`` (beta ~ 1e-206 in float32): the masked self-similarity (-inf) times a beta
    that is 0 in float32 gave NaN gradients and a wrong value.
    """
    check(dtype, bank=bank, beta=1e-320 if dtype == torch.float64 else 1e-46, reduction="none")


def test_undefined_anchor_makes_every_gradient_nan():
    # clamp=False with a large tau+ at small t: some denominators are <= 0 (spec section 6).
    z1, z2, _ = _inputs(torch.float64)
    z1.requires_grad_(True)
    out = hcl_loss(z1, z2, temperature=0.05, tau_plus=0.3, clamp=False, reduction="none")
    ref = hardneg.hcl_loss(_np(z1), _np(z2), temperature=0.05, tau_plus=0.3, clamp=False, reduction="none")
    assert np.isnan(ref).any() and not np.isnan(ref).all()
    np.testing.assert_array_equal(np.isnan(_np(out)), np.isnan(ref))
    out.sum().backward()
    assert torch.isnan(z1.grad).all()


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_non_finite_input_gives_nan_everywhere(bad, reduction):
    z1, z2, neg = _inputs(torch.float32, bank="shared")
    neg[3, 1] = bad
    for x in (z1, z2, neg):
        x.requires_grad_(True)
    out = hcl_loss(z1, z2, negatives=neg, reduction=reduction)
    assert torch.isnan(out).all()
    out.sum().backward()
    for x in (z1, z2, neg):
        assert torch.isnan(x.grad).all()


def test_zero_rows_and_huge_rows():
    # A zero row has u = 0 and gradient g / 1e-12; rows of 1e30 must not overflow the norm in float32.
    z1, z2, _ = _inputs(torch.float32)
    z1 = z1.clone()
    z1[0] = 0.0
    z1[1] *= 1e30
    z1[2] *= 1e-30
    z1.requires_grad_(True)
    value = hcl_loss(z1, z2)
    value.backward()
    ref_value, ref_grads = hardneg.hcl_loss_and_grad(_np(z1), _np(z2))
    tol = _tol(torch.float32, {})
    np.testing.assert_allclose(value.item(), ref_value, rtol=tol)
    # compare each row relative to its own scale (the zero row's gradient is ~1e12, the 1e30 row's ~1e-30)
    for got, ref in zip(_np(z1.grad), ref_grads.z1, strict=True):
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.abs(ref).max())


def test_value_without_gradient_and_under_no_grad():
    z1, z2, _ = _inputs(torch.float64)
    ref = hardneg.hcl_loss(_np(z1), _np(z2))
    np.testing.assert_allclose(hcl_loss(z1, z2).item(), ref, rtol=1e-13)
    with torch.no_grad():
        np.testing.assert_allclose(hcl_loss(z1.requires_grad_(True), z2).item(), ref, rtol=1e-13)


def test_gradient_scales_with_the_cotangent():
    # The fused forward stores the gradient for a unit cotangent; backward must scale it (here by 3).
    z1, z2, _ = _inputs(torch.float64)
    z1.requires_grad_(True)
    (g1,) = torch.autograd.grad(hcl_loss(z1, z2), z1)
    (g3,) = torch.autograd.grad(3.0 * hcl_loss(z1, z2), z1)
    torch.testing.assert_close(g3, 3.0 * g1, rtol=1e-14, atol=0)
