"""Memory of hardneg_jax without timing anything: the traced programs hold no (A x C) array, and XLA's own
accounting of the compiled gradient (``memory_analysis``) stays far below the naive transliteration's.
"""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
from jax.extend import core as jcore  # noqa: E402

import hardneg_jax  # noqa: E402
from hardneg_jax.blocks import DEFAULT_CROSS_BUDGET, LIVE_ROWS, rows_per_block  # noqa: E402


def _largest_array(closed_jaxpr) -> int:
    """Elements of the largest value anywhere in a jaxpr, sub-jaxprs (scan bodies, custom-VJP rules, pjit) included."""
    best = 0

    def visit(jaxpr):
        nonlocal best
        for v in list(jaxpr.invars) + list(jaxpr.constvars) + list(jaxpr.outvars):
            best = max(best, int(np.prod(getattr(v.aval, "shape", ()))))
        for eqn in jaxpr.eqns:
            for v in eqn.outvars:
                best = max(best, int(np.prod(getattr(v.aval, "shape", ()))))
            for p in eqn.params.values():
                for sub in p if isinstance(p, (tuple, list)) else (p,):
                    if isinstance(sub, jcore.ClosedJaxpr):
                        visit(sub.jaxpr)
                    elif isinstance(sub, jcore.Jaxpr):
                        visit(sub)

    visit(closed_jaxpr.jaxpr)
    return best


LAYOUTS = [
    ("in_batch", None, "mean"),
    ("in_batch_none", None, "none"),
    ("shared_bank", (1024, 16), "mean"),
]


@pytest.mark.parametrize("name,bank,reduction", LAYOUTS, ids=[x[0] for x in LAYOUTS])
def test_gradient_program_holds_no_anchor_by_candidate_array(name, bank, reduction):
    B, d = 256, 16
    rng = np.random.default_rng(0)
    z1 = jnp.asarray(rng.standard_normal((B, d)), jnp.float32)
    z2 = jnp.asarray(rng.standard_normal((B, d)), jnp.float32)
    neg = None if bank is None else jnp.asarray(rng.standard_normal(bank), jnp.float32)
    A, C = (2 * B, 2 * B) if bank is None else (B, bank[0])
    budget = 8 * C * (LIVE_ROWS * 4 + 1)  # 8 anchor rows per block
    assert rows_per_block(A, C, 4, budget) == 8

    def f(a, b, n):
        v = hardneg_jax.hcl_loss(a, b, negatives=n, reduction=reduction, memory_budget=budget)
        return v.sum()

    vg = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2) if bank else (0, 1)))
    largest = _largest_array(jax.make_jaxpr(vg)(z1, z2, neg))
    # the largest values are one block (8 x C) or the rows themselves ((2B or K) x d), never A x C
    assert largest <= max(8 * C, 2 * B * d, C * d) < A * C // 4, (largest, A * C)
    # XLA's buffer assignment for the compiled program: its temporaries (a few blocks plus copies of the
    # (B, d) rows; ~1/5 of the matrix at this small size) stay well below one (A x C) float32 matrix, of which
    # the naive program holds several.
    temp = vg.lower(z1, z2, neg).compile().memory_analysis().temp_size_in_bytes
    assert temp < A * C * 4 // 2, (temp, A * C * 4)


def test_temporary_memory_is_a_tenth_of_the_naive_transliteration_at_4096_pairs():
    # The target, measured by XLA's buffer assignment of the compiled forward+backward (no execution).
    from hardneg.bench import naive_jax

    B, d = 4096, 128
    z = jax.ShapeDtypeStruct((B, d), jnp.float32)
    ours = jax.jit(jax.value_and_grad(lambda a, b: hardneg_jax.hcl_loss(a, b), argnums=(0, 1)))
    ours_temp = ours.lower(z, z).compile().memory_analysis().temp_size_in_bytes
    naive_temp = naive_jax.value_and_grad.lower(z, z, 0.5, 1.0, 0.1).compile().memory_analysis().temp_size_in_bytes
    assert ours_temp * 10 <= naive_temp, (ours_temp, naive_temp)
    # the memory model: one block's working set (what the budget pays for) plus a few copies of the rows
    rows = rows_per_block(2 * B, 2 * B, 4, None)
    assert ours_temp <= rows * 2 * B * (LIVE_ROWS * 4 + 1) + 8 * (2 * B * d * 4), (ours_temp, rows)


CROSS = [
    ("cross_symmetric_shared_bank", (512, 16), True, "mean"),
    ("cross_one_way_none", None, False, "none"),
    ("cross_symmetric_per_anchor_none", (256, 2, 16), True, "none"),
]


@pytest.mark.parametrize("name,bank,symmetric,reduction", CROSS, ids=[x[0] for x in CROSS])
def test_cross_gradient_program_holds_no_b_by_b_array(name, bank, symmetric, reduction):
    # Both directions, forward and backward: the reverse direction (anchors z2 against z1) recomputes its
    # similarities block by block rather than transposing a (B x B) matrix.
    B, d = 256, 16
    rng = np.random.default_rng(1)
    z1 = jnp.asarray(rng.standard_normal((B, d)), jnp.float32)
    z2 = jnp.asarray(rng.standard_normal((B, d)), jnp.float32)
    neg = None if bank is None else jnp.asarray(rng.standard_normal(bank), jnp.float32)
    K = 0 if bank is None else bank[-2]
    C = B + K  # candidates of z1's anchors (the widest block)
    budget = 8 * C * (LIVE_ROWS * 4 + 1) + (8 * 3 * K * d * 4 if bank is not None and len(bank) == 3 else 0)

    def f(a, b, n, t):
        v = hardneg_jax.hcl_loss(a, b, negatives=n, temperature=t, reduction=reduction, layout="cross",
                                 symmetric=symmetric, memory_budget=budget)
        return v.sum()

    vg = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3) if bank else (0, 1, 3)))
    t = jnp.float32(0.5)
    largest = _largest_array(jax.make_jaxpr(vg)(z1, z2, neg, t))
    per_anchor = bank is not None and len(bank) == 3
    # one block (<= 8 x C, or 8 x K x d of a per-anchor bank's rows), the rows ((B + K) x d), or the bank itself
    assert largest <= max(8 * C, (B + K) * d, int(np.prod(bank)) if per_anchor else 0), (largest, B * B)
    assert largest < B * B // 4


def test_cross_temporary_memory_is_a_tenth_of_the_naive_clip_style_program_at_4096_pairs():
    # Issue 13's target for the cross layout, by XLA's buffer assignment of the compiled forward+backward.
    from hardneg.bench import naive_jax

    B, d = 4096, 128
    z = jax.ShapeDtypeStruct((B, d), jnp.float32)
    ours = jax.jit(jax.value_and_grad(lambda a, b: hardneg_jax.hcl_loss(a, b, layout="cross"), argnums=(0, 1)))
    ours_temp = ours.lower(z, z).compile().memory_analysis().temp_size_in_bytes
    naive = naive_jax.cross_value_and_grad.lower(z, z, 0.5, 1.0, 0.1).compile()
    naive_temp = naive.memory_analysis().temp_size_in_bytes
    assert ours_temp * 10 <= naive_temp, (ours_temp, naive_temp)
    assert naive_temp >= B * B * 4  # the naive program holds at least one (B x B) float32 matrix
    # the memory model: one block's working set (the directions' blocks are not live together) plus a few
    # copies of the (B, d) rows of both sides
    rows = rows_per_block(B, B, 4, None, default=DEFAULT_CROSS_BUDGET)
    assert ours_temp <= rows * B * (LIVE_ROWS * 4 + 1) + 8 * (2 * B * d * 4), (ours_temp, rows)


@pytest.mark.parametrize("budget", [1, 10_000, 10**6, 10**9])
def test_block_rows_fit_the_budget(budget):
    A, C = 1000, 3000
    rows = rows_per_block(A, C, 4, budget)
    assert 1 <= rows <= A
    assert rows == 1 or rows * C * (LIVE_ROWS * 4 + 1) <= budget
