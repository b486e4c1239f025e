"""Row normalisation u = z / max(||z||_2, 1e-12) and its backward pass (spec sections 2 and 8)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from hardneg.validation import NORM_EPS

__all__ = ["normalize_rows", "normalize_rows_bwd"]


def normalize_rows(z: jax.Array):
    """Normalise the last axis of ``z`` without overflow (the norm is scaled by max |z| first).

    Returns
    -------
    u : array like ``z``
    norm : array of shape ``z.shape[:-1] + (1,)``, the (unclamped) norms.
    """
    scale = jnp.max(jnp.abs(z), axis=-1, keepdims=True)
    safe = jnp.where(scale > 0, scale, 1.0)
    norm = scale * jnp.sqrt(jnp.sum(jnp.square(z / safe), axis=-1, keepdims=True))
    return z / jnp.maximum(norm, NORM_EPS), norm


def normalize_rows_bwd(gu: jax.Array, u: jax.Array, norm: jax.Array) -> jax.Array:
    """dL/dz from dL/du: (g - u (u.g)) / ||z|| when ||z|| >= eps (the tie included, like torch's clamp_min),
    else g / eps."""
    radial = jnp.sum(gu * u, axis=-1, keepdims=True)
    big = norm >= NORM_EPS
    return jnp.where(big, (gu - u * radial) / jnp.where(big, norm, 1.0), gu / NORM_EPS)
