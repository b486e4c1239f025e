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
import torch_check  # noqa: E402

kernel, forced = torch_check.kernel, torch_check.forced  # the fixtures of tests/torch_check.py


def _calls(monkeypatch):
    """Record each evaluation that took the symmetric kernel."""
    return torch_check.spy(monkeypatch, symmetric, "in_batch")


@pytest.mark.parametrize("kw", tv.FEATURES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "defaults")
def test_features_match_reference_with_each_kernel(kernel, kw):
    tv.check(**kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kw", [dict(), dict(beta=0.0, reduction="none"), dict(beta=0.5, labels=tv.LABELS)],
                         ids=["defaults", "beta0-none", "beta0.5-labels"])
def test_low_precision_with_each_kernel(kernel, dtype, kw):
    tv.check(dtype, **kw)


def _pair(B, d, g, noise=None):
    """(z1, z2) in float64 from generator ``g``: z2 independent, or z1 + ``noise`` times a standard normal
    (positives closer than the negatives: the clamp floor binds for some anchors)."""
    z1 = torch.randn(B, d, generator=g, dtype=torch.float64)
    e = torch.randn(B, d, generator=g, dtype=torch.float64)
    return z1, (e if noise is None else z1 + noise * e)


def _compare(B, d, dtype, seed=0, labels=None, cot=False, tensor_t=False, noise=None, **kw):
    """hcl_loss against the reference: values and both gradients (a random cotangent for "none"), and with
    ``tensor_t`` the temperature as a 0-d tensor of ``dtype`` and d loss / d t (tests/torch_check.py's rule)."""
    g = torch.Generator().manual_seed(seed)
    z1, z2 = (z.to(dtype).requires_grad_() for z in _pair(B, d, g, noise))
    t = None
    if tensor_t:
        t = torch.tensor(kw.pop("temperature", 0.5), dtype=dtype, requires_grad=True)
        kw["temperature"] = float(t.detach())  # the value the backend sees, for the reference and the tolerance
    out = hcl_loss(z1, z2, labels=labels, **(dict(kw, temperature=t) if tensor_t else kw))
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
    if tensor_t:
        assert t.grad.dtype == dtype
        np.testing.assert_allclose(t.grad.item(), ref_g.temperature, rtol=tol,
                                   atol=tol * abs(ref_g.temperature) + tol)
    return ref_v


@pytest.mark.parametrize("budget", [3 * 8 * 49, 3 * 8 * 16 * 16, None], ids=["tile7", "tile16", "one-tile"])
@pytest.mark.parametrize("kw", [dict(), dict(beta=0.0), dict(beta=1.7, tau_plus=0.0, clamp=False),
                                dict(estimator="easy", reduction="none"), dict(labels=True, reduction="sum")],
                         ids=["defaults", "beta0", "beta1.7", "easy-none", "labels-sum"])
@pytest.mark.parametrize("workers", [1, 3])
def test_many_tiles_match_reference(forced, monkeypatch, budget, kw, workers):
    # B = 20 pairs: tiles of 7 rows leave a short last tile in each half (10 = 7 + 3); the budget is shared by
    # the worker threads, so it is scaled with them to keep the tile sizes
    monkeypatch.setattr(symmetric, "worker_count", lambda device_type="cpu": workers)
    kw = dict(kw)
    labels = torch.arange(20) % 4 if kw.pop("labels", False) else None
    _compare(20, 6, torch.float64, labels=labels, memory_budget=None if budget is None else budget * workers, **kw)


@pytest.mark.parametrize("n, tile", [(20, 7), (40, 10), (768, 300), (1024, 256), (2 * symmetric.MIN_TILE, 1000)])
def test_pairs_cover_the_upper_triangle_once(n, tile):
    # every logit s_ij with i <= j is computed in exactly one pair (diagonal pairs: their upper triangle), and
    # the diagonal tiles of at least 2 * MIN_TILE rows are split (3/4 of their products)
    cover = np.zeros((n, n), dtype=int)
    pairs = symmetric._pairs(n, tile)
    for (i0, i1), (j0, j1) in pairs:
        assert i0 <= j0 and (i1 - i0 == j1 - j0 or (i0, i1) != (j0, j1))
        block = np.ones((i1 - i0, j1 - j0), dtype=int)
        cover[i0:i1, j0:j1] += np.triu(block) if (i0, i1) == (j0, j1) else block
    np.testing.assert_array_equal(cover, np.triu(np.ones((n, n), dtype=int)))
    diag = [I[1] - I[0] for I, J in pairs if I == J]
    assert all(rows < 2 * symmetric.MIN_TILE for rows in diag)
    # no pair straddles the halves, so the partners (i, i + n/2) of a pair lie on its diagonal or nowhere
    assert all((I[0] < n // 2) == (I[1] <= n // 2) and (J[0] < n // 2) == (J[1] <= n // 2) for I, J in pairs)


@pytest.mark.parametrize("workers", [1, 2, 3, 7])
def test_assignment_covers_every_pair_once_and_balances(workers):
    pairs = symmetric._pairs(8192, 1024)
    parts = symmetric._assign(pairs, workers)
    assert sorted(p for part in parts for p in part) == sorted(pairs)
    assert parts == symmetric._assign(pairs, workers)  # a fixed rule: the sums' order is reproducible

    def cost(pair):
        (i0, i1), (j0, j1) = pair
        return (i1 - i0) * (j1 - j0) * (1 if pair[0] == pair[1] else 2)

    loads = [sum(cost(p) for p in part) for part in parts]
    assert max(loads) - min(loads) <= max(cost(p) for p in pairs)  # greedy, largest first


def test_split_diagonal_tiles_with_workers_match_reference(forced, monkeypatch):
    # tiles of 300 rows (>= 2 * MIN_TILE): split diagonal tiles, a short last tile (384 = 300 + 84), two workers
    monkeypatch.setattr(symmetric, "worker_count", lambda device_type="cpu": 2)
    budget = 2 * (3 * 4) * 300 * 300
    _compare(384, 16, torch.float32, memory_budget=budget)
    _compare(384, 16, torch.float32, memory_budget=budget, labels=torch.arange(384) % 50, reduction="none", beta=0.5)


def test_workers_are_reproducible_agree_and_restore_the_thread_count():
    g = torch.Generator().manual_seed(3)
    U = torch.nn.functional.normalize(torch.randn(600, 24, generator=g, dtype=torch.float64), dim=1)
    hp = Hyper(0.5, 1.0, 0.1, True)
    coef = torch.rand(600, generator=g, dtype=torch.float64)
    threads = torch.get_num_threads()
    runs = {w: symmetric.in_batch(U, None, hp, coef, 40, 0.5, 64, workers=w) for w in (1, 3)}
    again = symmetric.in_batch(U, None, hp, coef, 40, 0.5, 64, workers=3)
    assert torch.get_num_threads() == threads
    assert torch.equal(runs[3][0], again[0]) and torch.equal(runs[3][1], again[1])  # bit for bit
    # only the order of the sums differs between worker counts
    torch.testing.assert_close(runs[3][0], runs[1][0], rtol=1e-13, atol=0)
    torch.testing.assert_close(runs[3][1], runs[1][1], rtol=1e-12, atol=1e-15 * runs[1][1].abs().max().item())


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
    hcl_loss(z1, z2, negatives=torch.randn(4, 3))  # bank layout
    for bad in (0.0, -0.5, math.inf, math.nan):  # no usable fixed shift: the row-block kernel's NaNs
        hcl_loss(z1, z2, temperature=torch.tensor(bad))
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
    assert symmetric.choose(hp, torch.tensor(0.5), full, n, True, 512)  # a tensor: its value's bound
    assert not symmetric.choose(hp, torch.tensor(0.02), full, n, True, 512)
    assert not symmetric.choose(hp, torch.tensor(math.nan), full, n, True, 512)
    assert not symmetric.choose(hp, 0.5, full, n, True, 512, "cuda")  # not measured on a GPU
    # the fixed shift could underflow: (1 + beta) * 2 / t = 200 > SAFE_EXPONENT
    assert not symmetric.choose(Hyper(0.02, 1.0, 0.1, True), 0.02, full, n, True, 512)
    # with worker threads the crossover is at twice the rows
    assert symmetric.min_rows(2) == symmetric.MIN_ROWS_THREADED > symmetric.MIN_ROWS == symmetric.min_rows(1)
    assert not symmetric.choose(hp, 0.5, full, n, True, 512, workers=2)
    big = symmetric.MIN_ROWS_THREADED
    assert symmetric.choose(hp, 0.5, ((0, big),), big, True, 512, workers=2)


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
    B = symmetric.min_rows(symmetric.worker_count()) // 2  # the threshold for this process's thread count
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


# --- a tensor temperature (0-d, e.g. learned): d loss / d t from <u, dL/du> and the clamp floor's terms -------

# t = 0.1 with tau_plus = 0.2: the floor M e^{-1/t} binds for some anchors and not for others (asserted below), so
# d loss / d t has both shares
FLOOR = dict(temperature=0.1, tau_plus=0.2)
TENSOR_T_CASES = [dict(), dict(FLOOR, reduction="none"), dict(FLOOR, reduction="sum", labels=tv.LABELS),
                  dict(FLOOR, beta=2.5), dict(beta=0.0, reduction="none"), dict(estimator="easy"),
                  dict(clamp=False, tau_plus=0.05), dict(normalize=False, temperature=5.0)]


def _binds(z1, z2, layout=None, labels=None, temperature=0.5, tau_plus=0.1, **kw):
    """Which anchors' clamp floor binds (the reference with and without the clamp differ)."""
    kw = dict(kw, layout=layout, labels=labels, temperature=temperature, tau_plus=tau_plus, reduction="none")
    no_floor = hardneg.hcl_loss(z1, z2, **dict(kw, clamp=False))
    with_floor = hardneg.hcl_loss(z1, z2, **kw)
    return ~np.isclose(no_floor, with_floor, rtol=1e-12, atol=0) | np.isnan(no_floor)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kw", TENSOR_T_CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "defaults")
def test_tensor_temperature_through_the_kernel_matches_reference(forced, monkeypatch, dtype, kw):
    seen = _calls(monkeypatch)
    tv.check(dtype, tensor_t=True, **kw)
    assert seen and all(seen)  # the kernel, not the row-block fallback of choose, computed it


def test_the_floor_binds_for_some_anchors_only():
    # the premise of FLOOR above, on tests/torch_check.py's inputs
    z1, z2, _ = tv._inputs(torch.float64)
    binds = _binds(tv._np(z1), tv._np(z2), **FLOOR)
    assert binds.any() and not binds.all(), binds


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("labels", [False, True])
def test_tensor_temperature_with_many_tiles_and_workers(forced, monkeypatch, dtype, reduction, labels):
    # tiles of 7 rows shared by two workers; the floor binds for part of the anchors
    monkeypatch.setattr(symmetric, "worker_count", lambda device_type="cpu": 2)
    seen = _calls(monkeypatch)
    lab = torch.arange(20) % 4 if labels else None
    _compare(20, 6, dtype, labels=lab, tensor_t=True, noise=0.5, memory_budget=2 * 3 * 8 * 49, reduction=reduction,
             **FLOOR)
    assert seen and all(seen)
    z1, z2 = (z.numpy() for z in _pair(20, 6, torch.Generator().manual_seed(0), 0.5))
    binds = _binds(z1, z2, labels=None if lab is None else lab.numpy(), **FLOOR)
    assert binds.any() and not binds.all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("beta", [1.0, 3.0])
def test_tensor_temperature_through_the_underflow_fallback(forced, monkeypatch, dtype, beta):
    # t = 0.01 (as test_underflowing_fixed_shift_falls_back_per_row) with the clamp, which binds for some anchors:
    # the fallback's rows take their share of d loss / d t from the row-block kernel's terms (there e^{-1/t}-small:
    # 0 in float32, so d/dt matching the reference shows that the fixed-shift terms of those rows were dropped)
    floor_shares = []
    real = symmetric.blocks._block

    def spy(*args, **kw):
        out = real(*args, **kw)
        floor_shares.append(out[3])
        return out

    monkeypatch.setattr(symmetric.blocks, "_block", spy)
    kw = dict(temperature=0.01, beta=beta, tau_plus=0.1, reduction="none")
    _compare(40, 16, dtype, tensor_t=True, noise=1.0, memory_budget=3 * 8 * 12 * 12, **kw)
    z1, z2 = (z.numpy() for z in _pair(40, 16, torch.Generator().manual_seed(0), 1.0))
    binds = _binds(z1, z2, **kw)
    assert binds.any() and not binds.all()
    if dtype == torch.float32:  # the fallback ran with the gradient and returned its rows' floor terms
        assert any(fl is not None for fl in floor_shares)


def test_bad_tensor_temperature_forced_gives_nan(forced, monkeypatch):
    seen = _calls(monkeypatch)
    z1 = torch.randn(6, 5, requires_grad=True)
    for bad in (0.0, -0.5, math.inf, math.nan):
        t = torch.tensor(bad, requires_grad=True)
        out = hcl_loss(z1, torch.randn(6, 5), temperature=t, reduction="none")
        g1, gt = torch.autograd.grad(out.sum(), [z1, t])
        assert torch.isnan(out).all() and torch.isnan(g1).all() and torch.isnan(gt)
    assert seen == []


def test_automatic_choice_reads_a_tensor_temperature_only_where_it_could_take_the_kernel(monkeypatch):
    # on a GPU (no automatic choice of this kernel) the value is never read: no device synchronisation
    monkeypatch.delenv(symmetric.ENV_VAR, raising=False)

    def no_read(t):
        raise AssertionError("read the temperature")

    monkeypatch.setattr(symmetric, "host_temperature", no_read)
    hp, n = Hyper(0.5, 1.0, 0.1, True), symmetric.MIN_ROWS
    assert not symmetric.choose(hp, torch.tensor(0.5), ((0, n),), n, True, 512, "cuda")
    assert not symmetric.choose(hp, torch.tensor(0.5), ((0, 8),), 8, True, 512)
    monkeypatch.setenv(symmetric.ENV_VAR, "0")
    assert not symmetric.choose(hp, torch.tensor(0.5), ((0, n),), n, True, 512)


def _training_step(layout, z1, z2):
    """One SGD step of HCLLoss with a learned temperature t = max(exp(-logit_scale), min_temperature) (a 0-d
    tensor; the clamp floor binds for some anchors at FLOOR's t and tau_plus): the loss, the embeddings' gradients and
    the updated logit scale."""
    from hardneg_torch import HCLLoss

    loss_fn = HCLLoss(**FLOOR, learn_temperature=True, min_temperature=0.01, layout=layout).double()
    opt = torch.optim.SGD(loss_fn.parameters(), lr=0.5)
    a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    loss = loss_fn(a, b)
    loss.backward()
    opt.step()
    return loss.detach(), a.grad, b.grad, loss_fn.logit_scale.detach().clone()


def _same_steps(forced_on, row_blocks):
    """The two paths' training steps agree to the float64 budget, and the step moved the temperature."""
    tol = tv._tol(torch.float64, FLOOR)
    for got, want in zip(forced_on, row_blocks):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol * want.abs().max().item())
    assert forced_on[3].item() != pytest.approx(math.log(1 / FLOOR["temperature"]), rel=1e-9)


def test_learned_temperature_training_step_equals_the_row_block_path(monkeypatch):
    g = torch.Generator().manual_seed(4)
    z1 = torch.randn(24, 8, generator=g, dtype=torch.float64)
    z2 = z1 + 0.5 * torch.randn(24, 8, generator=g, dtype=torch.float64)
    steps = {}
    for env in ("1", "0"):
        with monkeypatch.context() as m:
            m.setenv(symmetric.ENV_VAR, env)
            seen = _calls(m)
            steps[env] = _training_step("in_batch", z1, z2)
            assert bool(seen) == (env == "1")
    _same_steps(steps["1"], steps["0"])
    binds = _binds(z1.numpy(), z2.numpy(), **FLOOR)  # both shares of d loss / d t
    assert binds.any() and not binds.all()


@pytest.mark.parametrize("layout, kernel", [("in-batch", "two_pass"), ("cross", "shared_tiles")])
def test_two_pass_benchmark_prints_one_json_line(layout, kernel):
    # benchmarks/two_pass.py (issue 17's protocol): one process, every implementation, ratios to the floors
    import json
    import pathlib
    import subprocess
    import sys

    script = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "two_pass.py"
    out = subprocess.run([sys.executable, str(script), "--framework", "torch", "--layout", layout, "--batch", "16",
                          "--dim", "4", "--threads", "1", "--reps", "2"], capture_output=True, text=True, check=True)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1, out.stdout
    r = json.loads(lines[0])
    assert set(r["median_ms"]) >= {kernel, "row_blocks", "floor3"}
    assert all(v > 0 for v in r["median_ms"].values())
    # (the medians are rounded to 0.1 us, the floor of this tiny batch takes a few us)
    assert r["x_floor3"][kernel] == pytest.approx(r["median_ms"][kernel] / r["median_ms"]["floor3"], rel=0.05)
    assert ("x_floor2" in r) == (layout == "in-batch")
    assert r["threads"] == 1 and r["load1_before"] >= 0
