"""hardneg_jax against the NumPy reference: values and gradients over every feature, the edges of spec
section 6, the dtype policy and the error contract.

Float64 comparisons run under ``jax.enable_x64(True)`` (a context: the global flag stays off for the other
tests). Several calls use a tiny ``memory_budget`` so that the anchors are walked in several row blocks,
the last one overlapping its predecessor (the path every real batch takes).
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from jax_util import RTOL64, assert_close, jax_value_and_grads, problem, reference

import hardneg

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

import hardneg_jax  # noqa: E402

SMALL = 600  # bytes: 2-3 anchor rows per block for B = 5 (see hardneg_jax.blocks.rows_per_block)

FEATURES = [
    # (id, bank, labels, keyword arguments, reduction, memory budget)
    ("default", None, False, {}, "mean", SMALL),
    ("debiased", None, False, dict(beta=0.0), "sum", SMALL),
    ("easy", None, False, dict(estimator="easy"), "none", SMALL),
    ("beta_inf", None, False, dict(beta=math.inf), "mean", SMALL),
    ("clamp_off", None, False, dict(clamp=False, tau_plus=0.3), "none", SMALL),
    ("unnormalized", None, False, dict(normalize=False, temperature=2.0), "sum", SMALL),
    ("labels_sharp", None, True, dict(temperature=0.05, beta=6.0), "none", SMALL),
    ("shared", "shared", False, {}, "mean", None),
    ("shared_labels", "shared", True, dict(tau_plus=0.2), "none", SMALL),
    ("per_anchor", "per_anchor", False, dict(beta=0.5), "sum", SMALL),
    ("per_anchor_labels_inf", "per_anchor", True, dict(beta=math.inf), "mean", SMALL),
]


def _cotangent(reduction, n, seed=1):
    return None if reduction != "none" else np.random.default_rng(seed).standard_normal(n)


@pytest.mark.parametrize("name,bank,labels,kw,reduction,budget", FEATURES, ids=[f[0] for f in FEATURES])
def test_float64_values_and_gradients_match_reference(name, bank, labels, kw, reduction, budget):
    z1, z2, extra = problem(bank=bank, labels=labels, seed=len(name))
    call = dict(extra, reduction=reduction, **kw)
    n = z1.shape[0] * (1 if bank else 2)
    ct = _cotangent(reduction, n)
    want_v, want_g = reference(z1, z2, cotangent=ct, **call)
    with jax.enable_x64(True):
        got_v, got_g, (raw_v, raw_g) = jax_value_and_grads(z1, z2, cotangent=ct, memory_budget=budget, **call)
    assert raw_v.dtype == jnp.float64 and all(g is None or g.dtype == jnp.float64 for g in raw_g)
    assert_close(got_v, want_v, RTOL64, "value")
    for got, want, what in zip(got_g, want_g, ("dz1", "dz2", "dnegatives")):
        if want is None:
            assert got is None
        else:
            assert_close(got, want, RTOL64, what)


def _edge(z1, z2, **kw):
    ct = _cotangent(kw.get("reduction", "mean"), z1.shape[0] * (1 if "negatives" in kw else 2))
    want_v, want_g = reference(z1, z2, cotangent=ct, **kw)
    with jax.enable_x64(True):
        got_v, got_g, _ = jax_value_and_grads(z1, z2, cotangent=ct, memory_budget=SMALL, **kw)
    assert_close(got_v, want_v, RTOL64, "value")
    for got, want in zip(got_g, want_g):
        if want is not None:
            assert_close(got, want, RTOL64, "grad")
    return got_v, got_g


def test_clamp_floor_binds_for_aligned_pairs_only():
    z1, z2, _ = problem(seed=3)
    z2[:2] = z1[:2]  # a = 1/t for pairs 0, 1: tau+ M e^a exceeds R, the unclamped Ng is negative -> floor
    v, _ = _edge(z1, z2, tau_plus=0.7, reduction="none")
    t, M = 0.5, 8
    floor_loss = np.logaddexp(0.0, math.log(M) - 1 / t - 1 / t)  # softplus(log M - 1/t - a) with a = 1/t
    np.testing.assert_allclose(v[[0, 1, 5, 6]], floor_loss, rtol=1e-12)  # both roles of pairs 0 and 1
    assert not np.any(np.isclose(v[[2, 3, 4]], floor_loss))


def test_anchor_without_negatives_has_zero_loss_and_gradient():
    z1, z2, kw = problem(bank="shared", labels=True, seed=4)
    kw["labels"] = np.array([7, 1, 2, 1, 2])
    kw["negative_labels"] = np.array([7, 7, 7, 7])  # anchor 0 shares its label with every bank row
    v, g = _edge(z1, z2, reduction="none", **kw)
    assert v[0] == 0.0 and np.all(g[0][0] == 0.0) and np.all(g[1][0] == 0.0)
    z1, z2, _ = problem(seed=5)
    v, g = _edge(z1, z2, labels=np.zeros(5, dtype=np.int64), reduction="mean")  # one class: nobody has negatives
    assert v == 0.0 and not np.any(g[0]) and not np.any(g[1])


def test_zero_rows_take_the_epsilon_branch():
    z1, z2, _ = problem(seed=6)
    z1[1] = 0.0
    _edge(z1, z2)
    z1[1] = 1e-13  # below eps: gradient g / eps (huge but finite)
    _, g = _edge(z1, z2)
    assert np.all(np.isfinite(g[0]))


def test_beta_inf_splits_the_gradient_over_exact_ties():
    z1, z2, _ = problem(B=6, seed=7)
    z1[2] = z1[1]
    z2[4] = z1[1]  # three identical rows: anchors see tied maxima
    _edge(z1, z2, beta=math.inf, reduction="none")  # (banks share this code: hardneg_jax.rows.block_rows)


def test_undefined_anchor_makes_every_gradient_nan():
    z1, z2, _ = problem(seed=8)
    z2[:] = z1  # a = 1/t: with tau+ = 0.9 and no clamp the denominator e^a + Ng is negative
    v, g = _edge(z1, z2, tau_plus=0.9, clamp=False, reduction="none")
    assert np.isnan(v).any() and all(np.isnan(x).all() for x in g if x is not None)
    v, g = _edge(z1, z2, tau_plus=0.9, clamp=False)
    assert np.isnan(v)


@pytest.mark.parametrize("where", ["z1", "z2", "negatives"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nonfinite_input_makes_everything_nan(where, bad):
    z1, z2, kw = problem(bank="shared", seed=9)
    arrays = dict(z1=z1, z2=z2, negatives=kw["negatives"])
    arrays[where][1, 0] = bad
    for reduction in ("mean", "none"):
        with jax.enable_x64(True):
            v, g, _ = jax_value_and_grads(arrays["z1"], arrays["z2"], negatives=arrays["negatives"],
                                          reduction=reduction)
        assert np.isnan(v).all() and all(np.isnan(x).all() for x in g)


@pytest.mark.parametrize(
    "dtype,bank", [("float32", None), ("float16", None), ("bfloat16", None), ("bfloat16", "per_anchor")]
)
def test_lower_precision_dtypes(dtype, bank):
    z1, z2, kw = problem(B=6, d=4, bank=bank, seed=10)
    jdt = jnp.dtype(dtype)
    # the reference sees exactly the rounded inputs the backend sees
    rounded = {k: np.asarray(jnp.asarray(v, jdt), np.float64) for k, v in dict(z1=z1, z2=z2, **kw).items()}
    want_v, want_g = reference(rounded.pop("z1"), rounded.pop("z2"), **rounded)
    got_v, got_g, (raw_v, raw_g) = jax_value_and_grads(z1, z2, dtype=jdt, memory_budget=SMALL, **kw)
    assert raw_v.dtype == jdt and all(g is None or g.dtype == jdt for g in raw_g)
    # computed in float32 (errors ~ 1e-6 relative for these well-conditioned inputs), then rounded once to
    # the output dtype: half an ulp of that dtype, doubled for the float32 part.
    rtol = 2 * float(jnp.finfo(jdt).eps) if dtype != "float32" else 1e-5
    assert_close(got_v, want_v, rtol, "value")
    for got, want in zip(got_g, want_g):
        if want is not None:
            assert_close(got, want, rtol, "grad")


def test_float16_stays_finite_where_float32_would_overflow_a_naive_exp():
    # t = 0.02, beta = 1: e^{(1+beta) s} = e^{100} overflows float32 (and float16 much sooner); log space does not.
    z1, z2, _ = problem(B=8, d=4, seed=11)
    v, g, _ = jax_value_and_grads(z1, z2, dtype=jnp.float16, temperature=0.02)
    assert np.isfinite(v) and all(np.isfinite(x).all() for x in g if x is not None)
    assert_close(v, reference(np.asarray(jnp.asarray(z1, jnp.float16), np.float64),
                              np.asarray(jnp.asarray(z2, jnp.float16), np.float64), temperature=0.02)[0], 2e-3)


def test_int64_labels_beyond_int32_keep_their_classes():
    # With x64 off JAX would truncate int64 labels; equality must survive (2**40 and 2**40 + 2**32 differ).
    z1, z2, _ = problem(seed=12)
    labels = np.array([2**40, 2**40 + 2**32, 2**40, 5, 2**40 + 2**32], dtype=np.int64)
    got = hardneg_jax.hcl_loss(jnp.asarray(z1, jnp.float32), jnp.asarray(z2, jnp.float32), labels=labels)
    np.testing.assert_allclose(got, hardneg.hcl_loss(z1, z2, labels=labels), rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# Errors: the reference's exception type and message, raised at trace time (also under jit).

Z = np.ones((3, 2), np.float32)
BAD = [
    dict(temperature=0.0),
    dict(temperature="0.5"),
    dict(temperature=math.inf),
    dict(beta=-1.0),
    dict(beta=math.nan),
    dict(tau_plus=1.0),
    dict(estimator="hardest"),
    dict(reduction="avg"),
    dict(clamp=1),
    dict(normalize="yes"),
    dict(z1=np.ones(3, np.float32)),
    dict(z2=np.ones((4, 2), np.float32)),
    dict(z1=np.ones((1, 2), np.float32), z2=np.ones((1, 2), np.float32)),
    dict(z1=np.ones((3, 2), np.int64), z2=np.ones((3, 2), np.int64)),
    dict(z2=np.ones((3, 2), np.float16)),
    dict(negatives=np.ones((4, 3), np.float32)),
    dict(negatives=np.ones((4, 2), np.float16)),
    dict(labels=np.zeros(4, np.int32)),
    dict(labels=np.zeros(3, np.float32)),
    dict(negative_labels=np.zeros(3, np.int32)),
    dict(negatives=np.ones((4, 2), np.float32), labels=np.zeros(3, np.int32)),
    dict(negatives=np.ones((4, 2), np.float32), labels=np.zeros(3, np.int32), negative_labels=np.zeros(5, np.int32)),
]


@pytest.mark.parametrize("bad", BAD, ids=[",".join(b) for b in BAD])
def test_errors_have_the_reference_type_and_message(bad):
    kw = dict(bad)
    z1, z2 = kw.pop("z1", Z), kw.pop("z2", Z)
    with pytest.raises((TypeError, ValueError)) as ref:
        hardneg.hcl_loss(z1, z2, **kw)
    with pytest.raises(ref.type) as got:
        hardneg_jax.hcl_loss(z1, z2, **kw)
    assert str(got.value) == str(ref.value)
    # Under jit the arrays arrive with JAX's canonical dtypes (int64 -> int32 with x64 off), and JAX appends
    # a note about its filtered traceback after the message.
    canon = [np.asarray(jnp.asarray(z)) for z in (z1, z2)]
    with pytest.raises(ref.type) as ref_jit:
        hardneg.hcl_loss(*canon, **kw)
    with pytest.raises(ref.type, match="^" + re.escape(str(ref_jit.value))):
        jax.jit(lambda a, b: hardneg_jax.hcl_loss(a, b, **kw))(*canon)


@pytest.mark.parametrize(
    "kw,exc,msg",
    [
        (dict(axis_name="batch"), ValueError, "axis_name='batch' is not a mapped axis here"),
    ],
)
def test_backend_extras_are_validated(kw, exc, msg):
    with pytest.raises(exc, match=re.escape(msg)):
        hardneg_jax.hcl_loss(Z, Z, **kw)


def test_traced_hyperparameter_must_be_a_scalar():
    # (an array temperature has the shared messages of hardneg.validation: tests/test_jax_cross.py)
    for name in ("beta", "tau_plus"):
        with pytest.raises(TypeError, match=f"{name} must be a real scalar; got a traced array of shape"):
            jax.jit(lambda v: hardneg_jax.hcl_loss(Z, Z, **{name: v}))(jnp.ones(2))
