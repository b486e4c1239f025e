"""Blocked evaluation: walk the anchors in blocks of rows with ``lax.scan``; no (A x C) array is ever live.

Each block of ``R`` anchors forms its (R, C) similarities against all candidates with one matrix product,
runs :func:`hardneg_jax.rows.block_rows` on them and, for the gradient, pushes the block's dloss/ds back onto
the rows (spec section 8):

in-batch     gU[I] += G_I U,  gU += G_I^T U_I       (G is never formed beyond the block)
shared bank  gu1[I] += G_I V, gV += G_I^T u1_I
per anchor   gu1[I] += G_I V_I (batched), gV[I] = G_I (x) u1_I
cross        anchors X = u1, candidates C = [u2; shared bank] (+ a per-anchor bank's own rows):
             gX[I] += G_I C, gC += G_I^T X_I; symmetric: a second walk with X = u2, C = u1 (no bank)

The cross layout's reverse direction needs the column statistics of the same similarities; the second walk
recomputes them block by block (one more (R x C) product per block) instead of holding a (B x B) array.

The last block starts at ``A - R`` (so every slice is in bounds and nothing is padded); its rows that the
previous block already covered are masked out (no negatives: zero loss, zero gradient).

Live memory per block is about ``LIVE_ROWS`` arrays of shape (R, C) in the compute dtype, so
:func:`rows_per_block` picks R from the memory budget; the carried accumulators (gradients of the rows)
are the size of the inputs.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
from jax import lax

from .rows import Needs, Statics, block_rows

__all__ = ["DEFAULT_MEMORY_BUDGET", "DEFAULT_CROSS_BUDGET", "device_default_budget", "LIVE_ROWS", "rows_per_block",
           "Inputs", "PassOut", "run_pass"]

#: Default transient working memory of the blocked computation, in bytes (``memory_budget=None``) ...
DEFAULT_MEMORY_BUDGET = 16 * 2**20
#: ... raised, when candidate rows are long (C > ~7.7k in float32), to fit this many anchor rows: thinner
#: blocks make the matrix products re-read all candidates too often (24 rows were 1.5x slower than 128 at
#: C = 32768; at B = 4096 pairs, 128 rows are as fast as 480 and need a third of the memory).
DEFAULT_MIN_ROWS = 128
#: (R, C) compute-dtype arrays live at once in a block (similarities, two exponentials, gradient, XLA temporaries).
LIVE_ROWS = 4
#: Default budget of each direction of the cross layout: with C = B = 4096 candidates it gives 128-row blocks
#: (the 16 MiB default would give 240), as fast (0.33 s per forward+backward step either way, 2 CPU cores)
#: with half the working memory, which keeps the cross layout's peak a tenth of the naive CLIP-style program's.
DEFAULT_CROSS_BUDGET = DEFAULT_MEMORY_BUDGET // 2


def device_default_budget(x) -> Optional[int]:
    """The ``memory_budget=None`` default where ``x`` is computed: None on CPU (the defaults above, unchanged),
    else :func:`hardneg.budget.default_memory_budget` of the accelerator (min(2 GiB, its memory / 16)).

    A concrete array names its device; a tracer (under ``jit``/``vmap``) does not, and the computation then
    runs on JAX's default backend, whose first device is asked instead. The memory size is the allocator's
    ``bytes_limit`` (XLA preallocates a fraction of the card; its limit is what the program may use).
    """
    try:
        dev = next(iter(x.devices()))
    except Exception:  # a tracer: no concrete device
        dev = jax.devices()[0]
    if dev.platform == "cpu":
        return None
    from hardneg.budget import default_memory_budget

    try:
        total = int((dev.memory_stats() or {}).get("bytes_limit", 0))
    except Exception:  # a platform without memory statistics
        total = 0
    return default_memory_budget(dev.platform, DEFAULT_MEMORY_BUDGET, total)


def rows_per_block(n_anchors: int, n_cols: int, itemsize: int, budget: Optional[int], per_row_extra: int = 0,
                   default: int = DEFAULT_MEMORY_BUDGET) -> int:
    """Anchor rows per block so that the block's working set fits ``budget`` bytes.

    Parameters
    ----------
    n_anchors : A, anchors to walk.
    n_cols : C, candidates per anchor.
    itemsize : bytes of the compute dtype.
    budget : bytes, or None for :data:`DEFAULT_MEMORY_BUDGET` (raised to fit :data:`DEFAULT_MIN_ROWS` rows
        of shared candidates).
    per_row_extra : further bytes per anchor row (a per-anchor bank's slice and gradient).
    default : the budget used when ``budget`` is None (:data:`DEFAULT_CROSS_BUDGET` for the cross layout).

    Returns
    -------
    int in [1, A]; a multiple of 8 when smaller than A and at least 8.
    """
    per_row = n_cols * (LIVE_ROWS * itemsize + 1) + per_row_extra  # + 1: the boolean mask
    if budget is None:
        # the floor helps blocks that share their candidates (in-batch, shared bank), not per-anchor banks
        rows = max(default // max(per_row, 1), DEFAULT_MIN_ROWS if not per_row_extra else 1)
    else:
        rows = int(budget) // max(per_row, 1)
    rows = max(1, min(n_anchors, rows))
    if 8 <= rows < n_anchors:
        rows -= rows % 8
    return int(rows)


class Inputs(NamedTuple):
    """Normalised rows of one evaluation, in the compute dtype.

    in-batch: ``U`` (n, d) = [u(z1); u(z2)] over the whole (gathered) batch; ``anchors`` (A,) int32 global row
    of each local anchor (z1 rows then z2 rows); ``lab`` (n,) labels or None.
    bank: ``U`` = u1 (B, d), ``U2`` = u2 (B, d), ``V`` (K, d) or (B, K, d); ``lab`` (B,), ``nlab`` (K,) or (B, K).
    cross: ``U`` = u1 (n, d), ``U2`` = u2 (n, d) over the whole (gathered) batch, ``V`` the bank or None (a
    per-anchor bank holds the local anchors' rows), ``lab`` (n,), ``nlab``; the local pairs are rows
    ``row0 + [0, B_l)``.
    """

    U: jax.Array
    U2: Optional[jax.Array] = None
    V: Optional[jax.Array] = None
    anchors: Optional[jax.Array] = None
    lab: Optional[jax.Array] = None
    nlab: Optional[jax.Array] = None
    half: int = 0  # in-batch: B (global pairs), so that partner(i) = (i + B) mod 2B
    row0: object = 0  # cross: global row of this device's first pair (0 unless distributed)


class PassOut(NamedTuple):
    """Per-anchor losses and, for a gradient pass, the cotangent-weighted gradients.

    loss : (A,) per-anchor loss.
    gU, gU2, gV : gradients w.r.t. ``Inputs.U``, ``U2``, ``V`` (None where absent or not computed).
    g_t, g_beta, g_tau : scalars or None.
    """

    loss: jax.Array
    gU: Optional[jax.Array] = None
    gU2: Optional[jax.Array] = None
    gV: Optional[jax.Array] = None
    g_t: Optional[jax.Array] = None
    g_beta: Optional[jax.Array] = None
    g_tau: Optional[jax.Array] = None


def _matmul_nt(x, y):
    """x (R, d) @ y (C, d)^T -> (R, C)."""
    return lax.dot_general(x, y, (((1,), (1,)), ((), ())))


def _matmul_tn(x, y):
    """x (R, C)^T @ y (R, d) -> (C, d)."""
    return lax.dot_general(x, y, (((0,), (0,)), ((), ())))


def _block_geometry(st: Statics, n_anchors: int) -> Tuple[int, int]:
    R = min(st.block, n_anchors)
    return R, -(-n_anchors // R)


def _starts(b, R, A):
    """Start row of block b (clamped into range) and the mask of rows this block owns."""
    start = jnp.minimum(b * R, A - R)
    owned = start + jnp.arange(R) >= b * R
    return start, owned


def _zero_like_all(*xs) -> jax.Array:
    """A scalar 0 carrying the union of the inputs' manual-axis types (inside ``shard_map``, scan carries must
    start with the varying-ness that the body gives them; ``full_like`` keeps it, and adding zeros is exact)."""
    zero = None
    for v in xs:
        if v is None:
            continue
        z = lax.full_like(v, 0, dtype=jnp.float32, shape=())
        zero = z if zero is None else zero + z
    return zero


def run_pass(
    st: Statics,
    x: Inputs,
    t: jax.Array,
    beta: jax.Array,
    tau: jax.Array,
    c: Optional[jax.Array] = None,
    needs: Needs = Needs(),
) -> PassOut:
    """Walk all anchors; the value only (``c is None``) or also the gradients weighted by cotangents ``c`` (A,).

    Returns
    -------
    PassOut with gradients w.r.t. the normalised rows (before dividing back through the normalisation).
    """
    base = _zero_like_all(x.U, x.U2, x.V, x.anchors, x.lab, x.nlab, t, beta, tau, c).astype(x.U.dtype)
    zeros = lambda shape: jnp.zeros(shape, x.U.dtype) + base  # noqa: E731
    if st.tiles and not needs.beta:
        # the tiled kernels (chosen statically by hardneg_jax.symmetric.plan)
        from . import symmetric

        return (symmetric.cross if st.cross else symmetric.in_batch)(st, x, t, beta, tau, c, needs, zeros)
    if st.cross:
        return _cross(st, x, t, beta, tau, c, needs, zeros)
    if st.bank == "none":
        return _in_batch(st, x, t, beta, tau, c, needs, zeros)
    return _bank(st, x, t, beta, tau, c, needs, zeros)


def _hp_sums(out, needs, cd):
    z = jnp.zeros((), cd)
    return (
        out.g_t if needs.temperature else z,
        out.g_beta if needs.beta else z,
        out.g_tau if needs.tau_plus else z,
    )


def _in_batch(st, x: Inputs, t, beta, tau, c, needs, zeros):
    U, anchors = x.U, x.anchors
    cd = U.dtype
    n = U.shape[0]
    A = anchors.shape[0]
    half = x.half
    partner_all = (anchors + half) % n
    a_all = jnp.sum(U[anchors] * U[partner_all], axis=1) / t
    R, nb = _block_geometry(st, A)
    cols = jnp.arange(n, dtype=jnp.int32)
    grad = c is not None
    inv_t = 1.0 / t

    def block(carry, b):
        start, owned = _starts(b, R, A)
        rows = lax.dynamic_slice(anchors, (start,), (R,))
        part = (rows + half) % n
        UI = U[rows]
        S = _matmul_nt(UI * inv_t, U)
        mask = (cols[None, :] != rows[:, None]) & (cols[None, :] != part[:, None]) & owned[:, None]
        if x.lab is not None:
            mask = mask & (x.lab[None, :] != x.lab[rows][:, None])
        aI = lax.dynamic_slice(a_all, (start,), (R,))
        cI = None if not grad else jnp.where(owned, lax.dynamic_slice(c, (start,), (R,)), 0.0)
        out = block_rows(S, mask, aI, t, beta, tau, st, cI, needs)
        loss_acc = _add_rows(carry[0], start, out.loss)
        if not grad:
            return (loss_acc,), None
        _, da_acc, gU, gt, gb, gtau = carry
        da_acc = _add_rows(da_acc, start, out.da)
        if needs.arrays:
            gU = gU + _matmul_tn(out.dS, UI)
            gU = gU.at[rows].add(out.dS @ U)
        ht, hb, htau = _hp_sums(out, needs, cd)
        return (loss_acc, da_acc, gU, gt + ht, gb + hb, gtau + htau), None

    z = zeros(())
    if not grad:
        (loss,), _ = lax.scan(block, (zeros((A,)),), jnp.arange(nb))
        return PassOut(loss)
    init = (zeros((A,)), zeros((A,)), zeros(U.shape) if needs.arrays else z, z, z, z)
    (loss, da, gU, gt, gb, gtau), _ = lax.scan(block, init, jnp.arange(nb))
    if needs.arrays:
        # The positive entries G[i, p(i)] = da_i, in both of their roles.
        gU = gU.at[anchors].add(da[:, None] * U[partner_all]).at[partner_all].add(da[:, None] * U[anchors])
        gU = gU / t
    else:
        gU = None
    return PassOut(loss, gU, None, None, gt, gb, gtau)


def _bank(st, x: Inputs, t, beta, tau, c, needs, zeros):
    U1, U2, V = x.U, x.U2, x.V
    cd = U1.dtype
    A = U1.shape[0]
    shared = st.bank == "shared"
    a_all = jnp.sum(U1 * U2, axis=1) / t
    R, nb = _block_geometry(st, A)
    grad = c is not None
    inv_t = 1.0 / t

    def block(carry, b):
        start, owned = _starts(b, R, A)
        UI = lax.dynamic_slice_in_dim(U1, start, R)
        if shared:
            VI = V
            S = _matmul_nt(UI * inv_t, V)
        else:
            VI = lax.dynamic_slice_in_dim(V, start, R)
            S = jnp.einsum("rd,rkd->rk", UI * inv_t, VI)
        mask = jnp.broadcast_to(owned[:, None], S.shape)
        if x.lab is not None:
            labI = lax.dynamic_slice_in_dim(x.lab, start, R)
            nl = x.nlab[None, :] if shared else lax.dynamic_slice_in_dim(x.nlab, start, R)
            mask = mask & (nl != labI[:, None])
        aI = lax.dynamic_slice_in_dim(a_all, start, R)
        cI = None if not grad else jnp.where(owned, lax.dynamic_slice_in_dim(c, start, R), 0.0)
        out = block_rows(S, mask, aI, t, beta, tau, st, cI, needs)
        loss_acc = _add_rows(carry[0], start, out.loss)
        if not grad:
            return (loss_acc,), None
        _, da_acc, gU1, gV, gt, gb, gtau = carry
        da_acc = _add_rows(da_acc, start, out.da)
        if needs.arrays:
            if shared:
                gU1 = _add_rows(gU1, start, out.dS @ V)
                gV = gV + _matmul_tn(out.dS, UI)
            else:
                gU1 = _add_rows(gU1, start, jnp.einsum("rk,rkd->rd", out.dS, VI))
                gV = _add_rows(gV, start, out.dS[:, :, None] * UI[:, None, :])
        ht, hb, htau = _hp_sums(out, needs, cd)
        return (loss_acc, da_acc, gU1, gV, gt + ht, gb + hb, gtau + htau), None

    z = zeros(())
    if not grad:
        (loss,), _ = lax.scan(block, (zeros((A,)),), jnp.arange(nb))
        return PassOut(loss)
    arr = needs.arrays
    init = (zeros((A,)), zeros((A,)), zeros(U1.shape) if arr else z, zeros(V.shape) if arr else z, z, z, z)
    (loss, da, gU1, gV, gt, gb, gtau), _ = lax.scan(block, init, jnp.arange(nb))
    if not arr:
        return PassOut(loss, None, None, None, gt, gb, gtau)
    gU1 = (gU1 + da[:, None] * U2) / t
    gU2 = da[:, None] * U1 / t
    return PassOut(loss, gU1, gU2, gV / t, gt, gb, gtau)


def _add_rows(acc, start, rows):
    """acc[start:start + R] += rows (rows a block owns are 0 elsewhere, so overlapping blocks add nothing twice)."""
    cur = lax.dynamic_slice_in_dim(acc, start, rows.shape[0])
    return lax.dynamic_update_slice_in_dim(acc, cur + rows, start, 0)


class _DirOut(NamedTuple):
    loss: jax.Array
    gX: Optional[jax.Array]
    gY: Optional[jax.Array]
    gV: Optional[jax.Array]
    g_t: jax.Array
    g_beta: jax.Array
    g_tau: jax.Array


def _cross_dir(st, R, X, Y, V, bank, row0, Bl, lab, nlab, t, beta, tau, c, needs, zeros) -> _DirOut:
    """One direction of the cross layout: anchors ``X[row0 : row0 + Bl]`` against the candidates ``Y`` (n, d)
    followed by the bank rows (``bank`` "shared": V (K, d); "per_anchor": V (Bl, K, d), anchor i's own rows);
    the positive of local anchor i is ``Y[row0 + i]``. Gradients are w.r.t. X, Y (n, d) and V, already / t."""
    n = Y.shape[0]
    shared, per = bank == "shared", bank == "per_anchor"
    XL = lax.dynamic_slice_in_dim(X, row0, Bl)
    YL = lax.dynamic_slice_in_dim(Y, row0, Bl)
    a_all = jnp.sum(XL * YL, axis=1) / t
    C = jnp.concatenate([Y, V], axis=0) if shared else Y  # candidates shared by every anchor
    cols = jnp.arange(C.shape[0], dtype=jnp.int32)
    labL = None if lab is None else lax.dynamic_slice_in_dim(lab, row0, Bl)
    clab = None if lab is None else (jnp.concatenate([lab, nlab.astype(lab.dtype)]) if shared else lab)
    R = min(R, Bl)
    nb = -(-Bl // R)
    grad = c is not None
    inv_t = 1.0 / t

    def block(carry, b):
        start, owned = _starts(b, R, Bl)
        XI = lax.dynamic_slice_in_dim(XL, start, R)
        XIt = XI * inv_t
        S = _matmul_nt(XIt, C)
        pos = row0 + start + jnp.arange(R, dtype=jnp.int32)  # global row of each anchor's positive column
        mask = (cols[None, :] != pos[:, None]) & owned[:, None]
        if lab is not None:
            labI = lax.dynamic_slice_in_dim(labL, start, R)
            mask = mask & (clab[None, :] != labI[:, None])
        if per:
            VI = lax.dynamic_slice_in_dim(V, start, R)
            mask_b = jnp.broadcast_to(owned[:, None], VI.shape[:2])
            if lab is not None:
                mask_b = mask_b & (lax.dynamic_slice_in_dim(nlab, start, R) != labI[:, None])
            S = jnp.concatenate([S, jnp.einsum("rd,rkd->rk", XIt, VI)], axis=1)
            mask = jnp.concatenate([mask, mask_b], axis=1)
        aI = lax.dynamic_slice_in_dim(a_all, start, R)
        cI = None if not grad else jnp.where(owned, lax.dynamic_slice_in_dim(c, start, R), 0.0)
        out = block_rows(S, mask, aI, t, beta, tau, st, cI, needs)
        loss_acc = _add_rows(carry[0], start, out.loss)
        if not grad:
            return (loss_acc,), None
        _, da_acc, gX, gC, gV, gt, gb, gtau = carry
        da_acc = _add_rows(da_acc, start, out.da)
        if needs.arrays:
            dS = out.dS
            if per:
                dS, dSb = dS[:, : C.shape[0]], dS[:, C.shape[0]:]
                gX = _add_rows(gX, start, dS @ C + jnp.einsum("rk,rkd->rd", dSb, VI))
                gV = _add_rows(gV, start, dSb[:, :, None] * XI[:, None, :])
            else:
                gX = _add_rows(gX, start, dS @ C)
            gC = gC + _matmul_tn(dS, XI)
        ht, hb, htau = _hp_sums(out, needs, XL.dtype)
        return (loss_acc, da_acc, gX, gC, gV, gt + ht, gb + hb, gtau + htau), None

    z = zeros(())
    if not grad:
        (loss,), _ = lax.scan(block, (zeros((Bl,)),), jnp.arange(nb))
        return _DirOut(loss, None, None, None, z, z, z)
    arr = needs.arrays
    init = (zeros((Bl,)), zeros((Bl,)), zeros(XL.shape) if arr else z, zeros(C.shape) if arr else z,
            zeros(V.shape) if (arr and per) else z, z, z, z)
    (loss, da, gXL, gC, gVp, gt, gb, gtau), _ = lax.scan(block, init, jnp.arange(nb))
    if not arr:
        return _DirOut(loss, None, None, None, gt, gb, gtau)
    # the positives: G[i, row0 + i] = da_i, in both of their roles
    gXL = gXL + da[:, None] * YL
    gX = lax.dynamic_update_slice_in_dim(jnp.zeros_like(X), gXL, row0, 0) if Bl != n else gXL
    gY = gC[:n]
    gY = _add_rows(gY, row0, da[:, None] * XL)
    gV = gC[n:] if shared else (gVp if per else None)
    return _DirOut(loss, gX / t, gY / t, None if gV is None else gV / t, gt, gb, gtau)


def _cross(st, x: Inputs, t, beta, tau, c, needs, zeros):
    """Cross layout: anchors u1 against [u2; bank], and (symmetric) anchors u2 against u1."""
    U1, U2 = x.U, x.U2
    Bl = st.local_pairs if st.distributed else U1.shape[0]
    row0 = x.row0
    grad = c is not None
    fwd = _cross_dir(st, st.block, U1, U2, x.V, st.bank, row0, Bl, x.lab, x.nlab, t, beta, tau,
                     None if not grad else c[:Bl], needs, zeros)
    if not st.symmetric:
        return PassOut(fwd.loss, fwd.gX, fwd.gY, fwd.gV, fwd.g_t, fwd.g_beta, fwd.g_tau)
    rev = _cross_dir(st, st.block_rev, U2, U1, None, "none", row0, Bl, x.lab, None, t, beta, tau,
                     None if not grad else c[Bl:], needs, zeros)
    loss = jnp.concatenate([fwd.loss, rev.loss])
    if not grad:
        return PassOut(loss)
    gU1 = gU2 = None
    if needs.arrays:
        gU1, gU2 = fwd.gX + rev.gY, fwd.gY + rev.gX
    return PassOut(loss, gU1, gU2, fwd.gV, fwd.g_t + rev.g_t, fwd.g_beta + rev.g_beta, fwd.g_tau + rev.g_tau)
