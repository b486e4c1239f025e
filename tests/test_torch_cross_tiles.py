"""The shared-tile kernel of the symmetric cross layout (hardneg_torch.cross_tiles) equals the reference, and the
automatic choice between it and two row-block passes is the documented rule.

Each symmetric case of tests/test_torch_cross.py is rerun with the kernel forced on (``HARDNEG_TORCH_SYMMETRIC=1``)
and forced off, against :func:`hardneg.hcl_loss_and_grad` (float64) with that module's tolerances (see its
docstring): the kernel only reorders the same sums (the reverse direction's statistics from the columns of the
tiles, a fixed shift c instead of each anchor's maximum), so its rounding is of the same order. Tiles of a few
rows (``memory_budget``) that do not divide B exercise the diagonal and off-diagonal tiles and a short last tile;
a small temperature exercises the per-anchor underflow fallback of both directions.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import hardneg  # noqa: E402
from hardneg_torch import blocks, cross_tiles, hcl_loss, symmetric  # noqa: E402
from hardneg_torch.rows import Hyper  # noqa: E402

import test_torch_cross as tc  # noqa: E402
import torch_check  # noqa: E402

kernel, forced = torch_check.kernel, torch_check.forced  # the fixtures of tests/torch_check.py

SYMMETRIC_CASES = [kw for kw in tc.CROSS if kw.get("symmetric", True)]


def _calls(monkeypatch):
    """Record each evaluation that took the shared-tile kernel."""
    return torch_check.spy(monkeypatch, cross_tiles, "cross")


@pytest.mark.parametrize("kw", SYMMETRIC_CASES, ids=tc._id)
def test_cross_features_match_reference_with_each_kernel(kernel, monkeypatch, kw):
    seen = _calls(monkeypatch)
    tc.check(torch.float64, layout="cross", **kw)
    # forced on, every supported case (all here but beta = inf) must really have taken the kernel
    assert bool(seen) == (kernel == "1" and not math.isinf(kw.get("beta", 1.0)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kw", [dict(), dict(beta=0.0, reduction="none"), dict(temperature=0.02),
                                dict(beta=2.5, labels=tc.LABELS, reduction="sum")], ids=tc._id)
def test_low_precision_with_each_kernel(kernel, dtype, kw):
    value, _ = tc.check(dtype, layout="cross", **kw)
    assert torch.isfinite(value).all()


def _pair(B, d, g, noise=0.7):
    """(z1, z2) in float64 from generator ``g``, z2 = z1 + ``noise`` times a standard normal."""
    z1 = torch.randn(B, d, generator=g, dtype=torch.float64)
    return z1, z1 + noise * torch.randn(B, d, generator=g, dtype=torch.float64)


def _compare(B, d, dtype, seed=0, labels=None, tensor_t=False, noise=0.7, **kw):
    """hcl_loss(layout="cross") against the reference: values and both gradients, a random cotangent for "none";
    with ``tensor_t`` the temperature as a 0-d tensor of ``dtype`` and d loss / d t (tests/torch_check.py's rule)."""
    g = torch.Generator().manual_seed(seed)
    z1, z2 = (z.to(dtype).requires_grad_() for z in _pair(B, d, g, noise))
    t = None
    if tensor_t:
        t = torch.tensor(kw.pop("temperature", 0.5), dtype=dtype, requires_grad=True)
        kw["temperature"] = float(t.detach())  # the value the backend sees, for the reference and the tolerance
    out = hcl_loss(z1, z2, labels=labels, layout="cross", **(dict(kw, temperature=t) if tensor_t else kw))
    ref_kw = dict(kw)
    ref_kw.pop("memory_budget", None)
    if out.dim():
        c = torch.randn(out.shape, generator=g, dtype=torch.float64).to(dtype)
        out.backward(c)
        ref_kw["cotangent"] = tc._np(c)
    else:
        out.backward()
    ref_v, ref_g = hardneg.hcl_loss_and_grad(tc._np(z1), tc._np(z2), layout="cross",
                                             labels=None if labels is None else labels.numpy(), **ref_kw)
    tol = tc._tol(dtype, kw)
    np.testing.assert_allclose(tc._np(out), ref_v, rtol=tol, atol=tol, equal_nan=True)
    scale = max(np.abs(ref_g.z1).max(), np.abs(ref_g.z2).max())
    np.testing.assert_allclose(tc._np(z1.grad), ref_g.z1, rtol=tol, atol=tol * scale)
    np.testing.assert_allclose(tc._np(z2.grad), ref_g.z2, rtol=tol, atol=tol * scale)
    if tensor_t:
        assert t.grad.dtype == dtype
        np.testing.assert_allclose(t.grad.item(), ref_g.temperature, rtol=tol,
                                   atol=tol * abs(ref_g.temperature) + tol)


ESTIMATORS = [dict(estimator="easy"), dict(beta=0.0), dict(beta=0.0, tau_plus=0.0, clamp=False),
              dict(beta=1.0), dict(beta=2.5, tau_plus=0.2), dict(beta=2.5, clamp=False, tau_plus=0.05)]


@pytest.mark.parametrize("budget", [3 * 8 * 49, 3 * 8 * 16 * 16, None], ids=["tile7", "tile16", "one-tile"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("kw", ESTIMATORS, ids=tc._id)
def test_many_tiles_match_reference(forced, monkeypatch, budget, reduction, kw):
    # B = 20 pairs: tiles of 7 rows (6 with labels) leave a short last tile (20 = 7 + 7 + 6)
    seen = _calls(monkeypatch)
    _compare(20, 6, torch.float64, memory_budget=budget, reduction=reduction, **kw)
    _compare(20, 6, torch.float64, labels=torch.arange(20) % 6, memory_budget=budget, reduction=reduction, **kw)
    assert len(seen) == 2 * (2 if reduction == "none" else 1)  # "none" recomputes in backward


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("beta", [0.0, 1.0, 3.0])
@pytest.mark.parametrize("labels", [False, True])
def test_underflowing_fixed_shift_falls_back_per_anchor(forced, monkeypatch, dtype, beta, labels):
    # t = 0.01: (1 + beta) (s - c) reaches -(1 + beta) * 200, below float32's smallest normal e^-87: the anchors of
    # either direction whose negatives all lie far from c = 1/t are recomputed with their own maxima.
    fallback_rows = []
    real = blocks._block

    def spy(S, *args, **kw):
        fallback_rows.append(S.shape[0])
        return real(S, *args, **kw)

    monkeypatch.setattr(blocks, "_block", spy)
    lab = (torch.arange(40) % 5) if labels else None
    _compare(40, 16, dtype, labels=lab, temperature=0.01, beta=beta, tau_plus=0.0, clamp=False, reduction="none",
             memory_budget=3 * 8 * 12 * 12)
    if dtype == torch.float32 and beta > 0:  # (at beta = 0 each anchor's nearest negative keeps its sum normal)
        assert sum(fallback_rows) > 0  # the case is really the fallback's


def test_normalize_false_uses_the_largest_norms_as_shift(forced):
    _compare(30, 4, torch.float64, normalize=False, temperature=3.0)
    _compare(30, 4, torch.float32, normalize=False, temperature=3.0, reduction="none")


def test_loss_only_and_non_finite(forced):
    z1 = torch.randn(12, 3, dtype=torch.float64)
    z2 = torch.randn(12, 3, dtype=torch.float64)
    with torch.no_grad():
        got = hcl_loss(z1, z2, layout="cross", reduction="none")
    ref = hardneg.hcl_loss(z1.numpy(), z2.numpy(), layout="cross", reduction="none")
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12)
    z2[3, 1] = math.nan
    z1.requires_grad_()
    loss = hcl_loss(z1, z2, layout="cross")
    loss.backward()
    assert torch.isnan(loss) and torch.isnan(z1.grad).all()


def test_easy_estimator_is_clips_loss(forced):
    # spec section 4's identity, through the kernel: CE over rows and over columns of the same logits
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(33, 8, generator=g, dtype=torch.float64), torch.randn(33, 8, generator=g, dtype=torch.float64)
    u1, u2 = torch.nn.functional.normalize(z1, dim=1), torch.nn.functional.normalize(z2, dim=1)
    logits = u1 @ u2.T / 0.07
    target = torch.arange(33)
    clip = (torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)) / 2
    ours = hcl_loss(z1, z2, temperature=0.07, estimator="easy", layout="cross", memory_budget=3 * 8 * 10 * 10)
    torch.testing.assert_close(ours, clip, rtol=1e-13, atol=0)


def test_forced_kernel_is_used_and_unsupported_calls_keep_row_blocks(forced, monkeypatch):
    seen = _calls(monkeypatch)
    z1, z2 = torch.randn(5, 3), torch.randn(5, 3)
    hcl_loss(z1, z2, layout="cross")
    assert seen == [True]
    seen.clear()
    hcl_loss(z1, z2, layout="cross", beta=math.inf)  # the maxima's ties need the row-block kernel
    for bad in (0.0, -0.5, math.inf, math.nan):  # no usable fixed shift: the row-block path's NaNs
        hcl_loss(z1, z2, layout="cross", temperature=torch.tensor(bad))
    hcl_loss(z1, z2, layout="cross", negatives=torch.randn(4, 3))  # the bank belongs to one direction
    hcl_loss(z1, z2, layout="cross", negatives=torch.randn(5, 4, 3))
    hcl_loss(z1, z2, layout="cross", symmetric=False)  # one direction: nothing to share
    assert seen == []


def test_automatic_choice():
    hp = Hyper(0.5, 1.0, 0.1, True)
    B = cross_tiles.MIN_PAIRS
    full = ((0, B),)
    choose = cross_tiles.choose
    assert choose(hp, 0.5, full, B, "none", True, True, 512)
    assert not choose(hp, 0.5, ((0, B - 1),), B - 1, "none", True, True, 512)  # below the measured crossover
    assert not choose(hp, 0.5, ((0, B // 2),), B, "none", True, True, 512)  # gather: this rank's anchors only
    assert not choose(hp, 0.5, full, B, "shared", True, True, 512)
    assert not choose(hp, 0.5, full, B, "none", False, True, 512)
    assert not choose(hp, 0.5, full, B, "none", True, False, 512)  # no bound on the logits without normalising
    assert not choose(hp, 0.5, full, B, "none", True, True, 16)  # tiles too small for fast products
    assert not choose(Hyper(0.5, math.inf, 0.1, True), 0.5, full, B, "none", True, True, 512)
    assert choose(hp, torch.tensor(0.5), full, B, "none", True, True, 512)  # a tensor: its value's bound
    assert not choose(hp, torch.tensor(0.02), full, B, "none", True, True, 512)
    assert not choose(hp, torch.tensor(-1.0), full, B, "none", True, True, 512)
    assert not choose(hp, 0.5, full, B, "none", True, True, 512, "cuda")  # not measured on a GPU
    # the fixed shift could underflow: (1 + beta) * 2 / t = 200 > SAFE_EXPONENT
    assert not choose(Hyper(0.02, 1.0, 0.1, True), 0.02, full, B, "none", True, True, 512)


def test_environment_overrides_the_choice_and_compile_keeps_row_blocks(monkeypatch):
    hp = Hyper(0.5, 1.0, 0.1, True)
    monkeypatch.setenv(symmetric.ENV_VAR, "1")
    assert cross_tiles.choose(hp, 0.5, ((0, 3),), 3, "none", True, True, 1)
    monkeypatch.setenv(symmetric.ENV_VAR, "0")
    assert not cross_tiles.choose(hp, 0.5, ((0, 8192),), 8192, "none", True, True, 512)
    monkeypatch.setenv(symmetric.ENV_VAR, "1")
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not cross_tiles.choose(hp, 0.5, ((0, 8192),), 8192, "none", True, True, 512)


def test_default_large_batch_takes_the_kernel(monkeypatch):
    monkeypatch.delenv(symmetric.ENV_VAR, raising=False)
    seen = _calls(monkeypatch)
    B = cross_tiles.MIN_PAIRS
    z1, z2 = torch.randn(B, 8, requires_grad=True), torch.randn(B, 8)
    hcl_loss(z1, z2, layout="cross").backward()
    assert seen == [True]
    seen.clear()
    hcl_loss(z1[:B - 1], z2[:B - 1], layout="cross")
    assert seen == []


def test_memory_stays_linear(forced, monkeypatch):
    from test_torch_memory import _run

    # as tests/test_torch_memory.py: the tile buffers within the budget, else only (B x d)-class tensors
    seen = _calls(monkeypatch)
    B, d, budget = 512, 16, 32 * 1024
    mode, saved = _run(B, d, budget, layout="cross")
    assert seen == [True]
    assert mode.largest <= max(budget, 8 * B * d * 4), (mode.largest, mode.op)
    assert mode.largest < B * B * 4 / 16
    assert saved <= 6 * B * d * 4, saved


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("tile", [7, (5, 9), (20, 3)], ids=["square7", "rect5x9", "rect20x3"])
@pytest.mark.parametrize("beta", [0.0, 1.0, 2.5])
def test_workers_and_tile_shapes_match_the_reference(workers, tile, beta):
    # The kernel itself (normalised rows, per-anchor cotangents): any split of the tiles between worker threads
    # and any tile shape give the reference's values and gradients, and a repeated call gives the same bits.
    g = torch.Generator().manual_seed(5)
    B, d, t = 20, 6, 0.5
    z1, z2 = torch.randn(B, d, generator=g, dtype=torch.float64), torch.randn(B, d, generator=g, dtype=torch.float64)
    labels = torch.arange(B) % 7
    u1, u2 = torch.nn.functional.normalize(z1, dim=1), torch.nn.functional.normalize(z2, dim=1)
    cot = torch.randn(2 * B, generator=g, dtype=torch.float64)
    hp = Hyper(t, beta, 0.1, True)
    loss, (g1, g2), _ = cross_tiles.cross(u1, u2, labels, hp, cot, tile, t, 4, workers)
    again, (h1, h2), _ = cross_tiles.cross(u1, u2, labels, hp, cot, tile, t, 4, workers)
    assert torch.equal(loss, again) and torch.equal(g1, h1) and torch.equal(g2, h2)
    # the reference's gradients are with respect to z (through the normalisation): compare on unit rows, where
    # dL/dz = (I - u u^T) dL/du, i.e. the tangential part
    ref_v, ref_g = hardneg.hcl_loss_and_grad(u1.numpy(), u2.numpy(), layout="cross", labels=labels.numpy(),
                                             temperature=t, beta=beta, tau_plus=0.1, reduction="none",
                                             cotangent=cot.numpy())
    tol = tc._tol(torch.float64, dict(beta=beta))
    np.testing.assert_allclose(loss.numpy(), ref_v, rtol=tol, atol=tol)
    for u, got, want in ((u1, g1, ref_g.z1), (u2, g2, ref_g.z2)):
        tangential = got - u * (u * got).sum(dim=1, keepdim=True)
        np.testing.assert_allclose(tangential.numpy(), want, rtol=tol, atol=tol * np.abs(want).max())


# --- a tensor temperature (0-d, CLIP's learned exp(-logit_scale)): d loss / d t from <u1, dL/du1> + <u2, dL/du2>
# and the clamp floor's terms ---------------------------------------------------------------------------------

# t = 0.1 with tau_plus = 0.2: the floor M e^{-1/t} binds for some anchors and not for others (asserted below)
FLOOR = dict(temperature=0.1, tau_plus=0.2)
TENSOR_T_CASES = [dict(), dict(FLOOR, reduction="none"), dict(FLOOR, reduction="sum", labels=tc.LABELS),
                  dict(FLOOR, beta=2.5), dict(beta=0.0, reduction="none"), dict(estimator="easy"),
                  dict(clamp=False, tau_plus=0.05), dict(normalize=False, temperature=5.0)]


def _binds(z1, z2, labels=None, temperature=0.5, tau_plus=0.1, **kw):
    """Which anchors' clamp floor binds (the reference with and without the clamp differ)."""
    kw = dict(kw, layout="cross", labels=labels, temperature=temperature, tau_plus=tau_plus, reduction="none")
    no_floor = hardneg.hcl_loss(z1, z2, **dict(kw, clamp=False))
    with_floor = hardneg.hcl_loss(z1, z2, **kw)
    return ~np.isclose(no_floor, with_floor, rtol=1e-12, atol=0) | np.isnan(no_floor)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kw", TENSOR_T_CASES, ids=tc._id)
def test_tensor_temperature_through_the_kernel_matches_reference(forced, monkeypatch, dtype, kw):
    seen = _calls(monkeypatch)
    tc.check(dtype, tensor_t=True, layout="cross", **kw)
    assert seen


def test_the_floor_binds_for_some_anchors_only():
    # the premise of FLOOR above, on tests/torch_check.py's inputs
    z1, z2, _ = tc._inputs(torch.float64)
    binds = _binds(tc._np(z1), tc._np(z2), **FLOOR)
    assert binds.any() and not binds.all(), binds


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("labels", [False, True])
def test_tensor_temperature_with_many_tiles_and_workers(forced, monkeypatch, dtype, reduction, labels):
    # tiles of 7 rows shared by two workers; the floor binds for part of the anchors
    monkeypatch.setattr(symmetric, "worker_count", lambda device_type="cpu": 2)
    seen = _calls(monkeypatch)
    lab = torch.arange(20) % 6 if labels else None
    _compare(20, 6, dtype, labels=lab, tensor_t=True, memory_budget=2 * 3 * 8 * 49, reduction=reduction, **FLOOR)
    assert seen
    z1, z2 = (z.numpy() for z in _pair(20, 6, torch.Generator().manual_seed(0)))
    binds = _binds(z1, z2, labels=None if lab is None else lab.numpy(), **FLOOR)
    assert binds.any() and not binds.all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("beta", [1.0, 3.0])
def test_tensor_temperature_through_the_underflow_fallback(forced, monkeypatch, dtype, beta):
    # t = 0.01 (as test_underflowing_fixed_shift_falls_back_per_anchor) with the clamp, which binds for some
    # anchors: the fallback's anchors (both directions) take their share of d loss / d t from the row-block
    # kernel's terms (there e^{-1/t}-small: 0 in float32, so d/dt matching the reference shows that the
    # fixed-shift terms of those anchors were dropped)
    floor_shares = []
    real = blocks._block

    def spy(*args, **kw):
        out = real(*args, **kw)
        floor_shares.append(out[3])
        return out

    monkeypatch.setattr(blocks, "_block", spy)
    kw = dict(temperature=0.01, beta=beta, tau_plus=0.1, reduction="none")
    _compare(40, 16, dtype, tensor_t=True, noise=1.0, memory_budget=3 * 8 * 12 * 12, **kw)
    z1, z2 = (z.numpy() for z in _pair(40, 16, torch.Generator().manual_seed(0), 1.0))
    binds = _binds(z1, z2, **kw)
    assert binds.any() and not binds.all()
    if dtype == torch.float32:  # the fallback ran with the gradient and returned its anchors' floor terms
        assert any(fl is not None for fl in floor_shares)


def test_bad_tensor_temperature_forced_gives_nan(forced, monkeypatch):
    seen = _calls(monkeypatch)
    z1 = torch.randn(6, 5, requires_grad=True)
    for bad in (0.0, -0.5, math.inf, math.nan):
        t = torch.tensor(bad, requires_grad=True)
        out = hcl_loss(z1, torch.randn(6, 5), temperature=t, layout="cross", reduction="none")
        g1, gt = torch.autograd.grad(out.sum(), [z1, t])
        assert torch.isnan(out).all() and torch.isnan(g1).all() and torch.isnan(gt)
    assert seen == []


def test_automatic_choice_reads_a_tensor_temperature_only_where_it_could_take_the_kernel(monkeypatch):
    # on a GPU (no automatic choice of this kernel) the value is never read: no device synchronisation
    monkeypatch.delenv(symmetric.ENV_VAR, raising=False)

    def no_read(t):
        raise AssertionError("read the temperature")

    monkeypatch.setattr(symmetric, "host_temperature", no_read)
    hp, B = Hyper(0.5, 1.0, 0.1, True), cross_tiles.MIN_PAIRS
    assert not cross_tiles.choose(hp, torch.tensor(0.5), ((0, B),), B, "none", True, True, 512, "cuda")
    assert not cross_tiles.choose(hp, torch.tensor(0.5), ((0, 8),), 8, "none", True, True, 512)
    monkeypatch.setenv(symmetric.ENV_VAR, "0")
    assert not cross_tiles.choose(hp, torch.tensor(0.5), ((0, B),), B, "none", True, True, 512)


def test_learned_temperature_training_step_equals_the_row_block_path(monkeypatch):
    # CLIP's setup: HCLLoss(layout="cross", learn_temperature=True, min_temperature=...), t a 0-d tensor. One
    # SGD step with each path forced: the same loss, embedding gradients and updated logit scale.
    from test_torch_symmetric import _same_steps, _training_step

    g = torch.Generator().manual_seed(4)
    z1, z2 = _pair(24, 8, g, 0.5)
    steps = {}
    for env in ("1", "0"):
        with monkeypatch.context() as m:
            m.setenv(symmetric.ENV_VAR, env)
            seen = _calls(m)
            steps[env] = _training_step("cross", z1, z2)
            assert bool(seen) == (env == "1")
    _same_steps(steps["1"], steps["0"])
    binds = _binds(z1.numpy(), z2.numpy(), **FLOOR)  # both shares of d loss / d t
    assert binds.any() and not binds.all()
