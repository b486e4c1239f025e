"""The released HCL arithmetic transliterated into TensorFlow: the TF backend's baselines.

Same arithmetic as :mod:`hardneg.bench.naive_torch` (raw ``exp``, full (2B x 2B) matrices). The mask is
applied with ``tf.where`` (``tf.boolean_mask`` has no static shape, which XLA refuses), so the same code
runs as a ``tf.function`` graph and under ``tf.function(jit_compile=True)``; the mean over negatives
divides by M = 2B - 2.

    neg_ij = e^{s_ij} (j not in {i, p(i)}),  pos_i = e^{s_i,p(i)}
    easy:  Ng_i = sum_j neg_ij
    hard:  imp_ij = exp(beta * log neg_ij)
           Ng_i = (sum_j imp_ij neg_ij / mean_j imp_ij - tau+ M pos_i) / (1 - tau+),  Ng_i >= M e^{-1/t}
    loss = mean_i -log(pos_i / (pos_i + Ng_i))

:func:`hcl_loss_cross` is the cross layout (spec 1.1) written the way CLIP-style code is: the (B x B) logit
matrix u1 u2^T / t and its transpose, the same arithmetic per row (M = B - 1 negatives: the off-diagonal
entries), mean over the 2B anchors of both directions.

References
----------
Robinson, Chuang, Sra, Jegelka. Contrastive Learning with Hard Negative Samples. ICLR 2021 (released code).
"""

from __future__ import annotations

import math

import tensorflow as tf

__all__ = ["hcl_loss", "make_value_and_grad", "floor_graph", "floor_xla", "floor_symmetric_graph",
           "floor_symmetric_xla", "negative_mask", "hcl_loss_cross", "make_value_and_grad_cross"]


def negative_mask(batch: int) -> tf.Tensor:
    """(2B, 2B) bool mask, False on the diagonal and on the partner (i, i +- B), True elsewhere."""
    n = 2 * batch
    i = tf.range(n)[:, None]
    j = tf.range(n)[None, :]
    return tf.logical_and(tf.not_equal(i, j), tf.not_equal(j, (i + batch) % n))


def hcl_loss(z1, z2, temperature=0.5, beta=1.0, tau_plus=0.1, estimator="hard"):
    """Naive HCL loss, mean over the 2B in-batch anchors.

    Parameters
    ----------
    z1, z2 : tf.Tensor, shape (B, d) with B known
        The two views (normalised here).
    temperature, beta, tau_plus : float
    estimator : {"hard", "easy"}

    Returns
    -------
    tf.Tensor, scalar, in the input's dtype.
    """
    batch = int(z1.shape[0])
    n_neg = 2 * batch - 2
    out1, out2 = tf.math.l2_normalize(z1, axis=-1), tf.math.l2_normalize(z2, axis=-1)
    out = tf.concat([out1, out2], axis=0)
    neg = tf.exp(tf.matmul(out, out, transpose_b=True) / temperature)
    neg = tf.where(negative_mask(batch), neg, tf.zeros_like(neg))

    pos = tf.exp(tf.reduce_sum(out1 * out2, axis=-1) / temperature)
    pos = tf.concat([pos, pos], axis=0)

    if estimator == "hard":
        imp = tf.exp(beta * tf.math.log(neg))
        reweight_neg = tf.reduce_sum(imp * neg, axis=-1) / (tf.reduce_sum(imp, axis=-1) / n_neg)
        ng = (-tau_plus * n_neg * pos + reweight_neg) / (1 - tau_plus)
        ng = tf.maximum(ng, tf.cast(n_neg * math.e ** (-1 / temperature), ng.dtype))
    elif estimator == "easy":
        ng = tf.reduce_sum(neg, axis=-1)
    else:
        raise ValueError(f"estimator must be 'hard' or 'easy'; got {estimator!r}")
    return tf.reduce_mean(-tf.math.log(pos / (pos + ng)))


def _released_rows(logits, temperature, beta, tau_plus, estimator):
    """The released per-anchor arithmetic on a (B x B) logit matrix whose diagonal holds the positives."""
    batch = int(logits.shape[0])
    n_neg = batch - 1
    off = tf.logical_not(tf.eye(batch, dtype=tf.bool))
    e = tf.exp(logits)
    neg = tf.where(off, e, tf.zeros_like(e))
    pos = tf.linalg.diag_part(e)
    if estimator == "hard":
        imp = tf.exp(beta * tf.math.log(neg))
        reweight_neg = tf.reduce_sum(imp * neg, axis=-1) / (tf.reduce_sum(imp, axis=-1) / n_neg)
        ng = (-tau_plus * n_neg * pos + reweight_neg) / (1 - tau_plus)
        ng = tf.maximum(ng, tf.cast(n_neg * math.e ** (-1 / temperature), ng.dtype))
    elif estimator == "easy":
        ng = tf.reduce_sum(neg, axis=-1)
    else:
        raise ValueError(f"estimator must be 'hard' or 'easy'; got {estimator!r}")
    return -tf.math.log(pos / (pos + ng))


def hcl_loss_cross(z1, z2, temperature=0.5, beta=1.0, tau_plus=0.1, estimator="hard"):
    """Naive cross-layout (CLIP-style, symmetric) HCL loss: two full (B x B) logit matrices, mean over 2B anchors.

    Parameters
    ----------
    z1, z2 : tf.Tensor, shape (B, d) with B known
        Anchors and candidates (normalised here); row i of each is a positive pair.
    temperature, beta, tau_plus : float
    estimator : {"hard", "easy"}

    Returns
    -------
    tf.Tensor, scalar, in the input's dtype.
    """
    u1, u2 = tf.math.l2_normalize(z1, axis=-1), tf.math.l2_normalize(z2, axis=-1)
    logits = tf.matmul(u1, u2, transpose_b=True) / temperature
    rows = _released_rows(logits, temperature, beta, tau_plus, estimator)
    cols = _released_rows(tf.transpose(logits), temperature, beta, tau_plus, estimator)
    return (tf.reduce_sum(rows) + tf.reduce_sum(cols)) / (2 * int(z1.shape[0]))


def make_value_and_grad_cross(temperature=0.5, beta=1.0, tau_plus=0.1, estimator="hard", jit_compile=False):
    """A compiled training-step function ``(z1, z2) -> (loss, (dz1, dz2))`` of :func:`hcl_loss_cross`."""

    def step(z1, z2):
        with tf.GradientTape() as tape:
            tape.watch([z1, z2])
            loss = hcl_loss_cross(z1, z2, temperature, beta, tau_plus, estimator)
        return loss, tuple(tape.gradient(loss, [z1, z2]))

    return tf.function(step, jit_compile=jit_compile)


def make_value_and_grad(temperature=0.5, beta=1.0, tau_plus=0.1, estimator="hard", jit_compile=False):
    """A compiled training-step function ``(z1, z2) -> (loss, (dz1, dz2))``.

    Parameters
    ----------
    jit_compile : bool, default False
        False: a ``tf.function`` graph (grappler-optimised); True: the same graph compiled by XLA.
    """

    def step(z1, z2):
        with tf.GradientTape() as tape:
            tape.watch([z1, z2])
            loss = hcl_loss(z1, z2, temperature, beta, tau_plus, estimator)
        return loss, tuple(tape.gradient(loss, [z1, z2]))

    return tf.function(step, jit_compile=jit_compile)


def _floor(u):
    s = tf.matmul(u, u, transpose_b=True)
    return tf.matmul(s, u), tf.matmul(s, u, transpose_a=True)


#: The three (2B x d)(d x 2B)-class products (S = U U^T, G U, G^T U; S stands in for G), as a graph ...
floor_graph = tf.function(_floor)
#: ... and compiled by XLA. Input u: (2B, d); output: two (2B, d) tensors.
floor_xla = tf.function(_floor, jit_compile=True)


def _floor_symmetric(u):
    s = tf.matmul(u, u, transpose_b=True)
    return tf.matmul(s, u)


#: The two products of the symmetric in-batch layout: S = U U^T, then (G + G^T) U (S stands in for the
#: symmetric G + G^T, so one (2B x 2B)(2B x d) product does the backward pass), as a graph ...
floor_symmetric_graph = tf.function(_floor_symmetric)
#: ... and compiled by XLA. Input u: (2B, d); output: one (2B, d) tensor.
floor_symmetric_xla = tf.function(_floor_symmetric, jit_compile=True)
