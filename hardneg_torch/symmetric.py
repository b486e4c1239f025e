r"""Two-pass symmetric kernel for the in-batch layout: each unordered pair of row tiles visited once per pass.

In the in-batch layout the logits ``S = U U^T / t`` are symmetric, so a tile ``S_IJ`` (rows of tile I against
the rows of tile J) holds, transposed, the logits of J's rows against I's. The one-pass row-block kernel
(:func:`hardneg_torch.blocks.in_batch`) forms every tile twice (once per side) and costs three
(n x d)(d x n)-class products with the gradient; this kernel forms each unordered pair once per pass and
costs two (docs/spec.md, section 8, "Two-pass symmetric kernel"):

* **Pass 1** (half the tiles, half a product): for each pair I <= J, ``S_IJ - c`` (one product), the
  exponentials ``E0 = e^{beta (S - c)}`` and ``E1 = e^{(1+beta)(S - c)}``, their row sums (statistics of I's
  rows) and column sums (statistics of J's rows). ``c = max_k |u_k|^2 / t`` bounds every logit
  (Cauchy–Schwarz: ``s_ij <= |u_i| |u_j| / t <= c``; ``c = 1/t`` for normalised rows), so one shift serves
  the whole tile pair and both sides share the exponentials: there is no per-row maximum and no online
  rescaling. Self, partner and same-label entries are set to ``-inf`` before the exponentials, as in the
  row-block kernel (subtracting them afterwards would cancel catastrophically when they dominate).
* **Row terms**: :func:`hardneg_torch.rows.row_terms` with ``m = c`` gives each row's loss, dloss/da and
  ``rho``; the gradient of row i with respect to its logits is ``G_ij = alpha_i E1_ij - gamma_i E0_ij`` with
  ``alpha_i = coef_i rho_i (1+beta) / (t S1_i)`` and ``gamma_i = coef_i rho_i beta / (t S0_i)``.
* **Pass 2** (half the tiles, one and a half products): recompute ``S_IJ - c`` and the exponentials, form
  ``H = G_IJ + G_JI^T = E1 (alpha_I + alpha_J^T) - E0 (gamma_I + gamma_J^T)`` (outer sums; again one set of
  exponentials for both sides), and accumulate ``dU_I += H U_J``, ``dU_J += H^T U_I`` (one product on the
  diagonal tiles, ``dU_I += H U_I``, since H is then already ``G + G^T``).

A fixed shift can underflow: a term ``e^{(1+beta)(s - c)}`` is below the smallest normal number of the
compute dtype once ``(1+beta)(c - s)`` exceeds about 87 (float32). The row sums are exact to the dtype's
rounding as long as each row's sum is at least ``n * tiny / eps`` (then everything lost to underflow is below
one rounding error); rows below that threshold (only possible when ``(1+beta) * 2c`` is large, e.g.
t = 0.05 with beta = 1) are recomputed exactly with per-row maxima by the row-block kernel, and their
statistics take no part in pass 2. The automatic choice (:func:`choose`) does not pick this kernel where the
static bound ``(1+beta) * 2c`` allows underflow at all, so the fallback only runs when the kernel is forced.

Memory: two (three for beta not in {0, 1}) (T x T) tile buffers (T from the memory budget, at most :data:`TILE_ROWS`), a bool mask with
labels, and O(n d) for the shifted copies of U — linear in the batch.

Not covered (the row-block kernel serves them): beta = inf, a tensor temperature, gather (anchors a subset of
the rows), banks, the cross layout, and tracing by torch.compile (the fallback's row count is data-dependent).
"""

from __future__ import annotations

import math
import os
from typing import List, Optional, Sequence, Tuple

import torch

from . import blocks
from .rows import Hyper, row_terms

__all__ = ["TILE_ROWS", "MIN_ROWS", "ENV_VAR", "supported", "choose", "tile_rows", "in_batch"]

#: Largest tile side: a float32 tile of 1024 rows is 4 MiB (three buffers: 12 MiB); measured faster than
#: 512 (fewer, larger operations: 1.14 vs 1.28 x the floor at B = 4096, d = 128, 2 threads) and as fast as 2048.
TILE_ROWS = 1024

#: Rows n = 2B from which the automatic choice takes the symmetric kernel (measured crossover: equal at
#: B = 512, 14-16 % faster at B = 1024, d = 128;
#: docs/backends/torch.md / docs/spec.md section 8).
MIN_ROWS = 2048

#: Smallest tile side the automatic choice accepts (smaller tiles make the products slow).
MIN_TILE = 128

#: Largest (1+beta) * 2c for which the automatic choice accepts the fixed shift (no term can underflow to a
#: subnormal in float32, whose smallest normal number is e^{-87.3}).
SAFE_EXPONENT = 80.0

#: Environment variable overriding the automatic choice: "1" forces the symmetric kernel wherever it is
#: supported (the conformance suite and tests use it), "0" forces the row-block kernel.
ENV_VAR = "HARDNEG_TORCH_SYMMETRIC"


def supported(hp: Hyper, t, anchors: Sequence[Tuple[int, int]], n: int) -> bool:
    """Whether the symmetric kernel can evaluate this call: finite beta, a float temperature, all rows anchors."""
    return (not math.isinf(hp.beta) and not isinstance(t, torch.Tensor) and tuple(anchors) == ((0, n),)
            and n >= 2 and n % 2 == 0)


def tile_rows(memory_budget: Optional[int], itemsize: int, labelled: bool) -> int:
    """Tile side T: three (T x T) buffers (and a bool mask with labels) fit in the memory budget."""
    budget = blocks.DEFAULT_MEMORY_BUDGET if memory_budget is None else int(memory_budget)
    per_element = 3 * itemsize + int(labelled)  # a third buffer for general beta's outer sums
    return max(1, min(TILE_ROWS, math.isqrt(max(budget // per_element, 1))))


def choose(hp: Hyper, t, anchors, n: int, normalize: bool, tile: int, device_type: str = "cpu") -> bool:
    """The automatic choice between the symmetric kernel (True) and the row-block kernel (False).

    ``HARDNEG_TORCH_SYMMETRIC=1``/``0`` overrides it (where the kernel is supported). Otherwise the symmetric
    kernel is taken on the CPU (the only device it was measured on) for n >= :data:`MIN_ROWS` rows, tiles of at
    least :data:`MIN_TILE` rows and normalised rows whose fixed shift cannot underflow
    (``(1+beta) * 2/t <= SAFE_EXPONENT``).
    """
    if not supported(hp, t, anchors, n) or torch.compiler.is_compiling():
        # under torch.compile the row-block kernel: this one branches on data (the underflow fallback's rows)
        return False
    env = os.environ.get(ENV_VAR, "").strip()
    if env in ("0", "1"):
        return env == "1"
    return (device_type == "cpu" and normalize and n >= MIN_ROWS and tile >= MIN_TILE
            and (1.0 + hp.beta) * 2.0 / float(t) <= SAFE_EXPONENT)


def _tiles(n: int, tile: int) -> List[Tuple[int, int]]:
    """Row tiles of at most ``tile`` rows, never across the halves; tile k of the first half and tile
    k + len/2 of the second have the same rows shifted by n/2 (each row's partner)."""
    half = n // 2
    first = [(r0, min(half, r0 + tile)) for r0 in range(0, half, tile)]
    return first + [(r0 + half, r1 + half) for r0, r1 in first]


def in_batch(U: torch.Tensor, labels: Optional[torch.Tensor], hp: Hyper, coef, tile: int, t: float,
             rows_per_block: int):
    r"""The in-batch layout with every row an anchor, by the two-pass symmetric algorithm.

    Parameters
    ----------
    U : (n, d) tensor, the (normalised) rows [u(z1); u(z2)] in the compute dtype; partner p(i) = (i + n/2) mod n.
    labels : (n,) integer tensor or None.
    hp : Hyper with finite beta.
    coef : None, float or (n,) tensor — the cotangent of each row's loss (None: loss only, pass 1 only).
    tile : int, the tile side T.
    t : float, the temperature.
    rows_per_block : int, rows per block of the row-block fallback (rows whose fixed-shift sums underflow).

    Returns
    -------
    loss : (n,) tensor; grad : (n, d) tensor dL/dU or None; None (no floor term: the temperature is a float).
    """
    n = U.shape[0]
    half = n // 2
    dt, dev = U.dtype, U.device
    want_grad = coef is not None
    beta = hp.beta
    if 0.0 < beta < torch.finfo(dt).tiny:
        beta = 0.0  # as in blocks._block: e^{beta (s - c)} = 1 to the dtype's resolution
    inv_t = 1.0 / t
    # c bounds every logit; folded into the product as an extra column: [u_i, -c] . [u_j / t, 1] = s_ij - c
    c = (U * U).sum(dim=1).amax() * inv_t if n else U.new_zeros(())
    Ua = torch.cat([U, (-c).expand(n, 1)], dim=1)
    Va = torch.cat([U * inv_t, U.new_ones((n, 1))], dim=1)
    a_half = (U[:half] * U[half:]).sum(dim=1) * inv_t
    a = torch.cat([a_half, a_half])
    if labels is None:
        count = torch.full((n,), n - 2, dtype=torch.int64, device=dev)
    else:
        _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
        count = n - counts[inverse]
    tiles = _tiles(n, tile)
    nt = len(tiles)
    S_flat = torch.empty(tile * tile, dtype=dt, device=dev)
    two = beta != 0.0
    T_flat = torch.empty(tile * tile, dtype=dt, device=dev) if (two or want_grad) else None
    R_flat = torch.empty(tile * tile, dtype=dt, device=dev) if (want_grad and two and beta != 1.0) else None
    neg_inf = -math.inf

    def logits(p: int, q: int):
        """S_pq - c with the non-negatives at -inf, in the S buffer."""
        (i0, i1), (j0, j1) = tiles[p], tiles[q]
        S = torch.mm(Ua[i0:i1], Va[j0:j1].t(), out=S_flat[:(i1 - i0) * (j1 - j0)].view(i1 - i0, j1 - j0))
        if labels is None:
            if p == q or q == p + nt // 2:  # self / partner tile (same size, partners on the diagonal)
                S.diagonal().fill_(neg_inf)
        else:  # the same-label mask includes self and partner
            S.masked_fill_(labels[i0:i1, None] == labels[None, j0:j1], neg_inf)
        return S

    def exps(S, e1: bool = True):
        """(E1, E0) = (e^{(1+beta)(S-c)}, e^{beta (S-c)}); E0 is None for beta = 0 (E0 = 1 off the mask).
        At beta = 1, E1 = E0^2 (one exp), formed only if ``e1``."""
        if beta == 0.0:
            return S.exp_(), None
        T = T_flat[:S.numel()].view(S.shape)
        if beta == 1.0:
            S.exp_()
            return (torch.mul(S, S, out=T) if e1 else T), S
        torch.mul(S, 1.0 + beta, out=T).exp_()
        return T, S.mul_(beta).exp_()

    # ---- pass 1: row statistics from both sides of each tile pair
    s1 = U.new_zeros((n,))
    s0 = U.new_zeros((n,)) if two else None
    for p in range(nt):
        i0, i1 = tiles[p]
        for q in range(p, nt):
            j0, j1 = tiles[q]
            E1, E0 = exps(logits(p, q))
            s1[i0:i1] += E1.sum(dim=1)
            if two:
                s0[i0:i1] += E0.sum(dim=1)
            if q != p:
                s1[j0:j1] += E1.sum(dim=0)
                if two:
                    s0[j0:j1] += E0.sum(dim=0)
    if not two:
        s0 = count
    has = count > 0
    zero = torch.zeros((), dtype=dt, device=dev)
    m = torch.where(has, c, zero)
    loss, da, rho, _ = row_terms(m, s1, s0, count, a, hp, t)

    if want_grad:
        cr = rho * (coef * inv_t)  # coef * dloss/ds / (t w) of each row, and coef * dloss/da / t
        qa = da * (coef * inv_t)
    # rows whose sums fell below n * tiny / eps: recomputed with per-row maxima (they could have lost mass
    # to underflow); NaN sums (non-finite inputs) are left alone, the caller turns everything into NaN
    fi = torch.finfo(dt)
    fallback = torch.nonzero(has & (s1 < n * fi.tiny / fi.eps)).flatten()
    n_fb = int(fallback.numel())
    gU = torch.zeros_like(U) if want_grad else None
    if n_fb:
        loss = loss.clone()
        Ut = U * inv_t
        rows = max(1, min(n_fb, rows_per_block))
        Sb, Tb = blocks._buffers(rows, n, U, hp, want_grad)
        for k0 in range(0, n_fb, rows):
            idx = fallback[k0:k0 + rows]
            b = int(idx.numel())
            S = torch.mm(U[idx], Ut.t(), out=Sb[:b])
            if labels is None:
                ar = torch.arange(b, device=dev)
                S[ar, idx] = neg_inf
                S[ar, (idx + half) % n] = neg_inf
            else:
                S.masked_fill_(labels[idx, None] == labels[None, :], neg_inf)
            cf = coef[idx] if isinstance(coef, torch.Tensor) else coef
            l_f, qa_f, G, _ = blocks._block(S, None if Tb is None else Tb[:b], count[idx], a[idx], hp, cf, t)
            loss[idx] = l_f
            if want_grad:
                gU.index_add_(0, idx, G @ U)
                gU.addmm_(G.t(), U[idx])
                qa[idx] = qa_f
    if not want_grad:
        return loss, None, None

    # ---- pass 2: H = G_IJ + G_JI^T from one set of exponentials, two products per off-diagonal pair
    one = torch.ones((), dtype=dt, device=dev)
    alpha = cr * (1.0 + beta) / torch.where(has, s1, one)
    gamma = cr * beta / torch.where(has, s0.to(dt), one) if two else None
    if n_fb:  # their sums may be 0 (0 / 0 above); their negatives' gradient is already in gU
        alpha[fallback] = 0.0
        if two:
            gamma[fallback] = 0.0
    for p in range(nt):
        i0, i1 = tiles[p]
        for q in range(p, nt):
            j0, j1 = tiles[q]
            E1, E0 = exps(logits(p, q), e1=beta != 1.0)
            if E0 is None:  # beta = 0: H = E1 (alpha_I + alpha_J^T)
                H = torch.add(alpha[i0:i1, None], alpha[None, j0:j1], out=T_flat[:E1.numel()].view(E1.shape))
                H.mul_(E1)
            elif beta == 1.0:  # H = E0 (E0 (alpha_I + alpha_J^T) - gamma_I - gamma_J^T), in the T buffer
                H = E1
                torch.addcmul(-gamma[i0:i1, None], E0, alpha[i0:i1, None], out=H)
                H.addcmul_(E0, alpha[None, j0:j1]).sub_(gamma[None, j0:j1]).mul_(E0)
            else:  # H = E1 (alpha_I + alpha_J^T) - E0 (gamma_I + gamma_J^T), outer sums in the third buffer
                R = torch.add(alpha[i0:i1, None], alpha[None, j0:j1], out=R_flat[:E1.numel()].view(E1.shape))
                H = E1.mul_(R)
                H.sub_(E0.mul_(torch.add(gamma[i0:i1, None], gamma[None, j0:j1], out=R)))
            if p == q:
                gU[i0:i1].addmm_(H, U[i0:i1])
            else:
                gU[i0:i1].addmm_(H, U[j0:j1])
                gU[j0:j1].addmm_(H.t(), U[i0:i1])
    # the positive logits a_i = u_i . u_p(i) / t (p is a shift by half)
    gU.addcmul_(torch.roll(U, half, dims=0), qa[:, None])
    gU.add_(torch.roll(U * qa[:, None], half, dims=0))
    return loss, gU, None
