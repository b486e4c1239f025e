"""Tests of the NumPy reference that do not trust it.

Oracles: a literal transliteration of the released arithmetic (tests/literal.py) in float64 and in
mpmath at 50 digits, mpmath derivatives, central finite differences, and closed-form special cases.
"""

from __future__ import annotations

import math
import subprocess
import sys

import mpmath
import numpy as np
import pytest

import hardneg
from hardneg import hcl_loss, hcl_loss_and_grad

from literal import MP, literal_loss, literal_losses

EPS64 = np.finfo(np.float64).eps


def pairs(B, d, seed, scale=1.0, noise=None):
    rng = np.random.default_rng(seed)
    z1 = rng.normal(size=(B, d)) * scale
    z2 = rng.normal(size=(B, d)) * scale if noise is None else z1 + noise * rng.normal(size=(B, d))
    return z1, z2


PARAMS = [
    dict(),
    dict(beta=0.0),
    dict(beta=0.0, tau_plus=0.0),
    dict(estimator="easy"),
    dict(beta=0.5, tau_plus=0.05, temperature=0.2),
    dict(beta=2.0, tau_plus=0.3, temperature=1.0),
    dict(beta=6.0, tau_plus=0.1, temperature=0.1),
    dict(beta=math.inf, tau_plus=0.1),
    dict(tau_plus=0.9, temperature=0.5),  # clamp binds for most anchors
    dict(clamp=False, tau_plus=0.02),
    dict(normalize=False, temperature=2.0),
]


def _conditioning(kw):
    # The log-space and raw-exp evaluations both round each logit (1+beta)*s with |s| <= 1/t; the relative
    # error of the loss is bounded by a few eps times the largest exponent that enters a sum.
    t = kw.get("temperature", 0.5)
    b = kw.get("beta", 1.0)
    b = 0.0 if math.isinf(b) else b
    return (2.0 + b) / t + 10.0


# ---------------------------------------------------------------------------------------------- values


@pytest.mark.parametrize("kw", PARAMS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "defaults")
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_literal_float64(kw, reduction):
    z1, z2 = pairs(6, 4, seed=1)
    want = np.array(literal_loss(z1.tolist(), z2.tolist(), reduction=reduction, **kw), dtype=np.float64)
    got = hcl_loss(z1, z2, reduction=reduction, **kw)
    assert np.shape(got) == np.shape(want)
    # The literal evaluates -log(pos / (pos + Ng)) from rounded exponentials: its error is absolute
    # (log of a ratio off by a relative c*eps), so small losses get an absolute bound as well.
    tol = 50 * EPS64 * _conditioning(kw)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def _mp_case(B, d, seed, **kw):
    z1, z2 = pairs(B, d, seed)
    with mpmath.workdps(50):
        want = literal_losses(z1.tolist(), z2.tolist(), F=MP, **kw)
        return z1, z2, [float(x) for x in want]


MP_CASES = [
    (3, 2, 0, dict()),
    (3, 3, 1, dict(beta=0.0)),
    (4, 2, 2, dict(estimator="easy")),
    (3, 2, 3, dict(temperature=0.005, beta=10.0)),  # exponents ~ 2200: raw exp overflows float64
    (3, 2, 4, dict(temperature=0.01, beta=1.0, tau_plus=0.5)),
    (3, 4, 5, dict(temperature=10.0, beta=0.5)),
    (3, 2, 6, dict(temperature=0.05, beta=math.inf)),
    (2, 3, 7, dict(temperature=0.02, beta=3.0, tau_plus=0.0)),
    (4, 3, 8, dict(labels=[0, 1, 0, 2])),
]


@pytest.mark.parametrize("B,d,seed,kw", MP_CASES)
def test_matches_mpmath_50_digits(B, d, seed, kw):
    z1, z2, want = _mp_case(B, d, seed, **kw)
    got = hcl_loss(z1, z2, reduction="none", **kw)
    # 1e-12 relative, the bar; absolute floor for losses that are ~0 (clamped anchors far from the
    # negatives), where relative error is meaningless: the loss is log1p of a tiny ratio.
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-300)
    assert np.isfinite(got).all()


def test_extreme_temperature_is_finite_where_raw_formula_overflows():
    z1, z2 = pairs(8, 5, seed=3)
    v, g = hcl_loss_and_grad(z1, z2, temperature=0.005, beta=10.0)
    assert np.isfinite(v) and np.isfinite(g.z1).all() and np.isfinite(g.z2).all()
    with pytest.raises(OverflowError):
        literal_loss(z1.tolist(), z2.tolist(), temperature=0.005, beta=10.0)


# ------------------------------------------------------------------------------------------- gradients


def _fd(f, x, h):
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        g[idx] = (f(xp) - f(xm)) / (2 * h)
    return g


def _kink_distance(z1, z2, kw):
    """min over anchors of |Ng_unclamped / floor - 1| (in-batch, hard estimator): distance to the clamp's kink."""
    t, beta, tau = kw.get("temperature", 0.5), kw.get("beta", 1.0), kw.get("tau_plus", 0.1)
    U = np.concatenate([z1, z2])
    U = U / np.linalg.norm(U, axis=1, keepdims=True)
    S = U @ U.T / t
    n, B = len(U), len(z1)
    out = []
    for i in range(n):
        p = (i + B) % n
        s = np.delete(S[i], [i, p])
        M = s.size
        R = M * np.sum(np.exp((1 + beta) * s)) / np.sum(np.exp(beta * s))
        ng = (R - tau * M * np.exp(S[i, p])) / (1 - tau)
        out.append(abs(ng / (M * np.exp(-1 / t)) - 1))
    return min(out)


GRAD_PARAMS = [p for p in PARAMS if not math.isinf(p.get("beta", 1.0))] + [
    dict(labels=np.array([0, 1, 0, 2, 1, 3])),
    dict(reduction="sum", tau_plus=0.4),
]


@pytest.mark.parametrize("kw", GRAD_PARAMS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "defaults")
def test_gradient_matches_central_differences(kw):
    z1, z2 = pairs(6, 4, seed=11)
    _, g = hcl_loss_and_grad(z1, z2, **kw)
    # Central differences: truncation error O(h^2 * f''') and rounding error O(eps * |f| / h); h = 1e-5
    # balances them at ~1e-10 for O(1)-conditioned losses; scale by the conditioning (max logit 1/t etc.).
    h = 1e-5
    c = _conditioning(kw)
    tol = 1e-8 * c**3
    f1 = lambda x: hcl_loss(x, z2, **kw)  # noqa: E731
    f2 = lambda x: hcl_loss(z1, x, **kw)  # noqa: E731
    np.testing.assert_allclose(g.z1, _fd(f1, z1, h), atol=tol, rtol=0)
    np.testing.assert_allclose(g.z2, _fd(f2, z2, h), atol=tol, rtol=0)


def _mp_grad(z1, z2, which, kw):
    """d(mean loss)/dz by mpmath differentiation of the literal formula at 50 digits."""
    base = [z1.tolist(), z2.tolist()]
    out = np.zeros_like(z1 if which == 0 else z2)
    with mpmath.workdps(50):
        for idx in np.ndindex(out.shape):

            def f(x, idx=idx):
                arrs = [[[mpmath.mpf(v) for v in r] for r in base[0]], [[mpmath.mpf(v) for v in r] for r in base[1]]]
                arrs[which][idx[0]][idx[1]] = x
                return literal_loss(arrs[0], arrs[1], F=MP, **kw)

            out[idx] = float(mpmath.diff(f, mpmath.mpf(base[which][idx[0]][idx[1]])))
    return out


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(temperature=0.05, beta=3.0),
        dict(estimator="easy", temperature=0.1),
        dict(beta=0.0, tau_plus=0.2, clamp=False),
        dict(temperature=0.02, beta=0.5, tau_plus=0.05),
    ],
    ids=str,
)
def test_gradient_matches_mpmath(kw):
    z1, z2 = pairs(3, 2, seed=21)
    if kw.get("clamp", True) and kw.get("estimator") != "easy":
        assert _kink_distance(z1, z2, kw) > 1e-6  # a derivative exists: every anchor is off the kink
    _, g = hcl_loss_and_grad(z1, z2, **kw)
    for which, got in ((0, g.z1), (1, g.z2)):
        want = _mp_grad(z1, z2, which, kw)
        # float64 closed form vs exact derivative: rounding of logits ~ eps/t amplified by the softmax
        # weights' sensitivity (1+beta)/t; 1e-12 absolute on O(1/t) gradients leaves 10x margin.
        scale = max(1.0, np.abs(want).max())
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * scale * _conditioning(kw))


@pytest.mark.parametrize("shape", ["shared", "per_anchor"])
@pytest.mark.parametrize("kw", [dict(), dict(beta=0.0, tau_plus=0.3), dict(estimator="easy"), dict(labels=True)])
def test_bank_gradient_matches_central_differences(shape, kw):
    rng = np.random.default_rng(5)
    B, K, d = 4, 5, 3
    z1, z2 = pairs(B, d, seed=7)
    bank = rng.normal(size=(K, d) if shape == "shared" else (B, K, d))
    kw = dict(kw)
    if kw.pop("labels", False):
        kw["labels"] = np.array([0, 1, 2, 1])
        kw["negative_labels"] = rng.integers(0, 3, size=bank.shape[:-1])
    _, g = hcl_loss_and_grad(z1, z2, negatives=bank, **kw)
    tol = 1e-8 * _conditioning(kw) ** 3
    np.testing.assert_allclose(g.negatives, _fd(lambda x: hcl_loss(z1, z2, negatives=x, **kw), bank, 1e-5), atol=tol)
    np.testing.assert_allclose(g.z1, _fd(lambda x: hcl_loss(x, z2, negatives=bank, **kw), z1, 1e-5), atol=tol)
    np.testing.assert_allclose(g.z2, _fd(lambda x: hcl_loss(z1, x, negatives=bank, **kw), z2, 1e-5), atol=tol)


def test_bank_values_match_literal():
    rng = np.random.default_rng(9)
    B, K, d = 4, 6, 3
    z1, z2 = pairs(B, d, seed=8)
    for bank in (rng.normal(size=(K, d)), rng.normal(size=(B, K, d))):
        nl = rng.integers(0, 3, size=bank.shape[:-1])
        for kw in (dict(), dict(beta=math.inf), dict(labels=np.array([0, 1, 2, 0]), negative_labels=nl)):
            want = literal_loss(z1.tolist(), z2.tolist(), negatives=bank.tolist(), reduction="none", **kw)
            got = hcl_loss(z1, z2, negatives=bank, reduction="none", **kw)
            np.testing.assert_allclose(got, want, rtol=1e-13 * _conditioning(kw))


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_cotangent_is_a_vector_jacobian_product(reduction):
    z1, z2 = pairs(5, 3, seed=4)
    cot = np.linspace(-1.0, 2.0, 10) if reduction == "none" else 2.5
    _, g = hcl_loss_and_grad(z1, z2, reduction=reduction, cotangent=cot)
    f = lambda x: np.sum(np.asarray(hcl_loss(x, z2, reduction=reduction)) * cot)  # noqa: E731
    np.testing.assert_allclose(g.z1, _fd(f, z1, 1e-5), atol=1e-7)


def test_clamp_gradient_on_the_floor_only_flows_through_the_positive():
    # tau+ = 0.9 with near-identical pairs: Ng_unclamped < 0, every anchor on the floor, Ng constant.
    z1, z2 = pairs(5, 3, seed=2, noise=1e-2)
    v_c, g_c = hcl_loss_and_grad(z1, z2, tau_plus=0.9, reduction="none", cotangent=np.eye(10)[0])
    # Anchor 0's loss on the floor is softplus(log(M e^{-1/t}) - a_0): depends only on z1[0], z2[0].
    nonzero = np.flatnonzero(np.abs(g_c.z1).sum(1) + np.abs(g_c.z2).sum(1))
    assert set(nonzero) == {0}
    u1 = z1[0] / np.linalg.norm(z1[0])
    u2 = z2[0] / np.linalg.norm(z2[0])
    a = u1 @ u2 / 0.5
    assert v_c[0] == pytest.approx(np.logaddexp(math.log(8) - 2.0, a) - a, rel=1e-14)


# ------------------------------------------------------------------------------------- special cases


def test_beta0_is_the_debiased_loss():
    # DCL (Chuang et al. 2020): Ng = max((sum_j e^s - tau+ N pos) / (1 - tau+), N e^{-1/t}).
    z1, z2 = pairs(7, 5, seed=12)
    t, tau = 0.3, 0.15
    U = np.concatenate([z1, z2]) / np.linalg.norm(np.concatenate([z1, z2]), axis=1, keepdims=True)
    B = 7
    sim = np.exp(U @ U.T / t)
    losses = []
    for i in range(2 * B):
        p = (i + B) % (2 * B)
        neg = np.delete(sim[i], [i, p])
        N = neg.size
        Ng = max((neg.sum() - tau * N * sim[i, p]) / (1 - tau), N * math.exp(-1 / t))
        losses.append(-math.log(sim[i, p] / (sim[i, p] + Ng)))
    assert hcl_loss(z1, z2, beta=0.0, tau_plus=tau, temperature=t) == pytest.approx(np.mean(losses), rel=1e-13)


def test_beta0_tau0_is_ntxent_cross_entropy():
    # NT-Xent as cross-entropy over logits with the anchor itself masked out (SimCLR's formulation).
    z1, z2 = pairs(6, 4, seed=13)
    t = 0.2
    U = np.concatenate([z1, z2])
    U = U / np.linalg.norm(U, axis=1, keepdims=True)
    logits = U @ U.T / t
    np.fill_diagonal(logits, -np.inf)
    n = logits.shape[0]
    target = (np.arange(n) + n // 2) % n
    lse = np.logaddexp.reduce(logits, axis=1)
    want = np.mean(lse - logits[np.arange(n), target])
    for kw in (dict(estimator="easy"), dict(beta=0.0, tau_plus=0.0), dict(beta=0.0, tau_plus=0.0, clamp=False)):
        assert hcl_loss(z1, z2, temperature=t, **kw) == pytest.approx(want, rel=1e-13)


def test_large_beta_tends_to_beta_inf():
    z1, z2 = pairs(6, 4, seed=14)
    inf_v, inf_g = hcl_loss_and_grad(z1, z2, beta=math.inf)
    gaps = []
    for beta in (10.0, 100.0, 1000.0, 1e4):
        v, g = hcl_loss_and_grad(z1, z2, beta=beta)
        gaps.append((abs(v - inf_v), np.abs(g.z1 - inf_g.z1).max()))
    # R_beta/R_inf -> 1 at rate ~ e^{-beta * gap}/... at worst ~ 1/beta: the errors shrink monotonically.
    assert all(a[0] >= b[0] for a, b in zip(gaps, gaps[1:]))
    assert gaps[-1][0] < 1e-3 and gaps[-1][1] < 1e-2


def test_beta_inf_gradient_splits_over_tied_maxima():
    # Duplicate a sample so several anchors have two exactly tied hardest negatives. At finite beta the two
    # share the weight equally (identical logits); beta = inf must be that limit, i.e. split evenly too.
    z1, z2 = pairs(4, 3, seed=15)
    z1[2] = z1[1]
    kw = dict(tau_plus=0.0, clamp=False, normalize=False, temperature=1.0)
    v_inf, g_inf = hcl_loss_and_grad(z1, z2, beta=math.inf, **kw)
    v_big, g_big = hcl_loss_and_grad(z1, z2, beta=200.0, **kw)
    # Away from the ties the finite-beta weights differ from the limit by ~e^{-beta * gap}; the logit gaps
    # here are > 0.1, so at beta = 200 the difference is < e^{-20}.
    assert v_big == pytest.approx(v_inf, abs=1e-7)
    np.testing.assert_allclose(g_big.z1, g_inf.z1, atol=1e-7)
    np.testing.assert_allclose(g_big.z2, g_inf.z2, atol=1e-7)


# -------------------------------------------------------------------------------------- invariances


def test_pair_permutation_permutes_per_anchor_losses():
    z1, z2 = pairs(6, 4, seed=16)
    perm = np.random.default_rng(0).permutation(6)
    a = hcl_loss(z1, z2, reduction="none")
    b = hcl_loss(z1[perm], z2[perm], reduction="none")
    np.testing.assert_allclose(b, np.concatenate([a[:6][perm], a[6:][perm]]), rtol=1e-13)
    _, ga = hcl_loss_and_grad(z1, z2)
    _, gb = hcl_loss_and_grad(z1[perm], z2[perm])
    np.testing.assert_allclose(gb.z1, ga.z1[perm], rtol=1e-12, atol=1e-15)


def test_row_rescaling_is_invisible_under_normalize():
    z1, z2 = pairs(5, 4, seed=17)
    scale = np.array([1e-8, 3.0, 1e8, 1e150, 1e-11])[:, None]  # norms stay >= eps = 1e-12
    np.testing.assert_allclose(hcl_loss(z1 * scale, z2), hcl_loss(z1, z2), rtol=1e-13)
    # Gradients scale by 1/c (u = z/||z|| is homogeneous of degree 0).
    _, g = hcl_loss_and_grad(z1 * scale, z2)
    _, g0 = hcl_loss_and_grad(z1, z2)
    np.testing.assert_allclose(g.z1 * scale, g0.z1, rtol=1e-10, atol=1e-14)


def test_huge_rows_do_not_overflow_the_norm():
    z1, z2 = pairs(4, 3, seed=18)
    v = hcl_loss(z1 * 1e300, z2)
    assert np.isfinite(v) and v == pytest.approx(hcl_loss(z1, z2), rel=1e-13)


# ----------------------------------------------------------------------------------- defined edges


def test_anchor_without_negatives_has_zero_loss_and_gradient():
    z1, z2 = pairs(3, 2, seed=19)
    labels = np.array([7, 7, 7])
    v, g = hcl_loss_and_grad(z1, z2, labels=labels, reduction="none")
    assert np.all(v == 0.0) and np.all(g.z1 == 0.0) and np.all(g.z2 == 0.0)
    # Mixed: anchors of class 1 (one pair) keep negatives; the mean still divides by 2B.
    labels = np.array([0, 0, 1])
    per = hcl_loss(z1, z2, labels=labels, reduction="none")
    assert hcl_loss(z1, z2, labels=labels) == pytest.approx(per.sum() / 6, rel=1e-15)


def test_zero_rows_are_finite():
    z1, z2 = pairs(4, 3, seed=20)
    z1[1] = 0.0
    v, g = hcl_loss_and_grad(z1, z2)
    assert np.isfinite(v) and np.isfinite(g.z1).all()
    # u = 0: the zero row's similarities are all 0, so its gradient is g_u / eps (finite, possibly large).
    f = lambda x: hcl_loss(x, z2)  # noqa: E731
    np.testing.assert_allclose(g.z1[[0, 2, 3]], _fd(f, z1, 1e-6)[[0, 2, 3]], atol=1e-7)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_makes_every_output_nan(bad):
    z1, z2 = pairs(4, 3, seed=22)
    z2[1, 2] = bad
    v, g = hcl_loss_and_grad(z1, z2, reduction="none")
    assert v.shape == (8,) and np.isnan(v).all() and np.isnan(g.z1).all() and np.isnan(g.z2).all()


def test_clamp_false_with_nonpositive_denominator_is_nan():
    # Strong debiasing without the clamp: Ng_u <= -e^a for aligned pairs -> the log's argument <= 0.
    z1, z2 = pairs(6, 3, seed=23, noise=1e-3)
    v = hcl_loss(z1, z2, tau_plus=0.9, clamp=False, reduction="none")
    assert np.isnan(v).any()
    _, g = hcl_loss_and_grad(z1, z2, tau_plus=0.9, clamp=False)
    assert np.isnan(g.z1).all() and np.isnan(g.z2).all()
    # ... and where the denominator stays positive the value is defined and matches the literal formula.
    z1, z2 = pairs(6, 3, seed=24)
    kw = dict(tau_plus=0.05, clamp=False, temperature=1.0)
    with np.errstate(invalid="ignore"):
        want = np.array(literal_losses(z1.tolist(), z2.tolist(), **kw))
    got = hcl_loss(z1, z2, reduction="none", **kw)
    np.testing.assert_allclose(got[np.isfinite(want)], want[np.isfinite(want)], rtol=1e-12)


def test_reference_is_float64_for_any_input_dtype():
    z1, z2 = pairs(4, 3, seed=25)
    v32 = hcl_loss(z1.astype(np.float32), z2.astype(np.float32))
    assert isinstance(v32, np.floating) and v32.dtype == np.float64
    # Inputs are converted exactly: the float32 inputs' float64 value is what is evaluated.
    assert v32 == hcl_loss(z1.astype(np.float32).astype(np.float64), z2.astype(np.float32).astype(np.float64))


# ---------------------------------------------------------------------------------------------- errors

Z = np.ones((3, 2))
ERRORS = [
    (dict(z1=np.ones((1, 2)), z2=np.ones((1, 2))), ValueError, "one pair (B = 1) and no negatives"),
    (dict(temperature=0.0), ValueError, "temperature must be finite and > 0"),
    (dict(temperature=-1.0), ValueError, "temperature must be finite and > 0"),
    (dict(temperature=math.inf), ValueError, "temperature must be finite and > 0"),
    (dict(temperature=math.nan), ValueError, "temperature must be finite and > 0"),
    (dict(temperature=1e-320), ValueError, "1/temperature finite"),
    (dict(temperature="0.5"), TypeError, "temperature must be a real number"),
    (dict(tau_plus=1.0), ValueError, "tau_plus must satisfy 0 <= tau_plus < 1"),
    (dict(tau_plus=-0.1), ValueError, "tau_plus must satisfy 0 <= tau_plus < 1"),
    (dict(tau_plus=math.nan), ValueError, "tau_plus must satisfy 0 <= tau_plus < 1"),
    (dict(beta=-1.0), ValueError, "beta must be >= 0"),
    (dict(beta=math.nan), ValueError, "beta must be >= 0"),
    (dict(beta=True), TypeError, "beta must be a real number"),
    (dict(estimator="medium"), ValueError, "estimator must be one of 'hard', 'easy'; got 'medium'"),
    (dict(reduction="avg"), ValueError, "reduction must be one of 'mean', 'sum', 'none'; got 'avg'"),
    (dict(clamp=1), TypeError, "clamp must be a bool"),
    (dict(normalize="yes"), TypeError, "normalize must be a bool"),
    (dict(z1=np.ones(3), z2=np.ones(3)), ValueError, "z1 must be 2-D of shape (B, d); got shape (3,)"),
    (dict(z2=np.ones((3, 3))), ValueError, "z1 and z2 must have the same shape (B, d); got (3, 2) and (3, 3)"),
    (dict(z2=np.ones((4, 2))), ValueError, "z1 and z2 must have the same shape"),
    (dict(z1=np.ones((0, 2)), z2=np.ones((0, 2))), ValueError, "at least one row"),
    (dict(z1=np.ones((3, 0)), z2=np.ones((3, 0))), ValueError, "feature dimension d must be >= 1"),
    (dict(z1=np.ones((3, 2), dtype=np.int64), z2=np.ones((3, 2), dtype=np.int64)), TypeError, "floating dtype"),
    (dict(z2=np.ones((3, 2), dtype=np.float32)), TypeError, "z1 and z2 must have the same dtype"),
    (dict(labels=np.array([0, 1])), ValueError, "labels must have shape (B,) = (3,); got shape (2,)"),
    (dict(labels=np.zeros((3, 1), dtype=int)), ValueError, "labels must have shape (B,)"),
    (dict(labels=np.array([0.0, 1.0, 2.0])), TypeError, "labels must have an integer dtype"),
    (dict(negatives=np.ones((4, 3))), ValueError, "negatives must have shape (K, d)"),
    (dict(negatives=np.ones((2, 4, 2))), ValueError, "negatives must have shape (K, d)"),
    (dict(negatives=np.ones((0, 2))), ValueError, "at least one row (K >= 1)"),
    (dict(negatives=np.ones((4, 2), dtype=np.float32)), TypeError, "negatives must have the dtype of z1 and z2"),
    (dict(negatives=np.ones((4, 2)), labels=np.array([0, 1, 2])), ValueError, "require negative_labels"),
    (dict(negative_labels=np.array([0, 1])), ValueError, "only meaningful with a negatives bank"),
    (dict(negatives=np.ones((4, 2)), negative_labels=np.arange(4)), ValueError, "requires labels"),
    (
        dict(negatives=np.ones((4, 2)), labels=np.arange(3), negative_labels=np.arange(5)),
        ValueError,
        "negative_labels must have shape (4,)",
    ),
]


@pytest.mark.parametrize("kw,exc,msg", ERRORS, ids=[e[2][:40] for e in ERRORS])
@pytest.mark.parametrize("fn", [hcl_loss, hcl_loss_and_grad])
def test_documented_errors(fn, kw, exc, msg):
    kw = dict(kw)
    z1 = kw.pop("z1", Z)
    z2 = kw.pop("z2", Z)
    with pytest.raises(exc) as info:
        fn(z1, z2, **kw)
    assert msg in str(info.value)


def test_every_error_message_is_in_the_spec():
    # One place for each fact: the messages of hardneg.validation are those docs/spec.md §10 lists.
    import pathlib

    spec = (pathlib.Path(__file__).parents[1] / "docs" / "spec.md").read_text()
    for _, _, msg in ERRORS:
        head = msg.split(";")[0].split(" (")[0].split("'")[0]
        assert head in spec, head


def test_wrong_cotangent_shape_is_rejected():
    with pytest.raises(ValueError, match="cotangent must have shape"):
        hcl_loss_and_grad(Z, Z + np.eye(3, 2), reduction="none", cotangent=np.ones(3))


def test_one_pair_with_a_bank_is_fine():
    z1, z2 = pairs(1, 3, seed=26)
    bank = np.random.default_rng(1).normal(size=(5, 3))
    assert np.isfinite(hcl_loss(z1, z2, negatives=bank))


# ----------------------------------------------------------------------------------------- packaging


def test_reference_imports_no_framework():
    # Every module of hardneg and conformance without a framework suffix (_torch, _jax, _tf) imports no
    # framework at top level (docs: "einops-style"; frameworks are imported inside functions when used).
    code = (
        "import importlib, pkgutil, sys, hardneg, conformance\n"
        "names = [m.name for pkg in (hardneg, conformance) for m in pkgutil.walk_packages(pkg.__path__, "
        "pkg.__name__ + '.') if not m.name.rsplit('.', 1)[-1].endswith(('_torch', '_jax', '_tf', '__main__'))]\n"
        "[importlib.import_module(n) for n in names]\n"
        "bad = {'torch', 'jax', 'tensorflow', 'keras'} & set(sys.modules)\n"
        "print(len(names), sorted(bad)); sys.exit(bool(bad) or len(names) < 20)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_spec_version_matches_spec_document():
    import pathlib

    spec = (pathlib.Path(__file__).parents[1] / "docs" / "spec.md").read_text()
    assert f"version {hardneg.SPEC_VERSION}" in spec.splitlines()[0]


def test_module_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "hardneg", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and hardneg.SPEC_VERSION in r.stdout


# ===================================================================================== spec 1.1: layouts

from literal import literal_floor_ratios  # noqa: E402


def _tolist(kw):
    return {k: (v.tolist() if k == "negatives" else v) for k, v in kw.items()}


def cross_inputs(bank, labelled, B=5, d=3, K=4, seed=31):
    """z1, z2 and the extra keywords of a cross-layout call (labels with repeated classes)."""
    z1, z2 = pairs(B, d, seed)
    rng = np.random.default_rng(seed + 1)
    kw = dict(layout="cross")
    if bank == "shared":
        kw["negatives"] = rng.normal(size=(K, d))
    elif bank == "per_anchor":
        kw["negatives"] = rng.normal(size=(B, K, d))
    if labelled:
        kw["labels"] = np.array([0, 1, 0, 2, 1, 0, 3][:B])
        if bank != "none":
            kw["negative_labels"] = rng.integers(0, 3, size=kw["negatives"].shape[:-1])
    return z1, z2, kw


CROSS_CONFIGS = [
    (bank, labelled, symmetric)
    for bank in ("none", "shared", "per_anchor")
    for labelled in (False, True)
    for symmetric in (True, False)
]
_cross_id = lambda c: f"{c[0]}{'-labels' if c[1] else ''}-{'sym' if c[2] else 'oneway'}"  # noqa: E731


@pytest.mark.parametrize("config", CROSS_CONFIGS, ids=_cross_id)
@pytest.mark.parametrize("kw", PARAMS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "defaults")
def test_cross_matches_literal_float64(kw, config):
    bank, labelled, symmetric = config
    z1, z2, extra = cross_inputs(bank, labelled)
    extra["symmetric"] = symmetric
    want = np.array(literal_losses(z1.tolist(), z2.tolist(), **_tolist(extra), **kw), dtype=np.float64)
    got = hcl_loss(z1, z2, reduction="none", **extra, **kw)
    assert got.shape == ((10,) if symmetric else (5,))
    tol = 50 * EPS64 * _conditioning(kw)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    assert hcl_loss(z1, z2, **extra, **kw) == pytest.approx(np.mean(want), rel=tol, abs=tol)
    assert hcl_loss(z1, z2, reduction="sum", **extra, **kw) == pytest.approx(np.sum(want), rel=tol, abs=tol)


CROSS_MP = [
    ("none", False, True, dict()),
    ("shared", False, True, dict(temperature=0.005, beta=10.0)),  # raw exp overflows float64
    ("per_anchor", True, False, dict(temperature=0.05, beta=2.0, tau_plus=0.3)),
    ("shared", True, True, dict(estimator="easy", temperature=0.02)),
    ("none", True, False, dict(beta=math.inf, temperature=0.1)),
]


@pytest.mark.parametrize("bank,labelled,symmetric,kw", CROSS_MP, ids=[str(c) for c in CROSS_MP])
def test_cross_matches_mpmath(bank, labelled, symmetric, kw):
    z1, z2, extra = cross_inputs(bank, labelled, B=3, d=2, K=2, seed=41)
    extra["symmetric"] = symmetric
    # 400 digits: at t = 0.005 some losses are ~1e-169, below the last digit of -log(pos / (pos + Ng)) at 50.
    with mpmath.workdps(400):
        want = [float(x) for x in literal_losses(z1.tolist(), z2.tolist(), F=MP, **_tolist(extra), **kw)]
    got = hcl_loss(z1, z2, reduction="none", **extra, **kw)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-300)
    assert np.isfinite(got).all()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("kw", [dict(), dict(beta=0.0, tau_plus=0.9), dict(labels=np.array([0, 1, 0, 2]))], ids=str)
def test_explicit_in_batch_and_bank_layouts_equal_layout_none(kw, reduction):
    z1, z2 = pairs(4, 3, seed=32)
    rng = np.random.default_rng(3)
    calls = [(dict(), "in_batch")]
    for shape in ((6, 3), (4, 6, 3)):
        bank = dict(negatives=rng.normal(size=shape))
        if "labels" in kw:
            bank["negative_labels"] = rng.integers(0, 3, size=shape[:-1])
        calls.append((bank, "bank"))
    for extra, layout in calls:
        v0, g0 = hcl_loss_and_grad(z1, z2, reduction=reduction, **extra, **kw)
        v1, g1 = hcl_loss_and_grad(z1, z2, reduction=reduction, layout=layout, symmetric=True, **extra, **kw)
        np.testing.assert_array_equal(v1, v0)
        np.testing.assert_array_equal(hcl_loss(z1, z2, reduction=reduction, layout=layout, **extra, **kw), v0)
        for a, b in zip(g1, g0):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("config", CROSS_CONFIGS, ids=_cross_id)
@pytest.mark.parametrize("kw", [dict(), dict(beta=0.0, tau_plus=0.3), dict(estimator="easy", temperature=0.2),
                                dict(clamp=False, tau_plus=0.02)], ids=str)
def test_cross_gradient_matches_central_differences(kw, config):
    bank, labelled, symmetric = config
    z1, z2, extra = cross_inputs(bank, labelled, B=4, seed=33)
    extra["symmetric"] = symmetric
    _, g = hcl_loss_and_grad(z1, z2, **extra, **kw)
    tol = 1e-8 * _conditioning(kw) ** 3  # as test_gradient_matches_central_differences
    np.testing.assert_allclose(g.z1, _fd(lambda x: hcl_loss(x, z2, **extra, **kw), z1, 1e-5), atol=tol, rtol=0)
    np.testing.assert_allclose(g.z2, _fd(lambda x: hcl_loss(z1, x, **extra, **kw), z2, 1e-5), atol=tol, rtol=0)
    if bank == "none":
        assert g.negatives is None
    else:
        bank_arr = extra.pop("negatives")
        fd = _fd(lambda x: hcl_loss(z1, z2, negatives=x, **extra, **kw), bank_arr, 1e-5)
        np.testing.assert_allclose(g.negatives, fd, atol=tol, rtol=0)


def test_cross_gradient_matches_mpmath():
    z1, z2, extra = cross_inputs("shared", True, B=3, d=2, K=2, seed=42)
    kw = dict(temperature=0.1, beta=2.0, tau_plus=0.2)
    _, g = hcl_loss_and_grad(z1, z2, **extra, **kw)
    args = _tolist(extra)
    base = [z1.tolist(), z2.tolist()]
    with mpmath.workdps(50):
        for which, got in ((0, g.z1), (1, g.z2)):
            want = np.zeros_like(got)
            for idx in np.ndindex(want.shape):

                def f(x, idx=idx):
                    arrs = [[[mpmath.mpf(v) for v in r] for r in side] for side in base]
                    arrs[which][idx[0]][idx[1]] = x
                    return literal_loss(arrs[0], arrs[1], F=MP, **args, **kw)

                want[idx] = float(mpmath.diff(f, mpmath.mpf(base[which][idx[0]][idx[1]])))
            scale = max(1.0, np.abs(want).max())
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * scale * _conditioning(kw))


def test_cross_reverse_direction_is_the_swapped_forward_direction():
    # Without a bank the two directions are the same rule with z1 and z2 exchanged.
    z1, z2 = pairs(5, 3, seed=34)
    for kw in (dict(), dict(labels=np.array([0, 1, 0, 2, 1])), dict(beta=3.0, tau_plus=0.2)):
        a = hcl_loss(z1, z2, layout="cross", reduction="none", **kw)
        b = hcl_loss(z2, z1, layout="cross", reduction="none", **kw)
        np.testing.assert_allclose(a, np.concatenate([b[5:], b[:5]]), rtol=1e-14, atol=1e-15)
        one = hcl_loss(z1, z2, layout="cross", symmetric=False, reduction="none", **kw)
        np.testing.assert_array_equal(one, a[:5])


def test_cross_bank_belongs_to_the_first_direction_only():
    z1, z2, extra = cross_inputs("shared", False, seed=35)
    with_bank = hcl_loss(z1, z2, reduction="none", **extra)
    extra.pop("negatives")
    without = hcl_loss(z1, z2, reduction="none", **extra)
    np.testing.assert_array_equal(with_bank[5:], without[5:])  # the reverse anchors never see the bank
    assert np.all(with_bank[:5] != without[:5])


def test_cross_single_pair_with_a_bank():
    z1, z2 = pairs(1, 3, seed=36)
    bank = np.random.default_rng(2).normal(size=(3, 3))
    v, g = hcl_loss_and_grad(z1, z2, layout="cross", negatives=bank, reduction="none")
    # The forward anchor's only negatives are the bank rows: the bank layout's loss; the reverse anchor has
    # no negative (its candidates are z1's single row, its positive): loss 0, as any anchor without negatives.
    assert v.shape == (2,) and v[1] == 0.0
    assert v[0] == pytest.approx(float(hcl_loss(z1, z2, negatives=bank)), rel=1e-15)
    with pytest.raises(ValueError, match="one pair"):
        hcl_loss(z1, z2, layout="cross")


def test_cross_pair_permutation_permutes_losses():
    z1, z2, extra = cross_inputs("per_anchor", True, seed=37)
    perm = np.array([3, 0, 4, 1, 2])
    a = hcl_loss(z1, z2, reduction="none", **extra)
    pe = dict(extra, negatives=extra["negatives"][perm], labels=extra["labels"][perm],
              negative_labels=extra["negative_labels"][perm])
    b = hcl_loss(z1[perm], z2[perm], reduction="none", **pe)
    np.testing.assert_allclose(b, np.concatenate([a[:5][perm], a[5:][perm]]), rtol=1e-13)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_cross_non_finite_input_makes_every_output_nan(bad):
    z1, z2, extra = cross_inputs("shared", False, B=4, seed=38)
    extra["negatives"][2, 0] = bad
    v, g = hcl_loss_and_grad(z1, z2, reduction="none", **extra)
    assert v.shape == (8,) and np.isnan(v).all()
    assert all(np.isnan(x).all() for x in (g.z1, g.z2, g.negatives)) and math.isnan(g.temperature)


# ---------------------------------------------------------------------------- identities (spec 1.1 §4)


def _logsumexp(x, axis):
    m = np.max(x, axis=axis, keepdims=True)
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(x - m), axis=axis))


def clip_loss(z1, z2, t, normalize=True):
    """CLIP's symmetric loss, written from its definition: the mean of two cross-entropies, targets arange(B)."""
    if normalize:
        z1 = z1 / np.linalg.norm(z1, axis=1, keepdims=True)
        z2 = z2 / np.linalg.norm(z2, axis=1, keepdims=True)
    logits = z1 @ z2.T / t  # logits_per_image; logits_per_text is its transpose
    targets = np.arange(len(z1))
    ce = lambda L: np.mean(_logsumexp(L, 1) - L[targets, targets])  # noqa: E731
    return (ce(logits) + ce(logits.T)) / 2


@pytest.mark.parametrize("t", [0.07, 0.5, 1.0])
def test_symmetric_cross_easy_is_clips_loss(t):
    z1, z2 = pairs(6, 4, seed=51)
    want = clip_loss(z1, z2, t)
    assert hcl_loss(z1, z2, layout="cross", estimator="easy", temperature=t) == pytest.approx(want, rel=1e-13)
    # the hard estimator at beta = tau+ = 0 without the clamp is the same objective
    got = hcl_loss(z1, z2, layout="cross", beta=0.0, tau_plus=0.0, clamp=False, temperature=t)
    assert got == pytest.approx(want, rel=1e-13)


def test_clip_gradients_including_temperature():
    # With normalize=False the logits are z1 z2^T / t, and CLIP's gradient is textbook softmax algebra:
    # dL/dlogits = [(softmax_rows(L) - I) + (softmax_rows(L^T) - I)^T] / (2B); dL/dt = -sum(dL/dL_ij L_ij) / t.
    z1, z2 = pairs(5, 3, seed=52, scale=0.5)
    t = 0.2
    L = z1 @ z2.T / t
    sm = lambda X: np.exp(X - _logsumexp(X, 1)[:, None])  # noqa: E731
    eye = np.eye(5)
    dL = ((sm(L) - eye) + (sm(L.T) - eye).T) / 10
    v, g = hcl_loss_and_grad(z1, z2, layout="cross", estimator="easy", temperature=t, normalize=False)
    assert v == pytest.approx(clip_loss(z1, z2, t, normalize=False), rel=1e-13)
    np.testing.assert_allclose(g.z1, dL @ z2 / t, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(g.z2, dL.T @ z1 / t, rtol=1e-12, atol=1e-15)
    assert g.temperature == pytest.approx(-np.sum(dL * L) / t, rel=1e-12)


def mnrl_loss(anchors, positives, hard_negatives, scale):
    """sentence-transformers' MultipleNegativesRankingLoss, from its definition: cosine similarities of each
    anchor with [all positives; all hard negatives] times ``scale``, cross-entropy with targets arange(B)."""
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    docs = np.concatenate([unit(positives), unit(hard_negatives)])
    scores = unit(anchors) @ docs.T * scale
    B = len(anchors)
    return np.mean(_logsumexp(scores, 1) - scores[np.arange(B), np.arange(B)])


@pytest.mark.parametrize("K", [1, 6])
def test_one_way_cross_with_a_shared_bank_is_mnrl(K):
    z1, z2 = pairs(6, 4, seed=53)
    bank = np.random.default_rng(54).normal(size=(K, 4))
    t = 0.05  # MNRL's default scale 20
    want = mnrl_loss(z1, z2, bank, 1.0 / t)
    got = hcl_loss(z1, z2, negatives=bank, layout="cross", symmetric=False, estimator="easy", temperature=t)
    assert got == pytest.approx(want, rel=1e-13)
    # without hard negatives, MNRL on pairs
    got = hcl_loss(z1, z2, layout="cross", symmetric=False, estimator="easy", temperature=t)
    assert got == pytest.approx(mnrl_loss(z1, z2, np.zeros((0, 4)), 1.0 / t), rel=1e-13)


def test_one_way_cross_matches_installed_sentence_transformers_mnrl():
    st = pytest.importorskip("sentence_transformers", reason="sentence-transformers is not installed (optional)")
    torch = pytest.importorskip("torch")
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    class Embeddings(torch.nn.Module):
        """A stand-in model: each 'sentence feature' already holds its embedding."""

        def forward(self, features):
            return {"sentence_embedding": features["embedding"]}

    z1, z2 = pairs(6, 4, seed=55)
    bank = np.random.default_rng(56).normal(size=(6, 4))
    t = 0.05
    loss = MultipleNegativesRankingLoss(Embeddings(), scale=1.0 / t)
    feats = [{"embedding": torch.tensor(x)} for x in (z1, z2, bank)]
    want = float(loss(feats, None))
    got = hcl_loss(z1, z2, negatives=bank, layout="cross", symmetric=False, estimator="easy", temperature=t)
    assert got == pytest.approx(want, rel=1e-12), st.__version__


# --------------------------------------------------------------------- d loss / d temperature (spec 1.1 §8)


def _floor_state(z1, z2, kw):
    """(fraction of anchors on the floor, min |Ng_u / floor - 1|) of a hard-estimator, clamped call."""
    r = np.array([float(x) for x in literal_floor_ratios(z1.tolist(), z2.tolist(), **_tolist(kw))])
    return float(np.mean(r < 0)), float(np.min(np.abs(r)))


def _mp_dt(z1, z2, kw, t):
    with mpmath.workdps(50):
        f = lambda x: literal_loss(z1.tolist(), z2.tolist(), temperature=x, F=MP, **_tolist(kw))  # noqa: E731
        return float(mpmath.diff(f, mpmath.mpf(t)))


T_CASES = [
    # (id, layout extras, hyper-parameters, floor: "none" | "some")
    ("in_batch", dict(), dict(temperature=0.3), "none"),
    ("in_batch_floor", dict(), dict(temperature=0.5, tau_plus=0.9), "some"),
    ("bank_shared", dict(negatives="shared"), dict(temperature=0.2, beta=2.0), "none"),
    ("bank_floor", dict(negatives="per_anchor"), dict(temperature=0.5, tau_plus=0.9), "some"),
    ("cross", dict(layout="cross"), dict(temperature=0.1), "none"),
    ("cross_floor", dict(layout="cross"), dict(temperature=0.5, tau_plus=0.9), "some"),
    ("cross_bank_oneway", dict(layout="cross", symmetric=False, negatives="shared"), dict(temperature=0.07), "none"),
    ("cross_per_anchor_labels", dict(layout="cross", negatives="per_anchor", labels=True), dict(beta=0.5), "none"),
    ("cross_easy", dict(layout="cross", negatives="shared"), dict(estimator="easy", temperature=0.05), "none"),
    ("cross_noclamp", dict(layout="cross"), dict(clamp=False, tau_plus=0.05), "none"),
    ("cross_beta_inf", dict(layout="cross"), dict(beta=math.inf, temperature=0.2), "none"),
]


def _t_inputs(extra, B=4, d=3, K=3, seed=61, near=None):
    rng = np.random.default_rng(seed)
    z1 = rng.normal(size=(B, d))
    z2 = rng.normal(size=(B, d)) if near is None else z1 + near * rng.normal(size=(B, d))
    kw = dict(extra)
    if kw.get("negatives") == "shared":
        kw["negatives"] = rng.normal(size=(K, d))
    elif kw.get("negatives") == "per_anchor":
        kw["negatives"] = rng.normal(size=(B, K, d))
    if kw.pop("labels", False):
        kw["labels"] = np.array([0, 1, 0, 2, 1][:B])
        if "negatives" in kw:
            kw["negative_labels"] = rng.integers(0, 3, size=kw["negatives"].shape[:-1])
    return z1, z2, kw


@pytest.mark.parametrize("name,extra,kw,floor", T_CASES, ids=[c[0] for c in T_CASES])
def test_temperature_gradient_matches_mpmath_and_central_differences(name, extra, kw, floor):
    # Some pairs nearly identical: with tau+ = 0.9 their unclamped Ng is negative (on the floor), the others not.
    z1, z2, call = _t_inputs(extra, near=None if floor == "none" else 0.3)
    if floor == "some":
        z2[2:] = np.random.default_rng(62).normal(size=z2[2:].shape)
    call.update(kw)
    t = call.pop("temperature", 0.5)
    hard_clamped = call.get("estimator", "hard") == "hard" and call.get("clamp", True)
    if hard_clamped:
        frac, gap = _floor_state(z1, z2, dict(call, temperature=t))
        assert gap > 1e-3  # no anchor near the kink: the derivative exists and differences do not straddle it
        assert (frac > 0) == (floor == "some") and frac < 1
    v, g = hcl_loss_and_grad(z1, z2, temperature=t, **call)
    want = _mp_dt(z1, z2, call, t)
    # d/dt multiplies each logit's derivative by s/t (|s| <= 1/t): rounding of the closed form ~ eps (1/t)^2 c.
    c = _conditioning(dict(kw, temperature=t))
    tol = 1e-12 * c * max(abs(want), 1.0 / t**2)
    assert abs(g.temperature - want) <= tol
    # Central differences in t: h relative to t; error O(eps |f| / h) + O(h^2 f''') with f''' ~ f / t^3.
    h = 1e-5 * t
    fd = (hcl_loss(z1, z2, temperature=t + h, **call) - hcl_loss(z1, z2, temperature=t - h, **call)) / (2 * h)
    assert g.temperature == pytest.approx(fd, rel=1e-6 * c, abs=1e-6 * c / t)
    if floor == "some":
        # The floor's own term: on the floor l_i = softplus(lf_i - a_i), so d l_i / d lf_i = 1 - e^{-l_i}, times
        # dlf/dt = 1/t^2, averaged. It is far above the tolerance: a closed form without it fails above.
        ratios = literal_floor_ratios(z1.tolist(), z2.tolist(), temperature=t, **_tolist(call))
        on = np.array([float(r) < 0 for r in ratios])
        lv = hcl_loss(z1, z2, temperature=t, reduction="none", **call)
        floor_term = np.sum(-np.expm1(-lv[on])) / t**2 / lv.size
        assert floor_term > 1e6 * tol


def test_temperature_gradient_floor_term_is_what_the_floor_contributes():
    # Every anchor on the floor (identical pairs, tau+ = 0.9): l_i = softplus(log M - 1/t - a_i) with
    # a_i = 1/t, so l_i = softplus(log M - 2/t) and d l_i / dt = sigmoid(log M - 2/t) * 2/t^2:
    # 1/t^2 of it comes from the floor, 1/t^2 from the positive logit.
    z1, _ = pairs(4, 3, seed=63)
    t = 0.5
    v, g = hcl_loss_and_grad(z1, z1.copy(), tau_plus=0.9, temperature=t)
    M = 6
    x = math.log(M) - 2 / t
    assert v == pytest.approx(np.logaddexp(0.0, x), rel=1e-14)
    sig = 1 / (1 + math.exp(-x))
    assert g.temperature == pytest.approx(sig * 2 / t**2, rel=1e-13)
    assert np.allclose(g.z1 + g.z2, 0.0, atol=1e-15)  # only a_i = u.u / t moves, and not under normalisation


@pytest.mark.parametrize("layout", [None, "cross"])
def test_temperature_gradient_is_a_vector_jacobian_product(layout):
    z1, z2 = pairs(4, 3, seed=64)
    n = 8
    cot = np.linspace(-1.0, 2.0, n)
    t, h = 0.3, 1e-6
    _, g = hcl_loss_and_grad(z1, z2, temperature=t, layout=layout, reduction="none", cotangent=cot)
    f = lambda s: np.sum(hcl_loss(z1, z2, temperature=s, layout=layout, reduction="none") * cot)  # noqa: E731
    assert g.temperature == pytest.approx((f(t + h) - f(t - h)) / (2 * h), rel=1e-7)
    _, gs = hcl_loss_and_grad(z1, z2, temperature=t, layout=layout, reduction="sum", cotangent=2.5)
    _, gm = hcl_loss_and_grad(z1, z2, temperature=t, layout=layout, reduction="mean", cotangent=2.5)
    assert gs.temperature == pytest.approx(gm.temperature * n, rel=1e-14)
    assert isinstance(g.temperature, float) and np.asarray(g.temperature).dtype == np.float64


def test_clamp_false_undefined_makes_the_temperature_gradient_nan():
    z1, z2 = pairs(6, 3, seed=23, noise=1e-3)
    _, g = hcl_loss_and_grad(z1, z2, tau_plus=0.9, clamp=False, layout="cross")
    assert math.isnan(g.temperature) and np.isnan(g.z1).all()


LAYOUT_ERRORS = [
    (dict(layout="clip"), ValueError, "layout must be one of None, 'in_batch', 'bank', 'cross'; got 'clip'"),
    (dict(layout="in_batch", negatives=np.ones((4, 2))), ValueError, "layout='in_batch' takes no negatives bank"),
    (dict(layout="bank"), ValueError, "layout='bank' needs a negatives bank"),
    (dict(layout="cross", symmetric=1), TypeError, "symmetric must be a bool (True or False); got 1"),
    (dict(symmetric=False), ValueError, "symmetric=False is only meaningful with layout='cross'; got layout=None"),
    (dict(layout="bank", symmetric=False, negatives=np.ones((4, 2))), ValueError,
     "symmetric=False is only meaningful with layout='cross'; got layout='bank'"),
    (dict(z1=np.ones((1, 2)), z2=np.ones((1, 2)), layout="cross", symmetric=False), ValueError,
     "one pair (B = 1) and no negatives"),
    (dict(layout="cross", negatives=np.ones((4, 2)), labels=np.arange(3)), ValueError, "require negative_labels"),
]


@pytest.mark.parametrize("kw,exc,msg", LAYOUT_ERRORS, ids=[e[2][:40] for e in LAYOUT_ERRORS])
@pytest.mark.parametrize("fn", [hcl_loss, hcl_loss_and_grad])
def test_layout_errors(fn, kw, exc, msg):
    test_documented_errors(fn, kw, exc, msg)


def test_every_layout_error_message_is_in_the_spec():
    import pathlib

    spec = (pathlib.Path(__file__).parents[1] / "docs" / "spec.md").read_text()
    for _, _, msg in LAYOUT_ERRORS:
        head = msg.split(";")[0].split(" (")[0]
        assert head in spec, head


def test_layout_pictures_are_up_to_date():
    # docs/layouts.md shows SVGs that a script writes; they must be what it writes now.
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parents[1] / "docs" / "assets" / "layouts" / "generate.py"
    spec = importlib.util.spec_from_file_location("layout_pictures", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(check=True) == 0, "run python docs/assets/layouts/generate.py"
