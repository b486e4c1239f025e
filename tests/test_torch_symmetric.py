"""The two-pass symmetric in-batch kernel (hardneg_torch.symmetric) equals the reference, and the automatic
choice between it and the row-block kernel is the documented rule.

Each feature of tests/test_torch_values.py is rerun with the kernel forced on (``HARDNEG_TORCH_SYMMETRIC=1``)
and forced off, with the same tolerances (see that module's docstring): the symmetric kernel only reorders
the same sums (rows' statistics accumulated from both sides of a tile pair, a fixed shift c instead of the
row maximum), so its rounding is of the same order. Tiles of a few rows (``memory_budget``) exercise the
off-diagonal, diagonal and partner tiles; a small temperature exercises the per-row underflow fallback.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import hardneg  # noqa: E402
from hardneg_torch import hcl_loss, symmetric  # noqa: E402
from hardneg_torch.rows import Hyper  # noqa: E402

import test_torch_values as tv  # noqa: E402


@pytest.fixture(params=["1", "0"], ids=["symmetric", "row_blocks"])
def kernel(request, monkeypatch):
    monkeypatch.setenv(symmetric.ENV_VAR, request.param)
    return request.param


@pytest.fixture
def forced(monkeypatch):
    monkeypatch.setenv(symmetric.ENV_VAR, "1")


def _calls(monkeypatch):
    """Record whether each evaluation took the symmetric kernel."""
    seen = []
    real = symmetric.in_batch

    def spy(*args, **kw):
        seen.append(True)
        return real(*args, **kw)

    monkeypatch.setattr(symmetric, "in_batch", spy)
    return seen


@pytest.mark.parametrize("kw", tv.FEATURES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "defaults")
def test_features_match_reference_with_each_kernel(kernel, kw):
    tv.check(**kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kw", [dict(), dict(beta=0.0, reduction="none"), dict(beta=0.5, labels=tv.LABELS)],
                         ids=["defaults", "beta0-none", "beta0.5-labels"])
def test_low_precision_with_each_kernel(kernel, dtype, kw):
    tv.check(dtype, **kw)


def _compare(B, d, dtype, seed=0, labels=None, cot=False, **kw):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(B, d, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    z2 = torch.randn(B, d, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    out = hcl_loss(z1, z2, labels=labels, **kw)
    ref_kw = dict(kw)
    ref_kw.pop("memory_budget", None)
    if out.dim():
        c = torch.randn(out.shape, generator=g, dtype=torch.float64).to(dtype)
        out.backward(c)
        ref_kw["cotangent"] = tv._np(c)
    else:
        out.backward()
    ref_v, ref_g = hardneg.hcl_loss_and_grad(tv._np(z1), tv._np(z2), labels=None if labels is None else labels.numpy(), **ref_kw)
    tol = tv._tol(dtype, kw)
    np.testing.assert_allclose(tv._np(out), ref_v, rtol=tol, atol=tol, equal_nan=True)
    scale = max(np.abs(ref_g.z1).max(), np.abs(ref_g.z2).max())
    np.testing.assert_allclose(tv._np(z1.grad), ref_g.z1, rtol=tol, atol=tol * scale)
    np.testing.assert_allclose(tv._np(z2.grad), ref_g.z2, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("budget", [3 * 8 * 49, 3 * 8 * 16 * 16, None], ids=["tile7", "tile16", "one-tile"])
@pytest.mark.parametrize("kw", [dict(), dict(beta=0.0), dict(beta=1.7, tau_plus=0.0, clamp=False),
                                dict(estimator="easy", reduction="none"), dict(labels=True, reduction="sum")],
                         ids=["defaults", "beta0", "beta1.7", "easy-none", "labels-sum"])
def test_many_tiles_match_reference(forced, budget, kw):
    # B = 20 pairs: tiles of 7 rows leave a short last tile in each half (10 = 7 + 3)
    kw = dict(kw)
    labels = torch.arange(20) % 4 if kw.pop("labels", False) else None
    _compare(20, 6, torch.float64, labels=labels, memory_budget=budget, **kw)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("beta", [0.0, 1.0, 3.0])
@pytest.mark.parametrize("labels", [False, True])
def test_underflowing_fixed_shift_falls_back_per_row(forced, monkeypatch, dtype, beta, labels):
    # t = 0.01: (1 + beta) (s - c) reaches -(1 + beta) * 200, far below float32's smallest normal e^-87 and,
    # for the rows whose negatives all lie far from the shift c = 1/t, below float64's e^-708 at beta = 3:
    # those rows must be recomputed with their own maxima, with the row-block kernel's accuracy.
    fallback_rows = []
    real = symmetric.blocks._block

    def spy(S, *args, **kw):
        fallback_rows.append(S.shape[0])
        return real(S, *args, **kw)

    monkeypatch.setattr(symmetric.blocks, "_block", spy)
    lab = (torch.arange(40) % 5) if labels else None
    _compare(40, 16, dtype, labels=lab, temperature=0.01, beta=beta, tau_plus=0.0, clamp=False, reduction="none",
             memory_budget=3 * 8 * 12 * 12)
    if dtype == torch.float32 and beta > 0:  # (at beta = 0 each row's nearest negative keeps its sum normal)
        assert sum(fallback_rows) > 0  # the case is really the fallback's


def test_normalize_false_uses_the_largest_norm_as_shift(forced):
    _compare(30, 4, torch.float64, normalize=False, temperature=3.0)
    _compare(30, 4, torch.float32, normalize=False, temperature=3.0)


def test_loss_only_and_non_finite(forced):
    z1 = torch.randn(12, 3, dtype=torch.float64)
    z2 = torch.randn(12, 3, dtype=torch.float64)
    with torch.no_grad():
        got = hcl_loss(z1, z2, reduction="none")
    ref = hardneg.hcl_loss(z1.numpy(), z2.numpy(), reduction="none")
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12)
    z1[3, 1] = math.nan
    z1.requires_grad_()
    loss = hcl_loss(z1, z2)
    loss.backward()
    assert torch.isnan(loss) and torch.isnan(z1.grad).all()


def test_forced_kernel_is_used_and_unsupported_calls_keep_row_blocks(forced, monkeypatch):
    seen = _calls(monkeypatch)
    z1, z2 = torch.randn(5, 3), torch.randn(5, 3)
    hcl_loss(z1, z2)
    assert seen == [True]
    seen.clear()
    hcl_loss(z1, z2, beta=math.inf)  # not supported: the maxima's ties need the row-block kernel
    hcl_loss(z1, z2, temperature=torch.tensor(0.5))  # a tensor temperature (d loss / d t via the floor)
    hcl_loss(z1, z2, negatives=torch.randn(4, 3))  # bank layout
    assert seen == []


def test_automatic_choice():
    hp = Hyper(0.5, 1.0, 0.1, True)
    n = symmetric.MIN_ROWS
    full = ((0, n),)
    assert symmetric.choose(hp, 0.5, full, n, True, 512)
    assert not symmetric.choose(hp, 0.5, ((0, n - 2),), n - 2, True, 512)  # below the measured crossover
    assert not symmetric.choose(hp, 0.5, ((0, n // 2),), n, True, 512)  # gather: this rank's rows only
    assert not symmetric.choose(hp, 0.5, full, n, False, 512)  # no bound on the logits without normalising
    assert not symmetric.choose(hp, 0.5, full, n, True, 16)  # tiles too small for fast products
    assert not symmetric.choose(Hyper(0.5, math.inf, 0.1, True), 0.5, full, n, True, 512)
    assert not symmetric.choose(hp, torch.tensor(0.5), full, n, True, 512)
    assert not symmetric.choose(hp, 0.5, full, n, True, 512, "cuda")  # not measured on a GPU
    # the fixed shift could underflow: (1 + beta) * 2 / t = 200 > SAFE_EXPONENT
    assert not symmetric.choose(Hyper(0.02, 1.0, 0.1, True), 0.02, full, n, True, 512)


def test_torch_compile_keeps_row_blocks(monkeypatch):
    # traced by dynamo, the fallback's data-dependent row count would break a fullgraph compile
    monkeypatch.setenv(symmetric.ENV_VAR, "1")
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not symmetric.choose(Hyper(0.5, 1.0, 0.1, True), 0.5, ((0, 8192),), 8192, True, 512)


def test_environment_overrides_the_choice(monkeypatch):
    hp = Hyper(0.5, 1.0, 0.1, True)
    monkeypatch.setenv(symmetric.ENV_VAR, "1")
    assert symmetric.choose(hp, 0.5, ((0, 4),), 4, True, 1)
    monkeypatch.setenv(symmetric.ENV_VAR, "0")
    assert not symmetric.choose(hp, 0.5, ((0, 8192),), 8192, True, 512)


def test_default_large_batch_takes_the_symmetric_kernel(monkeypatch):
    monkeypatch.delenv(symmetric.ENV_VAR, raising=False)
    seen = _calls(monkeypatch)
    B = symmetric.MIN_ROWS // 2
    z1, z2 = torch.randn(B, 8, requires_grad=True), torch.randn(B, 8)
    hcl_loss(z1, z2).backward()
    assert seen == [True]
    seen.clear()
    hcl_loss(z1[:B // 2 - 1], z2[:B // 2 - 1])
    assert seen == []


def test_memory_stays_linear(forced):
    from test_torch_memory import _run

    # as tests/test_torch_memory.py: the tile buffers within the budget, else only (2B x d)-class tensors
    B, d, budget = 256, 16, 32 * 1024
    mode, saved = _run(B, d, budget)
    n = 2 * B
    assert mode.largest <= max(budget, 8 * n * d * 4), (mode.largest, mode.op)
    assert mode.largest < n * n * 4 / 16
    assert saved <= 6 * B * d * 4, saved
