"""Blocked forward and backward passes: the similarity matrix is only ever held one row block at a time.

The anchors are walked in blocks of ``bs`` rows with ``tf.while_loop`` (``parallel_iterations=1``, so only
one block is live); each block computes its (bs x C) similarities, the per-anchor log-sums of docs/spec.md
§5, and — for the gradient — its rows of dl/ds (spec §8), which are immediately contracted with the
candidates. Three passes exist:

``forward``
    per-anchor losses plus what the backward pass needs (m, S1, S0 or the tie count, rho, dl/da): O(A) memory.
``backward``
    recomputes each block's similarities and contracts dl/ds with a per-anchor cotangent.
``fused``
    forward and backward in one sweep with unit cotangent, for the scalar reductions when a gradient will be
    taken: one similarity product fewer than ``forward`` + ``backward``; the caller scales by the cotangent.

A layout (:class:`InBatch`, :class:`SharedBank`, :class:`PerAnchorBank`, :class:`Cross`) says how a block's
similarities are formed and how dl/ds flows back to the rows. Anchors are given by global row indices so that
the same code serves cross-replica gathering (local anchors against gathered candidates).
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import tensorflow as tf

from .numerics import Config, row_tail

__all__ = ["InBatch", "SharedBank", "PerAnchorBank", "Cross", "temperature_grad", "plan_blocks", "forward",
           "backward", "fused", "LIVE_BLOCKS", "DEFAULT_BUDGET", "DEFAULT_MIN_ROWS", "device_default_budget"]

#: How many (bs x C) buffers a block may hold at once (S, S - m, two exponentials, dl/ds, a mask); the block
#: size is chosen so that this many of them fit in the memory budget.
LIVE_BLOCKS = 6
#: Default memory budget (bytes) of one block, and the fewest rows a default block has (whichever is larger).
DEFAULT_BUDGET = 64 * 2**20
DEFAULT_MIN_ROWS = 256


def device_default_budget(x) -> Optional[int]:
    """The ``memory_budget=None`` default where ``x`` lives: None on CPU (the layouts' defaults, unchanged), else
    :func:`hardneg.budget.default_memory_budget` for a GPU/TPU (TensorFlow does not report the card's size:
    1 GiB). An eager tensor names its device; a symbolic one inside ``tf.function`` usually does not (it is
    placed later), and TensorFlow then places the computation on a GPU whenever one is visible.
    """
    name = getattr(x, "device", "") or ""
    if name:
        kind = tf.DeviceSpec.from_string(name).device_type or "CPU"
    else:
        kind = "GPU" if tf.config.list_logical_devices("GPU") else "CPU"
    if kind.upper() == "CPU":
        return None
    from hardneg.budget import default_memory_budget

    return default_memory_budget(kind, DEFAULT_BUDGET, None)


def _is_static(*xs) -> bool:
    return all(isinstance(x, int) for x in xs)


def _dim(x: tf.Tensor, axis: int):
    """A dimension as a Python int when known at trace time, else as a scalar int32 tensor."""
    d = x.shape[axis]
    return int(d) if d is not None else tf.shape(x, out_type=tf.int32)[axis]


def plan_blocks(n_anchors, row_bytes, budget: int, min_rows: int = 1):
    """Block size and count: the largest bs with ``bs * row_bytes <= budget`` (at least ``min_rows``), then
    evened out over the blocks.

    Parameters
    ----------
    n_anchors, row_bytes : int or scalar int32 tensor
        Anchors to walk, and transient bytes one anchor row of a block needs.
    budget : int
        Bytes of transient memory allowed.
    min_rows : int, default 1
        Smallest block (the default budget uses 256: thinner blocks make the matrix products inefficient
        and the (C x d) accumulator's traffic, C x d per block, dominant).

    Returns
    -------
    (bs, nb) : Python ints when the inputs are static, else int32 tensors; ``nb * bs >= n_anchors`` with
    fewer than ``nb`` padding rows.
    """
    if _is_static(n_anchors, row_bytes):
        cap = max(1, min(max(int(budget) // max(int(row_bytes), 1), min_rows), n_anchors))
        nb = -(-n_anchors // cap)
        return (-(-n_anchors // nb), nb) if nb else (1, 0)
    n_anchors = tf.cast(n_anchors, tf.int64)
    row_bytes = tf.maximum(tf.cast(row_bytes, tf.int64), 1)
    cap = tf.maximum(tf.constant(int(budget), tf.int64) // row_bytes, min_rows)
    cap = tf.maximum(tf.minimum(cap, n_anchors), 1)
    # at least one block, all padding for 0 anchors (a replica holding no rows of a last batch): an empty loop
    # would leave TensorArrays of unknown element shape with nothing to stack
    nb = tf.maximum((n_anchors + cap - 1) // cap, 1)
    bs = tf.maximum((n_anchors + nb - 1) // nb, 1)
    return tf.cast(bs, tf.int32), tf.cast(nb, tf.int32)


# ------------------------------------------------------------------------------------------------
# Per-row statistics of a block of masked similarities (spec §5) and the weights dl/ds (spec §8).


def _exps(d, cfg: Config):
    """The block's exponentials of d = s - m (-inf off the negatives, so they vanish there)."""
    if cfg.kind == "inf":
        return (tf.cast(tf.equal(d, 0.0), d.dtype),)  # the maxima
    if cfg.kind == "zero":
        return (tf.exp(d),)
    if cfg.kind == "one":  # e^{2d} = (e^d)^2: one exponential
        e0 = tf.exp(d)
        return e0 * e0, e0
    return tf.exp((1.0 + cfg.beta) * d), tf.exp(cfg.beta * d)


def _row_stats(Sm, M, cfg: Config):
    """m, the log-ratio lr = log R and the sums of one block; Sm is -inf off each anchor's negatives.

    Returns
    -------
    has : (bs,) bool; m : (bs,) max over negatives (0 where all are excluded); lr : (bs,); sums : tuple of (bs,) — (k,)
    the number of maxima for beta = inf, (S1,) for beta = 0, (S1, S0) otherwise (1 where none);
    exps : the (bs, C) exponentials, reused by the fused pass.
    """
    has = M > 0.0
    zero = tf.zeros_like(M)
    one = tf.ones_like(M)
    m = tf.reduce_max(Sm, axis=1)
    # rows without negatives (all -inf) shift by 0; padding rows (finite, M = 0) by their own max, so that
    # no exponential of theirs can overflow into an inf * 0 = NaN
    m = tf.where(tf.math.is_finite(m), m, zero)
    exps = _exps(Sm - m[:, None], cfg)
    sums = tuple(tf.where(has, tf.reduce_sum(e, axis=1), one) for e in exps)
    logM = tf.math.log(tf.where(has, M, one))
    if cfg.kind == "inf":
        lr = logM + m
    elif cfg.kind == "zero":  # S0 = M
        lr = m + tf.math.log(sums[0])
    else:
        lr = logM + m + tf.math.log(sums[0]) - tf.math.log(sums[1])
    return has, m, lr, sums, exps


def _weights(exps, sums, coef, cfg: Config):
    """dl/ds for a block: coef_i * w_ij with w = p + beta (p - q) (= (1+beta) p - beta q, without the
    cancellation of the two large terms when beta is large)."""
    if cfg.kind in ("inf", "zero"):
        return exps[0] * (coef / sums[0])[:, None]
    if cfg.kind == "one":  # 2p - q: no large terms to cancel at beta = 1
        return exps[0] * (2.0 * coef / sums[0])[:, None] - exps[1] * (coef / sums[1])[:, None]
    p = exps[0] * (coef / sums[0])[:, None]
    q = exps[1] * (coef / sums[1])[:, None]
    return p + cfg.beta * (p - q)


# ------------------------------------------------------------------------------------------------
# Layouts: how a block of anchors sees its candidates, and how dl/ds flows back (spec §3, §8).


class _Layout:
    """Common interface; ``rows`` are anchor indices (possibly padded), ``valid`` marks real anchors."""

    n_anchors = None  # int or tensor
    acc_shapes: Sequence = ()
    default_budget = DEFAULT_BUDGET  # memory_budget=None
    default_min_rows = DEFAULT_MIN_ROWS

    def row_bytes(self, itemsize: int):
        raise NotImplementedError

    def block(self, rows, valid):
        """(Sm, M, a, ctx): masked similarities (bs, C), negatives counts and positive logits (bs,)."""
        raise NotImplementedError

    def grad_block(self, G, ctx) -> Tuple[List[tf.Tensor], List[tf.Tensor]]:
        """Row outputs and accumulator increments of dl/ds = G (bs, C) (without the factor 1/t)."""
        raise NotImplementedError


class InBatch(_Layout):
    """Candidates are all n rows of U; anchor r has partner (r + n/2) mod n (spec §3, in-batch).

    Parameters
    ----------
    U : (n, d) normalised rows [u(z1); u(z2)] (all replicas' rows when gathering).
    anchors : (A,) int32 global indices of the anchors this call owns (``None``: all n rows).
    labels : (n,) int labels of the rows, or None.
    """

    def __init__(self, U, cfg: Config, anchors=None, labels=None):
        self.U, self.cfg, self.labels = U, cfg, labels
        self.dtype = U.dtype
        self.n = _dim(U, 0)
        self.half = self.n // 2
        self.anchors = anchors
        self.n_anchors = self.n if anchors is None else _dim(anchors, 0)
        self.Us = U * cfg.inv_t
        partner = tf.roll(U, shift=-self.half if _is_static(self.n) else -tf.cast(self.half, tf.int32), axis=0)
        self.a_all = tf.reduce_sum(U * partner, axis=1) * cfg.inv_t  # a_r = u_r . u_p(r) / t
        self.M0 = tf.cast(self.n - 2, U.dtype)  # without labels: all rows but the anchor and its partner
        self.acc_shapes = [tf.shape(U)]
        self.anchor_rows = U

    def row_bytes(self, itemsize):
        return self.n * itemsize * LIVE_BLOCKS

    def block(self, rows, valid):
        Ub = tf.gather(self.U, rows)
        S = tf.matmul(tf.gather(self.Us, rows), self.U, transpose_b=True)  # (bs, n)
        if self.labels is None:
            # exclude the anchor itself and its partner: 2 bs scattered entries, not a (bs, n) mask
            bs = tf.shape(rows)[0]
            k = tf.range(bs)
            partner = (rows + self.half) % self.n
            idx = tf.concat([tf.stack([k, rows], 1), tf.stack([k, partner], 1)], 0)
            Sm = tf.tensor_scatter_nd_update(S, idx, tf.fill([2 * bs], tf.constant(-math.inf, S.dtype)))
            M = tf.fill([bs], self.M0)
        else:
            # same label = not a negative; this removes the anchor and its partner too
            keep = tf.not_equal(tf.gather(self.labels, rows)[:, None], self.labels[None, :])
            Sm = tf.where(keep, S, -math.inf)
            M = tf.reduce_sum(tf.cast(keep, S.dtype), axis=1)
        M = tf.where(valid, M, 0.0)
        return Sm, M, tf.gather(self.a_all, rows), Ub

    def grad_block(self, G, Ub):
        # rows: (G U)_I ; accumulator: G_I^T U_I (both times 1/t later)
        return [tf.matmul(G, self.U)], [tf.matmul(G, Ub, transpose_a=True)]

    def finish(self, rows_out, accs, da, rows):
        """dl/dU (n, d) from the block outputs and the positive-pair derivatives da of the anchors ``rows``."""
        U = self.U
        partner = (rows + self.half) % self.n
        contrib = tf.concat([rows_out[0] + da[:, None] * tf.gather(U, partner), da[:, None] * tf.gather(U, rows)], 0)
        idx = tf.concat([rows, partner], 0)[:, None]
        return tf.tensor_scatter_nd_add(accs[0], idx, contrib) * self.cfg.inv_t


def _bank_mask(S, valid, K, labels, rows, nlabels):
    """Mask a bank block's similarities by label (nlabels (K,) or (bs, K)); count the negatives."""
    if labels is None:
        M = tf.fill(tf.shape(valid), tf.cast(K, S.dtype))
    else:
        lab_r = tf.gather(labels, rows)
        keep = tf.not_equal(lab_r[:, None], nlabels if nlabels.shape.rank == 2 else nlabels[None, :])
        S = tf.where(keep, S, -math.inf)
        M = tf.reduce_sum(tf.cast(keep, S.dtype), axis=1)
    return S, tf.where(valid, M, 0.0)


class SharedBank(_Layout):
    """Anchors are the B rows of u1, positives u2, negatives the K rows of V (spec §3, shared bank)."""

    def __init__(self, U1, U2, V, cfg: Config, labels=None, negative_labels=None):
        self.U1, self.U2, self.V, self.cfg = U1, U2, V, cfg
        self.labels, self.nlabels = labels, negative_labels
        self.dtype = U1.dtype
        self.n_anchors = _dim(U1, 0)
        self.K = _dim(V, 0)
        self.a_all = tf.reduce_sum(U1 * U2, axis=1) * cfg.inv_t
        self.acc_shapes = [tf.shape(V)]
        self.anchor_rows = U1

    def row_bytes(self, itemsize):
        return self.K * itemsize * LIVE_BLOCKS

    def block(self, rows, valid):
        Ub = tf.gather(self.U1, rows)
        S = tf.matmul(Ub * self.cfg.inv_t, self.V, transpose_b=True)  # (bs, K)
        S, M = _bank_mask(S, valid, self.K, self.labels, rows, self.nlabels)
        return S, M, tf.gather(self.a_all, rows), Ub

    def grad_block(self, G, Ub):
        return [tf.matmul(G, self.V)], [tf.matmul(G, Ub, transpose_a=True)]

    def finish(self, rows_out, accs, da, rows):
        """(dl/dU1, dl/dU2, dl/dV) with da the positive-pair derivatives of all B anchors."""
        t = self.cfg.inv_t
        g1 = (rows_out[0] + da[:, None] * self.U2) * t
        return g1, da[:, None] * self.U1 * t, accs[0] * t


class PerAnchorBank(_Layout):
    """Anchor i's negatives are the K rows V[i] (spec §3, per-anchor bank)."""

    def __init__(self, U1, U2, V, cfg: Config, labels=None, negative_labels=None):
        self.U1, self.U2, self.V, self.cfg = U1, U2, V, cfg
        self.labels, self.nlabels = labels, negative_labels
        self.dtype = U1.dtype
        self.n_anchors = _dim(U1, 0)
        self.K = _dim(V, 1)
        self.d = _dim(V, 2)
        self.a_all = tf.reduce_sum(U1 * U2, axis=1) * cfg.inv_t
        self.acc_shapes = []
        self.anchor_rows = U1

    def row_bytes(self, itemsize):
        # the block's slice of the bank and its gradient, plus the (bs, K) buffers
        return self.K * itemsize * (2 * self.d + LIVE_BLOCKS)

    def block(self, rows, valid):
        Ub = tf.gather(self.U1, rows)
        Vb = tf.gather(self.V, rows)  # (bs, K, d)
        S = tf.linalg.matvec(Vb, Ub * self.cfg.inv_t)  # (bs, K)
        nl = None if self.labels is None else tf.gather(self.nlabels, rows)
        S, M = _bank_mask(S, valid, self.K, self.labels, rows, nl)
        return S, M, tf.gather(self.a_all, rows), (Ub, Vb)

    def grad_block(self, G, ctx):
        Ub, Vb = ctx
        return [tf.linalg.matvec(Vb, G, transpose_a=True), G[:, :, None] * Ub[:, None, :]], []

    def finish(self, rows_out, accs, da, rows):
        t = self.cfg.inv_t
        g1 = (rows_out[0] + da[:, None] * self.U2) * t
        return g1, da[:, None] * self.U1 * t, rows_out[1] * t


class Cross(_Layout):
    """Cross layout (spec 1.1 §3), one direction: anchors are rows of UA, candidates all rows of UC, then the
    bank rows; anchor r's positive is UC[r] (so UA and UC have the same rows), its negatives the other rows of UC
    and the bank.

    The reverse direction of the symmetric loss is this layout with the roles of z1 and z2 swapped and no bank.

    Parameters
    ----------
    UA, UC : (n, d) normalised anchor-side and candidate-side rows (all replicas' rows when gathering).
    V : shared bank (K, d), per-anchor bank (b, K, d) or None.
    anchors : (A,) int32 global row indices of the anchors this call owns (``None``: all n rows).
    labels : (n,) int labels of the rows (same for both sides), or None.
    negative_labels : (K,) or (b, K) labels of the bank rows (with ``labels``), or None.
    offset : int or int32 scalar, the first global row of this call's anchors: a per-anchor bank (and its
        labels) is local, indexed by ``row - offset``.

    The default block is a quarter of the other layouts' (16 MiB, at least 128 rows): a CLIP-style step holds
    (B x B) matrices, a quarter of the in-batch layout's (2B x 2B), and smaller blocks cost no measurable time
    here (B = 4096, d = 128, XLA, 2 cores: 0.42 of the naive CLIP-style step's time at 16 MiB and at 64 MiB).
    """

    default_budget = DEFAULT_BUDGET // 4
    default_min_rows = DEFAULT_MIN_ROWS // 2

    def __init__(self, UA, UC, cfg: Config, V=None, anchors=None, labels=None, negative_labels=None, offset=0):
        self.UA, self.UC, self.V, self.cfg = UA, UC, V, cfg
        self.labels, self.nlabels = labels, negative_labels
        self.dtype = UA.dtype
        self.n = _dim(UC, 0)
        self.anchors, self.offset = anchors, offset
        self.n_anchors = _dim(UA, 0) if anchors is None else _dim(anchors, 0)
        self.bank = "none" if V is None else ("per_anchor" if V.shape.rank == 3 else "shared")
        self.K = 0 if V is None else _dim(V, V.shape.rank - 2)
        self.d = _dim(UA, 1)
        self.a_all = tf.reduce_sum(UA * UC, axis=1) * cfg.inv_t
        self.anchor_rows = UA
        self.acc_shapes = [tf.shape(UC)] + ([tf.shape(V)] if self.bank == "shared" else [])
        self.M0 = tf.cast(self.n - 1, UA.dtype)  # without labels: every candidate row but the positive
        if self.bank == "per_anchor":
            self.Vp, self.nlabels_p = self._local_bank(V), self._local_bank(negative_labels)

    def row_bytes(self, itemsize):
        extra = self.K * itemsize * 2 * self.d if self.bank == "per_anchor" else 0
        return (self.n + self.K) * itemsize * LIVE_BLOCKS + extra

    def _local(self, rows):
        """Indices into the (local) per-anchor bank: ``row - offset``; padding rows (anywhere, even with an empty
        local bank) point at the zero row appended in :meth:`_local_bank`."""
        if self.anchors is None:
            return rows
        b = tf.shape(self.V)[0]
        loc = rows - tf.cast(self.offset, tf.int32)
        return tf.where(tf.logical_and(loc >= 0, loc < b), loc, b)

    def _local_bank(self, x):
        """The per-anchor bank (or its labels) with one padding row appended, when gathering."""
        if self.anchors is None or x is None:
            return x
        return tf.concat([x, tf.zeros(tf.concat([[1], tf.shape(x)[1:]], 0), x.dtype)], 0)

    def block(self, rows, valid):
        Ub = tf.gather(self.UA, rows)
        Ubs = Ub * self.cfg.inv_t
        S = tf.matmul(Ubs, self.UC, transpose_b=True)  # (bs, n)
        if self.labels is None:
            bs = tf.shape(rows)[0]
            idx = tf.stack([tf.range(bs), rows], 1)  # the positive: one entry per row, not a (bs, n) mask
            Sm = tf.tensor_scatter_nd_update(S, idx, tf.fill([bs], tf.constant(-math.inf, S.dtype)))
            M = tf.fill([bs], self.M0)
        else:
            # same label = not a negative; this removes the positive too
            keep = tf.not_equal(tf.gather(self.labels, rows)[:, None], self.labels[None, :])
            Sm = tf.where(keep, S, -math.inf)
            M = tf.reduce_sum(tf.cast(keep, S.dtype), axis=1)
        Vb = None
        if self.bank != "none":
            if self.bank == "shared":
                SV = tf.matmul(Ubs, self.V, transpose_b=True)  # (bs, K)
                nl = self.nlabels
            else:
                loc = self._local(rows)
                Vb = tf.gather(self.Vp, loc)  # (bs, K, d)
                SV = tf.linalg.matvec(Vb, Ubs)
                nl = None if self.labels is None else tf.gather(self.nlabels_p, loc)
            SV, MV = _bank_mask(SV, valid, self.K, self.labels, rows, nl)
            Sm = tf.concat([Sm, SV], 1)
            M = M + MV
        M = tf.where(valid, M, 0.0)
        return Sm, M, tf.gather(self.a_all, rows), (Ub, Vb)

    def grad_block(self, G, ctx):
        Ub, Vb = ctx
        if self.bank == "none":
            return [tf.matmul(G, self.UC)], [tf.matmul(G, Ub, transpose_a=True)]
        Gc, Gv = G[:, : self.n], G[:, self.n:]
        acc_c = tf.matmul(Gc, Ub, transpose_a=True)
        if self.bank == "shared":
            return [tf.matmul(Gc, self.UC) + tf.matmul(Gv, self.V)], [acc_c, tf.matmul(Gv, Ub, transpose_a=True)]
        rows_g = tf.matmul(Gc, self.UC) + tf.linalg.matvec(Vb, Gv, transpose_a=True)
        return [rows_g, Gv[:, :, None] * Ub[:, None, :]], [acc_c]

    def finish(self, rows_out, accs, da, rows):
        """(dl/dUA, dl/dUC, dl/dV or None) with da the positive-pair derivatives of the anchors ``rows``."""
        t = self.cfg.inv_t
        g_rows = (rows_out[0] + da[:, None] * tf.gather(self.UC, rows)) * t
        if self.anchors is None:
            gA = g_rows
        else:
            gA = tf.scatter_nd(rows[:, None], g_rows, tf.shape(self.UA))
        gC = tf.tensor_scatter_nd_add(accs[0], rows[:, None], da[:, None] * tf.gather(self.UA, rows)) * t
        if self.bank == "shared":
            gV = accs[1] * t
        elif self.bank == "per_anchor":
            gV = rows_out[1] * t
        else:
            gV = None
        return gA, gC, gV


# ------------------------------------------------------------------------------------------------
# The loops.


class _Plan:
    """Padded anchor indices of a layout, split into ``nb`` blocks of ``bs`` rows."""

    def __init__(self, layout: _Layout, itemsize: int, budget: Optional[int], anchors=None):
        A = layout.n_anchors
        if budget is None:  # the layout's default (DEFAULT_BUDGET), raised to its minimum rows for wide rows
            self.bs, self.nb = plan_blocks(A, layout.row_bytes(itemsize), layout.default_budget,
                                           layout.default_min_rows)
        else:
            self.bs, self.nb = plan_blocks(A, layout.row_bytes(itemsize), budget)
        total = self.bs * self.nb
        base = tf.range(A, dtype=tf.int32) if anchors is None else tf.cast(anchors, tf.int32)
        pad = total - A
        # padding rows point at row 0; they are masked out (M = 0) and their outputs dropped
        self.rows = tf.concat([base, tf.zeros([pad], tf.int32)], 0)
        self.valid = tf.range(total) < A
        self.A = A

    def slice(self, x, i):
        # tf.slice with the (static or constant-foldable) size bs: a strided slice x[i*bs:(i+1)*bs] has a
        # data-dependent size, which XLA pads to the full length (and then rejects the TensorArray writes)
        rank = x.shape.rank
        return tf.slice(x, [i * self.bs] + [0] * (rank - 1), [self.bs] + [-1] * (rank - 1))


def _loop(plan: _Plan, body, row_specs, acc_shapes, acc_dtype):
    """Run ``body(i) -> (row outputs, accumulator increments)`` over the blocks; concatenate the rows
    (trimmed to the real anchors) and sum the increments."""
    tas = [tf.TensorArray(dt, size=plan.nb, element_shape=shape) for dt, shape in row_specs]
    accs = [tf.zeros(s, acc_dtype) for s in acc_shapes]

    def step(i, tas, accs):
        outs, incs = body(i)
        return i + 1, [ta.write(i, o) for ta, o in zip(tas, outs)], [a + b for a, b in zip(accs, incs)]

    _, tas, accs = tf.while_loop(
        lambda i, *_: i < plan.nb, step, (tf.constant(0, tf.int32), tas, accs), parallel_iterations=1
    )
    out = []
    for ta in tas:
        x = ta.stack()  # (nb, bs, ...)
        out.append(tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], 0))[: plan.A])
    return out, accs


def _row_spec(plan, dt, *tail):
    bs = plan.bs if isinstance(plan.bs, int) else None
    return dt, tf.TensorShape([bs, *tail])


def _two_pass(layout, cfg: Config, budget, anchors):
    """The two-pass module when it serves this call (:mod:`hardneg_tf.symmetric`), else None."""
    from . import symmetric

    if isinstance(layout, symmetric.CrossPair) or symmetric.choose_in_batch(layout, cfg, budget, anchors):
        return symmetric
    return None


def forward(layout: _Layout, cfg: Config, budget: int, anchors=None):
    """Per-anchor losses, and the saved per-anchor quantities for :func:`backward`.

    Returns
    -------
    loss : (A,); saved : dict of (A,) tensors: m, sums (tuple), rho, da.
    """
    kernel = _two_pass(layout, cfg, budget, anchors)
    if kernel is not None:
        return kernel.forward(layout, cfg, budget)
    dt = layout.dtype
    plan = _Plan(layout, dt.size, budget, anchors)
    n_sums = 1 if cfg.kind in ("inf", "zero") else 2

    n_dlf = 1 if cfg.learn_t else 0

    def body(i):
        Sm, M, a, _ = layout.block(plan.slice(plan.rows, i), plan.slice(plan.valid, i))
        has, m, lr, sums, _ = _row_stats(Sm, M, cfg)
        loss, da, rho, dlf = row_tail(a, lr, M, has, cfg)
        return [loss, da, rho, m, *sums] + ([dlf] if n_dlf else []), []

    outs, _ = _loop(plan, body, [_row_spec(plan, dt)] * (4 + n_sums + n_dlf), [], dt)
    loss, da, rho, m = outs[:4]
    saved = dict(m=m, sums=tuple(outs[4:4 + n_sums]), rho=rho, da=da)
    if n_dlf:
        saved["dlf"] = outs[-1]
    return loss, saved


def backward(layout: _Layout, cfg: Config, budget: int, saved: dict, cot, anchors=None):
    """Gradients with respect to the layout's rows for per-anchor cotangent ``cot`` (A,)."""
    if "flag" in saved:  # saved by the two-pass forward (hardneg_tf.symmetric): its pass 2
        from . import symmetric

        return symmetric.backward(layout, cfg, budget, saved, cot)
    dt = layout.dtype
    plan = _Plan(layout, dt.size, budget, anchors)
    pad = lambda x: tf.concat([x, tf.ones([plan.bs * plan.nb - plan.A], x.dtype)], 0)  # noqa: E731
    # padding rows: m = +inf makes every exponential 0, sums = 1 and coef = 0 keep dl/ds = 0
    m = tf.concat([saved["m"], tf.fill([plan.bs * plan.nb - plan.A], tf.constant(math.inf, dt))], 0)
    sums, coef = tuple(pad(s) for s in saved["sums"]), pad(saved["rho"] * cot)

    def body(i):
        rows, valid = plan.slice(plan.rows, i), plan.slice(plan.valid, i)
        Sm, _, _, ctx = layout.block(rows, valid)
        exps = _exps(Sm - plan.slice(m, i)[:, None], cfg)
        c = tf.where(valid, plan.slice(coef, i), 0.0)
        G = _weights(exps, tuple(plan.slice(s, i) for s in sums), c, cfg)
        return layout.grad_block(G, ctx)

    outs, accs = _loop(plan, body, _grad_row_specs(layout, plan, dt), layout.acc_shapes, dt)
    rows, da = plan.rows[: plan.A], saved["da"] * cot
    grads = layout.finish(outs, accs, da, rows)
    if not cfg.learn_t:
        return grads
    return grads, temperature_grad(layout, cfg, outs[0], da, saved["dlf"] * cot, rows)


def fused(layout: _Layout, cfg: Config, budget: int, anchors=None):
    """Per-anchor losses and the gradients of their plain sum, in one sweep over the blocks."""
    kernel = _two_pass(layout, cfg, budget, anchors)
    if kernel is not None:
        return kernel.fused(layout, cfg, budget)
    dt = layout.dtype
    plan = _Plan(layout, dt.size, budget, anchors)

    n_dlf = 1 if cfg.learn_t else 0

    def body(i):
        Sm, M, a, ctx = layout.block(plan.slice(plan.rows, i), plan.slice(plan.valid, i))
        has, _, lr, sums, exps = _row_stats(Sm, M, cfg)
        loss, da, rho, dlf = row_tail(a, lr, M, has, cfg)
        rows_out, incs = layout.grad_block(_weights(exps, sums, rho, cfg), ctx)
        return [loss, da, *([dlf] if n_dlf else []), *rows_out], incs

    specs = [_row_spec(plan, dt)] * (2 + n_dlf) + _grad_row_specs(layout, plan, dt)
    outs, accs = _loop(plan, body, specs, layout.acc_shapes, dt)
    loss, da = outs[0], outs[1]
    rows = plan.rows[: plan.A]
    grads = layout.finish(outs[2 + n_dlf:], accs, da, rows)
    if not cfg.learn_t:
        return loss, grads
    return loss, (grads, temperature_grad(layout, cfg, outs[2 + n_dlf], da, outs[2], rows))


def temperature_grad(layout: _Layout, cfg: Config, rows_g, da, dlf, rows):
    """d (sum_i c_i l_i) / d t for the anchors ``rows`` (spec §8), without any (rows x candidates) array.

    With s_ij = u_i.v_j / t: d l_i/d t = -(1/t) [sum_j (dl_i/ds_ij) s_ij + (dl_i/da_i) a_i] + (dl_i/dlf_i) / t^2,
    and sum_j (dl_i/ds_ij) s_ij = u_i . (sum_j (dl_i/ds_ij) v_j) / t, the row output ``rows_g`` (A, d) of the
    gradient pass (already times the cotangents c_i, as are ``da`` and ``dlf``).
    """
    t = cfg.inv_t
    u = tf.gather(layout.anchor_rows, rows)
    a = tf.gather(layout.a_all, rows)
    per = -t * (t * tf.reduce_sum(u * rows_g, axis=1) + da * a) + dlf * (t * t)
    return tf.reduce_sum(per)


def _grad_row_specs(layout, plan, dt):
    if isinstance(layout, Cross):
        d = layout.UA.shape[1]
        if layout.bank != "per_anchor":
            return [_row_spec(plan, dt, d)]
        K = layout.K if isinstance(layout.K, int) else None
        return [_row_spec(plan, dt, d), _row_spec(plan, dt, K, d)]
    if isinstance(layout, PerAnchorBank):
        K = layout.K if isinstance(layout.K, int) else None
        d = layout.d if isinstance(layout.d, int) else None
        return [_row_spec(plan, dt, d), _row_spec(plan, dt, K, d)]
    d = layout.U.shape[1] if isinstance(layout, InBatch) else layout.U1.shape[1]
    return [_row_spec(plan, dt, d)]
