"""``hardneg_jax.hcl_loss``: validation at trace time, static decisions, then the jitted custom-VJP core."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from hardneg._docs import fill_doc
from hardneg.validation import UNKNOWN, check_call, check_memory_budget, check_temperature_tensor

from . import collectives
from . import symmetric as tiled
from .blocks import DEFAULT_CROSS_BUDGET, DEFAULT_MEMORY_BUDGET, device_default_budget, rows_per_block
from .rows import Statics
from .vjp import compute_dtype, hcl_core

__all__ = ["hcl_loss"]

_core = jax.jit(hcl_core, static_argnums=0)


def _dtype_name(x) -> Optional[str]:
    if x is None:
        return None
    dt = getattr(x, "dtype", None)
    return jnp.dtype(dt).name if dt is not None else np.asarray(x).dtype.name


def _shape(x):
    return None if x is None else tuple(np.shape(x))


def _is_tracer(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def _hyper(name: str, v: Any):
    """(value for check_call, concrete float or None). Tracers are UNKNOWN; 0-d arrays are read as numbers."""
    if _is_tracer(v):
        real = jnp.issubdtype(v.dtype, jnp.number) and not jnp.issubdtype(v.dtype, jnp.complexfloating)
        if jnp.ndim(v) != 0 or not real:
            raise TypeError(
                f"{name} must be a real scalar; got a traced array of shape {jnp.shape(v)} and dtype {v.dtype}"
            )
        return UNKNOWN, None
    if isinstance(v, (jax.Array, np.ndarray, np.generic)) and np.ndim(v) == 0:
        dt = np.asarray(v).dtype
        if dt.kind in "fiu":
            v = float(np.asarray(v))
    return v, v


def _temperature(v):
    """(value for check_call, is a tensor). A JAX array (traced or concrete) is a tensor temperature (spec 1.1):
    its shape and dtype are checked, its value is not (no host sync; <= 0 or non-finite gives NaN)."""
    if _is_tracer(v) or isinstance(v, jax.Array):
        check_temperature_tensor(tuple(jnp.shape(v)), jnp.dtype(v.dtype).name)
        return UNKNOWN, True
    if isinstance(v, (np.ndarray, np.generic)) and np.ndim(v) == 0 and np.asarray(v).dtype.kind in "fiu":
        v = float(np.asarray(v))
    return v, False


def _labels_for_jax(labels, negative_labels):
    """Integer labels as JAX arrays; 64-bit labels that int32 cannot hold (x64 off) are re-coded by equality."""
    if labels is None:
        return None, None
    concrete = not (_is_tracer(labels) or _is_tracer(negative_labels))
    if concrete and not jax.config.jax_enable_x64:
        parts = [np.asarray(labels)] + ([] if negative_labels is None else [np.asarray(negative_labels)])
        if any(p.dtype.itemsize == 8 for p in parts):
            info = np.iinfo(np.int32)
            if any(p.size and (p.min() < info.min or p.max() > info.max) for p in parts):
                # Only equality matters (spec section 3): ranks among all values keep every comparison.
                flat = np.concatenate([p.ravel() for p in parts])
                _, inv = np.unique(flat, return_inverse=True)
                inv = inv.astype(np.int32)
                lab = inv[: parts[0].size].reshape(parts[0].shape)
                nlab = None if negative_labels is None else inv[parts[0].size :].reshape(parts[1].shape)
                return jnp.asarray(lab), None if nlab is None else jnp.asarray(nlab)
    return jnp.asarray(labels), None if negative_labels is None else jnp.asarray(negative_labels)


def _platform(x) -> str:
    """Platform ("cpu", "gpu", "tpu") where ``x`` is computed; a tracer has no device: JAX's default backend."""
    try:
        return next(iter(x.devices())).platform
    except Exception:  # a tracer
        return jax.devices()[0].platform


@fill_doc
def hcl_loss(
    z1,
    z2,
    *,
    temperature: float = 0.5,
    beta: float = 1.0,
    tau_plus: float = 0.1,
    estimator: str = "hard",
    clamp: bool = True,
    normalize: bool = True,
    negatives=None,
    labels=None,
    negative_labels=None,
    reduction: str = "mean",
    layout: Optional[str] = None,
    symmetric: bool = True,
    memory_budget: Optional[int] = None,
    axis_name: Any = None,
):
    r"""Hard-negative contrastive loss (Robinson et al., ICLR 2021) in JAX; spec 1.1, blockwise, custom VJP.

    {{hcl_loss.math}}

    ``estimator="easy"`` uses :math:`Ng_i = \sum_j e^{s_{ij}}` (NT-Xent); ``beta=0`` is the debiased loss
    (Chuang et al., NeurIPS 2020); ``beta=math.inf`` the worst-case limit. docs/spec.md is the full contract.

    A pure function: works under ``jax.jit``, ``jax.grad``/``jax.value_and_grad`` (reverse mode; forward mode
    is not defined for a custom VJP), ``jax.vmap`` (a leading axis of independent problems) and inside
    ``lax.scan``. The anchors are walked in row blocks (``lax.scan``); no (2B x 2B) array is live. On the CPU
    the in-batch layout and the symmetric cross layout without a bank use tiles instead (two passes over half
    the tiles; one tile for both directions): :mod:`hardneg_jax.symmetric`, chosen automatically, forced by
    ``HARDNEG_JAX_SYMMETRIC=1`` (``0``: row blocks), read when the call is traced.

    Parameters
    ----------
    z1, z2 : jax.Array, shape (B, d), float16 / bfloat16 / float32 / float64
        Two views; row k of z1 and row k of z2 form a positive pair. Half precision is computed in float32.
    temperature : float or 0-d floating jax.Array (traced or not), default 0.5
        t > 0. A Python/NumPy number is validated and compiled as before. A JAX array (e.g. a traced,
        learnable temperature) must be 0-d and floating (the reference's messages otherwise); its value is not
        checked (no host sync): t <= 0 or non-finite gives NaN for the loss and every gradient. ``jax.grad``
        with respect to it returns the closed form d loss / d t (spec section 8), under jit and vmap, in every
        layout; it is computed only when differentiated.
    beta : float or traced scalar, default 1.0
        {{hcl_loss.beta}}
        Also as a traced value; its gradient is computed when differentiated (0 at beta = inf).
    tau_plus : float or traced scalar, default 0.1
        {{hcl_loss.tau_plus}}
        Its gradient is computed when differentiated.
    estimator : {"hard", "easy"}, default "hard" (static)
    clamp : bool, default True (static)
        {{hcl_loss.clamp}}
    normalize : bool, default True (static)
        {{hcl_loss.normalize}}
    negatives : jax.Array, shape (K, d) or (B, K, d), optional
        Explicit bank, shared or one per anchor. Layout "bank": anchors are z1's rows and in-batch samples are
        not negatives. Layout "cross": the bank rows follow z2's rows among z1's anchors' candidates. Never
        gathered under ``axis_name``.
    labels : integer array, shape (B,), optional
        {{hcl_loss.labels}}
    negative_labels : integer array, shape (K,) or (B, K), optional
        {{hcl_loss.negative_labels}}
    reduction : {"mean", "sum", "none"}, default "mean" (static)
        "none" returns per-anchor losses: (2B,) in-batch or cross symmetric (z1's anchors then z2's), (B,)
        with layout "bank" or cross one-way.
    layout : {None, "in_batch", "bank", "cross"}, default None (static)
        None: spec 1.0 ("in_batch" without ``negatives``, "bank" with them). "cross" (CLIP,
        sentence-transformers): anchors z1[i], candidates every row of z2 (positive z2[i]) then the bank rows;
        ``symmetric`` adds anchors z2[i] against the rows of z1 only. Memory stays linear in B: the reverse
        direction is a second blocked walk, never a (B x B) array.
    symmetric : bool, default True (static)
        Cross layout: include the reverse direction. ``False`` with another layout raises ValueError.
    memory_budget : int, optional (static)
        Bytes of transient working memory for one block of anchors: the block holds about 4 arrays of shape
        (rows, candidates) in the compute dtype. Default: 16 MiB, raised to fit 128 rows of in-batch or
        shared-bank candidates (so 128 rows per block from C ~ 7.7k candidates on). Under ``vmap`` it is per
        problem. In the cross layout it applies to each direction's blocks (default 8 MiB, with the same floor).
        These are the CPU defaults; on a GPU or TPU the default is min(2 GiB, device memory / 16) for every
        layout (:mod:`hardneg.budget`), so that a large batch is not thousands of blocks of kernel launches.
        The tiled kernels fit three (T x T) tiles in it (T at most 1024).
    axis_name : hashable, optional (static)
        Inside ``shard_map``/``pmap``/``vmap`` over this axis: every device's z1, z2 (and labels) are
        gathered as candidates (in-batch and cross layouts); the loss is over the local anchors. Averaging
        the per-device losses and the per-device gradients over the axis (``lax.pmean``) gives the
        single-device loss and gradient of the concatenated batch. ``"sum"`` is scaled by the axis size for
        the same reason; ``"none"`` returns the local anchors' (exact) losses. A bank is used as given on each
        device (a per-anchor bank with its local anchors). ``shard_map``, ``pmap`` and ``vmap`` map equal
        shards only, so no device can hold 0 pairs while another holds some.

    Returns
    -------
    jax.Array
        Scalar, or shape (n_anchors,) for ``reduction="none"``, in the dtype of z1.

    Raises
    ------
    TypeError, ValueError
        At trace time, from ``hardneg.validation`` with the reference's messages (traced hyper-parameters
        and array temperatures are not range-checked: their values are unknown when tracing).

    References
    ----------
    {{hcl_loss.references}}
    """
    t_chk, t_tensor = _temperature(temperature)
    b_chk, b_val = _hyper("beta", beta)
    tp_chk, _ = _hyper("tau_plus", tau_plus)
    call = dict(
        z1_shape=_shape(z1),
        z2_shape=_shape(z2),
        z1_dtype=_dtype_name(z1),
        z2_dtype=_dtype_name(z2),
        temperature=t_chk,
        beta=b_chk,
        tau_plus=tp_chk,
        estimator=estimator,
        clamp=clamp,
        normalize=normalize,
        reduction=reduction,
        negatives_shape=_shape(negatives),
        negatives_dtype=_dtype_name(negatives),
        labels_shape=_shape(labels),
        labels_dtype=_dtype_name(labels),
        negative_labels_shape=_shape(negative_labels),
        negative_labels_dtype=_dtype_name(negative_labels),
        layout=layout,
        symmetric=symmetric,
    )
    world = 1 if axis_name is None else collectives.axis_size(axis_name)
    cross = layout == "cross"
    # in-batch candidates are gathered: the in-batch layout, and the cross layout with or without a bank
    gathering = axis_name is not None and (negatives is None or cross)
    one_pair = gathering and negatives is None and len(call["z1_shape"]) == 2 and call["z1_shape"][0] == 1
    if one_pair:
        # One local pair is fine when the gathered batch has >= 2: check the local call without its batch
        # size, then the global one (as hardneg_torch does under gather=True).
        hide = lambda shp: None if shp is None else (None,) + tuple(shp[1:])  # noqa: E731
        check_call(**{**call, "z1_shape": hide(call["z1_shape"]), "z2_shape": hide(call["z2_shape"]),
                      "labels_shape": hide(call["labels_shape"])})
        glob = lambda shp: None if shp is None else (world * shp[0],) + tuple(shp[1:])  # noqa: E731
        problem = check_call(**{**call, "z1_shape": glob(call["z1_shape"]), "z2_shape": glob(call["z2_shape"]),
                                "labels_shape": glob(call["labels_shape"])})
        problem = dataclasses.replace(problem, batch=1, n_anchors=problem.n_anchors // world)
    else:
        problem = check_call(**call)
    check_memory_budget(memory_budget)

    z1, z2 = jnp.asarray(z1), jnp.asarray(z2)
    if memory_budget is None:  # per-device default (hardneg.budget): None on CPU, larger blocks on accelerators
        memory_budget = device_default_budget(z1)
    neg = None if negatives is None else jnp.asarray(negatives)
    lab, nlab = _labels_for_jax(labels, negative_labels)
    cd = compute_dtype(z1.dtype)
    t, b, tp = (jnp.asarray(v, cd) for v in (temperature, beta, tau_plus))

    if estimator == "easy" or b_val == 0.0:
        beta_mode = "zero"
    elif b_val is None:
        beta_mode = "traced"
    else:
        beta_mode = "inf" if math.isinf(float(b_val)) else "finite"

    B, d = problem.batch, problem.dim
    itemsize = cd.itemsize
    row0, distributed = None, False
    if axis_name is not None:
        # replicated differentiable inputs get per-device cotangents: make them varying under shard_map
        z1, z2, neg = (collectives.as_varying(v, axis_name) for v in (z1, z2, neg))
        t = collectives.as_varying(t, axis_name) if t_tensor else t
        b = collectives.as_varying(b, axis_name) if _is_tracer(beta) else b
        tp = collectives.as_varying(tp, axis_name) if _is_tracer(tau_plus) else tp
    if gathering:
        g = collectives.gather_batch(z1, z2, lab, axis_name)
        z1, z2, lab, row0, distributed = g.z1, g.z2, g.labels, g.row0, True
    block_rev = 0
    if cross:
        n = B * world  # in-batch candidates of each direction (gathered)
        dflt = DEFAULT_CROSS_BUDGET
        if problem.bank == "per_anchor":
            K = problem.bank_size
            block = rows_per_block(B, n + K, itemsize, memory_budget, per_row_extra=3 * K * d * itemsize,
                                   default=dflt)
        else:
            block = rows_per_block(B, n + (problem.bank_size or 0), itemsize, memory_budget, default=dflt)
        block_rev = rows_per_block(B, n, itemsize, memory_budget, default=dflt)
    elif problem.bank == "none":
        block = rows_per_block(2 * B, 2 * B * world, itemsize, memory_budget)
    elif problem.bank == "shared":
        block = rows_per_block(B, problem.bank_size, itemsize, memory_budget)
    else:
        K = problem.bank_size
        block = rows_per_block(B, K, itemsize, memory_budget, per_row_extra=3 * K * d * itemsize)
    # the tiled kernels (two-pass symmetric in-batch, shared tiles for the symmetric cross layout) or row blocks
    tiling = tiled.plan(cross=cross, symmetric=bool(symmetric), bank=problem.bank, distributed=distributed,
                        beta_mode=beta_mode, beta=b_val, temperature=None if t_tensor else float(t_chk),
                        normalize=bool(normalize), batch=B, itemsize=itemsize, budget=memory_budget,
                        default_budget=DEFAULT_MEMORY_BUDGET, dim=d, platform=_platform(z1))
    st = Statics(
        bank=problem.bank,
        estimator=estimator,
        clamp=bool(clamp),
        normalize=bool(normalize),
        reduction=reduction,
        beta_mode=beta_mode,
        block=block,
        world=world,
        distributed=distributed,
        local_pairs=B if distributed else 0,
        cross=cross,
        symmetric=bool(symmetric),
        block_rev=block_rev,
        check_t=t_tensor,
        **tiling,
    )
    return _core(st, z1, z2, neg, lab, nlab, t, b, tp, row0)
