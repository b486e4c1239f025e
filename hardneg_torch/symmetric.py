r"""Two-pass symmetric kernel for the in-batch layout: each unordered pair of row tiles visited once per pass.

In the in-batch layout the logits ``S = U U^T / t`` are symmetric, so a tile ``S_IJ`` (rows of tile I against
the rows of tile J) holds, transposed, the logits of J's rows against I's. The one-pass row-block kernel
(:func:`hardneg_torch.blocks.in_batch`) forms every tile twice (once per side) and costs three
(n x d)(d x n)-class products with the gradient; this kernel forms each unordered pair once per pass and
costs two (docs/spec.md, section 8, "Two-pass symmetric kernel"):

* **Pass 1** (half the tiles, half a product): for each pair I <= J, ``S_IJ - c`` (one product), the
  exponentials ``E0 = e^{beta (S - c)}`` and ``E1 = e^{(1+beta)(S - c)}`` (at beta = 1 one exp: E1 = E0^2),
  stacked as a (2, T, T) buffer so that one reduction gives the row sums of both (statistics of I's rows) and
  one the column sums (statistics of J's rows). ``c = max_k |u_k|^2 / t`` bounds every logit
  (Cauchy–Schwarz: ``s_ij <= |u_i| |u_j| / t <= c``; ``c = 1/t`` for normalised rows), so one shift serves
  the whole tile pair and both sides share the exponentials: there is no per-row maximum and no online
  rescaling. Self, partner and same-label entries are set to ``-inf`` before the exponentials, as in the
  row-block kernel (subtracting them afterwards would cancel catastrophically when they dominate).
* **Row terms**: :func:`hardneg_torch.rows.row_terms` with ``m = c`` gives each row's loss, dloss/da and
  ``rho``; the gradient of row i with respect to its logits is ``G_ij = alpha_i E1_ij - gamma_i E0_ij`` with
  ``alpha_i = coef_i rho_i (1+beta) / (t S1_i)`` and ``gamma_i = coef_i rho_i beta / (t S0_i)``.
* **Pass 2** (half the tiles, one and a half products): recompute ``S_IJ - c`` and the exponentials, form
  ``H = G_IJ + G_JI^T = E1 (alpha_I + alpha_J^T) - E0 (gamma_I + gamma_J^T)`` (outer sums; again one set of
  exponentials for both sides; at beta = 1 ``H = E0 (E0 (alpha_I + alpha_J^T) - gamma_I - gamma_J^T)`` in
  four in-place passes), and accumulate ``dU_I += H U_J``, ``dU_J += H^T U_I`` (one product on the
  diagonal pairs, ``dU_I += H U_I``, since H is then already ``G + G^T``).

The pairs: row tiles of T rows (:data:`TILE_ROWS`, or fewer within the memory budget) never across the two
halves, so the partners of a tile's rows are the same rows of the tile n/2 further (their logits lie on that
pair's diagonal). A diagonal pair (I, I) computes its whole tile and uses one triangle, so each diagonal tile
is split once into halves a, b: (a, a), (a, b), (b, b) cover its triangle with 3/4 of its products (at
B = 4096, T = 1024: 2.06 instead of 2.12 product-equivalents; 8 % less time at d = 128 on one thread).

Threads: on the CPU (torch's OpenMP build) the pairs are split between ``torch.get_num_threads()`` worker
threads by a fixed rule (:func:`_assign`), each running its pairs with ONE intra-op thread into its own tile
buffers and its own accumulators (row sums; dL/dU), summed in a fixed order afterwards, so results do not depend
on timing. A tile's element-wise operations take 0.1-0.4 ms each; split over intra-op threads, each one costs a
fork/join and a wait for the slowest thread, and on a loaded machine a wait for a scheduler time slice (two
OpenMP threads per operation measured 3x slower than one thread there; two workers with one thread each, 1.5x
faster than one).

A fixed shift can underflow: a term ``e^{(1+beta)(s - c)}`` is below the smallest normal number of the
compute dtype once ``(1+beta)(c - s)`` exceeds about 87 (float32). The row sums are exact to the dtype's
rounding as long as each row's sum is at least ``n * tiny / eps`` (then everything lost to underflow is below
one rounding error); rows below that threshold (only possible when ``(1+beta) * 2c`` is large, e.g.
t = 0.05 with beta = 1) are recomputed exactly with per-row maxima by the row-block kernel, and their
statistics take no part in pass 2. The automatic choice (:func:`choose`) does not pick this kernel where the
static bound ``(1+beta) * 2c`` allows underflow at all, so the fallback only runs when the kernel is forced.

Memory: per worker two (three for beta not in {0, 1} with the gradient) (T x T) tile buffers (T from the memory
budget shared by the workers, at most :data:`TILE_ROWS`), a bool mask with labels, a (2, n) accumulator and an
(n, d) gradient accumulator; O(n d) for the shifted copies of U — linear in the batch.

A tensor temperature (0-d, e.g. a learned one) is read as a float (:func:`host_temperature`: free on the CPU,
where the automatic choice takes this kernel; one device synchronisation on a GPU, where only
``HARDNEG_TORCH_SYMMETRIC=1`` takes it). With ``want_floor`` the kernel also returns the clamp floor's share of
d loss / d t, ``sum_i coef_i dloss_i/dlf_i`` (rows of the fallback included, from the row-block kernel); the
logits' share comes from ``sum <u, dL/du>`` in :func:`hardneg_torch.core.evaluate`, as for the row-block kernel.
A tensor temperature that is <= 0 or not finite keeps the row-block kernel, whose arithmetic yields the NaNs
spec section 6 asks for.

Not covered (the row-block kernel serves them): beta = inf, gather (anchors a subset of the rows), banks, the
cross layout, and tracing by torch.compile (the fallback's row count is data-dependent).
"""

from __future__ import annotations

import functools
import math
import os
import threading
from typing import List, Optional, Sequence, Tuple

import torch

from . import blocks
from .rows import Hyper, resolvable_beta, row_terms

__all__ = ["TILE_ROWS", "MIN_ROWS", "MIN_ROWS_THREADED", "min_rows", "ENV_VAR", "supported", "host_temperature", "choose", "tile_rows", "recompute_rows",
           "worker_count", "in_batch"]

#: Largest tile side: a float32 tile of 1024 rows is 4 MiB (two buffers per worker at beta = 1, three otherwise);
#: with two single-threaded workers 512 and 724 measured the same as 1024 (0.98-1.02 x the floor at B = 4096,
#: d = 128, on a loaded machine), and 1024 halves the number of operations.
TILE_ROWS = 1024

#: Rows n = 2B from which the automatic choice takes the symmetric kernel on one thread (measured crossover,
#: d = 128: 30 % slower at B = 256, 6 % faster at B = 512, 24 % faster at B = 1024; docs/backends/torch.md).
MIN_ROWS = 2048

#: The same with two or more worker threads (measured, d = 128, 2 threads, quiet machine: 8 % slower at
#: B = 1024, 20 % faster at B = 2048; docs/backends/torch.md).
MIN_ROWS_THREADED = 4096

#: Smallest tile side the automatic choice accepts (smaller tiles make the products slow).
MIN_TILE = 128

#: Largest (1+beta) * 2c for which the automatic choice accepts the fixed shift (no term can underflow to a
#: subnormal in float32, whose smallest normal number is e^{-87.3}).
SAFE_EXPONENT = 80.0

#: Environment variable overriding the automatic choice: "1" forces the symmetric kernel wherever it is
#: supported (the conformance suite and tests use it), "0" forces the row-block kernel.
ENV_VAR = "HARDNEG_TORCH_SYMMETRIC"


def supported(hp: Hyper, t, anchors: Sequence[Tuple[int, int]], n: int) -> bool:
    """Whether the symmetric kernel can evaluate this call: finite beta, a float or 0-d tensor temperature, all
    rows anchors. (A tensor's value is checked later, by :func:`host_temperature`.)"""
    return (not math.isinf(hp.beta) and (not isinstance(t, torch.Tensor) or t.dim() == 0)
            and tuple(anchors) == ((0, n),) and n >= 2 and n % 2 == 0)


def host_temperature(t) -> Optional[float]:
    """The temperature as a Python float for the fixed-shift kernels, or None where they must not run.

    A float is returned as is (validated by the caller). A 0-d tensor is read on the host (a device
    synchronisation on a GPU) and must be finite and > 0 with a finite reciprocal; otherwise None: the
    row-block path then turns the bad value into NaN without branching on it (spec section 6).
    """
    if not isinstance(t, torch.Tensor):
        return float(t)
    v = float(t.detach())
    return v if (math.isfinite(v) and v > 0.0 and math.isfinite(1.0 / v)) else None


def tile_rows(memory_budget: Optional[int], itemsize: int, labelled: bool, workers: int = 1) -> int:
    """Tile side T: three (T x T) buffers (and a bool mask with labels) per worker fit in the memory budget."""
    budget = blocks.DEFAULT_MEMORY_BUDGET if memory_budget is None else int(memory_budget)
    per_element = (3 * itemsize + int(labelled)) * max(1, workers)  # a third buffer for general beta's outer sums
    return max(1, min(TILE_ROWS, math.isqrt(max(budget // per_element, 1))))


def min_rows(workers: int = 1) -> int:
    """Rows from which the automatic choice takes the kernel with ``workers`` worker threads."""
    return MIN_ROWS if workers <= 1 else MIN_ROWS_THREADED


def choose(hp: Hyper, t, anchors, n: int, normalize: bool, tile: int, device_type: str = "cpu",
           workers: int = 1) -> bool:
    """The automatic choice between the symmetric kernel (True) and the row-block kernel (False).

    ``HARDNEG_TORCH_SYMMETRIC=1``/``0`` overrides it (where the kernel is supported and a tensor temperature's
    value is usable, see :func:`host_temperature`). Otherwise the symmetric kernel is taken on the CPU (the only
    device it was measured on) for n >= :func:`min_rows` rows (for ``workers`` threads), tiles of at least :data:`MIN_TILE` rows and
    normalised rows whose fixed shift cannot underflow (``(1+beta) * 2/t <= SAFE_EXPONENT``, with a tensor
    temperature's value).
    """
    if not supported(hp, t, anchors, n) or torch.compiler.is_compiling():
        # under torch.compile the row-block kernel: this one branches on data (the underflow fallback's rows)
        return False
    env = os.environ.get(ENV_VAR, "").strip()
    if env == "0":
        return False
    if env != "1" and not (device_type == "cpu" and normalize and n >= min_rows(workers) and tile >= MIN_TILE):
        return False  # (decided before reading a tensor temperature: no synchronisation where it is not taken)
    tv = host_temperature(t)
    if tv is None:
        return False
    return env == "1" or (1.0 + hp.beta) * 2.0 / tv <= SAFE_EXPONENT


def _tiles(n: int, tile: int) -> List[Tuple[int, int]]:
    """Row tiles of at most ``tile`` rows, never across the halves; tile k of the first half and tile
    k + len/2 of the second have the same rows shifted by n/2 (each row's partner)."""
    half = n // 2
    first = [(r0, min(half, r0 + tile)) for r0 in range(0, half, tile)]
    return first + [(r0 + half, r1 + half) for r0, r1 in first]


@functools.lru_cache(maxsize=None)
def _openmp() -> bool:
    """Whether torch's intra-op threads are OpenMP's, whose thread count is per calling thread (the native pool is
    shared: a worker could not have one thread while the caller keeps its own)."""
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


def worker_count(device_type: str = "cpu") -> int:
    """Threads that share the tile pairs: ``torch.get_num_threads()`` on the CPU with OpenMP (each worker with
    one intra-op thread; see "Threads" in the module docstring), one elsewhere (a GPU parallelises within each
    operation, and under torch.compile, whose tracing uses the row-block kernel and cannot call into the thread
    settings)."""
    if device_type != "cpu" or torch.compiler.is_compiling() or not _openmp():
        return 1
    return max(1, torch.get_num_threads())


Rows = Tuple[int, int]


def _pairs(n: int, tile: int) -> List[Tuple[Rows, Rows]]:
    """The unordered pairs (I, J) of row ranges, I <= J, that cover the upper triangle of the (n x n) logits once.

    Each diagonal tile (I, I) is split once into halves a, b: (a, a), (a, b), (b, b) cover its upper triangle
    with 3/4 of its products (a whole diagonal tile computes both of its triangles and uses one)."""
    tiles = _tiles(n, tile)
    out: List[Tuple[Rows, Rows]] = []
    for p, I in enumerate(tiles):
        i0, i1 = I
        if i1 - i0 >= 2 * MIN_TILE:
            im = i0 + (i1 - i0) // 2
            out += [((i0, im), (i0, im)), ((i0, im), (im, i1)), ((im, i1), (im, i1))]
        else:
            out.append((I, I))
        out += [(I, J) for J in tiles[p + 1:]]
    return out


def _assign(pairs: List[Tuple[Rows, Rows]], workers: int) -> List[List[Tuple[Rows, Rows]]]:
    """The pairs split between ``workers`` by a fixed rule (largest first, to the least loaded worker): the
    split, and so every sum's order, depends only on the shapes, so results are reproducible bit for bit.
    A diagonal pair costs about half an off-diagonal one of its size (one product in pass 2)."""
    def cost(pair):
        (i0, i1), (j0, j1) = pair
        return (i1 - i0) * (j1 - j0) * (1 if pair[0] == pair[1] else 2)

    load = [0] * workers
    parts: List[List[Tuple[Rows, Rows]]] = [[] for _ in range(workers)]
    for pair in sorted(pairs, key=lambda pair: -cost(pair)):  # stable: ties keep the pairs' order
        w = min(range(workers), key=lambda k: (load[k], k))
        parts[w].append(pair)
        load[w] += cost(pair)
    return [sorted(part) for part in parts if part]


def _run(jobs) -> None:
    """Run ``jobs[k](k)`` for every k, each in its own thread with one intra-op thread (more than one job), and
    restore the caller's thread count (``torch.set_num_threads`` also sets the default of threads started later)."""
    if len(jobs) == 1:
        jobs[0](0)
        return
    errors: List[Optional[BaseException]] = [None] * len(jobs)

    def target(k: int) -> None:
        try:
            torch.set_num_threads(1)  # this thread's OpenMP and MKL pools only
            with torch.no_grad():  # grad mode is per thread; no graph for the kernel's buffers
                jobs[k](k)
        except BaseException as e:  # re-raised in the caller
            errors[k] = e

    threads = [threading.Thread(target=target, args=(k,), daemon=True) for k in range(len(jobs))]
    caller = torch.get_num_threads()
    try:
        for th in threads:
            th.start()
    finally:
        for th in threads:
            if th.ident is not None:
                th.join()
        torch.set_num_threads(caller)
    for e in errors:
        if e is not None:
            raise e


def recompute_rows(idx: torch.Tensor, ua: torch.Tensor, uc: torch.Tensor, mask, count, a, hp: Hyper, coef,
                   t: float, rows_per_block: int, ga: Optional[torch.Tensor], gc: Optional[torch.Tensor],
                   loss: torch.Tensor, qa: Optional[torch.Tensor], want_floor: bool = False):
    """The underflow fallback of both tiled kernels: anchors ``idx`` (rows of ``ua``, against every candidate
    row of ``uc``) recomputed with per-row maxima by the row-block kernel's :func:`hardneg_torch.blocks._block`.

    ``mask(S, ix)`` sets the non-negatives of anchors ``ix`` in their block of logits ``S`` to ``-inf``. Their
    loss and ``qa`` are overwritten in place and their negatives' gradient is added to ``ga`` (anchors) and
    ``gc`` (candidates; the same tensor in the in-batch layout). Returns their ``sum coef dloss/dlf`` (0-d) with
    ``want_floor``, else None."""
    n_fb = int(idx.numel())
    rows = max(1, min(n_fb, rows_per_block))
    want_grad = ga is not None
    Sb, Tb = blocks._buffers(rows, uc.shape[0], ua, hp, want_grad)
    uc_t = uc * (1.0 / t)
    floor = None
    for k0 in range(0, n_fb, rows):
        ix = idx[k0:k0 + rows]
        b = int(ix.numel())
        S = torch.mm(ua[ix], uc_t.t(), out=Sb[:b])
        mask(S, ix)
        cf = coef[ix] if isinstance(coef, torch.Tensor) else coef
        l_f, qa_f, G, fl = blocks._block(S, None if Tb is None else Tb[:b], count[ix], a[ix], hp, cf, t,
                                         want_floor)
        loss[ix] = l_f
        if want_floor:
            floor = fl if floor is None else floor + fl
        if want_grad:
            ga.index_add_(0, ix, G @ uc)
            gc.addmm_(G.t(), ua[ix])
            qa[ix] = qa_f
    return floor


def in_batch(U: torch.Tensor, labels: Optional[torch.Tensor], hp: Hyper, coef, tile: int, t: float,
             rows_per_block: int, workers: Optional[int] = None, want_floor: bool = False):
    r"""The in-batch layout with every row an anchor, by the two-pass symmetric algorithm.

    Parameters
    ----------
    U : (n, d) tensor, the (normalised) rows [u(z1); u(z2)] in the compute dtype; partner p(i) = (i + n/2) mod n.
    labels : (n,) integer tensor or None.
    hp : Hyper with finite beta.
    coef : None, float or (n,) tensor — the cotangent of each row's loss (None: loss only, pass 1 only).
    tile : int, the tile side T.
    t : float, the temperature (a tensor temperature's value, :func:`host_temperature`).
    rows_per_block : int, rows per block of the row-block fallback (rows whose fixed-shift sums underflow).
    workers : int or None, threads sharing the tile pairs (None: :func:`worker_count` of U's device).
    want_floor : bool, also return the clamp floor's share of d loss / d t (for a tensor temperature).

    Returns
    -------
    loss : (n,) tensor; grad : (n, d) tensor dL/dU or None; floor : 0-d tensor
    ``sum_i coef_i dloss_i/dlf_i`` (the caller divides it by t^2) with ``want_floor`` and ``coef``, else None.
    """
    n = U.shape[0]
    half = n // 2
    dt, dev = U.dtype, U.device
    want_grad = coef is not None
    beta = resolvable_beta(hp.beta, dt)
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
    parts = _assign(_pairs(n, tile), workers if workers is not None else worker_count(dev.type))
    two = beta != 0.0
    general = two and beta != 1.0
    # per worker: the stacked pair (E1, E0) of a tile (E0's half first holds S - c), and for general beta with
    # the gradient a third buffer for the outer sums
    n_buf = 2 + int(want_grad and general)
    bufs = [torch.empty(n_buf * tile * tile, dtype=dt, device=dev) for _ in parts]
    neg_inf = -math.inf

    def exps(buf, I: Rows, J: Rows, e1: bool = True):
        """(E1, E0) of the pair of row ranges (I, J) as the two halves of a (2, rows_p, rows_q) view ``Y`` of ``buf``:
        E1 = e^{(1+beta)(S-c)}, E0 = e^{beta (S-c)} with the non-negatives at -inf before the exponentials; for
        beta = 0 only E1 (in ``Y[1]``; ``Y[0]`` is free). At beta = 1, E1 = E0^2 (one exp), formed only if
        ``e1``."""
        (i0, i1), (j0, j1) = I, J
        m = (i1 - i0) * (j1 - j0)
        Y = buf[:2 * m].view(2, i1 - i0, j1 - j0)
        S = torch.mm(Ua[i0:i1], Va[j0:j1].t(), out=Y[1])
        if labels is None:
            if J == I or J == (i0 + half, i1 + half):  # self / partners: on the diagonal (no other pair has any)
                S.diagonal().fill_(neg_inf)
        else:  # the same-label mask includes self and partner
            S.masked_fill_(labels[i0:i1, None] == labels[None, j0:j1], neg_inf)
        if beta == 1.0:
            S.exp_()
            if e1:
                torch.mul(S, S, out=Y[0])
        elif two:
            torch.mul(S, 1.0 + beta, out=Y[0]).exp_()
            S.mul_(beta).exp_()
        else:
            S.exp_()
        return Y

    # ---- pass 1: row statistics (S1, S0) from both sides of each tile pair, one (2, n) accumulator per worker
    stats = [U.new_zeros((2, n)) for _ in parts]

    def pass1(w: int) -> None:
        acc = stats[w]
        for I, J in parts[w]:
            (i0, i1), (j0, j1) = I, J
            Y = exps(bufs[w], I, J)
            if two:
                acc[:, i0:i1] += Y.sum(dim=2)  # one reduction for both exponentials
                if J != I:
                    acc[:, j0:j1] += Y.sum(dim=1)
            else:
                acc[0, i0:i1] += Y[1].sum(dim=1)
                if J != I:
                    acc[0, j0:j1] += Y[1].sum(dim=0)

    _run([pass1] * len(parts))
    s1 = stats[0][0]
    s0 = stats[0][1]
    for acc in stats[1:]:  # fixed order: reproducible
        s1 += acc[0]
        s0 += acc[1]
    if not two:
        s0 = count
    has = count > 0
    zero = torch.zeros((), dtype=dt, device=dev)
    m = torch.where(has, c, zero)
    want_floor = want_floor and want_grad
    loss, da, rho, dlf = row_terms(m, s1, s0, count, a, hp, t, want_floor)
    floor = None

    if want_grad:
        cr = rho * (coef * inv_t)  # coef * dloss/ds / (t w) of each row, and coef * dloss/da / t
        qa = da * (coef * inv_t)
    # rows whose sums fell below n * tiny / eps: recomputed with per-row maxima (they could have lost mass
    # to underflow); NaN sums (non-finite inputs) are left alone, the caller turns everything into NaN
    fi = torch.finfo(dt)
    fallback = torch.nonzero(has & (s1 < n * fi.tiny / fi.eps)).flatten()
    n_fb = int(fallback.numel())
    gU = torch.zeros_like(U) if want_grad else None
    if want_floor:
        dlf = dlf * coef  # coef_i dloss_i/dlf_i; the fallback's rows are replaced by their exact terms below
    if n_fb:
        loss = loss.clone()
        if want_floor:
            dlf[fallback] = 0.0

        def mask(S, ix):  # self and partner, or every same-label row (which includes both)
            if labels is None:
                ar = torch.arange(int(ix.numel()), device=dev)
                S[ar, ix] = neg_inf
                S[ar, (ix + half) % n] = neg_inf
            else:
                S.masked_fill_(labels[ix, None] == labels[None, :], neg_inf)

        floor = recompute_rows(fallback, U, U, mask, count, a, hp, coef, t, rows_per_block, gU, gU, loss,
                               qa if want_grad else None, want_floor)
    if not want_grad:
        return loss, None, None
    if want_floor:
        floor = dlf.sum() if floor is None else dlf.sum() + floor

    # ---- pass 2: H = G_IJ + G_JI^T from one set of exponentials, two products per off-diagonal pair
    one = torch.ones((), dtype=dt, device=dev)
    alpha = cr * (1.0 + beta) / torch.where(has, s1, one)
    gamma = cr * beta / torch.where(has, s0.to(dt), one) if two else None
    if n_fb:  # their sums may be 0 (0 / 0 above); their negatives' gradient is already in gU
        alpha[fallback] = 0.0
        if two:
            gamma[fallback] = 0.0
    neg_gamma = -gamma if two else None
    grads = [gU] + [torch.zeros_like(U) for _ in parts[1:]]

    def pass2(w: int) -> None:
        acc = grads[w]
        for I, J in parts[w]:
            (i0, i1), (j0, j1) = I, J
            Y = exps(bufs[w], I, J, e1=beta != 1.0)
            E1, E0 = Y[0], Y[1]
            aI, aJ = alpha[i0:i1, None], alpha[None, j0:j1]
            if not two:  # beta = 0: H = E1 (alpha_I + alpha_J^T), E1 in Y[1] (here named E0)
                H = torch.mul(E0, aJ, out=Y[0]).addcmul_(E0, aI)
            elif beta == 1.0:  # H = E0 (E0 (alpha_I + alpha_J^T) - gamma_I - gamma_J^T), over E1
                # the row-broadcast term first: a column-broadcast input to addcmul measured 20 % slower
                H = torch.addcmul(neg_gamma[None, j0:j1], E0, aJ, out=E1)
                H.addcmul_(E0, aI).sub_(gamma[i0:i1, None]).mul_(E0)
            else:  # H = E1 (alpha_I + alpha_J^T) - E0 (gamma_I + gamma_J^T), outer sums in the third buffer
                R = torch.add(aI, aJ, out=bufs[w][2 * E1.numel():3 * E1.numel()].view(E1.shape))
                H = E1.mul_(R)
                H.sub_(E0.mul_(torch.add(gamma[i0:i1, None], gamma[None, j0:j1], out=R)))
            if J == I:
                acc[i0:i1].addmm_(H, U[i0:i1])
            else:
                acc[i0:i1].addmm_(H, U[j0:j1])
                acc[j0:j1].addmm_(H.t(), U[i0:i1])

    _run([pass2] * len(parts))
    for g in grads[1:]:  # fixed order: reproducible
        gU += g
    # the positive logits a_i = u_i . u_p(i) / t (p is a shift by half)
    gU.addcmul_(torch.roll(U, half, dims=0), qa[:, None])
    gU.add_(torch.roll(U * qa[:, None], half, dims=0))
    return loss, gU, floor
