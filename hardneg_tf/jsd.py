"""``hardneg_tf.jsd_loss``: the graph objective of docs/spec.md section 14 in TensorFlow.

The (N, G) score matrix is formed once (G is the number of graphs in the batch); gradients are TensorFlow's
autodiff of the stable formulas (``reduce_max``/``reduce_min`` split evenly over tied entries and ``abs`` has
derivative 0 at 0: the spec's subgradient of c). Half precision is computed in float32 and returned in the input
dtype. Works eagerly and inside ``tf.function`` (also with ``jit_compile=True``); ``batch``'s values are
checked only when executing eagerly.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import tensorflow as tf

from hardneg.validation import check_jsd_batch_values, check_jsd_call

__all__ = ["jsd_loss"]

LOG2 = math.log(2.0)


def _dtype_name(x) -> Optional[str]:
    return tf.as_dtype(x.dtype).name


def _shape(x, rank: int):
    """The static shape; a tensor of unknown rank is taken to have the expected rank (nothing to check)."""
    return tuple(x.shape.as_list()) if x.shape.rank is not None else (None,) * rank


def _terms(local, graph, batch, beta: float, tau: float, convention: str):
    dt = local.dtype
    G_static = graph.shape[0]
    G = tf.shape(graph)[0] if G_static is None else G_static
    Gf = tf.cast(G, dt)
    Mf = Gf - 1.0
    S = tf.matmul(local, graph, transpose_b=True)
    ok = tf.logical_and(tf.reduce_all(tf.math.is_finite(local)), tf.reduce_all(tf.math.is_finite(graph)))
    S = S + tf.where(ok, tf.constant(0.0, dt), tf.constant(math.nan, dt))  # spec 14.6
    pos = tf.equal(tf.cast(batch, tf.int64)[:, None], tf.range(tf.cast(G, tf.int64), dtype=tf.int64)[None, :])
    neg = tf.logical_not(pos)
    zero = tf.zeros_like(S)
    sp = tf.math.softplus
    q = tf.where(neg, S, zero)
    a = tf.reduce_sum(tf.where(pos, S, zero), axis=1)
    if convention == "released":
        q = S * tf.cast(neg, dt)  # S o Q as the released code multiplies: a NaN gradient reaches every slot
        r = tau / (1.0 - tau)
        pos_row = LOG2 - sp(-a) - r * sp(a) - Mf * (r * LOG2)
        if beta == 0.0:
            neg_row = tf.reduce_sum(tf.where(neg, sp(q) - LOG2, zero), axis=1) / (Mf * (1.0 - tau))
        else:
            mx, amn = tf.reduce_max(q), tf.abs(tf.reduce_min(q))
            c = tf.where(mx >= amn, mx, amn)
            pi = tf.nn.softmax((-2.0 * beta) * q / c, axis=1)
            neg_row = (tf.reduce_sum(Gf * pi * sp(q), axis=1) / (1.0 - tau) - Gf * LOG2) / Mf
        return neg_row - pos_row
    if beta == 0.0:
        pi = tf.cast(neg, dt) / Mf
    else:
        mx, amn = tf.reduce_max(q), tf.abs(tf.reduce_min(q))
        c = tf.where(mx >= amn, mx, amn)
        on = c > 0
        zeta = tf.where(on, (2.0 * beta) * q / tf.where(on, c, tf.ones_like(c)), zero)
        pi = tf.nn.softmax(tf.where(neg, zeta, tf.fill(tf.shape(zeta), tf.constant(-math.inf, dt))), axis=1)
    fbar = tf.reduce_sum(pi * tf.where(neg, sp(q), zero), axis=1)
    est = (fbar - tau * sp(a)) / (1.0 - tau)
    return tf.where(est < 0, tf.zeros_like(est), est) + sp(-a) - 2.0 * LOG2


def jsd_loss(local, graph, batch, *, beta: float = 1.0, tau_plus: float = 0.5, convention: str = "released",
             reduction: str = "mean"):
    r"""InfoGraph's local-global Jensen-Shannon objective with hard negatives, in TensorFlow.

    Same arguments, defaults, values and errors as :func:`hardneg.jsd_loss` (docs/spec.md section 14);
    differentiable with ``tf.GradientTape`` with respect to ``local`` and ``graph``.

    Parameters
    ----------
    local : tf.Tensor, shape (N, d), floating
    graph : tf.Tensor, shape (G, d), same dtype
    batch : tf.Tensor, shape (N,), integer
        PyTorch Geometric-style batch vector, values in [0, G) (checked when executing eagerly).
    beta, tau_plus, convention, reduction
        As :func:`hardneg.jsd_loss`.

    Returns
    -------
    tf.Tensor
        Shape () or (N,) for ``reduction="none"``, in the dtype of ``local`` (float16/bfloat16 are computed
        in float32).
    """
    local, graph, batch = tf.convert_to_tensor(local), tf.convert_to_tensor(graph), tf.convert_to_tensor(batch)
    problem = check_jsd_call(
        local_shape=_shape(local, 2), graph_shape=_shape(graph, 2), batch_shape=_shape(batch, 1),
        local_dtype=_dtype_name(local), graph_dtype=_dtype_name(graph), batch_dtype=_dtype_name(batch),
        beta=beta, tau_plus=tau_plus, convention=convention, reduction=reduction,
    )
    # unknown ranks (an input_signature of TensorSpec(None)): the validated ranks, checked again at run time
    local, graph = (x if x.shape.rank is not None else tf.ensure_shape(x, [None, None]) for x in (local, graph))
    batch = batch if batch.shape.rank is not None else tf.ensure_shape(batch, [None])
    if tf.executing_eagerly():
        b = batch.numpy()
        check_jsd_batch_values(np.min(b), np.max(b), problem.graphs)
    out_dtype = local.dtype
    cdt = tf.float32 if out_dtype in (tf.float16, tf.bfloat16) else out_dtype
    terms = _terms(tf.cast(local, cdt), tf.cast(graph, cdt), batch, float(beta), float(tau_plus), convention)
    if reduction == "mean":
        out = tf.reduce_mean(terms)
    elif reduction == "sum":
        out = tf.reduce_sum(terms)
    else:
        out = terms
    return tf.cast(out, out_dtype)
