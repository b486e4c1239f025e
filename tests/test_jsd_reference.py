"""The graph objective's reference (hardneg.jsd_loss, docs/spec.md section 14) against independent computations.

- a literal NumPy transliteration of the released code's arithmetic (joshr17/HCL, graph/losses.py
  ``local_global_loss_`` with measure 'JSD_hard' of graph/cortex_DIM/functions/gan_losses.py): S o P and S o Q with
  the masked zeros kept in every sum, tau_plus = 0.5 as the code never passes it;
- the same code in PyTorch with autograd (gradients, including the subgradient of c = max(max q, |min q|));
- the formulas of both conventions in 40-digit mpmath (values) and central differences of them (gradients);
- upstream InfoGraph's JSD loss (sunfanyunn/InfoGraph, unsupervised/losses.py), which both conventions equal at
  beta = 0, tau_plus = 0;
- the direction of the weights: at tau_plus = 0 the corrected loss increases with beta, the released one decreases;
- every error message of section 14.7.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import hardneg
from hardneg import jsd_loss, jsd_loss_and_grad

mpmath = pytest.importorskip("mpmath")

LOG2 = math.log(2.0)
RTOL = 1e-12  # float64 evaluation of O(10) terms: a few units of 2^-53 times their magnitude


def _problem(seed, N=7, G=3, d=4, scale=1.0):
    rng = np.random.default_rng(seed)
    local = rng.standard_normal((N, d)) * scale
    graph = rng.standard_normal((G, d)) * scale
    batch = np.sort(rng.integers(0, G, N))
    return local, graph, batch


# ---------------------------------------------------------------------------------------------------------
# Literal transliterations


def _sp(x):
    return np.logaddexp(0.0, x)


def released_literal(l_enc, g_enc, batch, beta, tau_plus=0.5):
    """The released arithmetic, statement by statement, in float64 NumPy (masked zeros stay in the sums)."""
    num_graphs, num_nodes = g_enc.shape[0], l_enc.shape[0]
    pos_mask = np.zeros((num_nodes, num_graphs))
    neg_mask = np.ones((num_nodes, num_graphs))
    for nodeidx, graphidx in enumerate(batch):
        pos_mask[nodeidx][graphidx] = 1.0
        neg_mask[nodeidx][graphidx] = 0.0
    res = l_enc @ g_enc.T
    p_samples, q_samples = res * pos_mask, res * neg_mask
    log_2 = math.log(2.0)
    # get_positive_expectation(..., 'JSD_hard'): softplus(-p) + p is softplus(p)
    Ep = log_2 - _sp(-p_samples) - (tau_plus / (1 - tau_plus)) * (_sp(-p_samples) + p_samples)
    if beta == 0:
        Eq = (_sp(-q_samples) + q_samples - log_2) / (1 - tau_plus)
    else:
        Eq = _sp(-q_samples) + q_samples
        reweight = -2 * q_samples / max(q_samples.max(), abs(q_samples.min()))
        reweight = np.exp(beta * reweight)
        reweight = reweight / reweight.mean(axis=1).reshape(-1, 1)
        Eq = reweight * Eq / (1 - tau_plus) - log_2
    E_pos = Ep.sum() / num_nodes
    E_neg = Eq.sum() / (num_nodes * (num_graphs - 1))
    return E_neg - E_pos


def infograph_jsd(l_enc, g_enc, batch):
    """Upstream InfoGraph's local_global_loss_ with measure 'JSD' (float64 NumPy)."""
    num_graphs, num_nodes = g_enc.shape[0], l_enc.shape[0]
    pos_mask = np.zeros((num_nodes, num_graphs))
    neg_mask = np.ones((num_nodes, num_graphs))
    for nodeidx, graphidx in enumerate(batch):
        pos_mask[nodeidx][graphidx] = 1.0
        neg_mask[nodeidx][graphidx] = 0.0
    res = l_enc @ g_enc.T
    E_pos = (math.log(2.0) - _sp(-(res * pos_mask))).sum() / num_nodes
    E_neg = (_sp(-(res * neg_mask)) + res * neg_mask - math.log(2.0)).sum() / (num_nodes * (num_graphs - 1))
    return E_neg - E_pos


def mp_terms(local, graph, batch, beta, tau, convention, dps=40):
    """Per-node terms of spec 14.2 / 14.3, in mpmath (an independent evaluation of the formulas)."""
    mp = mpmath.mp
    with mpmath.workdps(dps):
        N, G = len(local), len(graph)
        M = G - 1
        S = [[mp.fsum(mp.mpf(x) * mp.mpf(y) for x, y in zip(local[n], graph[k])) for k in range(G)]
             for n in range(N)]
        sp = lambda x: mp.log1p(mp.exp(x))  # noqa: E731
        log2 = mp.log(2)
        beta, tau = mp.mpf(beta), mp.mpf(tau)
        q = [[S[n][k] if k != batch[n] else mp.mpf(0) for k in range(G)] for n in range(N)]
        flat = [x for row in q for x in row]
        c = max(max(flat), abs(min(flat)))
        out = []
        for n in range(N):
            a = S[n][batch[n]]
            if convention == "released":
                r = tau / (1 - tau)
                pos_row = log2 - sp(-a) - r * sp(a) - M * r * log2
                if beta == 0:
                    neg_row = mp.fsum(sp(q[n][k]) - log2 for k in range(G) if k != batch[n]) / (M * (1 - tau))
                else:
                    u = [mp.exp(-2 * beta * q[n][k] / c) for k in range(G)]
                    mean_u = mp.fsum(u) / G
                    neg_row = (mp.fsum(u[k] / mean_u * sp(q[n][k]) for k in range(G)) / (1 - tau) - G * log2) / M
                out.append(neg_row - pos_row)
            else:
                js = [k for k in range(G) if k != batch[n]]
                if beta == 0 or c == 0:
                    u = {k: mp.mpf(1) for k in js}
                else:
                    u = {k: mp.exp(2 * beta * q[n][k] / c) for k in js}
                mean_u = mp.fsum(u.values()) / M
                est = (mp.fsum(u[k] / mean_u * sp(q[n][k]) for k in js) / M - tau * sp(a)) / (1 - tau)
                out.append(max(est, mp.mpf(0)) + sp(-a) - 2 * log2)
        return out


GRID = [(conv, beta, tau) for conv in ("released", "corrected") for beta in (0.0, 1.0, 2.0, 10.0)
        for tau in (0.0, 0.3, 0.5)]


# ---------------------------------------------------------------------------------------------------------
# Values


@pytest.mark.parametrize("beta", [0.0, 1.0, 2.0, 10.0])
@pytest.mark.parametrize("tau", [0.0, 0.1, 0.5, 0.9])
@pytest.mark.parametrize("seed", range(3))
def test_released_equals_the_literal_transliteration(beta, tau, seed):
    local, graph, batch = _problem(seed, N=6 + seed, G=2 + seed, scale=1.0 + seed)
    want = released_literal(local, graph, batch, beta, tau)
    got = jsd_loss(local, graph, batch, beta=beta, tau_plus=tau, convention="released")
    assert abs(got - want) <= RTOL * (1.0 + abs(want)) * 10


def test_defaults_are_the_released_codes():
    # beta = 1 (the first hard value of the released loop over {0, 1, 2, 10}), tau_plus = 0.5 (never passed)
    local, graph, batch = _problem(0)
    assert jsd_loss(local, graph, batch) == jsd_loss(local, graph, batch, beta=1.0, tau_plus=0.5,
                                                     convention="released", reduction="mean")
    want = released_literal(local, graph, batch, 1.0)
    assert abs(jsd_loss(local, graph, batch) - want) <= 10 * RTOL * (1 + abs(want))


@pytest.mark.parametrize("conv,beta,tau", GRID)
def test_values_match_mpmath(conv, beta, tau):
    local, graph, batch = _problem(11, N=5, G=4, d=3, scale=1.5)
    terms = jsd_loss(local, graph, batch, beta=beta, tau_plus=tau, convention=conv, reduction="none")
    want = np.array([float(x) for x in mp_terms(local, graph, batch, beta, tau, conv)])
    scale = 1.0 + np.abs(want).max()
    np.testing.assert_allclose(terms, want, rtol=0, atol=RTOL * scale * 10)


@pytest.mark.parametrize("conv", ["released", "corrected"])
def test_infograph_identity_at_beta_0_tau_0(conv):
    for seed in range(4):
        local, graph, batch = _problem(seed, N=9, G=2 + seed, scale=2.0)
        want = infograph_jsd(local, graph, batch)
        got = jsd_loss(local, graph, batch, beta=0.0, tau_plus=0.0, convention=conv)
        assert abs(got - want) <= 10 * RTOL * (1 + abs(want))


def test_released_at_beta_0_is_not_infograph_when_tau_plus_is_positive():
    # A documented departure: under 'JSD_hard' the negative part is divided by 1 - tau_plus even at beta = 0.
    local, graph, batch = _problem(3)
    assert abs(jsd_loss(local, graph, batch, beta=0.0) - infograph_jsd(local, graph, batch)) > 0.1


@pytest.mark.parametrize("conv", ["released", "corrected"])
@pytest.mark.parametrize("beta", [0.0, 2.0])
def test_reduction_none_mean_and_sum_agree(conv, beta):
    local, graph, batch = _problem(5, N=8, G=3)
    kw = dict(beta=beta, convention=conv, tau_plus=0.2)
    terms = jsd_loss(local, graph, batch, reduction="none", **kw)
    assert terms.shape == (8,) and terms.dtype == np.float64
    assert abs(terms.mean() - jsd_loss(local, graph, batch, **kw)) <= 1e-15 * (1 + abs(terms).max())
    assert abs(terms.sum() - jsd_loss(local, graph, batch, reduction="sum", **kw)) <= 1e-14 * (1 + abs(terms).sum())


def test_corrected_loss_increases_with_beta_at_tau_plus_0():
    # The corrected weights tilt towards larger scores and softplus is increasing: the weighted mean grows.
    for seed in range(5):
        local, graph, batch = _problem(seed, N=10, G=5, scale=1.5)
        vals = [jsd_loss(local, graph, batch, beta=b, tau_plus=0.0, convention="corrected")
                for b in (0.0, 0.5, 1.0, 2.0, 5.0, 10.0)]
        assert all(b > a for a, b in zip(vals, vals[1:])), vals


def test_released_loss_decreases_with_beta_at_tau_plus_0():
    # The released weights exp(-2 beta q / c) favour *easy* negatives (HCL issue #11): the opposite direction.
    for seed in range(5):
        local, graph, batch = _problem(seed, N=10, G=5, scale=1.5)
        vals = [jsd_loss(local, graph, batch, beta=b, tau_plus=0.0, convention="released")
                for b in (0.0, 0.5, 1.0, 2.0, 5.0, 10.0)]
        assert all(b < a for a, b in zip(vals, vals[1:])), vals


def test_corrected_floor_binds_and_kills_the_negative_gradient():
    # A large positive score and tau_plus = 0.9: the debiased estimate is negative, floored at 0.
    local = np.array([[3.0, 0.0], [0.0, 3.0]])
    graph = np.array([[3.0, 0.1], [0.2, 3.0]])
    batch = np.array([0, 1])
    terms = jsd_loss(local, graph, batch, beta=1.0, tau_plus=0.9, convention="corrected", reduction="none")
    a = np.array([9.0, 9.0])
    np.testing.assert_allclose(terms, _sp(-a) - 2 * LOG2, rtol=1e-15)
    _, g = jsd_loss_and_grad(local, graph, batch, beta=1.0, tau_plus=0.9, convention="corrected")
    # only the positive pairs carry gradient: d/d local[0] = -sigma(-a)/N * graph[0]
    sig = 1.0 / (1.0 + np.exp(a))
    np.testing.assert_allclose(g.local, -(sig / 2)[:, None] * graph[batch], rtol=1e-13)


def test_zero_scale_released_is_nan_corrected_is_uniform():
    # Every negative score 0: c = 0. The released code divides 0 by 0; the corrected weights are uniform.
    local = np.array([[1.0, 0.0], [1.0, 0.0]])
    graph = np.array([[2.0, 0.0], [0.0, 1.0]])
    batch = np.array([0, 0])
    v, g = jsd_loss_and_grad(local, graph, batch, beta=1.0, convention="released")
    assert np.isnan(v) and np.isnan(g.local).all() and np.isnan(g.graph).all()
    v1, g1 = jsd_loss_and_grad(local, graph, batch, beta=3.0, tau_plus=0.2, convention="corrected")
    v0, g0 = jsd_loss_and_grad(local, graph, batch, beta=0.0, tau_plus=0.2, convention="corrected")
    assert np.isfinite(v1) and v1 == v0
    np.testing.assert_array_equal(g1.local, g0.local)
    np.testing.assert_array_equal(g1.graph, g0.graph)


@pytest.mark.parametrize("conv", ["released", "corrected"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_input_makes_everything_nan(conv, bad):
    local, graph, batch = _problem(1)
    for which in ("local", "graph"):
        lo, gr = local.copy(), graph.copy()
        (lo if which == "local" else gr)[1, 2] = bad
        v, g = jsd_loss_and_grad(lo, gr, batch, convention=conv)
        assert np.isnan(v) and np.isnan(g.local).all() and np.isnan(g.graph).all()
        assert np.isnan(jsd_loss(lo, gr, batch, convention=conv, reduction="none")).all()


def test_inputs_of_any_float_dtype_are_evaluated_in_float64():
    local, graph, batch = _problem(4)
    l32, g32 = local.astype(np.float32), graph.astype(np.float32)
    got = jsd_loss(l32, g32, batch.astype(np.int32))
    assert got.dtype == np.float64
    assert got == jsd_loss(l32.astype(np.float64), g32.astype(np.float64), batch)


def test_a_graph_without_nodes_is_still_every_nodes_negative():
    local, graph, _ = _problem(6, N=5, G=4)
    batch = np.array([0, 0, 1, 1, 3])  # graph 2 has no node
    want = released_literal(local, graph, batch, 2.0)
    assert abs(jsd_loss(local, graph, batch, beta=2.0) - want) <= 10 * RTOL * (1 + abs(want))


# ---------------------------------------------------------------------------------------------------------
# Gradients


def _mp_loss(local, graph, batch, beta, tau, conv, cot, reduction):
    t = mp_terms(local, graph, batch, beta, tau, conv, dps=40)
    with mpmath.workdps(40):
        if reduction == "none":
            return mpmath.fsum(mpmath.mpf(float(c)) * x for c, x in zip(cot, t))
        s = mpmath.fsum(t)
        return s / len(t) if reduction == "mean" else s


@pytest.mark.parametrize("conv,beta,tau", [g for g in GRID if g[2] != 0.3])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradients_match_high_precision_central_differences(conv, beta, tau, reduction):
    local, graph, batch = _problem(21, N=4, G=3, d=2, scale=1.3)
    cot = np.array([0.5, -1.0, 2.0, 0.25]) if reduction == "none" else 1.0
    _, g = jsd_loss_and_grad(local, graph, batch, beta=beta, tau_plus=tau, convention=conv, reduction=reduction,
                             cotangent=cot)
    h = 1e-12  # central differences in 40-digit arithmetic: truncation O(h^2) and rounding 1e-40 / h, both tiny
    for name, arr, got in (("local", local, g.local), ("graph", graph, g.graph)):
        for idx in np.ndindex(arr.shape):
            vals = []
            for sgn in (1, -1):
                with mpmath.workdps(40):
                    x = arr.astype(object).copy()
                    x[idx] = mpmath.mpf(float(arr[idx])) + sgn * mpmath.mpf(h)
                    args = (x, graph) if name == "local" else (local, x)
                    vals.append(_mp_loss(args[0], args[1], batch, beta, tau, conv, np.atleast_1d(cot), reduction))
            with mpmath.workdps(40):
                fd = float((vals[0] - vals[1]) / (2 * h))
            assert abs(got[idx] - fd) <= 1e-11 * (1 + abs(fd)), (name, idx, got[idx], fd)


def test_cotangent_scales_the_gradient_and_none_gives_per_node_weights():
    local, graph, batch = _problem(8, N=5, G=3)
    v1, g1 = jsd_loss_and_grad(local, graph, batch, beta=2.0)
    v3, g3 = jsd_loss_and_grad(local, graph, batch, beta=2.0, cotangent=3.0)
    assert v1 == v3
    np.testing.assert_allclose(g3.local, 3 * g1.local, rtol=1e-15)
    _, gn = jsd_loss_and_grad(local, graph, batch, beta=2.0, reduction="none", cotangent=np.full(5, 1 / 5))
    np.testing.assert_allclose(gn.local, g1.local, rtol=1e-13, atol=1e-16)
    np.testing.assert_allclose(gn.graph, g1.graph, rtol=1e-13, atol=1e-16)
    with pytest.raises(ValueError, match=r"cotangent must have shape \(5,\) for reduction='none'"):
        jsd_loss_and_grad(local, graph, batch, reduction="none", cotangent=np.ones(4))


def test_signature_of_the_and_grad_twin():
    import inspect

    a = [(p.name, p.default) for p in inspect.signature(jsd_loss).parameters.values()]
    b = [(p.name, p.default) for p in inspect.signature(jsd_loss_and_grad).parameters.values()]
    assert b[: len(a)] == a and b[len(a):] == [("cotangent", 1.0)]
    assert a == [("local", inspect.Parameter.empty), ("graph", inspect.Parameter.empty),
                 ("batch", inspect.Parameter.empty), ("beta", 1.0), ("tau_plus", 0.5), ("convention", "released"),
                 ("reduction", "mean")]
    assert hardneg.jsd_loss is jsd_loss


# ---------------------------------------------------------------------------------------------------------
# Against the released PyTorch code with autograd (gradients, including c's subgradient at ties)

torch = None
try:  # noqa: SIM105 - torch is optional for the reference's tests
    import torch  # type: ignore[no-redef]
except ImportError:  # pragma: no cover
    pass


def released_torch(l_enc, g_enc, batch, beta, tau_plus=0.5):
    """graph/losses.py local_global_loss_ + gan_losses.py 'JSD_hard', transliterated (CPU, float64)."""
    F = torch.nn.functional
    num_graphs, num_nodes = g_enc.shape[0], l_enc.shape[0]
    pos_mask = torch.zeros((num_nodes, num_graphs), dtype=torch.float64)
    neg_mask = torch.ones((num_nodes, num_graphs), dtype=torch.float64)
    for nodeidx, graphidx in enumerate(batch):
        pos_mask[nodeidx][graphidx] = 1.0
        neg_mask[nodeidx][graphidx] = 0.0
    res = torch.mm(l_enc, g_enc.t())
    p_samples, q_samples = res * pos_mask, res * neg_mask
    log_2 = math.log(2.0)
    Ep = log_2 - F.softplus(-p_samples) - (tau_plus / (1 - tau_plus)) * (F.softplus(-p_samples) + p_samples)
    if beta == 0:
        Eq = (F.softplus(-q_samples) + q_samples - log_2) / (1 - tau_plus)
    else:
        Eq = F.softplus(-q_samples) + q_samples
        reweight = -2 * q_samples / max(q_samples.max(), q_samples.min().abs())
        reweight = (beta * reweight).exp()
        reweight = reweight / reweight.mean(dim=1).view(-1, 1)
        Eq = reweight * Eq / (1 - tau_plus) - log_2
    return Eq.sum() / (num_nodes * (num_graphs - 1)) - Ep.sum() / num_nodes


def _torch_grads(local, graph, batch, beta, tau):
    lt = torch.tensor(local, requires_grad=True)
    gt = torch.tensor(graph, requires_grad=True)
    v = released_torch(lt, gt, batch, beta, tau)
    v.backward()
    return float(v.detach()), lt.grad.numpy(), gt.grad.numpy()


@pytest.mark.skipif(torch is None, reason="torch not installed")
@pytest.mark.parametrize("beta", [0.0, 1.0, 2.0, 10.0])
@pytest.mark.parametrize("tau", [0.0, 0.5])
def test_released_gradients_equal_the_released_torch_code(beta, tau):
    for seed in range(3):
        local, graph, batch = _problem(seed + 30, N=6, G=3 + seed, scale=1.5)
        v, gl, gg = _torch_grads(local, graph, batch, beta, tau)
        rv, g = jsd_loss_and_grad(local, graph, batch, beta=beta, tau_plus=tau)
        assert abs(rv - v) <= 10 * RTOL * (1 + abs(v))
        np.testing.assert_allclose(g.local, gl, rtol=1e-11, atol=1e-13)
        np.testing.assert_allclose(g.graph, gg, rtol=1e-11, atol=1e-13)


@pytest.mark.skipif(torch is None, reason="torch not installed")
@pytest.mark.parametrize("case", ["max_equals_abs_min", "tied_maxima", "tied_minima"])
def test_subgradient_of_c_at_ties_is_the_released_codes(case):
    # Integer embeddings make exact ties: the max q equal to |min q| (Python's max keeps the first: q.max()),
    # two entries at the maximum, two at the minimum (torch splits a reduction's gradient evenly over ties).
    graph = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    if case == "max_equals_abs_min":
        local = np.array([[3.0, -1.0], [-1.0, 1.0], [0.0, -2.0]])
    elif case == "tied_maxima":
        local = np.array([[1.0, 3.0], [3.0, 1.0], [0.0, -1.0]])
    else:
        local = np.array([[-1.0, -3.0], [-3.0, -1.0], [0.0, 1.0]])
    batch = np.array([0, 1, 2])
    q = np.where(np.arange(3)[None, :] == batch[:, None], 0.0, local @ graph.T)
    if case == "max_equals_abs_min":
        assert q.max() == -q.min()
    elif case == "tied_maxima":
        assert (q == q.max()).sum() == 2
    else:
        assert (q == q.min()).sum() == 2 and -q.min() > q.max()
    for beta in (1.0, 10.0):
        v, gl, gg = _torch_grads(local, graph, batch, beta, 0.5)
        rv, g = jsd_loss_and_grad(local, graph, batch, beta=beta)
        assert abs(rv - v) <= 10 * RTOL * (1 + abs(v))
        np.testing.assert_allclose(g.local, gl, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(g.graph, gg, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------------------------------
# Errors (spec 14.7)

L, GR, BT = np.zeros((4, 3)) + 0.5, np.ones((2, 3)), np.array([0, 1, 1, 0])

ERRORS = [
    (dict(local=np.ones(4)), ValueError, "local must be 2-D of shape (N, d); got shape (4,)"),
    (dict(graph=np.ones((2, 3, 1))), ValueError, "graph must be 2-D of shape (G, d); got shape (2, 3, 1)"),
    (dict(graph=np.ones((2, 5))), ValueError,
     "local and graph must have the same feature dimension d; got shapes (4, 3) and (2, 5)"),
    (dict(local=np.ones((0, 3)), batch=np.zeros(0, dtype=int)), ValueError,
     "local needs at least one row (N >= 1); got shape (0, 3)"),
    (dict(local=np.ones((4, 0)), graph=np.ones((2, 0))), ValueError,
     "the feature dimension d must be >= 1; got shape (4, 0)"),
    (dict(graph=np.ones((1, 3)), batch=np.zeros(4, dtype=int)), ValueError,
     "graph needs at least two rows (G >= 2): with one graph no node has a negative; got shape (1, 3)"),
    (dict(local=np.ones((4, 3), dtype=np.int64)), TypeError,
     "local must have a floating dtype (float16, bfloat16, float32 or float64); got int64"),
    (dict(graph=np.ones((2, 3), dtype=bool)), TypeError,
     "graph must have a floating dtype (float16, bfloat16, float32 or float64); got bool"),
    (dict(graph=np.ones((2, 3), dtype=np.float32)), TypeError,
     "local and graph must have the same dtype; got float64 and float32"),
    (dict(batch=np.array([0, 1, 1])), ValueError,
     "batch must be 1-D of shape (N,) = (4,), one graph index per row of local; got shape (3,)"),
    (dict(batch=np.array([[0, 1, 1, 0]])), ValueError,
     "batch must be 1-D of shape (N,) = (4,), one graph index per row of local; got shape (1, 4)"),
    (dict(batch=np.array([0.0, 1.0, 1.0, 0.0])), TypeError,
     "batch must have an integer dtype (the graph index of each node); got float64"),
    (dict(batch=np.array([0, 1, 2, 0])), ValueError,
     "batch values must lie in [0, G) = [0, 2); got values from 0 to 2"),
    (dict(batch=np.array([0, -1, 1, 0])), ValueError,
     "batch values must lie in [0, G) = [0, 2); got values from -1 to 1"),
    (dict(beta=-0.5), ValueError, "beta must be finite and >= 0 (jsd_loss); got -0.5"),
    (dict(beta=math.nan), ValueError, "beta must be finite and >= 0 (jsd_loss); got nan"),
    (dict(beta=math.inf), ValueError, "beta must be finite and >= 0 (jsd_loss); got inf"),
    (dict(beta="1"), TypeError, "beta must be a real number; got '1' of type str"),
    (dict(tau_plus=1.0), ValueError, "tau_plus must satisfy 0 <= tau_plus < 1; got 1.0"),
    (dict(tau_plus=-0.1), ValueError, "tau_plus must satisfy 0 <= tau_plus < 1; got -0.1"),
    (dict(tau_plus=None), TypeError, "tau_plus must be a real number; got None of type NoneType"),
    (dict(convention="paper"), ValueError, "convention must be one of 'released', 'corrected'; got 'paper'"),
    (dict(reduction="max"), ValueError, "reduction must be one of 'mean', 'sum', 'none'; got 'max'"),
]


@pytest.mark.parametrize("over,exc,msg", ERRORS, ids=[m[:40] for _, _, m in ERRORS])
@pytest.mark.parametrize("fn", [jsd_loss, jsd_loss_and_grad])
def test_every_error_message(fn, over, exc, msg):
    args, over = dict(local=L, graph=GR, batch=BT), dict(over)
    kw = {k: over.pop(k) for k in list(over) if k not in args}
    args.update(over)
    with pytest.raises(exc) as info:
        fn(args["local"], args["graph"], args["batch"], **kw)
    assert str(info.value) == msg
