"""hardneg_jax, spec 1.1: the cross layout (one-way and symmetric, shared and per-anchor banks, labels) and the
temperature as a differentiable value, against the NumPy reference; CLIP's and MultipleNegativesRankingLoss'
formulas written independently; the error contract; memory linear in B.

Float64 comparisons run under ``jax.enable_x64(True)`` (a context: the global flag stays off for the other
tests). A tiny ``memory_budget`` walks the anchors of each direction in several row blocks, the last one
overlapping its predecessor. Shapes are small and each test compiles few programs (JAX compile time dominates).
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from jax_util import RTOL64, assert_close, problem

import hardneg
from hardneg.validation import check_temperature_tensor

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

import hardneg_jax  # noqa: E402

SMALL = 300  # bytes: 2 anchor rows per block at B = 5 (hardneg_jax.blocks.rows_per_block), blocks overlap


def _reference(z1, z2, cotangent=None, **kw):
    value, g = hardneg.hcl_loss_and_grad(z1, z2, cotangent=cotangent, **kw)
    return np.asarray(value), g


def _jax_all(z1, z2, t, cotangent=None, dtype=None, **kw):
    """hardneg_jax's value and VJP w.r.t. (z1, z2, negatives, temperature), t traced (an array temperature)."""
    neg = kw.pop("negatives", None)
    cast = (lambda x: None if x is None else jnp.asarray(x, dtype)) if dtype else (lambda x: x)

    def f(a, b, n, tt):
        return hardneg_jax.hcl_loss(a, b, negatives=n, temperature=tt, **kw)

    value, vjp = jax.vjp(f, cast(z1), cast(z2), cast(neg), jnp.asarray(t, dtype or jnp.float64))
    ct = jnp.ones_like(value) if cotangent is None else jnp.asarray(cotangent, value.dtype)
    return value, vjp(ct)


def _t_scale(t, beta, value):
    """Size of the terms that d loss/d t sums: |ds/dt| = |s|/t <= 1/t^2 per logit, weights summing to ~ (1 + beta)
    per anchor, times the loss scale; the float64 agreement is RTOL64 relative to that, not to a small total."""
    return (1.0 + min(beta, 10.0)) / t**2 * max(1.0, float(np.max(np.abs(value))))


CROSS = [
    # (id, bank, labels, keyword arguments, reduction, memory budget)
    ("symmetric", None, False, {}, "mean", SMALL),
    ("one_way_sum", None, False, dict(symmetric=False), "sum", SMALL),
    ("labels_sharp", None, True, dict(temperature=0.1, beta=3.0), "none", SMALL),
    ("shared_inf", "shared", False, dict(beta=math.inf), "mean", None),
    ("shared_labels_one_way", "shared", True, dict(symmetric=False, tau_plus=0.2), "none", SMALL),
    ("per_anchor_clamp_off", "per_anchor", False, dict(beta=0.5, clamp=False, tau_plus=0.05), "sum", SMALL),
    ("per_anchor_labels_easy", "per_anchor", True, dict(estimator="easy"), "none", SMALL),
    ("floor_binds", "shared", False, dict(tau_plus=0.7), "none", SMALL),
]


@pytest.mark.parametrize("name,bank,labels,kw,reduction,budget", CROSS, ids=[c[0] for c in CROSS])
def test_float64_cross_values_and_gradients_match_reference(name, bank, labels, kw, reduction, budget):
    z1, z2, extra = problem(bank=bank, labels=labels, seed=20 + len(name))
    if name == "floor_binds":
        z2[:2] = z1[:2]  # a = 1/t: the floor M e^{-1/t} binds for these anchors (both directions)
    t = kw.pop("temperature", 0.5)
    call = dict(extra, reduction=reduction, layout="cross", **kw)
    n = z1.shape[0] * (1 if kw.get("symmetric", True) is False else 2)
    ct = None if reduction != "none" else np.random.default_rng(1).standard_normal(n)
    want_v, want_g = _reference(z1, z2, cotangent=ct, temperature=t, **call)
    with jax.enable_x64(True):
        value, grads = _jax_all(z1, z2, t, cotangent=ct, memory_budget=budget, **call)
    assert value.dtype == jnp.float64 and value.shape == want_v.shape
    assert_close(value, want_v, RTOL64, "value")
    for got, want, what in zip(grads[:3], want_g[:3], ("dz1", "dz2", "dnegatives")):
        if want is None:
            assert got is None, what
        else:
            assert_close(got, want, RTOL64, what)
    scale = _t_scale(t, kw.get("beta", 1.0), want_v) * (1.0 if ct is None else np.abs(ct).sum())
    assert abs(float(grads[3]) - want_g.temperature) <= RTOL64 * scale, (float(grads[3]), want_g.temperature)
    if name == "floor_binds":
        # the case exercises the floor (so d/dt's floor term, (d loss/d log floor)(1/t^2), was compared above):
        # anchor 0 (a = 1/t, M = B - 1 + K = 8 candidates besides its positive) has loss softplus(log M - 2/t)
        np.testing.assert_allclose(value[0], np.logaddexp(0.0, math.log(8) - 2 / t), rtol=1e-12)


def test_symmetric_easy_cross_is_clips_loss_and_one_way_with_a_bank_is_mnrl():
    """estimator="easy": the symmetric cross loss is CLIP's (mean of the two cross-entropies with targets
    arange(B)); one-way with a shared bank is MultipleNegativesRankingLoss with scale 1/t and hard-negative columns.
    Both written here with log_softmax, differentiated by JAX's autodiff, value and gradients."""
    z1, z2, kw = problem(B=6, d=4, K=3, bank="shared", seed=30)
    t = 0.2

    def unit(z):
        return z / jnp.linalg.norm(z, axis=1, keepdims=True)

    def clip(a, b):
        logits = unit(a) @ unit(b).T / t
        i = jnp.arange(a.shape[0])
        ce = lambda lg: -jnp.mean(jax.nn.log_softmax(lg, axis=1)[i, i])  # noqa: E731
        return (ce(logits) + ce(logits.T)) / 2

    def mnrl(a, b, n):
        logits = jnp.concatenate([unit(a) @ unit(b).T, unit(a) @ unit(n).T], axis=1) / t
        i = jnp.arange(a.shape[0])
        return -jnp.mean(jax.nn.log_softmax(logits, axis=1)[i, i])

    def ours(a, b, n, symmetric):
        return hardneg_jax.hcl_loss(a, b, negatives=n, temperature=t, estimator="easy", layout="cross",
                                    symmetric=symmetric, memory_budget=SMALL)

    with jax.enable_x64(True):
        want = jax.jit(jax.value_and_grad(clip, argnums=(0, 1)))(z1, z2)
        got = jax.jit(jax.value_and_grad(lambda a, b: ours(a, b, None, True), argnums=(0, 1)))(z1, z2)
        want2 = jax.jit(jax.value_and_grad(mnrl, argnums=(0, 1, 2)))(z1, z2, kw["negatives"])
        got2 = jax.jit(jax.value_and_grad(lambda a, b, n: ours(a, b, n, False), argnums=(0, 1, 2)))(
            z1, z2, kw["negatives"])
    for (wv, wg), (gv, gg), what in ((want, got, "CLIP"), (want2, got2, "MNRL")):
        assert_close(gv, wv, RTOL64, what)
        for a, b in zip(gg, wg):
            assert_close(a, b, RTOL64, what + " gradient")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_lower_precision_cross(dtype):
    z1, z2, kw = problem(B=6, d=4, bank="shared", labels=True, seed=31)
    jdt = jnp.dtype(dtype)
    # the reference sees exactly the rounded inputs the backend sees (labels are integers: unchanged)
    r = lambda x: np.asarray(jnp.asarray(x, jdt), np.float64)  # noqa: E731
    want_v, want_g = _reference(r(z1), r(z2), negatives=r(kw["negatives"]), labels=kw["labels"],
                                negative_labels=kw["negative_labels"], layout="cross")
    value, grads = _jax_all(z1, z2, 0.5, dtype=jdt, layout="cross", memory_budget=SMALL, **kw)
    assert value.dtype == jdt and all(g.dtype == jdt for g in grads)
    # computed in float32 (~1e-6 relative for these well-conditioned inputs), then rounded once to the output
    # dtype: half an ulp of that dtype, doubled for the float32 part (as tests/test_jax_values.py)
    rtol = 2 * float(jnp.finfo(jdt).eps) if dtype != "float32" else 1e-5
    assert_close(value, want_v, rtol, "value")
    for got, want, what in zip(grads, (*want_g[:3], want_g.temperature), ("dz1", "dz2", "dneg", "dt")):
        # d/dt sums terms of size ~(1 + beta)/t^2 that cancel: its error is relative to that scale
        scale = _t_scale(0.5, 1.0, want_v) if what == "dt" else None
        if scale is None:
            assert_close(got, want, rtol, what)
        else:
            assert abs(float(got) - want) <= rtol * scale, (what, float(got), want)


# ---------------------------------------------------------------------------------------------------------
# The temperature as a differentiable value: jit and vmap, every layout.

LAYOUTS = [
    ("in_batch", None, {}),
    ("bank_shared", "shared", {}),
    ("bank_per_anchor", "per_anchor", {}),
    ("cross_shared", "shared", dict(layout="cross")),
    ("cross_one_way", None, dict(layout="cross", symmetric=False)),
]


@pytest.mark.parametrize("name,bank,kw", LAYOUTS, ids=[c[0] for c in LAYOUTS])
def test_temperature_gradient_under_jit_and_vmap_matches_reference(name, bank, kw):
    P = 3
    temps = np.array([0.5, 0.1, 0.8])  # problem 2: two aligned pairs put anchors on the clamp's floor
    data = [problem(B=5, d=3, bank=bank, labels=True, seed=40 + p) for p in range(P)]
    data[2][1][:2] = data[2][0][:2]
    z1 = np.stack([d_[0] for d_ in data])
    z2 = np.stack([d_[1] for d_ in data])
    ex = {k: np.stack([d_[2][k] for d_ in data]) for k in data[0][2]}
    hp = dict(tau_plus=0.7 if bank is None else 0.4)

    def loss(a, b, t, e):
        return hardneg_jax.hcl_loss(a, b, temperature=t, memory_budget=SMALL, **hp, **kw, **e)

    with jax.enable_x64(True):
        vg = jax.jit(jax.vmap(jax.value_and_grad(loss, argnums=(0, 2))))
        values, (g1, gt) = vg(z1, z2, temps, ex)
    for p in range(P):
        want_v, want_g = _reference(z1[p], z2[p], temperature=float(temps[p]), **hp, **kw,
                                    **{k: v[p] for k, v in ex.items()})
        assert_close(values[p], want_v, RTOL64, f"value {p}")
        assert_close(g1[p], want_g.z1, RTOL64, f"dz1 {p}")
        assert abs(float(gt[p]) - want_g.temperature) <= RTOL64 * _t_scale(temps[p], 1.0, want_v), (
            p, float(gt[p]), want_g.temperature)


def test_learnable_log_temperature_in_a_jitted_step_and_a_python_float_compiles_nothing_new():
    """A CLIP-style learnable log t: one jitted program for every value; d/d log t = t d/dt (chain rule)."""
    z1, z2, _ = problem(B=6, d=4, seed=50)
    traces = []

    @jax.jit
    def step(a, b, log_t):
        traces.append(None)
        return jax.value_and_grad(lambda lt: hardneg_jax.hcl_loss(a, b, temperature=jnp.exp(lt), layout="cross"))(
            log_t)

    with jax.enable_x64(True):
        for t in (0.5, 0.07, 1.0):
            v, g = step(z1, z2, math.log(t))
            want_v, want_g = _reference(z1, z2, temperature=t, layout="cross")
            assert_close(v, want_v, RTOL64, "value")
            assert abs(float(g) - t * want_g.temperature) <= RTOL64 * t * _t_scale(t, 1.0, want_v)
    assert len(traces) == 1


def test_array_temperature_out_of_range_gives_nan_loss_and_gradients():
    """A traced temperature's value cannot be validated: t <= 0, NaN, inf (or 1/t = inf) give NaN everywhere."""
    z1, z2, kw = problem(B=5, d=3, bank="per_anchor", seed=51)
    args = [jnp.asarray(x, jnp.float32) for x in (z1, z2, kw["negatives"])]

    @jax.jit
    def vg(a, b, n, t):
        f = lambda a, b, n, t: hardneg_jax.hcl_loss(a, b, negatives=n, temperature=t, layout="cross")  # noqa: E731
        return jax.value_and_grad(f, argnums=(0, 1, 2, 3))(a, b, n, t)

    for t in (0.0, -0.5, math.nan, math.inf, -math.inf, 1e-45):  # 1e-45: a float32 subnormal, 1/t = inf
        v, g = vg(*args, jnp.float32(t))
        assert np.isnan(v), t
        assert all(np.isnan(np.asarray(x)).all() for x in g), t
    v, g = vg(*args, jnp.float32(0.5))  # the same program at a valid value
    assert np.isfinite(v) and all(np.isfinite(np.asarray(x)).all() for x in g)
    # a concrete (not traced) JAX array is a tensor temperature too: not range-checked, NaN
    assert np.isnan(hardneg_jax.hcl_loss(*args[:2], temperature=jnp.float32(-1.0)))


def _scalar_isfinite_count(closed_jaxpr) -> int:
    """is_finite applied to a 0-d value anywhere in the program (the array temperature's NaN rule)."""
    count = 0

    def visit(jaxpr):
        nonlocal count
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "is_finite" and eqn.invars[0].aval.shape == ():
                count += 1
            for p in eqn.params.values():
                for sub in p if isinstance(p, (tuple, list)) else (p,):
                    if hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
                        visit(sub.jaxpr)
                    elif hasattr(sub, "eqns"):
                        visit(sub)

    visit(closed_jaxpr.jaxpr)
    return count


@pytest.mark.parametrize("kw", [{}, dict(layout="cross")], ids=["in_batch", "cross"])
def test_python_float_temperature_adds_no_check_to_the_program(kw):
    # A Python float is validated at trace time; only an array temperature carries the NaN rule into the program.
    z = jnp.ones((4, 3), jnp.float32)

    def program(t):
        return jax.make_jaxpr(jax.value_and_grad(lambda a: hardneg_jax.hcl_loss(a, a[::-1], temperature=t, **kw)))(z)

    assert _scalar_isfinite_count(program(0.5)) == 0
    traced = jax.make_jaxpr(jax.value_and_grad(
        lambda a, t: hardneg_jax.hcl_loss(a, a[::-1], temperature=t, **kw), argnums=(0, 1)))(z, jnp.float32(0.5))
    assert _scalar_isfinite_count(traced) >= 1


# ---------------------------------------------------------------------------------------------------------
# Errors: the reference's exception type and message (eagerly and under jit).

Z = np.ones((3, 2), np.float32)
N = np.ones((4, 2), np.float32)
BAD = [
    dict(layout="clip"),
    dict(layout=3),
    dict(layout="in_batch", negatives=N),
    dict(layout="bank"),
    dict(symmetric=1),
    dict(symmetric=False),
    dict(layout="bank", negatives=N, symmetric=False),
    dict(layout="cross", z1=np.ones((1, 2), np.float32), z2=np.ones((1, 2), np.float32)),
    dict(layout="cross", negatives=N, labels=np.zeros(3, np.int32)),
    dict(layout="cross", negatives=N, labels=np.zeros(2, np.int32), negative_labels=np.zeros(4, np.int32)),
    dict(layout="cross", negatives=np.ones((3, 4, 3), np.float32)),
    dict(layout="cross", temperature=0.0),
]


@pytest.mark.parametrize("bad", BAD, ids=[f"{i}-" + ",".join(b) for i, b in enumerate(BAD)])
def test_cross_errors_have_the_reference_type_and_message(bad):
    kw = dict(bad)
    z1, z2 = kw.pop("z1", Z), kw.pop("z2", Z)
    with pytest.raises((TypeError, ValueError)) as ref:
        hardneg.hcl_loss(z1, z2, **kw)
    with pytest.raises(ref.type) as got:
        hardneg_jax.hcl_loss(z1, z2, **kw)
    assert str(got.value) == str(ref.value)
    with pytest.raises(ref.type, match="^" + re.escape(str(ref.value))):
        jax.jit(lambda a, b: hardneg_jax.hcl_loss(a, b, **kw))(z1, z2)


@pytest.mark.parametrize("t", [jnp.ones(3), jnp.ones((1, 1)), jnp.asarray(2, jnp.int32), jnp.asarray(True)],
                         ids=["shape_3", "shape_1x1", "int32", "bool"])
def test_array_temperature_must_be_a_floating_scalar(t):
    with pytest.raises((TypeError, ValueError)) as ref:
        check_temperature_tensor(tuple(t.shape), jnp.dtype(t.dtype).name)
    with pytest.raises(ref.type) as got:
        hardneg_jax.hcl_loss(Z, Z, temperature=t)
    assert str(got.value) == str(ref.value)
    with pytest.raises(ref.type, match="^" + re.escape(str(ref.value))):  # traced: the same check at trace time
        jax.jit(lambda tt: hardneg_jax.hcl_loss(Z, Z, temperature=tt, layout="cross"))(t)


@pytest.mark.parametrize("estimator", ["hard", "easy"])
def test_naive_clip_style_baseline_computes_the_same_objective(estimator):
    # The benchmark's baseline (hardneg.bench.naive_jax.hcl_cross_loss: two full B x B logit matrices, raw exp,
    # autodiff) must compute what hcl_loss(layout="cross") computes, or the comparison means nothing.
    from hardneg.bench import naive_jax

    z1, z2, _ = problem(B=6, d=4, seed=60)
    want_v, want_g = _reference(z1, z2, layout="cross", estimator=estimator)
    with jax.enable_x64(True):
        v, g = naive_jax.cross_value_and_grad(z1, z2, 0.5, 1.0, 0.1, estimator=estimator)
    # raw exp of |s| <= 2 and log of sums: a few ulps, no cancellation at these well-conditioned inputs
    assert_close(v, want_v, RTOL64, "value")
    assert_close(g[0], want_g.z1, RTOL64, "dz1")
    assert_close(g[1], want_g.z2, RTOL64, "dz2")
