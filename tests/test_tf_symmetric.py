"""The two-pass kernels of hardneg_tf.symmetric (in-batch symmetric tiles, symmetric cross layout on shared tiles)
equal the float64 reference, in every execution mode, and the automatic choice is the documented rule.

The kernels only reorder the same sums (a row's statistics accumulated from both sides of a tile, one fixed
shift c instead of the row maximum), so the tolerances are those of tests/test_tf_loss.py (its ``_cond``:
rounding grows with the size of the log-domain terms). Tiny memory budgets give tiles of a few rows that do
not divide n, so diagonal, partner, padded and unmasked tiles all occur. Large unnormalised rows make the fixed
shift underflow for some rows: the per-row fallback must then restore the exact result.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import hardneg_tf  # noqa: E402
from hardneg_tf import blocks, symmetric  # noqa: E402
from hardneg_tf.numerics import make_config  # noqa: E402

import test_tf_loss as tl  # noqa: E402

D = tl._data(B=7, d=5, seed=3)
#: 3 rows per tile in float64 (four (T x T) buffers): 14 in-batch rows are 5 tiles, the last one padded.
TILE3 = 3 * 3 * 4 * 8
IN_BATCH = [
    ("defaults", {}, {}),
    ("beta0", {}, dict(beta=0.0)),
    ("beta2.5", {}, dict(beta=2.5)),
    ("t3", {}, dict(temperature=3.0)),  # 1/t not a float32 number: nothing may pass through float32
    ("easy", {}, dict(estimator="easy")),
    ("labels", dict(labels=D["labels"]), {}),
    ("labels_beta2.5_none", dict(labels=D["labels"]), dict(beta=2.5, reduction="none")),
    ("floor_binds", {}, dict(tau_plus=0.9)),
    ("no_clamp", {}, dict(clamp=False, tau_plus=0.02)),
    ("unnormalized_t0.05", {}, dict(normalize=False, temperature=0.05)),
]
CROSS = [
    ("cross", {}, dict(layout="cross")),
    ("cross_beta0_none", {}, dict(layout="cross", beta=0.0, reduction="none")),
    ("cross_labels_beta2.5", dict(labels=D["labels"]), dict(layout="cross", beta=2.5)),
    ("cross_easy_sum", {}, dict(layout="cross", estimator="easy", reduction="sum")),
    ("cross_t3", {}, dict(layout="cross", temperature=3.0)),
]


@pytest.fixture
def forced(monkeypatch):
    monkeypatch.setenv(symmetric.ENV_VAR, "1")


def _spy(monkeypatch):
    """Count the traces that took a two-pass kernel (its pass 1)."""
    seen = []
    real = symmetric._sums_pass

    def spy(*args, **kw):
        seen.append(True)
        return real(*args, **kw)

    monkeypatch.setattr(symmetric, "_sums_pass", spy)
    return seen


def _check(arrays, kw, mode, budget, dtype="float64", tol_eps=tl.EPS64):
    cot = tl._cot(kw, tl.n_anchors(arrays, kw))
    v, g = tl.run_tf(arrays, kw, mode=mode, cot=cot, memory_budget=budget, dtype=dtype)
    rv, rg = tl.reference(arrays, kw, dtype=dtype, cot=cot)
    tol = 64 * tol_eps * tl._cond(kw)
    tl.assert_close(v, rv, tol * max(1.0, np.max(np.abs(rv))), "value")
    for k in g:
        tl.assert_close(g[k], rg[k], tol * max(1.0, np.max(np.abs(rg[k]))), f"d/d{k}")


@pytest.mark.parametrize("mode", ["eager", "outer", "graph", "xla"])
@pytest.mark.parametrize("name,extra,kw", IN_BATCH + CROSS, ids=[f[0] for f in IN_BATCH + CROSS])
def test_forced_kernel_matches_reference(forced, monkeypatch, name, extra, kw, mode):
    """Values and gradients (fused sweep, forward + separate backward, "none" cotangents) in float64."""
    seen = _spy(monkeypatch)
    _check(dict(z1=D["z1"], z2=D["z2"], **extra), kw, mode, TILE3)
    assert seen, "the two-pass kernel was not used"


@pytest.mark.parametrize("budget", [None, 2 * 2 * 4 * 8, 5 * 5 * 4 * 8, 10**9], ids=["default", "T2", "T5", "T_all"])
def test_tile_sizes(forced, budget):
    """Tiles of 2 (dividing n = 14), 5 (not dividing it), and one tile for the whole batch."""
    for kw in (dict(), dict(layout="cross", beta=2.5)):
        _check(dict(z1=D["z1"], z2=D["z2"]), kw, "xla", budget)


@pytest.mark.parametrize("kw", [dict(beta=2.5), dict(layout="cross", labels=D["labels"])], ids=["in_batch", "cross"])
def test_float32_xla(forced, kw):
    """float32 compute, the measured configuration; float32 rounding in the tolerance."""
    arrays = dict(z1=D["z1"], z2=D["z2"], **({"labels": kw.pop("labels")} if "labels" in kw else {}))
    _check(arrays, kw, "xla", 3 * 3 * 4 * 4, dtype="float32", tol_eps=tl.EPS32)


def _underflowing(scale):
    """Unnormalised rows where one pair is ``scale`` times longer: c = max |u|^2 / t makes the other rows'
    e^{(1+beta)(s - c)} underflow (below float64's smallest normal number for scale 30, t = 1, beta = 1)."""
    rng = np.random.default_rng(5)
    z1, z2 = rng.normal(size=(7, 5)) / math.sqrt(5), rng.normal(size=(7, 5)) / math.sqrt(5)
    z1[2] *= scale
    z2[2] *= scale
    return dict(z1=z1, z2=z2)


FALLBACK = [dict(normalize=False, temperature=1.0), dict(normalize=False, temperature=1.0, reduction="none"),
            dict(normalize=False, temperature=1.0, layout="cross"),
            dict(normalize=False, temperature=1.0, layout="cross", reduction="none", beta=2.5)]


@pytest.mark.parametrize("mode", ["eager", "outer", "xla"])
@pytest.mark.parametrize("kw", FALLBACK, ids=["in_batch", "in_batch_none", "cross", "cross_none_beta2.5"])
def test_underflow_fallback_restores_the_exact_result(forced, monkeypatch, kw, mode):
    arrays = _underflowing(30.0)
    _check(arrays, kw, mode, TILE3)
    # the fallback is what makes it right: without it the underflowed rows' sums are 0
    real = symmetric._fallback
    monkeypatch.setattr(symmetric, "_fallback",
                        lambda layout, cfg, budget, st, coef=None, backward_only=False, skip=False:
                        (st, *real(layout, cfg, budget, dict(st, flag=tf.zeros_like(st["flag"])), coef,
                                   backward_only, skip)[1:]))
    with pytest.raises(AssertionError):
        _check(arrays, kw, mode, TILE3)


@pytest.mark.parametrize("kw,skipped", [(dict(), True), (dict(layout="cross"), True),
                                         (dict(temperature=0.02), False),  # (1+beta) 2/t = 200: could underflow
                                         (dict(normalize=False), False)])  # no bound on the logits
def test_fallback_is_left_out_only_where_the_bound_rules_underflow_out(forced, monkeypatch, kw, skipped):
    # left out, XLA would still plan its row blocks' buffers (memory); kept, it restores underflowed rows
    seen = []
    real = symmetric._fallback

    def spy(*args, skip=False, **kwargs):
        seen.append(skip)
        return real(*args, skip=skip, **kwargs)

    monkeypatch.setattr(symmetric, "_fallback", spy)
    _check(dict(z1=D["z1"], z2=D["z2"]), kw, "xla", TILE3)
    assert seen and all(s is skipped for s in seen), seen


def test_env_zero_keeps_the_row_block_kernel(monkeypatch):
    monkeypatch.setenv(symmetric.ENV_VAR, "0")
    seen = _spy(monkeypatch)
    for kw in (dict(), dict(layout="cross")):
        _check(dict(z1=D["z1"], z2=D["z2"]), kw, "graph", TILE3)
    assert not seen


def _in_batch(n, dtype=tf.float32, **hp):
    kw = dict(temperature=0.5, beta=1.0, tau_plus=0.1, estimator="hard", clamp=True)
    kw.update(hp)
    cfg = make_config(**kw, compute_dtype=dtype)
    layout = blocks.InBatch(tf.zeros([n, 2], dtype), cfg)
    layout.normalized = True
    return layout, cfg


def test_automatic_choice(monkeypatch):
    """Large normalised in-batch calls whose fixed shift cannot underflow take the kernel; the rest do not."""
    monkeypatch.delenv(symmetric.ENV_VAR, raising=False)
    monkeypatch.setattr(symmetric, "_in_xla", lambda: True)  # traced for XLA (see the test below)
    big = symmetric.MIN_ROWS
    assert symmetric.choose_in_batch(*_in_batch(big), budget=None)
    assert not symmetric.choose_in_batch(*_in_batch(big - 2), budget=None)  # below the measured crossover
    assert not symmetric.choose_in_batch(*_in_batch(big, temperature=0.02), budget=None)  # 4/t > 80: underflow
    assert not symmetric.choose_in_batch(*_in_batch(big, beta=math.inf), budget=None)  # not supported
    assert not symmetric.choose_in_batch(*_in_batch(big), budget=2**16)  # tiles below MIN_TILE
    layout, cfg = _in_batch(big)
    layout.normalized = False  # c unknown at trace time
    assert not symmetric.choose_in_batch(layout, cfg, budget=None)
    assert not symmetric.choose_in_batch(layout, cfg, budget=None, anchors=tf.range(4))  # gather
    monkeypatch.setenv(symmetric.ENV_VAR, "1")
    assert symmetric.choose_in_batch(*_in_batch(4), budget=None)
    assert not symmetric.choose_in_batch(*_in_batch(big, beta=math.inf), budget=None)  # forcing cannot help
    u = tf.zeros([symmetric.MIN_CROSS_ROWS, 2])
    monkeypatch.delenv(symmetric.ENV_VAR)
    assert symmetric.choose_cross(u, _in_batch(2)[1], None, True)
    assert not symmetric.choose_cross(u[:-1], _in_batch(2)[1], None, True)


@pytest.mark.parametrize("layout", [None, "cross"])
def test_automatic_choice_takes_the_kernels_under_xla_only(monkeypatch, layout):
    # measured faster than row blocks under XLA only; eagerly and in a plain tf.function the tile loop runs op by op
    monkeypatch.delenv(symmetric.ENV_VAR, raising=False)
    seen = _spy(monkeypatch)
    B = max(symmetric.MIN_ROWS // 2, symmetric.MIN_CROSS_ROWS)
    z = tf.random.stateless_normal([B, 4], seed=[1, 2])

    def loss(a, b):
        return hardneg_tf.hcl_loss(a, b, layout=layout)

    loss(z, z[::-1])
    tf.function(loss)(z, z[::-1])
    assert seen == []
    tf.function(loss, jit_compile=True)(z, z[::-1])
    assert seen == [True]


def test_tensor_temperature_and_beta_inf_fall_back(forced, monkeypatch):
    """Unsupported calls still give the reference's result through the row-block kernel."""
    seen = _spy(monkeypatch)
    _check(dict(z1=D["z1"], z2=D["z2"]), dict(beta=math.inf), "graph", TILE3)
    _, g = tl.run_tf(dict(z1=D["z1"], z2=D["z2"]), {}, mode="graph", t_tensor="float64", memory_budget=TILE3)
    _, rg = tl.reference(dict(z1=D["z1"], z2=D["z2"]), {})
    np.testing.assert_allclose(g["temperature"], rg["temperature"], rtol=1e-12)
    assert not seen


@pytest.mark.parametrize("layout", ["in_batch", "cross"])
def test_graph_does_not_grow_with_the_batch(forced, layout):
    """The tile pairs are walked by tf.while_loop: tracing B = 65536 builds as many ops as B = 4096, and the
    largest traced tensor grows linearly with B (the fallback's row block, bs x 2B; tiles are fixed)."""
    def ops(B):
        @tf.function
        def step(z1, z2):
            with tf.GradientTape() as tape:
                tape.watch([z1, z2])
                v = hardneg_tf.hcl_loss(z1, z2, layout=None if layout == "in_batch" else "cross")
            return v, tape.gradient(v, [z1, z2])

        graph = step.get_concrete_function(tf.TensorSpec([B, 8]), tf.TensorSpec([B, 8])).graph
        graphs = list(tl._all_graphs(graph))
        sizes = [o.shape.num_elements() for g in graphs for op in g.get_operations() for o in op.outputs
                 if o.shape.rank is not None and o.shape.is_fully_defined()]
        return sum(len(g.get_operations()) for g in graphs), max(sizes)

    (small, biggest_small), (large, biggest) = ops(4096), ops(65536)
    assert small == large
    assert biggest <= 16 * biggest_small and biggest < 65536**2 // 100
