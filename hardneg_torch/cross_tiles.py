r"""Shared tiles for the symmetric cross layout: each tile of ``C = u1 u2^T / t`` serves both directions.

In the symmetric cross layout (spec 1.1, CLIP-style) anchor z1[i] reads row i of the (B x B) logits
``C = u1 u2^T / t`` and anchor z2[j] reads column j (docs/spec.md, sections 3 and 8). Both directions have the
same non-negatives (the diagonal ``i = j``, the positives, and same-label pairs: ``labels[i] == labels[j]`` is
symmetric), the same counts ``M`` and the same positive logits ``a_i = C_ii``. The row-block path
(:func:`hardneg_torch.blocks.cross`, called once per direction with the roles swapped) forms C twice and costs six
(B x d)(d x B)-class products with the gradient; this kernel forms each tile ``C_IJ`` once per pass for both
directions and costs four (C in each pass, then ``H u2`` and ``H^T u1``), against the three of the floor that
keeps all of C between the passes (docs/spec.md, section 8, "the symmetric cross layout with shared tiles"):

* **Pass 1** (one product): for each tile pair (I of z1's rows, J of z2's rows), ``C_IJ - c`` (one product),
  the exponentials ``E0 = e^{beta (C - c)}`` and ``E1 = e^{(1+beta)(C - c)}``, their row sums (the forward
  direction's statistics of z1's rows I) and column sums (the reverse direction's statistics of z2's rows J).
  ``c = max_i |u1_i| max_j |u2_j| / t`` bounds every logit (Cauchy–Schwarz; ``c = 1/t`` for normalised rows), so
  one shift serves the whole tile and both directions share the exponentials, as in
  :mod:`hardneg_torch.symmetric`; the shift sits in the product as an extra column ([u1, -c] . [u2/t, 1]).
  Non-negatives are set to ``-inf`` before the exponentials. E0 and E1 lie in the two halves of one buffer, so
  one reduction per axis sums both.
* **Row terms** per direction: :func:`hardneg_torch.rows.row_terms` with ``m = c`` gives each anchor's loss,
  dloss/da and ``rho``; the forward anchor i's gradient is ``G_fwd,ij = alpha_i E1_ij - gamma_i E0_ij``, the
  reverse anchor j's ``G_rev,ji = alpha'_j E1_ij - gamma'_j E0_ij`` (the same exponentials), with
  ``alpha = coef rho (1+beta) / (t S1)`` and ``gamma = coef rho beta / (t S0)`` per direction.
* **Pass 2** (two products): recompute ``C_IJ - c`` and the exponentials, form
  ``H = G_fwd,IJ + G_rev,JI^T = E1 (alpha_I + alpha'_J^T) - E0 (gamma_I + gamma'_J^T)`` (outer sums) and
  accumulate ``du1_I += H u2_J`` and ``du2_J += H^T u1_I``. The positives' terms ``(g_i + g'_i) u2_i`` and
  ``(g_i + g'_i) u1_i`` are added once at the end.

Underflow: as in :mod:`hardneg_torch.symmetric`, an anchor (of either direction) whose fixed-shift sum ``S1``
falls below ``B * tiny / eps`` may have lost terms to underflow; it is recomputed exactly with its own maximum
(one row of C for a forward anchor, one column for a reverse one) and takes no part in pass 2. The automatic
choice (:func:`choose`) only takes this kernel where the static bound ``(1+beta) * 2c`` rules underflow out, so
the fallback runs only when the kernel is forced.

Threads: on the CPU the tiles are split between ``torch.get_num_threads()`` worker threads by a fixed rule,
each running its tiles with one intra-op thread into its own buffers and accumulators (the statistics; du1,
du2), summed in a fixed order afterwards — the scheme of :mod:`hardneg_torch.symmetric` (its ``_run``), for the
same reason: a tile's element-wise passes are short and bound by memory bandwidth, so splitting each over
intra-op threads gains little and, on a loaded machine, waits for descheduled threads.

Memory: per worker three (T x T) tile buffers (T from the memory budget shared by the workers, by
:func:`hardneg_torch.symmetric.tile_rows`, at most 1024: 12 MiB at float32), a bool (T x T) mask with labels,
and O(B d) per worker for the accumulators and the shifted copies of u1 and u2 — linear in B.

A tensor temperature (0-d; CLIP's learned ``exp(-logit_scale)``) is read as a float by
:func:`hardneg_torch.symmetric.host_temperature` (free on the CPU; one synchronisation on a GPU, where only
``HARDNEG_TORCH_SYMMETRIC=1`` takes the kernel). With ``want_floor`` the kernel returns the clamp floor's share
of d loss / d t, ``sum_i coef_i dloss_i/dlf_i`` over both directions' anchors (the fallback's from the row-block
kernel); :func:`hardneg_torch.core.evaluate` adds the logits' share from ``<u1, dL/du1> + <u2, dL/du2>``.

Not covered (the row-block path :func:`hardneg_torch.blocks.cross` serves them, see :func:`supported`): a bank
(its rows belong to the forward direction only, so they share nothing), ``symmetric=False`` (one direction has
nothing to share), beta = inf (the maxima's ties), a tensor temperature <= 0 or not finite (NaN by the row-block
arithmetic), gather (anchors a subset of the rows), and tracing by torch.compile (the fallback's count is
data-dependent).
"""

from __future__ import annotations

import math
import os
from typing import List, Optional, Tuple

import torch

from . import symmetric
from .rows import Hyper, resolvable_beta, row_terms

__all__ = ["MIN_PAIRS", "supported", "choose", "cross"]

#: Pairs B from which the automatic choice takes the shared-tile kernel. Measured (forward + backward, float32,
#: against two row-block passes in the same process): never slower on one thread at d = 16, 128, 512 from
#: B = 64 on (0.95 at B = 256, 0.59 at B = 2048, d = 128), within noise on two threads below B = 256
#: (docs/backends/torch.md, "Symmetric cross layout: shared tiles").
MIN_PAIRS = 256


def supported(hp: Hyper, t, anchors, n_pairs: int, bank: str, is_symmetric: bool) -> bool:
    """Whether the shared-tile kernel can evaluate this cross-layout call: both directions, no bank, finite
    beta, a float or 0-d tensor temperature (its value is checked by :func:`choose`), every pair an anchor
    (not gather)."""
    return (is_symmetric and bank == "none" and not math.isinf(hp.beta)
            and (not isinstance(t, torch.Tensor) or t.dim() == 0) and tuple(anchors) == ((0, n_pairs),)
            and n_pairs >= 2)


def choose(hp: Hyper, t, anchors, n_pairs: int, bank: str, is_symmetric: bool, normalize: bool, tile: int,
           device_type: str = "cpu") -> bool:
    """The automatic choice between the shared-tile kernel (True) and two row-block passes (False).

    ``HARDNEG_TORCH_SYMMETRIC=1``/``0`` (:data:`hardneg_torch.symmetric.ENV_VAR`, shared with the in-batch
    kernel) overrides it where the kernel is supported and a tensor temperature's value is usable
    (:func:`hardneg_torch.symmetric.host_temperature`). Otherwise it is taken on the CPU (the only device it
    was measured on) for B >= :data:`MIN_PAIRS` pairs, tiles of at least ``symmetric.MIN_TILE`` rows and
    normalised rows whose fixed shift cannot underflow (``(1+beta) * 2/t <= symmetric.SAFE_EXPONENT``, with a
    tensor temperature's value).
    """
    if not supported(hp, t, anchors, n_pairs, bank, is_symmetric) or torch.compiler.is_compiling():
        return False
    env = os.environ.get(symmetric.ENV_VAR, "").strip()
    if env == "0":
        return False
    if env != "1" and not (device_type == "cpu" and normalize and n_pairs >= MIN_PAIRS
                           and tile >= symmetric.MIN_TILE):
        return False  # (decided before reading a tensor temperature: no synchronisation where it is not taken)
    tv = symmetric.host_temperature(t)
    if tv is None:
        return False
    return env == "1" or (1.0 + hp.beta) * 2.0 / tv <= symmetric.SAFE_EXPONENT


def _tiles(n: int, tile: int) -> List[Tuple[int, int]]:
    return [(r0, min(n, r0 + tile)) for r0 in range(0, n, tile)]


def _split(coef, B: int):
    if isinstance(coef, torch.Tensor):
        return coef[:B], coef[B:]
    return coef, coef


def _diagonal_and_labels(labels):
    """The non-negatives of anchors ``ix`` in a block of logits against every candidate: the positive (column
    ``ix``: the same pair) or, with labels, every same-label candidate."""
    def mask(S, ix):
        if labels is None:
            S[torch.arange(int(ix.numel()), device=S.device), ix] = -math.inf
        else:
            S.masked_fill_(labels[ix, None] == labels[None, :], -math.inf)
    return mask


def cross(u1: torch.Tensor, u2: torch.Tensor, labels: Optional[torch.Tensor], hp: Hyper, coef, tile, t: float,
          rows_per_block: int, workers: Optional[int] = None, want_floor: bool = False):
    r"""Both directions of the symmetric cross layout without a bank, by shared tiles in two passes.

    Parameters
    ----------
    u1, u2 : (B, d) tensors, the (normalised) rows of z1 and z2 in the compute dtype; pair i is (u1[i], u2[i]).
    labels : (B,) integer tensor (the label of pair i) or None.
    hp : Hyper with finite beta.
    coef : None, float or (2B,) tensor — the cotangent of each anchor's loss, z1's anchors then z2's
        (None: the loss only, pass 1 only).
    tile : (rows, cols) or int, the tile shape: rows of u1 by rows of u2 (an int: a square tile).
    t : float, the temperature (a tensor temperature's value, :func:`hardneg_torch.symmetric.host_temperature`).
    rows_per_block : int, rows per block of the underflow fallback.
    workers : int or None, threads sharing the tiles (None: :func:`hardneg_torch.symmetric.worker_count` of the
        device), each with one intra-op thread and its own buffers and accumulators, summed in a fixed order.
    want_floor : bool, also return the clamp floor's share of d loss / d t (for a tensor temperature).

    Returns
    -------
    loss : (2B,) tensor (z1's anchors, then z2's); grads : ``(dL/du1, dL/du2)`` or None; floor : 0-d tensor
    ``sum_i coef_i dloss_i/dlf_i`` over both directions (the caller divides it by t^2) with ``want_floor`` and
    ``coef``, else None.
    """
    B = u1.shape[0]
    dt, dev = u1.dtype, u1.device
    want_grad = coef is not None
    beta = resolvable_beta(hp.beta, dt)
    inv_t = 1.0 / t
    # c bounds every logit (Cauchy-Schwarz), folded into the product: [u1_i, -c] . [u2_j / t, 1] = C_ij - c
    c = ((u1 * u1).sum(dim=1).amax() * (u2 * u2).sum(dim=1).amax()).sqrt() * inv_t
    Ua = torch.cat([u1, (-c).expand(B, 1)], dim=1)
    Va = torch.cat([u2 * inv_t, u2.new_ones((B, 1))], dim=1)
    a = (u1 * u2).sum(dim=1) * inv_t  # the positive logit of pair i, in both directions
    if labels is None:
        count = torch.full((B,), B - 1, dtype=torch.int64, device=dev)
    else:
        _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
        count = B - counts[inverse]
    tr, tc = (tile, tile) if isinstance(tile, int) else tile
    tr, tc = max(1, min(tr, B)), max(1, min(tc, B))
    tiles = [(I, J) for I in _tiles(B, tr) for J in _tiles(B, tc)]
    # a fixed split (every sum's order depends only on the shapes: reproducible for a given thread count)
    nw = max(1, min(len(tiles), workers if workers is not None else symmetric.worker_count(dev.type)))
    parts = [tiles[w::nw] for w in range(nw)]
    two = beta != 0.0
    # per worker: S; W, whose halves hold E0 and E1 in pass 1 (one reduction per axis sums both) and the second
    # (T) and third (R) buffers in pass 2; a bool mask with labels
    bufs = [(torch.empty(tr * tc, dtype=dt, device=dev),
             torch.empty(2 * tr * tc, dtype=dt, device=dev) if (two or want_grad) else None,
             None if labels is None else torch.empty(tr * tc, dtype=torch.bool, device=dev)) for _ in parts]
    neg_inf = -math.inf

    def logits(buf, i0: int, i1: int, j0: int, j1: int):
        """C_IJ - c with the non-negatives at -inf, in the S buffer."""
        S_flat, _, M_flat = buf
        S = torch.mm(Ua[i0:i1], Va[j0:j1].t(), out=S_flat[:(i1 - i0) * (j1 - j0)].view(i1 - i0, j1 - j0))
        if labels is None:
            lo, hi = max(i0, j0), min(i1, j1)
            if lo < hi:  # the positives C_ii of the rows both tiles hold
                S[lo - i0:hi - i0, lo - j0:hi - j0].diagonal().fill_(neg_inf)
        else:  # the same-label mask includes the positives (into a preallocated buffer: no allocation per tile)
            same = torch.eq(labels[i0:i1, None], labels[None, j0:j1], out=M_flat[:S.numel()].view(S.shape))
            S.masked_fill_(same, neg_inf)
        return S

    def exps(buf, S):
        """Pass 2's (E1, E0) in the S and T buffers: E0 None for beta = 0; at beta = 1, E0 only (E1 = E0^2 is
        folded into H) and the T buffer, free for H."""
        if beta == 0.0:
            return S.exp_(), None
        T = buf[1][:S.numel()].view(S.shape)
        if beta == 1.0:
            return T, S.exp_()
        torch.mul(S, 1.0 + beta, out=T).exp_()
        return T, S.mul_(beta).exp_()

    # ---- pass 1: the forward direction's statistics from the rows, the reverse direction's from the columns
    stats = [(u1.new_zeros((2, B)), u1.new_zeros((2, B))) for _ in parts]  # rows (S0, S1) of each direction

    def pass1(w: int) -> None:
        sf, sr = stats[w]
        for (i0, i1), (j0, j1) in parts[w]:
            S = logits(bufs[w], i0, i1, j0, j1)
            if not two:  # beta = 0: E1 = e^{S - c} only
                S.exp_()
                sf[1, i0:i1] += S.sum(dim=1)
                sr[1, j0:j1] += S.sum(dim=0)
                continue
            Wt = bufs[w][1][:2 * S.numel()].view(2, *S.shape)  # Wt[0] = E0, Wt[1] = E1 (contiguous: fast passes)
            if beta == 1.0:
                torch.mul(torch.exp(S, out=Wt[0]), Wt[0], out=Wt[1])
            else:
                torch.mul(S, 1.0 + beta, out=Wt[1]).exp_()
                torch.exp(S.mul_(beta), out=Wt[0])
            sf[:, i0:i1] += Wt.sum(dim=2)
            sr[:, j0:j1] += Wt.sum(dim=1)

    symmetric._run([pass1] * len(parts))
    sf, sr = stats[0]
    for f, r in stats[1:]:  # fixed order: reproducible
        sf += f
        sr += r
    s1f, s1r = sf[1], sr[1]
    s0f, s0r = (sf[0], sr[0]) if two else (count, count)
    has = count > 0
    zero = torch.zeros((), dtype=dt, device=dev)
    m = torch.where(has, c, zero)
    want_floor = want_floor and want_grad
    loss_f, da_f, rho_f, dlf_f = row_terms(m, s1f, s0f, count, a, hp, t, want_floor)
    loss_r, da_r, rho_r, dlf_r = row_terms(m, s1r, s0r, count, a, hp, t, want_floor)
    c_f, c_r = _split(coef, B)
    if want_floor:  # coef dloss/dlf per anchor; the fallback's anchors are replaced by their exact terms below
        dlf_f, dlf_r = dlf_f * c_f, dlf_r * c_r
    qa_f = qa_r = None
    if want_grad:
        cr_f, cr_r = rho_f * (c_f * inv_t), rho_r * (c_r * inv_t)
        qa_f, qa_r = da_f * (c_f * inv_t), da_r * (c_r * inv_t)
    g1 = torch.zeros_like(u1) if want_grad else None
    g2 = torch.zeros_like(u2) if want_grad else None
    # anchors whose sums fell below B * tiny / eps: recomputed with per-row maxima (NaN sums are left alone,
    # the caller turns everything into NaN)
    fi = torch.finfo(dt)
    small = B * fi.tiny / fi.eps
    fb_f = torch.nonzero(has & (s1f < small)).flatten()
    fb_r = torch.nonzero(has & (s1r < small)).flatten()
    loss_f = loss_f.clone() if fb_f.numel() else loss_f  # (overwritten in place by the fallback)
    loss_r = loss_r.clone() if fb_r.numel() else loss_r
    floor = None
    # (the fixed-shift terms of a fallback anchor may be 0 / 0: set to 0, not subtracted)
    for fb, ua, uc, c_d, ga, gc, loss_d, qa_d, dlf_d in ((fb_f, u1, u2, c_f, g1, g2, loss_f, qa_f, dlf_f),
                                                         (fb_r, u2, u1, c_r, g2, g1, loss_r, qa_r, dlf_r)):
        fl = None
        if fb.numel():
            fl = symmetric.recompute_rows(fb, ua, uc, _diagonal_and_labels(labels), count, a, hp, c_d, t,
                                          rows_per_block, ga, gc, loss_d, qa_d, want_floor)
            if want_floor:
                dlf_d[fb] = 0.0
        if want_floor:
            part = dlf_d.sum() if fl is None else dlf_d.sum() + fl
            floor = part if floor is None else floor + part
    loss = torch.cat([loss_f, loss_r])
    if not want_grad:
        return loss, None, None

    # ---- pass 2: H = G_fwd,IJ + G_rev,JI^T from one set of exponentials, du1_I += H u2_J, du2_J += H^T u1_I
    one = torch.ones((), dtype=dt, device=dev)
    alpha_f = cr_f * (1.0 + beta) / torch.where(has, s1f, one)
    alpha_r = cr_r * (1.0 + beta) / torch.where(has, s1r, one)
    gamma_f = cr_f * beta / torch.where(has, s0f.to(dt), one) if two else None
    gamma_r = cr_r * beta / torch.where(has, s0r.to(dt), one) if two else None
    # the fallback anchors' negatives are already in g1, g2 (and their sums may be 0: 0 / 0 above)
    for fb, al, ga in ((fb_f, alpha_f, gamma_f), (fb_r, alpha_r, gamma_r)):
        if fb.numel():
            al[fb] = 0.0
            if two:
                ga[fb] = 0.0
    neg_gamma_f = -gamma_f if two else None
    neg_gamma_r = -gamma_r if two else None
    grads = [(g1, g2)] + [(torch.zeros_like(u1), torch.zeros_like(u2)) for _ in parts[1:]]

    def pass2(w: int) -> None:
        acc1, acc2 = grads[w]
        buf = bufs[w]
        for (i0, i1), (j0, j1) in parts[w]:
            E1, E0 = exps(buf, logits(buf, i0, i1, j0, j1))
            n_el = E1.numel()
            if E0 is None:  # beta = 0: H = E1 (alpha_I + alpha'_J^T)
                H = torch.add(alpha_f[i0:i1, None], alpha_r[None, j0:j1], out=buf[1][:n_el].view(E1.shape))
                H.mul_(E1)
            elif beta == 1.0:  # H = E0 (E0 (alpha_I + alpha'_J^T) - gamma_I - gamma'_J^T), in the T buffer
                # (four passes; this order was the fastest measured: a broadcast row as addcmul's input is cheap)
                H = torch.addcmul(neg_gamma_r[None, j0:j1], E0, alpha_f[i0:i1, None], out=E1)
                H.addcmul_(E0, alpha_r[None, j0:j1]).sub_(gamma_f[i0:i1, None]).mul_(E0)
            else:  # H = E1 (alpha_I + alpha'_J^T) - E0 (gamma_I + gamma'_J^T), the outer sum in the third buffer
                R = torch.add(alpha_f[i0:i1, None], alpha_r[None, j0:j1], out=buf[1][n_el:2 * n_el].view(E1.shape))
                H = E1.mul_(R)
                H.addcmul_(E0, neg_gamma_f[i0:i1, None]).addcmul_(E0, neg_gamma_r[None, j0:j1])
            acc1[i0:i1].addmm_(H, u2[j0:j1])
            acc2[j0:j1].addmm_(H.t(), u1[i0:i1])

    symmetric._run([pass2] * len(parts))
    for a1, a2 in grads[1:]:  # fixed order: reproducible
        g1 += a1
        g2 += a2
    # the positive logits a_i = u1_i . u2_i / t, read by both directions' anchor i
    qa = qa_f + qa_r
    g1.addcmul_(u2, qa[:, None])
    g2.addcmul_(u1, qa[:, None])
    return loss, (g1, g2), floor
