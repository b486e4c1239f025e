"""The released HCL arithmetic transliterated into JAX, compiled with ``jax.jit``: the JAX backend's baseline.

Same arithmetic as :mod:`hardneg.bench.naive_torch` (raw ``exp``, full (2B x 2B) matrices). A boolean
gather (``neg[mask]``) has no static shape under ``jit``, so the mask is applied with ``jnp.where``, as JAX
users write it; the mean over negatives divides by M = 2B - 2.

    neg_ij = e^{s_ij} (j not in {i, p(i)}),  pos_i = e^{s_i,p(i)}
    easy:  Ng_i = sum_j neg_ij
    hard:  imp_ij = exp(beta * log neg_ij)
           Ng_i = (sum_j imp_ij neg_ij / mean_j imp_ij - tau+ M pos_i) / (1 - tau+),  Ng_i >= M e^{-1/t}
    loss = mean_i -log(pos_i / (pos_i + Ng_i))

References
----------
Robinson, Chuang, Sra, Jegelka. Contrastive Learning with Hard Negative Samples. ICLR 2021 (released code).

:func:`hcl_cross_loss` is the cross layout (spec 1.1) written the way CLIP-style code is: one (B x B) logit
matrix ``u1 u2^T / t`` and its transpose, the same released formula applied to the rows of each (positive on
the diagonal, M = B - 1), the mean over the 2B anchors.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

__all__ = ["hcl_loss", "value_and_grad", "floor", "floor_symmetric", "negative_mask", "hcl_cross_loss",
           "cross_value_and_grad"]


def negative_mask(batch: int) -> jax.Array:
    """(2B, 2B) bool mask, False on the diagonal and on the partner (i, i +- B), True elsewhere."""
    n = 2 * batch
    i = jnp.arange(n)[:, None]
    j = jnp.arange(n)[None, :]
    return (i != j) & (j != (i + batch) % n)


def _normalize(z):
    return z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)


def hcl_loss(z1, z2, temperature=0.5, beta=1.0, tau_plus=0.1, estimator="hard"):
    """Naive HCL loss, mean over the 2B in-batch anchors.

    Parameters
    ----------
    z1, z2 : jax.Array, shape (B, d)
        The two views (normalised here).
    temperature, beta, tau_plus : float (may be traced)
    estimator : {"hard", "easy"} (static)

    Returns
    -------
    jax.Array, scalar, in the input's dtype.
    """
    batch = z1.shape[0]
    n_neg = 2 * batch - 2
    out1, out2 = _normalize(z1), _normalize(z2)
    out = jnp.concatenate([out1, out2], axis=0)
    neg = jnp.exp(out @ out.T / temperature)
    mask = negative_mask(batch)
    neg = jnp.where(mask, neg, 0)

    pos = jnp.exp(jnp.sum(out1 * out2, axis=-1) / temperature)
    pos = jnp.concatenate([pos, pos], axis=0)

    if estimator == "hard":
        imp = jnp.exp(beta * jnp.log(neg))
        reweight_neg = (imp * neg).sum(axis=-1) / (imp.sum(axis=-1) / n_neg)
        ng = (-tau_plus * n_neg * pos + reweight_neg) / (1 - tau_plus)
        ng = jnp.maximum(ng, n_neg * jnp.exp(-1.0 / temperature).astype(ng.dtype))
    elif estimator == "easy":
        ng = neg.sum(axis=-1)
    else:
        raise ValueError(f"estimator must be 'hard' or 'easy'; got {estimator!r}")
    return (-jnp.log(pos / (pos + ng))).mean()


#: ``jax.jit(jax.value_and_grad(hcl_loss, argnums=(0, 1)))``: loss and (dz1, dz2), as a training step computes them.
value_and_grad = jax.jit(jax.value_and_grad(hcl_loss, argnums=(0, 1)), static_argnames=("estimator",))


@partial(jax.jit)
def floor(u):
    """The three (2B x d)(d x 2B)-class products the loss needs: S = U U^T, then G U and G^T U (jitted).

    S stands in for G (the gradient with respect to S), so one (2B x 2B) buffer is live.

    Parameters
    ----------
    u : jax.Array, shape (2B, d)

    Returns
    -------
    (G U, G^T U) : two arrays of shape (2B, d).
    """
    s = u @ u.T
    return s @ u, s.T @ u


@partial(jax.jit)
def floor_symmetric(u):
    """The two products of the symmetric in-batch layout: S = U U^T, then (G + G^T) U (jitted).

    dL/dU = (G + G^T) U with G = dL/dS; G + G^T is symmetric like S, so one (2B x 2B)(2B x d) product
    does the backward pass. S stands in for G + G^T.

    Parameters
    ----------
    u : jax.Array, shape (2B, d)

    Returns
    -------
    (G + G^T) U : array of shape (2B, d).
    """
    return (u @ u.T) @ u


def _released_rows(logits, temperature, beta, tau_plus, estimator):
    """The released formula on the rows of a (B x B) logit matrix whose diagonal holds the positives."""
    batch = logits.shape[0]
    n_neg = batch - 1
    neg = jnp.exp(logits)
    neg = jnp.where(~jnp.eye(batch, dtype=bool), neg, 0)
    pos = jnp.exp(jnp.diagonal(logits))
    if estimator == "hard":
        imp = jnp.exp(beta * jnp.log(neg))
        reweight_neg = (imp * neg).sum(axis=-1) / (imp.sum(axis=-1) / n_neg)
        ng = (-tau_plus * n_neg * pos + reweight_neg) / (1 - tau_plus)
        ng = jnp.maximum(ng, n_neg * jnp.exp(-1.0 / temperature).astype(ng.dtype))
    elif estimator == "easy":
        ng = neg.sum(axis=-1)
    else:
        raise ValueError(f"estimator must be 'hard' or 'easy'; got {estimator!r}")
    return -jnp.log(pos / (pos + ng))


def hcl_cross_loss(z1, z2, temperature=0.5, beta=1.0, tau_plus=0.1, estimator="hard"):
    """Naive cross-layout (CLIP-style, symmetric) HCL loss: two full (B x B) logit matrices, mean over 2B anchors.

    Parameters
    ----------
    z1, z2 : jax.Array, shape (B, d)
        Anchors and candidates (normalised here); row i of each is a positive pair.
    temperature, beta, tau_plus : float (may be traced)
    estimator : {"hard", "easy"} (static)

    Returns
    -------
    jax.Array, scalar.
    """
    u1, u2 = _normalize(z1), _normalize(z2)
    logits = u1 @ u2.T / temperature
    rows = _released_rows(logits, temperature, beta, tau_plus, estimator)
    cols = _released_rows(logits.T, temperature, beta, tau_plus, estimator)
    return (rows.sum() + cols.sum()) / (2 * z1.shape[0])


#: ``jax.jit(jax.value_and_grad(hcl_cross_loss, argnums=(0, 1)))``.
cross_value_and_grad = jax.jit(jax.value_and_grad(hcl_cross_loss, argnums=(0, 1)), static_argnames=("estimator",))
