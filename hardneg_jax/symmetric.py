r"""Tiled kernels: the two-pass symmetric in-batch kernel and shared tiles for the symmetric cross layout.

Both visit tiles of the logits with ``lax.scan`` over a static list of tile pairs (``dynamic_slice`` of the
rows; the list has (n/T)^2/2 entries, so nothing Python-unrolled grows with the batch) and hold O(n d) memory
plus a few (T x T) tiles. docs/spec.md section 8 ("the in-batch layout in two passes") has the algorithm;
hardneg_torch.symmetric is the PyTorch version.

**In-batch** (every row of U = [u(z1); u(z2)] an anchor). The logits S = U U^T / t are symmetric, so a tile
S_IJ serves the rows of I and, transposed, the rows of J:

* pass 1, over the tile pairs I <= J: ``E1 = e^{(1+beta)(S_IJ - c)}``, ``E0 = e^{beta (S_IJ - c)}`` (self,
  partner, same label and padding masked to 0), row sums to I's statistics, column sums to J's;
* row terms (:func:`hardneg_jax.rows.anchor_terms` with ``m = c``): loss, rho, dloss/da of every row;
* pass 2, over the same pairs: ``H = G_IJ + G_JI^T = E1 (alpha_I + alpha_J^T) - E0 (gamma_I + gamma_J^T)``
  (alpha_i = c_i rho_i (1+beta) / (t S1_i), gamma_i = c_i rho_i beta / (t S0_i)),
  ``dU_I += H U_J``, ``dU_J += H^T U_I`` (diagonal tiles: ``dU_I += H U_I``, H being already G + G^T).

Two (n x d)(d x n)-class products instead of the row-block kernel's three. The shift is one number,
``c = max_k |u_k|^2 / t``, which bounds every logit (Cauchy-Schwarz), so both sides of a tile share its
exponentials and there is no running maximum. Each half of U is padded to a multiple of the tile T (zero rows,
masked), so that tile k of the first half and tile k + n_t/2 of the second hold partners on their diagonal.

**Cross layout, symmetric, no bank.** S12 = u1 u2^T / t: one tile serves the forward direction's rows
(anchors z1) with its row sums and the reverse direction's rows (anchors z2) with its column sums; pass 2
forms ``H = G_fwd + G_rev^T`` and accumulates ``dz1_I += H z2_J``, ``dz2_J += H^T z1_I``: three B x B
products instead of six. The shift is ``c = max|u1| max|u2| / t``.

**Underflow.** A term ``e^{(1+beta)(s - c)}`` underflows once ``(1+beta)(c - s)`` exceeds -log(tiny) (87.3 in
float32), possible only where ``(1+beta) * 2c`` is that large. :func:`plan` decides statically:

* rows normalised and ``(1+beta) * 2/t <= SAFE_EXPONENT[dtype]``: no term can reach the subnormal range, every
  sum is exact to rounding, and the kernel has no fallback (the automatic choice takes the kernel only then);
* otherwise (kernel forced by ``HARDNEG_JAX_SYMMETRIC=1`` with unnormalised rows or a sharp temperature): rows
  whose sum S1 falls below ``n tiny / eps`` (then everything lost to underflow could exceed a rounding error)
  are *flagged*; if any is, ``lax.cond`` runs the row-block kernel (per-row maxima, exact) with the
  cotangents of the flagged rows only and takes their losses and gradient contributions from it, while the
  tiled pass 2 runs with their cotangents set to 0. No shape depends on the data (jit-compatible); the price is
  a whole row-block walk when any row is flagged (both branches run under ``vmap``, where ``cond`` is a select).

**Array temperature** (0-d, e.g. a learned CLIP temperature, traced under jit/grad). The shift c uses the
traced value, and d loss / d t is the row-block kernel's closed form (spec section 8): ``-sum G s / t`` through
every logit, read off the rows' gradients (s is bilinear in the rows: ``<U, dL/dU> = 2 sum G s`` in-batch,
``<u1, dL/du1> = sum G s`` cross; no extra pass), plus the clamp floor's share ``-sum_floor c da / t^2``
(:func:`_t_grad`). The value of t is unknown when tracing, so the static bound cannot be checked: the kernel
always carries the underflow fallback, which keeps every t > 0 exact (a sharp learned temperature, CLIP's 0.01
say, flags rows and gets them from the row blocks). Its cost when no row is flagged is an (n,) comparison and
a ``cond`` whose taken branch returns zeros; when rows are flagged (and always under ``vmap``) it adds a whole
row-block walk, so the *automatic* choice keeps the row-block kernel for an array temperature (unmeasured;
``HARDNEG_JAX_SYMMETRIC=1`` takes the tiled kernels).

Not covered (the row-block kernels serve them; :func:`plan` returns 0): beta = inf or traced (the gradient
in beta would need two more tiled sums per row, and beta = inf the maxima's ties), banks, the one-way cross
layout, ``axis_name`` (gathered batches).
"""

from __future__ import annotations

import math
import os
from typing import Optional

import jax.numpy as jnp
import numpy as np
from jax import lax

from .rows import anchor_terms, tau_sum

__all__ = ["ENV_VAR", "TILE_ROWS", "MIN_ROWS", "MIN_ROWS_PER_DIM", "MIN_TILE", "SAFE_EXPONENT", "tile_rows", "plan",
           "in_batch", "cross"]

#: Environment variable overriding the automatic choice: "1" takes the tiled kernels wherever they are
#: supported (tests, conformance), "0" the row-block kernels. Read at trace time (a jitted caller keeps the
#: kernel it was traced with).
ENV_VAR = "HARDNEG_JAX_SYMMETRIC"

#: Largest tile side (a float32 tile is 4 MiB at 1024 rows).
TILE_ROWS = 1024

#: Smallest tile side the automatic choice accepts (smaller tiles make the products slow).
MIN_TILE = 64

#: Rows (in-batch: n = 2B; cross: B per side) from which the automatic choice takes the tiled kernels. Measured
#: (2 threads, fp32 forward + backward, d = 128; docs/backends/jax.md): the tiled kernels were faster at every
#: size tried, from B = 64 (in-batch, 0.4 vs 0.6 ms) and B = 128 (cross, 0.5 vs 0.8 ms) to B = 4096.
MIN_ROWS = 128

#: In-batch only: the automatic choice also needs n >= MIN_ROWS_PER_DIM * d. With d large relative to the
#: batch the element-wise passes no longer dominate and the row-block kernel's fewer, larger products win
#: (B = 128, d = 1024: 6.6 ms row blocks vs 7.0 ms tiled; B = 64, d = 512: 1.8 vs 1.7 ms, a tie). The cross
#: layout's tiles halve its products (three instead of six) and won at every d tried (B = 128, d = 1024: 2.9
#: vs 3.9 ms).
MIN_ROWS_PER_DIM = 0.5

#: Largest (1+beta) * 2c per compute dtype for which no shifted exponent reaches the subnormal range
#: (-log of the smallest normal number: 87.3 in float32, 708 in float64).
SAFE_EXPONENT = {4: 80.0, 8: 700.0}


def tile_rows(rows: int, itemsize: int, budget: Optional[int], default_budget: int) -> int:
    """Tile side T for ``rows`` rows per side: three (T x T) arrays (and a mask byte) fit the budget, at most
    :data:`TILE_ROWS`; then the rows are split into equal tiles (padding fewer than one row per tile)."""
    budget = default_budget if budget is None else int(budget)
    cap = max(1, min(TILE_ROWS, math.isqrt(max(budget // (3 * itemsize + 1), 1))))
    k = -(-rows // cap)
    return max(1, -(-rows // k))


def plan(*, cross: bool, symmetric: bool, bank: str, distributed: bool, beta_mode: str, beta: Optional[float],
         temperature: Optional[float], normalize: bool, batch: int, itemsize: int, budget: Optional[int],
         default_budget: int, dim: int = 0, platform: str = "cpu") -> dict:
    """Static fields of :class:`hardneg_jax.rows.Statics` for the tiled kernels: ``tiles`` (0: row blocks),
    ``tile_beta_one``, ``tile_fallback``.

    ``temperature`` is the concrete temperature (None for an array temperature); ``dim`` the row length d;
    ``platform`` where the call computes. The environment variable :data:`ENV_VAR` forces the choice where
    supported; otherwise the kernels are taken on the CPU (the only platform they were measured on) for at
    least :data:`MIN_ROWS` rows (in-batch also at least :data:`MIN_ROWS_PER_DIM` * d), tiles of at least
    :data:`MIN_TILE` rows and normalised rows whose fixed shift cannot underflow (then no fallback is needed).
    An array temperature's value is unknown here: forced, the kernels run with the fallback; the automatic
    choice keeps the row blocks (see the module docstring).
    """
    off = dict(tiles=0, tile_beta_one=False, tile_fallback=False)
    layout_ok = (not cross and bank == "none") or (cross and symmetric and bank == "none")
    if not layout_ok or distributed or beta_mode not in ("finite", "zero") or batch < 2:
        return off
    b = 0.0 if beta_mode == "zero" else float(beta)
    rows = batch  # tiles never cross the halves (in-batch) / the sides (cross) of B rows
    T = tile_rows(rows, itemsize, budget, default_budget)
    # an array temperature's value is unknown when tracing: the bound cannot be checked, so it is never "safe"
    # (forced, the kernel then carries the per-row fallback, exact for every t > 0)
    safe = (normalize and temperature is not None
            and (1.0 + b) * 2.0 / float(temperature) <= SAFE_EXPONENT.get(itemsize, 80.0))
    env = os.environ.get(ENV_VAR, "").strip()
    if env == "0":
        return off
    if env != "1":
        n_rows = rows if cross else 2 * rows
        wide = not cross and n_rows < MIN_ROWS_PER_DIM * dim
        if not (platform == "cpu" and safe and n_rows >= MIN_ROWS and T >= MIN_TILE) or wide:
            return off
    return dict(tiles=T, tile_beta_one=beta_mode == "finite" and b == 1.0, tile_fallback=not safe)


# ---------------------------------------------------------------- shared pieces
def _pad_rows(x, B: int, Bp: int):
    """(B, ...) -> (Bp, ...) with zero rows appended."""
    if Bp == B:
        return x
    return jnp.concatenate([x, jnp.zeros((Bp - B,) + x.shape[1:], x.dtype)], axis=0)


def _same_label_counts(lab):
    """Number of entries of ``lab`` equal to each entry (self included), by sorting: O(n log n)."""
    s = jnp.sort(lab)
    return (jnp.searchsorted(s, lab, side="right") - jnp.searchsorted(s, lab, side="left")).astype(jnp.int32)


def _exps(S, mask, c, b, st):
    """(E1, E0) = (e^{(1+b)(S-c)}, e^{b(S-c)}) on the negatives, 0 elsewhere; E0 is None for beta 0."""
    d = S - c
    if st.beta_mode == "zero":
        return jnp.where(mask, jnp.exp(d), 0.0), None
    if st.tile_beta_one:
        e0 = jnp.where(mask, jnp.exp(d), 0.0)
        return e0 * e0, e0
    return jnp.where(mask, jnp.exp((1.0 + b) * d), 0.0), jnp.where(mask, jnp.exp(b * d), 0.0)


def _h(e1, e0, aI, aJ, gI, gJ, st):
    """H = E1 (alpha_I + alpha_J^T) - E0 (gamma_I + gamma_J^T)."""
    if e0 is None:
        return e1 * (aI[:, None] + aJ[None, :])
    if st.tile_beta_one:  # E1 = E0^2: H = E0 (E0 (alpha_I + alpha_J) - gamma_I - gamma_J)
        return e0 * (e0 * (aI[:, None] + aJ[None, :]) - (gI[:, None] + gJ[None, :]))
    return e1 * (aI[:, None] + aJ[None, :]) - e0 * (gI[:, None] + gJ[None, :])


def _nt(x, y):
    """x (R, d) @ y (C, d)^T."""
    return lax.dot_general(x, y, (((1,), (1,)), ((), ())))


def _tn(x, y):
    """x (R, C)^T @ y (R, d)."""
    return lax.dot_general(x, y, (((0,), (0,)), ((), ())))


def _add(acc, start, rows):
    cur = lax.dynamic_slice_in_dim(acc, start, rows.shape[0])
    return lax.dynamic_update_slice_in_dim(acc, cur + rows, start, 0)


def _stats(s1, s0, count, a, c, t, tau, st):
    """Row terms from the fixed-shift sums. Returns (has, logM, terms, S1, S0 (or count))."""
    cd = s1.dtype
    has = count > 0
    logM = jnp.log(jnp.where(has, count, 1).astype(cd))
    S1 = jnp.where(has, s1, 1.0)
    S0 = jnp.where(has, count.astype(cd) if s0 is None else s0, 1.0)
    m = jnp.where(has, c, 0.0)
    lr = logM + m + jnp.log(S1) - jnp.log(S0)
    easy = st.estimator == "easy"
    tau_e = jnp.zeros((), cd) if easy else tau
    tm = anchor_terms(lr, logM, a, t, tau_e, st.clamp and not easy)
    return has, logM, tm, S1, S0, tau_e


def _flagged(s1, has, n):
    """Rows whose fixed-shift sum may have lost more than a rounding error to underflow (NaN: not flagged)."""
    fi = jnp.finfo(s1.dtype)
    return has & (s1 < n * float(fi.tiny) / float(fi.eps))


def _row_factors(cp, live, tm, S1, S0, beta, inv_t, st):
    """alpha, gamma (None for beta 0), qa of every row: the cotangent-weighted factors of H and of the
    positive logit, already divided by t. ``live``: rows with negatives that are not flagged for the
    fallback (a flagged row's sums may be 0 and its terms NaN: selected away, never multiplied by 0)."""
    one = jnp.ones((), S1.dtype)
    cr = jnp.where(live, cp * tm.rho, 0.0) * inv_t
    b = jnp.zeros((), S1.dtype) if st.beta_mode == "zero" else beta
    alpha = cr * (1.0 + b) / jnp.where(live, S1, one)
    gamma = None if st.beta_mode == "zero" else cr * b / jnp.where(live, S0, one)
    qa = jnp.where(live, cp * tm.da, 0.0) * inv_t
    return alpha, gamma, qa


def _t_grad(dot, cp, live, tm, t, st):
    """Sum over the live rows of c_i dloss_i/dt (spec section 8), as the row-block kernel forms it.

    Every logit s = u.v / t moves with t (ds/dt = -s/t, positives included), so that part is
    ``-sum_ij G_ij s_ij / t`` with G the cotangent-weighted dloss/ds; ``dot`` is that sum, obtained from the
    gradients already formed: s is bilinear in the rows, so <U, dL/dU> = 2 sum G s (in-batch, U on both
    sides) and <u1, dL/du1> = sum G s (cross). Rows on the clamp floor log M - 1/t also move with the floor:
    dloss/dfloor = -da, dfloor/dt = 1/t^2."""
    g = -dot / t
    if st.clamp and st.estimator != "easy":
        g = g - jnp.sum(jnp.where(live & tm.floor, cp * tm.da, 0.0)) / (t * t)
    return g


def _pairs(k: int, offset: int = 0, upper: bool = True):
    """Static (p, q) tile pairs: p < q (upper) or all p, q; as int32 arrays for ``lax.scan``."""
    if upper:
        p, q = np.triu_indices(k, 1)
    else:
        p, q = np.divmod(np.arange(k * k), k)
    return jnp.asarray(p + offset, jnp.int32), jnp.asarray(q + offset, jnp.int32)


# ---------------------------------------------------------------- in-batch
def _loss_with_fallback(flagged, loss, unpad, row_blocks):
    """The loss without a gradient: flagged rows (their fixed-shift sums may have underflowed) take the
    row-block kernel's loss, computed under a ``lax.cond`` only when a row is flagged."""
    if flagged is None:
        return loss
    fl = unpad(flagged)
    return lax.cond(jnp.any(fl), lambda: jnp.where(fl, row_blocks(), loss), lambda: loss)


def _pass2_rows(c, B, Bp, has, flagged, tm, logM, tau_e, st, needs, z):
    """Per-row inputs of pass 2, rows [first half or side; second] padded to Bp each: the cotangents, the rows
    that take part (a negative, not flagged) and, if wanted, the rows' share of d loss / d tau_plus."""
    cp = jnp.concatenate([_pad_rows(c[:B], B, Bp), _pad_rows(c[B:], B, Bp)])
    live = has if flagged is None else has & ~flagged
    g_tau = tau_sum(cp, jnp.where(live, tm.rho, 0.0), tm, live, logM, tau_e, st.clamp and st.estimator != "easy") \
        if needs.tau_plus else z
    return cp, live, g_tau


def in_batch(st, x, t, beta, tau, c, needs, zeros):
    """The in-batch layout (every row an anchor) by the two-pass symmetric algorithm; same contract as
    :func:`hardneg_jax.blocks.run_pass` (gradients w.r.t. the normalised rows, already divided by t)."""
    from .blocks import PassOut, _in_batch

    U = x.U
    cd = U.dtype
    n, d = U.shape
    B = x.half
    T = st.tiles
    k = -(-B // T)
    Bp = k * T
    npad = 2 * Bp
    inv_t = 1.0 / t
    b = jnp.zeros((), cd) if st.beta_mode == "zero" else beta

    Up = jnp.concatenate([_pad_rows(U[:B], B, Bp), _pad_rows(U[B:], B, Bp)])
    Ut = Up * inv_t
    c_shift = jnp.max(jnp.sum(U * U, axis=1)) * inv_t
    a_half = jnp.sum(U[:B] * U[B:], axis=1) * inv_t
    a = jnp.concatenate([_pad_rows(a_half, B, Bp)] * 2)
    if x.lab is None:
        cnt_half = jnp.full((B,), n - 2, jnp.int32)
        cnt = jnp.concatenate([_pad_rows(cnt_half, B, Bp)] * 2)
        labp = None
    else:
        same = _same_label_counts(x.lab)
        cnt = jnp.concatenate([_pad_rows(n - same[:B], B, Bp), _pad_rows(n - same[B:], B, Bp)])
        labp = jnp.concatenate([_pad_rows(x.lab[:B], B, Bp), _pad_rows(x.lab[B:], B, Bp)])
    ar = jnp.arange(T, dtype=jnp.int32)
    valid_tile = ar < B - (k - 1) * T  # rows of the last tile of a half that are not padding

    def tile(p, q):
        """(E1, E0) of tile pair (p, q)."""
        UI = lax.dynamic_slice_in_dim(Up, p * T, T)
        UJ = lax.dynamic_slice_in_dim(Ut, q * T, T)
        S = _nt(UI, UJ)
        vr = (p % k != k - 1) | valid_tile
        vc = (q % k != k - 1) | valid_tile
        self_or_partner = ((p == q) | (q == p + k)) & (ar[:, None] == ar[None, :])
        mask = ~self_or_partner & vr[:, None] & vc[None, :]
        if labp is not None:
            lI = lax.dynamic_slice_in_dim(labp, p * T, T)
            lJ = lax.dynamic_slice_in_dim(labp, q * T, T)
            mask = mask & (lI[:, None] != lJ[None, :])
        return _exps(S, mask, c_shift, b, st)

    two = st.beta_mode != "zero"
    nt = 2 * k
    up_p, up_q = _pairs(nt)
    diag = jnp.arange(nt, dtype=jnp.int32)

    # ---- pass 1
    def p1_off(carry, pq):
        p, q = pq
        e1, e0 = tile(p, q)
        s1, s0 = carry
        s1 = _add(_add(s1, p * T, jnp.sum(e1, axis=1)), q * T, jnp.sum(e1, axis=0))
        if two:
            s0 = _add(_add(s0, p * T, jnp.sum(e0, axis=1)), q * T, jnp.sum(e0, axis=0))
        return (s1, s0), None

    def p1_diag(carry, p):
        e1, e0 = tile(p, p)
        s1, s0 = carry
        s1 = _add(s1, p * T, jnp.sum(e1, axis=1))
        if two:
            s0 = _add(s0, p * T, jnp.sum(e0, axis=1))
        return (s1, s0), None

    z = zeros(())
    init = (zeros((npad,)), zeros((npad,)) if two else z)
    carry, _ = lax.scan(p1_diag, init, diag)
    (s1, s0), _ = lax.scan(p1_off, carry, (up_p, up_q))
    has, logM, tm, S1, S0, tau_e = _stats(s1, s0 if two else None, cnt, a, c_shift, t, tau, st)
    loss_p = jnp.where(has, tm.delta, 0.0)
    unpad = lambda v: jnp.concatenate([v[:B], v[Bp:Bp + B]])  # noqa: E731
    loss = unpad(loss_p)
    flagged = _flagged(s1, has, n) if st.tile_fallback else None

    if c is None:
        return PassOut(_loss_with_fallback(flagged, loss, unpad,
                                           lambda: _in_batch(st, x, t, beta, tau, None, needs, zeros).loss))

    cp, live, g_tau = _pass2_rows(c, B, Bp, has, flagged, tm, logM, tau_e, st, needs, z)
    gU = None
    g_t = z
    if needs.arrays or needs.temperature:  # d/dt is formed from the rows' gradients (see _t_grad)
        alpha, gamma, qa = _row_factors(cp, live, tm, S1, S0, beta, inv_t, st)
        g0 = gamma if two else alpha  # a placeholder of the right shape for beta 0

        def parts(p, q):
            e1, e0 = tile(p, q)
            sl = lambda v, r: lax.dynamic_slice_in_dim(v, r * T, T)  # noqa: E731
            return _h(e1, e0, sl(alpha, p), sl(alpha, q), sl(g0, p), sl(g0, q), st)

        # ---- pass 2
        def p2_off(gU, pq):
            p, q = pq
            H = parts(p, q)
            gU = _add(gU, p * T, H @ lax.dynamic_slice_in_dim(Up, q * T, T))
            gU = _add(gU, q * T, _tn(H, lax.dynamic_slice_in_dim(Up, p * T, T)))
            return gU, None

        def p2_diag(gU, p):
            H = parts(p, p)
            return _add(gU, p * T, H @ lax.dynamic_slice_in_dim(Up, p * T, T)), None

        gUp, _ = lax.scan(p2_diag, zeros((npad, d)), diag)
        gUp, _ = lax.scan(p2_off, gUp, (up_p, up_q))
        # the positive logits a_i = u_i . u_p(i) / t, p(i) = i + Bp (mod 2 Bp), in both of their roles
        gUp = gUp + qa[:, None] * jnp.roll(Up, Bp, axis=0) + jnp.roll(qa[:, None] * Up, Bp, axis=0)
        gU = unpad(gUp)
        if needs.temperature:
            g_t = _t_grad(0.5 * jnp.sum(U * gU), cp, live, tm, t, st)
        if not needs.arrays:
            gU = None
    if flagged is not None:
        fl = unpad(flagged)

        def fallback():
            out = _in_batch(st, x, t, beta, tau, jnp.where(fl, c, 0.0), needs, zeros)
            return (out.loss, (out.gU if needs.arrays else z), (out.g_tau if needs.tau_plus else z),
                    (out.g_t if needs.temperature else z))

        def none():
            return loss, (jnp.zeros_like(gU) if needs.arrays else z), z, z

        l_f, g_f, tau_f, t_f = lax.cond(jnp.any(fl), fallback, none)
        loss = jnp.where(fl, l_f, loss)
        gU = gU + g_f if needs.arrays else None
        g_tau = g_tau + tau_f
        g_t = g_t + t_f
    return PassOut(loss, gU, None, None, g_t, z, g_tau)


# ---------------------------------------------------------------- cross layout, symmetric, no bank
def cross(st, x, t, beta, tau, c, needs, zeros):
    """The symmetric cross layout without a bank by shared tiles: anchors z1 (rows of S12 = u1 u2^T / t) and
    anchors z2 (its columns) from the same tiles. Same contract as :func:`hardneg_jax.blocks.run_pass`."""
    from .blocks import PassOut, _cross

    U1, U2 = x.U, x.U2
    cd = U1.dtype
    B, d = U1.shape
    T = st.tiles
    k = -(-B // T)
    Bp = k * T
    inv_t = 1.0 / t
    b = jnp.zeros((), cd) if st.beta_mode == "zero" else beta
    U1p, U2p = _pad_rows(U1, B, Bp), _pad_rows(U2, B, Bp)
    U2t = U2p * inv_t
    # Cauchy-Schwarz: u1_i . u2_j <= |u1_i| |u2_j| <= max |u1| max |u2|
    c_shift = jnp.sqrt(jnp.max(jnp.sum(U1 * U1, axis=1)) * jnp.max(jnp.sum(U2 * U2, axis=1))) * inv_t
    a = _pad_rows(jnp.sum(U1 * U2, axis=1) * inv_t, B, Bp)
    if x.lab is None:
        cnt = _pad_rows(jnp.full((B,), B - 1, jnp.int32), B, Bp)
        labp = None
    else:
        cnt = _pad_rows(B - _same_label_counts(x.lab), B, Bp)
        labp = _pad_rows(x.lab, B, Bp)
    ar = jnp.arange(T, dtype=jnp.int32)
    valid_tile = ar < B - (k - 1) * T

    def tile(p, q):
        UI = lax.dynamic_slice_in_dim(U1p, p * T, T)
        UJ = lax.dynamic_slice_in_dim(U2t, q * T, T)
        S = _nt(UI, UJ)
        vr = (p != k - 1) | valid_tile
        vc = (q != k - 1) | valid_tile
        mask = ~((p == q) & (ar[:, None] == ar[None, :])) & vr[:, None] & vc[None, :]
        if labp is not None:
            mask = mask & (lax.dynamic_slice_in_dim(labp, p * T, T)[:, None]
                           != lax.dynamic_slice_in_dim(labp, q * T, T)[None, :])
        return _exps(S, mask, c_shift, b, st)

    two = st.beta_mode != "zero"
    pp, qq = _pairs(k, upper=False)

    def p1(carry, pq):
        p, q = pq
        e1, e0 = tile(p, q)
        f1, f0, r1, r0 = carry
        f1 = _add(f1, p * T, jnp.sum(e1, axis=1))
        r1 = _add(r1, q * T, jnp.sum(e1, axis=0))
        if two:
            f0 = _add(f0, p * T, jnp.sum(e0, axis=1))
            r0 = _add(r0, q * T, jnp.sum(e0, axis=0))
        return (f1, f0, r1, r0), None

    z = zeros(())
    v = lambda: zeros((Bp,))  # noqa: E731
    (f1, f0, r1, r0), _ = lax.scan(p1, (v(), v() if two else z, v(), v() if two else z), (pp, qq))
    # both directions' row terms at once: rows [fwd; rev]
    s1 = jnp.concatenate([f1, r1])
    s0 = jnp.concatenate([f0, r0]) if two else None
    cnt2 = jnp.concatenate([cnt, cnt])
    has, logM, tm, S1, S0, tau_e = _stats(s1, s0, cnt2, jnp.concatenate([a, a]), c_shift, t, tau, st)
    unpad = lambda v: jnp.concatenate([v[:B], v[Bp:Bp + B]])  # noqa: E731
    loss = unpad(jnp.where(has, tm.delta, 0.0))
    flagged = _flagged(s1, has, B) if st.tile_fallback else None

    if c is None:
        return PassOut(_loss_with_fallback(flagged, loss, unpad,
                                           lambda: _cross(st, x, t, beta, tau, None, needs, zeros).loss))

    cp, live, g_tau = _pass2_rows(c, B, Bp, has, flagged, tm, logM, tau_e, st, needs, z)
    g1 = g2 = None
    g_t = z
    if needs.arrays or needs.temperature:  # d/dt is formed from the rows' gradients (see _t_grad)
        alpha, gamma, qa = _row_factors(cp, live, tm, S1, S0, beta, inv_t, st)
        g0 = gamma if two else alpha
        af, ar_ = alpha[:Bp], alpha[Bp:]
        gf, gr = g0[:Bp], g0[Bp:]

        def p2(carry, pq):
            p, q = pq
            e1, e0 = tile(p, q)
            sl = lambda v, r: lax.dynamic_slice_in_dim(v, r * T, T)  # noqa: E731
            H = _h(e1, e0, sl(af, p), sl(ar_, q), sl(gf, p), sl(gr, q), st)  # G_fwd + G_rev^T
            g1, g2 = carry
            g1 = _add(g1, p * T, H @ lax.dynamic_slice_in_dim(U2p, q * T, T))
            g2 = _add(g2, q * T, _tn(H, lax.dynamic_slice_in_dim(U1p, p * T, T)))
            return (g1, g2), None

        (g1, g2), _ = lax.scan(p2, (zeros((Bp, d)), zeros((Bp, d))), (pp, qq))
        # the positives: C_ii = g_fwd_i + g_rev_i
        qd = (qa[:Bp] + qa[Bp:])[:, None]
        g1 = (g1 + qd * U2p)[:B]
        g2 = (g2 + qd * U1p)[:B]
        if needs.temperature:
            g_t = _t_grad(jnp.sum(U1 * g1), cp, live, tm, t, st)
        if not needs.arrays:
            g1 = g2 = None
    if flagged is not None:
        fl = unpad(flagged)

        def fallback():
            out = _cross(st, x, t, beta, tau, jnp.where(fl, c, 0.0), needs, zeros)
            gz = (out.gU, out.gU2) if needs.arrays else (z, z)
            return out.loss, gz, (out.g_tau if needs.tau_plus else z), (out.g_t if needs.temperature else z)

        def none():
            gz = (jnp.zeros_like(g1), jnp.zeros_like(g2)) if needs.arrays else (z, z)
            return loss, gz, z, z

        l_f, (h1, h2), tau_f, t_f = lax.cond(jnp.any(fl), fallback, none)
        loss = jnp.where(fl, l_f, loss)
        if needs.arrays:
            g1, g2 = g1 + h1, g2 + h2
        g_tau = g_tau + tau_f
        g_t = g_t + t_f
    return PassOut(loss, g1, g2, None, g_t, z, g_tau)
