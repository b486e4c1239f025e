"""The tiled JAX kernels (hardneg_jax.symmetric: two-pass symmetric in-batch, shared tiles for the symmetric
cross layout) equal the reference, and the automatic choice between them and the row-block kernels is the
documented rule.

The kernels only reorder the same sums (statistics accumulated from both sides of a tile, one fixed shift c
instead of each row's maximum), so float64 results meet the row-block kernels' tolerance (``RTOL64``, see
tests/jax_util.py). In float32 the shifted exponents ``(1+beta)(s - c)`` reach ``(1+beta) * 2/t`` in magnitude,
each with a rounding error of a few ulps of that size, hence the tolerance ``64 eps (2 + beta) / t`` (the one
tests/test_torch_values.py derives for the same computation). Small ``memory_budget`` values give tiles of a
few rows that do not divide the batch (padding), and a sharp temperature exercises the underflow fallback.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from jax_util import RTOL64, assert_close, jax_value_and_grads, reference

import hardneg

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

import hardneg_jax  # noqa: E402
from hardneg_jax import symmetric  # noqa: E402

#: memory budgets: None (one tile per half / side at these sizes) and 3 * 8 * 7 * 7 + 49 bytes, tiles of 7
#: float64 rows (B = 20 = 7 + 7 + 6: the last tile of each half is padded with one row)
BUDGETS = [None, 3 * 8 * 49 + 49]


def _tol32(temperature=0.5, beta=1.0):
    return 64 * float(np.finfo(np.float32).eps) * (2.0 + beta) / temperature


@pytest.fixture
def forced(monkeypatch):
    monkeypatch.setenv(symmetric.ENV_VAR, "1")


@pytest.fixture
def calls(monkeypatch):
    """Which tiled kernel each evaluation traced (the jit caches are cleared so that every call traces)."""
    seen = []
    for name in ("in_batch", "cross"):
        real = getattr(symmetric, name)

        def spy(*args, _real=real, _name=name, **kw):
            seen.append(_name)
            return _real(*args, **kw)

        monkeypatch.setattr(symmetric, name, spy)
    jax.clear_caches()
    yield seen
    jax.clear_caches()


def _inputs(B=20, d=6, seed=0, labels=False):
    rng = np.random.default_rng(seed)
    z1 = rng.standard_normal((B, d))
    z2 = z1 + 0.7 * rng.standard_normal((B, d))  # partners closer than the rest: positive losses of all sizes
    kw = {"labels": rng.integers(0, 4, B)} if labels else {}
    return z1, z2, kw


def _n_anchors(B, kw):
    return B if kw.get("layout") == "cross" and not kw.get("symmetric", True) else 2 * B


def _compare(z1, z2, rtol, dtype=None, **kw):
    """Value and gradients of hardneg_jax (float64 unless ``dtype``) against the reference."""
    ct = None
    if kw.get("reduction") == "none":
        ct = np.random.default_rng(1).standard_normal(_n_anchors(z1.shape[0], kw))
    if dtype is not None:  # the reference sees exactly the rounded inputs
        z1, z2 = (np.asarray(jnp.asarray(v, dtype), np.float64) for v in (z1, z2))
    want_v, want_g = reference(z1, z2, cotangent=ct, **{k: v for k, v in kw.items() if k != "memory_budget"})
    if dtype is None:
        with jax.enable_x64(True):
            got_v, got_g, _ = jax_value_and_grads(z1, z2, cotangent=ct, **kw)
    else:
        got_v, got_g, _ = jax_value_and_grads(z1, z2, cotangent=ct, dtype=dtype, **kw)
    assert_close(got_v, want_v, rtol, "value")
    for got, want, what in zip(got_g[:2], want_g[:2], ("dz1", "dz2")):
        assert_close(got, want, rtol, what)


FEATURES = [
    dict(),
    dict(beta=0.0, reduction="sum"),
    dict(beta=2.5, reduction="none"),
    dict(estimator="easy", reduction="none"),
    dict(clamp=False, tau_plus=0.3, beta=1.7),
    dict(tau_plus=0.0, beta=2.5, temperature=0.2),
    dict(labels=True, reduction="none"),
    dict(labels=True, beta=0.0),
    dict(normalize=False, temperature=3.0, reduction="none"),
    dict(temperature=2.0, tau_plus=0.5),  # a binding clamp floor for some anchors
]
LAYOUTS = [("in_batch", {}), ("cross", dict(layout="cross"))]


def _ids(kw):
    return ",".join(f"{k}={v}" for k, v in kw.items()) or "defaults"


@pytest.mark.parametrize("layout,lkw", LAYOUTS, ids=[x[0] for x in LAYOUTS])
@pytest.mark.parametrize("kw", FEATURES, ids=_ids)
def test_float64_matches_reference(forced, calls, kw, layout, lkw):
    kw = dict(kw)
    z1, z2, extra = _inputs(labels=kw.pop("labels", False), seed=len(_ids(kw)))
    _compare(z1, z2, RTOL64, memory_budget=BUDGETS[1], **extra, **kw, **lkw)
    assert set(calls) == {layout}


@pytest.mark.parametrize("layout,lkw", LAYOUTS, ids=[x[0] for x in LAYOUTS])
@pytest.mark.parametrize("labels", [False, True], ids=["unlabelled", "labels"])
def test_float64_one_tile_per_half_matches_reference(forced, calls, labels, layout, lkw):
    z1, z2, extra = _inputs(labels=labels, seed=2)
    _compare(z1, z2, RTOL64, memory_budget=BUDGETS[0], reduction="none", **extra, **lkw)
    assert set(calls) == {layout}


@pytest.mark.parametrize("layout,lkw", LAYOUTS, ids=[x[0] for x in LAYOUTS])
@pytest.mark.parametrize("kw", [dict(), dict(beta=0.0, reduction="none"), dict(beta=2.5, labels=True)], ids=_ids)
def test_float32_matches_reference(forced, calls, kw, layout, lkw):
    kw = dict(kw)
    z1, z2, extra = _inputs(B=37, d=9, labels=kw.pop("labels", False))
    _compare(z1, z2, _tol32(beta=kw.get("beta", 1.0)), dtype=jnp.float32, memory_budget=3 * 4 * 16 * 16 + 256,
             **extra, **kw, **lkw)
    assert set(calls) == {layout}


@pytest.mark.parametrize("layout,lkw", LAYOUTS, ids=[x[0] for x in LAYOUTS])
@pytest.mark.parametrize("beta", [1.0, 3.0])
@pytest.mark.parametrize("labels", [False, True], ids=["unlabelled", "labels"])
def test_underflowing_fixed_shift_falls_back_per_row(forced, monkeypatch, layout, lkw, beta, labels):
    # t = 0.01: (1 + beta)(s - c) reaches -(1 + beta) * 200, far below float32's smallest normal e^-87: rows
    # whose negatives all lie far from c = 1/t lose their sums to underflow and must be recomputed with
    # their own maxima (the row-block kernel under lax.cond).
    z1, z2, extra = _inputs(B=24, d=16, labels=labels, seed=5)
    kw = dict(temperature=0.01, beta=beta, tau_plus=0.0, clamp=False, reduction="none", memory_budget=3 * 4 * 64 + 64,
              **extra, **lkw)
    assert symmetric.plan(cross=layout == "cross", symmetric=True, bank="none", distributed=False,
                          beta_mode="finite", beta=beta, temperature=0.01, normalize=True, batch=24, itemsize=4,
                          budget=None, default_budget=2**24)["tile_fallback"]
    rtol = _tol32(0.01, beta)
    _compare(z1, z2, rtol, dtype=jnp.float32, **kw)
    # the case is really the fallback's: without it the flagged rows' losses are wrong
    monkeypatch.setattr(symmetric, "_flagged", lambda s1, has, n: jnp.zeros_like(has))
    jax.clear_caches()
    with pytest.raises(AssertionError):
        _compare(z1, z2, rtol, dtype=jnp.float32, **kw)
    jax.clear_caches()


def test_under_jit_grad_and_vmap(forced, calls):
    z1, z2, _ = _inputs(B=16, d=5)
    kw = dict(temperature=0.4, beta=2.5, tau_plus=0.1)
    want_v, want_g = reference(z1, z2, **kw)
    f = lambda a, b: hardneg_jax.hcl_loss(a, b, memory_budget=3 * 4 * 36 + 36, **kw)  # noqa: E731
    a, b = jnp.asarray(z1, jnp.float32), jnp.asarray(z2, jnp.float32)
    v, g = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(a, b)
    tol = _tol32(0.4, 2.5)
    assert_close(v, want_v, tol, "value")
    assert_close(g[0], want_g[0], tol, "dz1")
    assert_close(g[1], want_g[1], tol, "dz2")
    # vmap over two independent problems (the second one swapped)
    vs, (g1s, _) = jax.vmap(jax.value_and_grad(f, argnums=(0, 1)))(jnp.stack([a, b]), jnp.stack([b, a]))
    assert_close(vs[0], want_v, tol, "vmapped value")
    assert_close(g1s[0], want_g[0], tol, "vmapped dz1")
    assert_close(vs[1], reference(z2, z1, **kw)[0], tol, "vmapped swapped value")
    assert "in_batch" in calls


def test_traced_tau_plus_gradient_matches_row_blocks(monkeypatch, calls):
    z1, z2, _ = _inputs(B=16, d=5)

    def grads(env):
        monkeypatch.setenv(symmetric.ENV_VAR, env)
        jax.clear_caches()
        with jax.enable_x64(True):
            f = lambda a, tau: hardneg_jax.hcl_loss(a, jnp.asarray(z2), tau_plus=tau, layout="cross")  # noqa
            return jax.grad(f, argnums=(0, 1))(jnp.asarray(z1), jnp.asarray(0.2))

    tiled = grads("1")
    assert calls and set(calls) == {"cross"}
    calls.clear()
    rows = grads("0")
    assert calls == []
    assert_close(tiled[1], rows[1], RTOL64, "d loss / d tau_plus")
    assert_close(tiled[0], rows[0], RTOL64, "dz1")


def _array_temperature(z1, z2, temperature, dtype, cotangent=None, **kw):
    """Value and (dz1, dz2, dt) of hardneg_jax with a traced 0-d temperature, under jit, by jax.vjp."""

    def f(a, b, t):
        return hardneg_jax.hcl_loss(a, b, temperature=t, **kw)

    def run(a, b, t):
        value, vjp = jax.vjp(f, a, b, t)
        return value, vjp(jnp.ones_like(value) if cotangent is None else jnp.asarray(cotangent, value.dtype))

    value, grads = jax.jit(run)(jnp.asarray(z1, dtype), jnp.asarray(z2, dtype), jnp.asarray(temperature, dtype))
    return np.asarray(value, np.float64), tuple(np.asarray(g, np.float64) for g in grads)


def _compare_array_temperature(z1, z2, temperature, rtol, dtype=jnp.float64, **kw):
    """hardneg_jax with an array temperature against the reference: value, d/dz1, d/dz2 and d/dt."""
    ct = None
    if kw.get("reduction") == "none":
        ct = np.random.default_rng(1).standard_normal(_n_anchors(z1.shape[0], kw))
    z1, z2 = (np.asarray(jnp.asarray(v, dtype), np.float64) for v in (z1, z2))  # what the kernel sees
    want_v, want = hardneg.hcl_loss_and_grad(z1, z2, temperature=temperature, cotangent=ct,
                                             **{k: v for k, v in kw.items() if k != "memory_budget"})
    got_v, got = _array_temperature(z1, z2, temperature, dtype, ct, **kw)
    assert_close(got_v, want_v, rtol, "value")
    for g, w, what in zip(got, (want.z1, want.z2, want.temperature), ("dz1", "dz2", "d loss / d t")):
        assert_close(g, w, rtol, what)


ARRAY_T = [
    dict(temperature=0.5),
    dict(temperature=0.3, beta=2.5, reduction="none"),
    dict(temperature=0.5, beta=0.0, reduction="sum"),
    dict(temperature=0.4, estimator="easy", reduction="none"),
    dict(temperature=0.5, clamp=False, tau_plus=0.3, beta=1.7),
    dict(temperature=0.7, labels=True, reduction="none"),
    dict(temperature=3.0, normalize=False),
]


@pytest.mark.parametrize("layout,lkw", LAYOUTS, ids=[x[0] for x in LAYOUTS])
@pytest.mark.parametrize("kw", ARRAY_T, ids=_ids)
def test_array_temperature_float64_matches_reference(forced, calls, kw, layout, lkw):
    kw = dict(kw)
    z1, z2, extra = _inputs(labels=kw.pop("labels", False), seed=len(_ids(kw)))
    with jax.enable_x64(True):
        _compare_array_temperature(z1, z2, kw.pop("temperature"), RTOL64, memory_budget=BUDGETS[1], **extra,
                                   **kw, **lkw)
    assert set(calls) == {layout}


@pytest.mark.parametrize("layout,lkw", LAYOUTS, ids=[x[0] for x in LAYOUTS])
@pytest.mark.parametrize("kw", [dict(), dict(beta=0.0, reduction="none"), dict(beta=2.5, labels=True)], ids=_ids)
def test_array_temperature_float32_matches_reference(forced, calls, kw, layout, lkw):
    kw = dict(kw)
    z1, z2, extra = _inputs(B=37, d=9, labels=kw.pop("labels", False))
    _compare_array_temperature(z1, z2, 0.5, _tol32(0.5, kw.get("beta", 1.0)), jnp.float32,
                               memory_budget=3 * 4 * 16 * 16 + 256, **extra, **kw, **lkw)
    assert set(calls) == {layout}


@pytest.mark.parametrize("layout,lkw", LAYOUTS, ids=[x[0] for x in LAYOUTS])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_array_temperature_on_the_clamp_floor(forced, calls, monkeypatch, layout, lkw, dtype):
    # tau_plus = 0.9 takes most of the negatives' mass away: the unclamped estimate falls below the floor
    # M e^{-1/t} for some anchors, whose loss then moves with t through the floor as well (d/dt gets
    # -c da / t^2 from each of them)
    z1, z2, _ = _inputs(B=20, d=6, seed=3)
    kw = dict(tau_plus=0.9, reduction="none", memory_budget=BUDGETS[1], **lkw)
    t = 0.25
    rtol = RTOL64 if dtype == "float64" else _tol32(t)
    with jax.enable_x64(dtype == "float64"):
        _compare_array_temperature(z1, z2, t, rtol, jnp.dtype(dtype), **kw)
        assert set(calls) == {layout}
        # the case really needs the floor's share: without it d/dt is wrong
        real = symmetric._t_grad
        monkeypatch.setattr(symmetric, "_t_grad", lambda dot, cp, live, tm, t, st: real(
            dot, cp, live, tm, t, st._replace(clamp=False)))
        jax.clear_caches()
        with pytest.raises(AssertionError, match="d loss / d t"):
            _compare_array_temperature(z1, z2, t, rtol, jnp.dtype(dtype), **kw)
    jax.clear_caches()


@pytest.mark.parametrize("layout,lkw", LAYOUTS, ids=[x[0] for x in LAYOUTS])
@pytest.mark.parametrize("labels", [False, True], ids=["unlabelled", "labels"])
def test_array_temperature_underflow_falls_back_per_row(forced, calls, monkeypatch, layout, lkw, labels):
    # a traced t = 0.01 (float32): the static bound cannot be checked, so the kernel carries the fallback, and
    # here rows do underflow (see test_underflowing_fixed_shift_falls_back_per_row); their losses, gradients and
    # shares of d/dt come from the row blocks
    z1, z2, extra = _inputs(B=24, d=16, labels=labels, seed=5)
    kw = dict(beta=1.0, tau_plus=0.0, clamp=False, reduction="none", memory_budget=3 * 4 * 64 + 64, **extra, **lkw)
    rtol = _tol32(0.01)
    _compare_array_temperature(z1, z2, 0.01, rtol, jnp.float32, **kw)
    assert set(calls) == {layout}
    monkeypatch.setattr(symmetric, "_flagged", lambda s1, has, n: jnp.zeros_like(has))
    jax.clear_caches()
    with pytest.raises(AssertionError):
        _compare_array_temperature(z1, z2, 0.01, rtol, jnp.float32, **kw)
    jax.clear_caches()


def test_array_temperature_gradient_alone(forced, calls):
    # only d/dt requested: the kernel still forms the rows' gradients (d/dt is read off them), returns none
    z1, z2, _ = _inputs(B=16, d=5)
    with jax.enable_x64(True):
        a, b = jnp.asarray(z1), jnp.asarray(z2)
        for lkw in ({}, dict(layout="cross")):
            f = lambda t, kw=lkw: hardneg_jax.hcl_loss(a, b, temperature=t, tau_plus=0.5, **kw)  # noqa: E731
            gt = jax.jit(jax.grad(f))(jnp.asarray(0.6))
            _, want = hardneg.hcl_loss_and_grad(z1, z2, temperature=0.6, tau_plus=0.5, **lkw)
            assert_close(gt, want.temperature, RTOL64, "d loss / d t")
    assert list(dict.fromkeys(calls)) == ["in_batch", "cross"]  # (the primal and the forward rule both trace)


@pytest.mark.parametrize("t", [0.0, -0.5, math.inf, math.nan])
def test_invalid_array_temperature_makes_everything_nan(forced, calls, t):
    z1, z2, _ = _inputs(B=10, d=4)
    for lkw in ({}, dict(layout="cross")):
        v, g = _array_temperature(z1, z2, t, jnp.float32, **lkw)
        assert np.isnan(v) and all(np.isnan(x).all() for x in g)
    assert list(dict.fromkeys(calls)) == ["in_batch", "cross"]


def test_unsupported_calls_keep_row_blocks(forced, calls):
    z1, z2, _ = _inputs(B=8, d=4)
    with jax.enable_x64(True):
        a, b = jnp.asarray(z1), jnp.asarray(z2)
        hardneg_jax.hcl_loss(a, b, beta=math.inf)  # the maxima's ties
        jax.grad(lambda be: hardneg_jax.hcl_loss(a, b, beta=be))(1.0)  # a traced beta
        hardneg_jax.hcl_loss(a, b, negatives=jnp.ones((3, 4)))  # a bank
        hardneg_jax.hcl_loss(a, b, layout="cross", symmetric=False)  # one-way cross
    assert calls == []


def test_non_finite_input_makes_everything_nan(forced):
    z1, z2, _ = _inputs(B=10, d=4)
    z1[3, 1] = np.nan
    for lkw in ({}, dict(layout="cross")):
        v, g, _ = jax_value_and_grads(z1, z2, dtype=jnp.float32, **lkw)
        assert np.isnan(v) and np.isnan(g[0]).all() and np.isnan(g[1]).all()


def test_automatic_choice(monkeypatch):
    monkeypatch.delenv(symmetric.ENV_VAR, raising=False)
    base = dict(cross=False, symmetric=True, bank="none", distributed=False, beta_mode="finite", beta=1.0,
                temperature=0.5, normalize=True, batch=symmetric.MIN_ROWS // 2, itemsize=4, budget=None,
                default_budget=2**24, dim=symmetric.MIN_ROWS)
    plan = lambda **kw: symmetric.plan(**{**base, **kw})["tiles"]  # noqa: E731
    assert plan() == symmetric.MIN_ROWS // 2 and symmetric.plan(**base)["tile_beta_one"]
    assert not symmetric.plan(**base)["tile_fallback"]
    assert plan(batch=symmetric.MIN_ROWS // 2 - 1) == 0  # below the measured crossover
    assert plan(dim=4 * symmetric.MIN_ROWS) == 0  # d large relative to the batch: row blocks
    assert plan(cross=True, batch=symmetric.MIN_ROWS, dim=4 * symmetric.MIN_ROWS) > 0  # not in the cross layout
    assert plan(cross=True) == 0  # the cross layout counts B rows per side
    assert plan(cross=True, batch=symmetric.MIN_ROWS) > 0
    assert plan(cross=True, batch=symmetric.MIN_ROWS, symmetric=False) == 0
    assert plan(normalize=False) == 0  # no bound on the logits without normalising
    assert plan(budget=3 * 4 * 32 * 32) == 0  # tiles too small for fast products
    assert plan(beta_mode="inf", beta=math.inf) == 0
    assert plan(beta_mode="traced", beta=None) == 0
    assert plan(temperature=None) == 0  # an array temperature: the bound cannot be checked (see the docstring)
    assert plan(distributed=True) == 0
    assert plan(platform="gpu") == 0  # not measured on accelerators
    assert plan(bank="shared") == 0
    assert plan(temperature=0.02) == 0  # (1 + beta) * 2/t = 200: the fixed shift could underflow in float32 ...
    assert plan(temperature=0.02, itemsize=8) > 0  # ... not in float64
    monkeypatch.setenv(symmetric.ENV_VAR, "1")
    assert plan(batch=3, normalize=False) == 3 and symmetric.plan(**{**base, "normalize": False})["tile_fallback"]
    assert plan(beta_mode="inf", beta=math.inf) == 0  # forcing never takes an unsupported call
    assert plan(temperature=None) > 0 and symmetric.plan(**{**base, "temperature": None})["tile_fallback"]
    monkeypatch.setenv(symmetric.ENV_VAR, "0")
    assert plan() == 0


def test_tiles_fit_the_budget_and_split_evenly():
    assert symmetric.tile_rows(4096, 4, None, 2**24) == 1024
    assert symmetric.tile_rows(4100, 4, None, 2**24) == 820  # 5 tiles, no padding
    assert symmetric.tile_rows(20, 8, 3 * 8 * 49 + 49, 2**24) == 7
    T = symmetric.tile_rows(100_000, 4, 2**20, 2**24)
    assert 3 * 4 * T * T <= 2**20


def test_memory_stays_linear_at_65536_pairs(forced):
    # compiled, not run: XLA's buffer assignment of the gradient at B = 65,536 (n = 131,072 rows) holds a few
    # tiles and (n x d)-class arrays, nothing (n x n)-class (which would be 64 GiB)
    B, d = 65536, 8
    z = jax.ShapeDtypeStruct((B, d), jnp.float32)
    vg = jax.jit(jax.value_and_grad(lambda a, b: hardneg_jax.hcl_loss(a, b), argnums=(0, 1)))
    temp = vg.lower(z, z).compile().memory_analysis().temp_size_in_bytes
    tile = 4 * symmetric.TILE_ROWS ** 2
    assert temp <= 6 * tile + 64 * 2 * B * d * 4, temp


def test_default_choice_takes_the_tiled_kernels_from_the_crossover(monkeypatch, calls):
    monkeypatch.delenv(symmetric.ENV_VAR, raising=False)
    B = symmetric.MIN_ROWS // 2
    z1, z2 = jnp.ones((B, 8)), jnp.ones((B, 8))
    jax.grad(lambda a: hardneg_jax.hcl_loss(a, z2))(z1)
    assert set(calls) == {"in_batch"}
    calls.clear()
    hardneg_jax.hcl_loss(z1[:B - 1], z2[:B - 1])
    hardneg_jax.hcl_loss(z1, z2, layout="cross")  # B rows per side: below MIN_ROWS
    assert calls == []
    hardneg_jax.hcl_loss(jnp.ones((2 * B, 8)), jnp.ones((2 * B, 8)), layout="cross")
    assert calls == ["cross"]
