r"""Two-pass kernels that share each similarity tile between two sets of rows (docs/spec.md section 8).

**In-batch layout** (:class:`InBatch` calls, every row an anchor). The logits ``S = U U^T / t`` are
symmetric, so a tile ``S_IJ`` (row tile I against row tile J) serves I's rows and, transposed, J's rows. The
one-pass row-block kernel (:mod:`hardneg_tf.blocks`) forms every tile twice and costs three
(n x d)(d x n)-class products with the gradient; this kernel visits each unordered pair I <= J once per pass
and costs two:

* **Pass 1** (half a product): ``S_IJ - c`` with the non-negatives (self, partner, same label, padding) at
  ``-inf``, the exponentials ``E1 = e^{(1+beta)(S-c)}``, ``E0 = e^{beta (S-c)}``, their row sums (statistics
  of I's rows) and column sums (of J's rows; a diagonal tile only gives row sums). ``c = max_k |u_k|^2 / t``
  bounds every logit (Cauchy–Schwarz), so one shift serves the whole tile pair: no running maximum, no
  rescaling, one set of exponentials for both sides.
* **Row terms**: :func:`hardneg_tf.numerics.row_tail` with ``log R_i = log M_i + c + log S1_i - log S0_i``
  gives ``l_i``, ``dl_i/da_i`` and ``rho_i``; row i's weights are ``G_ij = alpha_i E1_ij - gamma_i E0_ij``,
  ``alpha_i = coef_i rho_i (1+beta) / S1_i``, ``gamma_i = coef_i rho_i beta / S0_i``.
* **Pass 2** (one and a half products): ``S_IJ - c`` again, ``H = G_IJ + G_JI^T =
  E1 (alpha_I + alpha_J^T) - E0 (gamma_I + gamma_J^T)`` and ``dU_I += H U_J``, ``dU_J += H^T U_I``
  (``dU_I += H U_I`` on a diagonal tile, where H is already ``G + G^T``).

**Symmetric cross layout** without a bank (:class:`CrossPair`): a tile of ``S12 = u1 u2^T / t`` holds the
forward direction's rows (anchor z1[i]) and the reverse direction's columns (anchor z2[j]). Pass 1 walks all
tiles once: row sums give the forward statistics, column sums the reverse ones (shift
``c = max|u1| max|u2| / t``); pass 2 forms ``H = G_fwd + G_rev^T`` and ``dz1_I += H z2_J``,
``dz2_J += H^T z1_I``: three B x B products in all, instead of six for the two directions one after the other.

**Graph structure.** n is padded up to a multiple of the tile side T (padding rows are masked like
non-negatives); the tile pairs are a static list walked by ``tf.while_loop`` (its size never unrolls into the
graph: B = 65536 builds the same few ops as B = 8), the per-row sums and the gradient accumulate into
(tiles, T[, d]) buffers by ``tensor_scatter_nd_add`` — O(n d) memory plus a few (T x T) tiles.

**Underflow fallback.** A fixed shift can underflow: ``e^{(1+beta)(s - c)}`` is below the smallest normal
number once ``(1+beta)(c - s)`` exceeds about 87 (float32). A row's sums are exact to rounding while
``S1_i >= n * tiny / eps`` (all that underflow could remove is then below one rounding error); rows under that
threshold are recomputed with their own maxima by the row-block code of :mod:`hardneg_tf.blocks`, and take no
part in pass 2. Under XLA no shape may depend on data, so the flagged rows are sorted to the front
(``argsort``, stable) and walked in fixed-size blocks by a ``tf.while_loop`` whose *trip count* is the
data-dependent ``ceil(count / bs)`` (zero iterations when nothing underflows); padding rows of the last block
are masked as in the row-block kernel. The automatic choice (:func:`choose_in_batch`, :func:`choose_cross`)
only takes the kernels where ``(1+beta) * 2c`` cannot underflow at all (normalised rows), so the fallback
only runs when the kernels are forced (``HARDNEG_TF_SYMMETRIC=1``).

Not covered (the row-block kernel serves them): beta = inf, a tensor temperature, ``gather`` (anchors a
subset of the rows), banks, a batch size unknown when the graph is traced.
"""

from __future__ import annotations

import math
import os
from typing import Optional

import numpy as np
import tensorflow as tf

from . import blocks
from .numerics import Config, row_tail

__all__ = ["ENV_VAR", "TILE_ROWS", "MIN_ROWS", "MIN_CROSS_ROWS", "MIN_TILE", "SAFE_EXPONENT", "tile_rows",
           "choose_in_batch", "choose_cross", "CrossPair", "fused", "forward", "backward"]

#: Environment variable overriding the automatic choice at trace time: "1" forces the two-pass kernels
#: wherever supported (tests, conformance), "0" the row-block kernel.
ENV_VAR = "HARDNEG_TF_SYMMETRIC"

#: Largest tile side (measured under XLA, 2 threads, B = 4096: at d = 512, 1024 rows beat 512 and 2048).
TILE_ROWS = 1024

#: Largest tile side of the in-batch kernel for rows of at most :data:`NARROW_DIM` features (measured at
#: d = 128: 1.18x the three-product floor with 512 rows, 1.24x with 1024, 1.37x with 2048).
TILE_ROWS_NARROW = 512
NARROW_DIM = 256

#: Rows n = 2B from which the automatic choice takes the in-batch kernel (measured under XLA, d = 128, 2 threads:
#: slower at B = 256, faster from B = 512-1024; docs/backends/tensorflow.md).
MIN_ROWS = 2048

#: Pairs B from which the automatic choice takes the shared-tile cross kernel (same measurement: slower at
#: B = 512, 1.7x faster than the two row-block sweeps at B = 1024).
MIN_CROSS_ROWS = 1024

#: Smallest tile side the automatic choice accepts (thinner tiles make the products slow).
MIN_TILE = 128

#: Largest (1+beta) * 2c for which the automatic choice accepts the fixed shift (no term can become
#: subnormal in float32, whose smallest normal number is e^{-87.3}).
SAFE_EXPONENT = 80.0

#: (T x T) buffers a tile step may hold (S - c, two exponentials, H); the tile side is sized to fit them.
LIVE_TILES = 4


def _env() -> Optional[bool]:
    v = os.environ.get(ENV_VAR, "").strip()
    return {"0": False, "1": True}.get(v)


def tile_rows(budget: Optional[int], itemsize: int, n: int, cap: int = TILE_ROWS) -> int:
    """Tile side T: :data:`LIVE_TILES` (T x T) buffers fit the memory budget, T <= ``cap`` and <= n."""
    b = blocks.DEFAULT_BUDGET if budget is None else int(budget)
    return max(1, min(cap, n, math.isqrt(max(b // (LIVE_TILES * itemsize), 1))))


def _in_batch_cap(d) -> int:
    return TILE_ROWS_NARROW if d is not None and int(d) <= NARROW_DIM else TILE_ROWS


def _on_cpu(x) -> bool:
    name = getattr(x, "device", "") or ""
    if name:
        return (tf.DeviceSpec.from_string(name).device_type or "CPU").upper() == "CPU"
    return not tf.config.list_logical_devices("GPU")


def _in_xla() -> bool:
    """Whether the call is traced for XLA (``jit_compile=True``, Keras' default): the kernels were measured
    faster than the row-block kernel only there. In a plain ``tf.function`` the in-batch kernel measured slower
    (B = 4096, d = 128: 0.61 s against 0.39 s; docs/backends/tensorflow.md): its tile loop runs op by op.
    Read from TensorFlow's (private) XLA-context flag; if that moves, the row-block kernel is kept."""
    try:
        from tensorflow.python.framework import ops
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # pragma: no cover - depends on TensorFlow's internals
        return False
    try:
        return bool(control_flow_util.GraphOrParentsInXlaContext(ops.get_default_graph()))
    except Exception:  # noqa: BLE001 - pragma: no cover - the same
        return False


def _auto(cfg: Config, n: int, min_rows: int, tile: int, normalized: bool, x) -> bool:
    """Measured on CPU under XLA only; normalised rows bound c by 1/t, so the static underflow bound is known."""
    return n >= min_rows and tile >= MIN_TILE and _on_cpu(x) and underflow_free(cfg, normalized) and _in_xla()


def _supported(cfg: Config, n) -> bool:
    return not cfg.learn_t and cfg.kind != "inf" and isinstance(n, int) and n >= 2


def choose_in_batch(layout, cfg: Config, budget: Optional[int], anchors=None) -> bool:
    """Whether :func:`fused` / :func:`forward` take the two-pass kernel for this :class:`blocks.InBatch` call."""
    if not isinstance(layout, blocks.InBatch) or anchors is not None or layout.anchors is not None:
        return False
    if not _supported(cfg, layout.n) or layout.n % 2:
        return False
    env = _env()
    if env is not None:
        return env
    tile = tile_rows(budget, layout.dtype.size, layout.n, _in_batch_cap(layout.U.shape[1]))
    return _auto(cfg, layout.n, MIN_ROWS, tile, getattr(layout, "normalized", False), layout.U)


def choose_cross(U1, cfg: Config, budget: Optional[int], normalized: bool) -> bool:
    """Whether the symmetric cross layout without a bank (and without ``gather``) takes :class:`CrossPair`."""
    B = U1.shape[0]
    if not _supported(cfg, B if B is None else int(B)):
        return False
    env = _env()
    if env is not None:
        return env
    return _auto(cfg, int(B), MIN_CROSS_ROWS, tile_rows(budget, U1.dtype.size, int(B)), normalized, U1)


class CrossPair:
    """Both directions of the symmetric cross layout (no bank), evaluated together on shared tiles.

    ``fwd`` (anchor z1[i], candidates z2's rows) and ``rev`` (anchor z2[j], candidates z1's rows) are the
    row-block layouts of :class:`blocks.Cross`; they serve the underflow fallback. Losses come back as
    [forward; reverse] (2B,), gradients as (d loss/d u1, d loss/d u2).
    """

    def __init__(self, U1, U2, cfg: Config, labels=None, normalized=False):
        self.normalized = normalized  # rows of norm <= 1: see underflow_free
        self.fwd = blocks.Cross(U1, U2, cfg, labels=labels)
        self.rev = blocks.Cross(U2, U1, cfg, labels=labels)
        self.U1, self.U2, self.cfg, self.labels = U1, U2, cfg, labels
        self.dtype = U1.dtype
        self.B = int(U1.shape[0])
        self.n_anchors = 2 * self.B


# ------------------------------------------------------------------------------------------------
# Tiles


class _Grid:
    """Padded rows of one side of the tiles, and the keys that mask non-negatives.

    ``U`` (n_pad, d) and ``Us = U / t``; entry (i, j) of a tile is a non-negative where ``key_i == key_j``
    (self/partner/positive: equal pair index; or equal label) or either row is padding. ``c`` is the shift.
    """

    def __init__(self, U, keys, c, inv_t, T):
        n = int(U.shape[0])
        self.n, self.T, self.c = n, T, c
        self.nt = -(-n // T)
        pad = [[0, self.nt * T - n], [0, 0]]
        self.U = tf.pad(U, pad)
        self.Us = tf.pad(U * inv_t, pad)  # a Python float: tf.cast(float) would round it to float32 first
        self.keys = tf.pad(tf.cast(keys, tf.int64), pad[:1])
        self.valid = tf.range(self.nt * T) < n
        self.ones = tf.ones([1, T], U.dtype)

    def rows(self, x, p):
        return tf.slice(x, [p * self.T] + [0] * (x.shape.rank - 1), [self.T] + [-1] * (x.shape.rank - 1))


def _tile(R: _Grid, C: _Grid, p, q, masked: bool = True):
    """(S - c) of row tile p of R against row tile q of C, -inf off the negatives: (T, T). The shift and the
    mask fuse into the exponentials' loop under XLA (a (d+1)-th product column for -c measured slower);
    ``masked=False`` for tiles known (statically) to hold only negatives: the key comparison costs about half
    a tile product on the CPU."""
    S = tf.matmul(R.rows(R.U, p), C.rows(C.Us, q), transpose_b=True)
    if not masked:
        return S - R.c
    kr, kc = R.rows(R.keys, p), C.rows(C.keys, q)
    keep = tf.logical_and(tf.not_equal(kr[:, None], kc[None, :]),
                          tf.logical_and(R.rows(R.valid, p)[:, None], C.rows(C.valid, q)[None, :]))
    return tf.where(keep, S - R.c, tf.constant(-math.inf, S.dtype))


def _exps(D, cfg: Config):
    """(E1,) for beta = 0, else (E1, E0); e^{2x} = (e^x)^2 at beta = 1 (one exponential)."""
    if cfg.kind == "zero":
        return (tf.exp(D),)
    if cfg.kind == "one":
        e0 = tf.exp(D)
        return e0 * e0, e0
    return tf.exp((1.0 + cfg.beta) * D), tf.exp(cfg.beta * D)


def _h(D, aI, aJ, gI, gJ, cfg: Config):
    """H = E1 (alpha_I + alpha_J^T) - E0 (gamma_I + gamma_J^T) from one set of exponentials."""
    A = aI[:, None] + aJ[None, :]
    if cfg.kind == "zero":
        return tf.exp(D) * A
    if cfg.kind == "one":  # E0 (E0 A - Gamma): one exponential, no E1 buffer
        e0 = tf.exp(D)
        return e0 * (e0 * A - (gI[:, None] + gJ[None, :]))
    return tf.exp((1.0 + cfg.beta) * D) * A - tf.exp(cfg.beta * D) * (gI[:, None] + gJ[None, :])


def _pairs(n: int, T: int, kind: str, shift: Optional[int] = None):
    """Static tile-pair lists, split by whether a tile needs the mask: [(P, Q, count, masked), ...].

    ``kind``: "upper" p < q, "diag" p == q, "all" every (p, q), over ``ceil(n / T)`` tiles. ``shift``: the
    non-negatives are the entries (i, j) with j = i or j = (i + shift) mod n (in-batch: self and partner,
    shift n/2; cross: the positive, shift None); tiles without such entries and without padding rows go
    unmasked. ``shift=False``: labels decide, every tile is masked.
    """
    nt = -(-n // T)
    if kind == "diag":
        P = Q = np.arange(nt)
    elif kind == "upper":
        P, Q = np.triu_indices(nt, 1)
    else:
        P, Q = np.divmod(np.arange(nt * nt), nt)
    if shift is False:
        need = np.ones(len(P), bool)
    else:
        lo, hi = P * T, np.minimum((P + 1) * T, n)  # rows of tile p
        qlo, qhi = Q * T, np.minimum((Q + 1) * T, n)
        padded = ((P + 1) * T > n) | ((Q + 1) * T > n)
        need = padded | ((lo < qhi) & (qlo < hi))  # j = i
        if shift:
            for a, b in ((lo + shift, hi + shift), (lo + shift - n, hi + shift - n)):  # j = i + shift (mod n)
                need |= (np.maximum(a, qlo) < np.minimum(b, qhi))
    out = []
    for masked in (True, False):
        sel = need == masked
        if sel.any():
            out.append((tf.constant(P[sel], tf.int32), tf.constant(Q[sel], tf.int32), int(sel.sum()), masked))
    return out


def _walk(groups, body, carry):
    """``carry = body(p, q, masked, carry)`` for each static tile pair of :func:`_pairs`' groups, one
    ``tf.while_loop`` per group (one tile live; the loop's size never unrolls into the graph)."""
    for P, Q, count, masked in groups:
        def step(k, carry, P=P, Q=Q, masked=masked):
            return k + 1, body(tf.gather(P, k), tf.gather(Q, k), masked, carry)

        _, carry = tf.while_loop(lambda k, _, count=count: k < count, step, (tf.constant(0, tf.int32), carry),
                                 parallel_iterations=1)
    return carry


def _sums_pass(R: _Grid, C: _Grid, cfg: Config, walks):
    """Pass 1: for each walk (pairs, rows_to, cols_to) add the tiles' row sums to accumulator ``rows_to`` and
    column sums to ``cols_to`` (None: none). Accumulators 0 and 1: (k, nt, T) with k = number of exponentials."""
    k = 1 if cfg.kind == "zero" else 2
    # only accumulators that change are carried: a loop variable passed through unchanged (a constant zero)
    # makes TF's constant propagation lose the next loop's body under XLA ("Cannot find body function")
    accs = [tf.zeros([k, R.nt, R.T], R.U.dtype)] + ([] if R is C else [tf.zeros([k, C.nt, C.T], C.U.dtype)])
    for pairs, rows_to, cols_to in walks:
        def body(p, q, masked, accs, rows_to=rows_to, cols_to=cols_to):
            E = _exps(_tile(R, C, p, q, masked), cfg)
            accs = list(accs)
            accs[rows_to] = tf.tensor_scatter_nd_add(
                accs[rows_to], tf.stack([tf.range(k), tf.fill([k], p)], 1), tf.stack([tf.reduce_sum(e, 1) for e in E]))
            if cols_to is not None:
                accs[cols_to] = tf.tensor_scatter_nd_add(
                    accs[cols_to], tf.stack([tf.range(k), tf.fill([k], q)], 1),
                    # column sums as (1 x T)(T x T) products: XLA's CPU column reductions measured slower
                    tf.concat([tf.matmul(R.ones, e) for e in E], 0))
            return tuple(accs)

        accs = list(_walk(pairs, body, tuple(accs)))
    return [tf.reshape(a, [k, -1]) for a in accs] * (2 if R is C else 1)


def _grad_pass(R: _Grid, C: _Grid, cfg: Config, coefs_r, coefs_c, walks):
    """Pass 2: for each walk (pairs, diagonal) accumulate H C_J into the row side's buffer and H^T R_I into the
    column side's (a diagonal walk of the in-batch layout: H R_I once). ``coefs_*`` = (alpha, gamma) padded to
    n_pad. Returns the two (n_pad, d) accumulators (the same one, summed, when R is C)."""
    d = int(R.U.shape[1])
    dt = R.U.dtype
    ar, gr = coefs_r
    ac, gc = coefs_c
    same = R is C
    acc = [tf.zeros([R.nt, R.T, d], dt)] + ([] if same else [tf.zeros([C.nt, C.T, d], dt)])  # see _sums_pass
    for pairs, diagonal in walks:
        def body(p, q, masked, acc, diagonal=diagonal):
            H = _h(_tile(R, C, p, q, masked), R.rows(ar, p), C.rows(ac, q), R.rows(gr, p), C.rows(gc, q), cfg)
            rows_inc = tf.matmul(H, C.rows(C.U, q))
            if diagonal:
                return (tf.tensor_scatter_nd_add(acc[0], [[p]], rows_inc[None]),) + tuple(acc[1:])
            cols_inc = tf.matmul(H, R.rows(R.U, p), transpose_a=True)
            if same:
                return (tf.tensor_scatter_nd_add(acc[0], [[p], [q]], tf.stack([rows_inc, cols_inc])),)
            return (tf.tensor_scatter_nd_add(acc[0], [[p]], rows_inc[None]),
                    tf.tensor_scatter_nd_add(acc[1], [[q]], cols_inc[None]))

        acc = list(_walk(pairs, body, tuple(acc)))
    return [tf.reshape(a, [-1, d]) for a in acc] * (2 if same else 1)


# ------------------------------------------------------------------------------------------------
# Row terms and the fallback


def _row_terms(sums, M, a, c, cfg: Config, n_cand: int):
    """Loss, dl/da, rho with the fixed shift c; the saved sums (1 where a row has no negatives); the rows whose
    sums may have lost terms to underflow (S1 < n tiny / eps; NaN sums are left to the caller's NaN check)."""
    has = M > 0.0
    one = tf.ones_like(M)
    s = tuple(tf.where(has, x, one) for x in sums)
    logM = tf.math.log(tf.where(has, M, one))
    if cfg.kind == "zero":
        lr = c + tf.math.log(s[0])
    else:
        lr = logM + c + tf.math.log(s[0]) - tf.math.log(s[1])
    loss, da, rho, _ = row_tail(a, lr, M, has, cfg)
    fi = np.finfo(M.dtype.as_numpy_dtype)
    flag = tf.logical_and(has, sums[0] < n_cand * float(fi.tiny) / float(fi.eps))
    return dict(loss=loss, da=da, rho=rho, m=tf.fill(tf.shape(M), c), sums=s, flag=flag)


def underflow_free(cfg: Config, normalized: bool) -> bool:
    """Whether the static bound rules out underflow: normalised rows (c <= 1/t) and (1+beta) * 2/t <=
    :data:`SAFE_EXPONENT`, so no term of a fixed-shift sum can fall below float32's smallest normal number
    (the compute dtype is float32 or float64) and no row can be flagged."""
    return bool(normalized) and not cfg.learn_t and (1.0 + cfg.beta) * 2.0 * float(cfg.inv_t) <= SAFE_EXPONENT


def _fallback(layout, cfg: Config, budget, st: dict, coef=None, backward_only=False, skip=False):
    """Recompute the flagged rows (``st["flag"]``) of a row-block layout with per-row maxima.

    Forward (``backward_only`` False): replaces their loss, da, rho, m and sums in ``st``; with ``coef`` (A,)
    also returns the gradient of ``sum coef_i l_i`` through their negatives. Backward: that gradient only, from
    the saved m and sums. Returns (row gradients (A, d) scattered to the flagged rows, accumulator (C, d)).

    ``skip`` (:func:`underflow_free` holds): no row can be flagged, so the fallback is left out of the program —
    under XLA its row blocks' buffers would otherwise be part of the static memory plan even when never run.
    """
    flag = st["flag"]
    A = int(flag.shape[0])
    if skip:
        d = int(layout.anchor_rows.shape[1])
        return (dict(st, flag=tf.zeros_like(flag)), tf.zeros([A, d], layout.dtype),
                tf.zeros_like(layout.U if isinstance(layout, blocks.InBatch) else layout.UC))
    bs, _ = blocks.plan_blocks(A, layout.row_bytes(layout.dtype.size),
                               layout.default_budget if budget is None else budget,
                               layout.default_min_rows if budget is None else 1)
    nb_max = -(-A // bs)
    count = tf.reduce_sum(tf.cast(flag, tf.int32))
    # flagged rows first; fixed-size blocks, a data-dependent number of them (static shapes for XLA)
    order = tf.argsort(tf.cast(tf.logical_not(flag), tf.int32), stable=True)
    order = tf.concat([tf.cast(order, tf.int32), tf.zeros([nb_max * bs - A], tf.int32)], 0)
    nb = (count + bs - 1) // bs
    d = int(layout.anchor_rows.shape[1])
    keys = ["loss", "da", "rho", "m"]
    n_sums = len(st["sums"])
    want = coef is not None

    def step(i, vals, g_rows, g_acc):
        rows = tf.slice(order, [i * bs], [bs])
        valid = i * bs + tf.range(bs) < count
        Sm, M, a, ctx = layout.block(rows, valid)
        vals = list(vals)
        if backward_only:
            m = tf.gather(vals[3], rows)
            exps = blocks._exps(Sm - m[:, None], cfg)
            sums = tuple(tf.gather(s, rows) for s in vals[4:])
            w = tf.where(valid, tf.gather(coef, rows), 0.0)
        else:
            has, m, lr, sums, exps = blocks._row_stats(Sm, M, cfg)
            loss, da, rho, _ = row_tail(a, lr, M, has, cfg)
            new = [loss, da, rho, m, *sums]
            idx = rows[:, None]
            vals = [tf.tensor_scatter_nd_update(v, idx, tf.where(valid, x, tf.gather(v, rows)))
                    for v, x in zip(vals, new)]
            w = rho * tf.gather(coef, rows) if want else None
        if want:
            outs, incs = layout.grad_block(blocks._weights(exps, sums, w, cfg), ctx)
            g_rows = tf.tensor_scatter_nd_add(g_rows, rows[:, None], outs[0])
            g_acc = g_acc + incs[0]
        return i + 1, tuple(vals), g_rows, g_acc

    vals = tuple(st[k] for k in keys) + tuple(st["sums"])
    g0 = tf.zeros([A, d], layout.dtype)
    gacc = tf.zeros_like(layout.U if isinstance(layout, blocks.InBatch) else layout.UC)
    _, vals, g_rows, g_acc = tf.while_loop(lambda i, *_: i < nb, step, (tf.constant(0, tf.int32), vals, g0, gacc),
                                           parallel_iterations=1)
    st = dict(st, **dict(zip(keys, vals[:4])), sums=tuple(vals[4:4 + n_sums]))
    return st, g_rows, g_acc


def _skip(layout, cfg: Config) -> bool:
    return underflow_free(cfg, getattr(layout, "normalized", False))


def _coefs(st, coef, cfg: Config, pad: int):
    """(alpha, gamma) of pass 2, zero on flagged rows (their gradient comes from the fallback), padded."""
    zero = tf.zeros_like(st["rho"])
    cr = st["rho"] * coef
    alpha = tf.where(st["flag"], zero, cr * (1.0 + cfg.beta) / st["sums"][0])
    gamma = zero if cfg.kind == "zero" else tf.where(st["flag"], zero, cr * cfg.beta / st["sums"][1])
    return tuple(tf.pad(x, [[0, pad]]) for x in (alpha, gamma))


# ------------------------------------------------------------------------------------------------
# In-batch


def _other_labels(labels, dtype):
    """How many rows carry another label than each row (its negatives), by sorting: O(n log n), no (n x n)."""
    srt = tf.sort(labels)
    same = tf.searchsorted(srt, labels, side="right") - tf.searchsorted(srt, labels, side="left")
    return tf.cast(int(labels.shape[0]) - same, dtype)


def _in_batch_grid(layout, budget):
    U, cfg = layout.U, layout.cfg
    n = layout.n
    T = tile_rows(budget, layout.dtype.size, n, _in_batch_cap(U.shape[1]))
    c = tf.reduce_max(tf.reduce_sum(U * U, axis=1)) * cfg.inv_t
    keys = layout.labels if layout.labels is not None else tf.range(n) % layout.half  # pair index
    g = _Grid(U, keys, c, cfg.inv_t, T)
    g.shift = layout.half if layout.labels is None else False
    return g, c


def _in_batch_stats(layout, cfg, budget):
    g, c = _in_batch_grid(layout, budget)
    sums = _sums_pass(g, g, cfg, [(_pairs(g.n, g.T, "diag"), 0, None), (_pairs(g.n, g.T, "upper", g.shift), 0, 0)])[0]
    n = layout.n
    M = tf.fill([n], layout.M0) if layout.labels is None else _other_labels(layout.labels, layout.dtype)
    st = _row_terms(tuple(s[:n] for s in tf.unstack(sums)), M, layout.a_all, c, cfg, n)
    return g, st


def _in_batch_grad(layout, g: _Grid, st, coef, cfg, budget, g_fb):
    """dl/dU (n, d) times 1/t: pass 2, the fallback rows' gradient, the positive pairs."""
    n, half = layout.n, layout.half
    ag = _coefs(st, coef, cfg, g.nt * g.T - n)
    walks = [(_pairs(n, g.T, "diag"), True), (_pairs(n, g.T, "upper", g.shift), False)]
    dU = _grad_pass(g, g, cfg, ag, ag, walks)[0][:n]
    dU = dU + g_fb
    da = st["da"] * coef
    U = layout.U
    # a_i = u_i . u_p(i) / t with p a shift by n/2: row i gets (da_i + da_p(i)) u_p(i)
    dU = dU + (da + tf.roll(da, half, 0))[:, None] * tf.roll(U, half, 0)
    return dU * cfg.inv_t


def _in_batch_fused(layout, cfg, budget):
    g, st = _in_batch_stats(layout, cfg, budget)
    one = tf.ones_like(st["rho"])
    st, g_rows, g_acc = _fallback(layout, cfg, budget, st, coef=one, skip=_skip(layout, cfg))
    return st["loss"], _in_batch_grad(layout, g, st, one, cfg, budget, g_rows + g_acc)


# ------------------------------------------------------------------------------------------------
# Cross


def _cross_grids(pair: CrossPair, budget):
    cfg = pair.cfg
    B = pair.B
    T = tile_rows(budget, pair.dtype.size, B)
    n1 = tf.reduce_max(tf.reduce_sum(pair.U1 * pair.U1, 1))
    n2 = tf.reduce_max(tf.reduce_sum(pair.U2 * pair.U2, 1))
    c = tf.sqrt(n1) * tf.sqrt(n2) * cfg.inv_t  # >= |u1_i| |u2_j| / t >= s_ij
    keys = pair.labels if pair.labels is not None else tf.range(B)  # the positive: i == j
    R, C = _Grid(pair.U1, keys, c, cfg.inv_t, T), _Grid(pair.U2, keys, c, cfg.inv_t, T)
    R.shift = None if pair.labels is None else False
    return R, C, c


def _cross_stats(pair: CrossPair, cfg, budget):
    R, C, c = _cross_grids(pair, budget)
    rs, cs = _sums_pass(R, C, cfg, [(_pairs(R.n, R.T, "all", R.shift), 0, 1)])
    B = pair.B
    sts = []
    for lay, s in ((pair.fwd, rs), (pair.rev, cs)):
        M = tf.fill([B], lay.M0) if pair.labels is None else _other_labels(pair.labels, pair.dtype)
        sts.append(_row_terms(tuple(x[:B] for x in tf.unstack(s)), M, lay.a_all, c, cfg, B))
    return R, C, sts


def _cross_grad(pair, R, C, sts, coefs, cfg, fb):
    """(dl/du1, dl/du2) times 1/t; ``fb`` = the fallback's (rows, acc) per direction."""
    B = pair.B
    pad = R.nt * R.T - B
    d1, d2 = _grad_pass(R, C, cfg, _coefs(sts[0], coefs[0], cfg, pad), _coefs(sts[1], coefs[1], cfg, pad),
                        [(_pairs(B, R.T, "all", R.shift), False)])
    (f_rows, f_acc), (r_rows, r_acc) = fb
    da = sts[0]["da"] * coefs[0] + sts[1]["da"] * coefs[1]  # both directions' positive logit is u1_i . u2_i / t
    g1 = d1[:B] + f_rows + r_acc + da[:, None] * pair.U2
    g2 = d2[:B] + r_rows + f_acc + da[:, None] * pair.U1
    return g1 * cfg.inv_t, g2 * cfg.inv_t


def _cross_fused(pair, cfg, budget):
    R, C, sts = _cross_stats(pair, cfg, budget)
    one = tf.ones_like(sts[0]["rho"])
    fb, out = [], []
    for lay, st in ((pair.fwd, sts[0]), (pair.rev, sts[1])):
        st, rows, acc = _fallback(lay, cfg, budget, st, coef=one, skip=_skip(pair, cfg))
        out.append(st)
        fb.append((rows, acc))
    loss = tf.concat([out[0]["loss"], out[1]["loss"]], 0)
    return loss, _cross_grad(pair, R, C, out, (one, one), cfg, fb)


# ------------------------------------------------------------------------------------------------
# Entry points (called by hardneg_tf.blocks.fused / forward / backward)


def fused(layout, cfg: Config, budget):
    """Per-anchor losses and the gradients of their plain sum (as :func:`blocks.fused`)."""
    if isinstance(layout, CrossPair):
        return _cross_fused(layout, cfg, budget)
    return _in_batch_fused(layout, cfg, budget)


def _saved(st):
    return dict(m=st["m"], sums=st["sums"], rho=st["rho"], da=st["da"], flag=st["flag"])


def forward(layout, cfg: Config, budget):
    """Per-anchor losses and what :func:`backward` needs (m, sums, rho, da like :func:`blocks.forward`, plus the
    rows recomputed by the fallback, ``flag``). Pass 1 only."""
    if isinstance(layout, CrossPair):
        _, _, sts = _cross_stats(layout, cfg, budget)
        sts = [_fallback(lay, cfg, budget, st, skip=_skip(layout, cfg))[0]
               for lay, st in zip((layout.fwd, layout.rev), sts)]
        cat = lambda k: tf.concat([sts[0][k], sts[1][k]], 0)  # noqa: E731
        saved = dict(m=cat("m"), rho=cat("rho"), da=cat("da"), flag=cat("flag"),
                     sums=tuple(tf.concat([a, b], 0) for a, b in zip(sts[0]["sums"], sts[1]["sums"])))
        return cat("loss"), saved
    _, st = _in_batch_stats(layout, cfg, budget)
    st = _fallback(layout, cfg, budget, st, skip=_skip(layout, cfg))[0]
    return st["loss"], _saved(st)


def backward(layout, cfg: Config, budget, saved: dict, cot):
    """Gradients for per-anchor cotangents ``cot`` from :func:`forward`'s saved quantities: pass 2 (pass 1's
    tiles are not kept), and the flagged rows' negatives by the row-block code with their own maxima."""
    if isinstance(layout, CrossPair):
        B = layout.B
        R, C, _ = _cross_grids(layout, budget)
        sts, fb, coefs = [], [], []
        for k, lay in enumerate((layout.fwd, layout.rev)):
            sl = slice(k * B, (k + 1) * B)
            st = dict(m=saved["m"][sl], rho=saved["rho"][sl], da=saved["da"][sl], flag=saved["flag"][sl],
                      sums=tuple(s[sl] for s in saved["sums"]), loss=tf.zeros([B], layout.dtype))
            co = cot[sl]
            _, rows, acc = _fallback(lay, cfg, budget, st, coef=st["rho"] * co, backward_only=True,
                                     skip=_skip(layout, cfg))
            sts.append(st)
            fb.append((rows, acc))
            coefs.append(co)
        return _cross_grad(layout, R, C, sts, coefs, cfg, fb)
    g, _ = _in_batch_grid(layout, budget)
    st = dict(saved, loss=tf.zeros_like(saved["rho"]))
    _, rows, acc = _fallback(layout, cfg, budget, st, coef=saved["rho"] * cot, backward_only=True,
                             skip=_skip(layout, cfg))
    return _in_batch_grad(layout, g, st, cot, cfg, budget, rows + acc)
