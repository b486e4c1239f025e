"""Cross-device negatives: gather the in-batch rows over a mapped axis (``shard_map``, ``pmap``, ``vmap``).

Each device keeps its own anchors (its 2 B_l rows) and sees every device's rows as candidates. The gather is
``lax.all_gather(..., tiled=True)``, outside the custom VJP, so JAX transposes it into ``psum_scatter``: each
device's rows receive the gradient of *every* device's loss. With per-device losses that are means over the
local anchors, ``pmean`` of the losses is the global mean and ``pmean`` of the per-device parameter gradients
is the single-device gradient on the concatenated batch. ``"sum"`` is scaled by the axis size so that the
same averaging holds.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["Gathered", "axis_size", "gather_batch", "as_varying"]


class Gathered(NamedTuple):
    """Global in-batch rows and where this device's anchors sit in them."""

    z1: jax.Array  # (world * B_l, d)
    z2: jax.Array
    labels: Optional[jax.Array]  # (world * B_l,) or None
    row0: jax.Array  # int32 scalar: axis_index * B_l


def axis_size(axis_name: Any) -> int:
    """Size of the mapped axis ``axis_name``; a clear ValueError outside a mapped context."""
    try:
        return int(lax.axis_size(axis_name))
    except (NameError, KeyError, ValueError) as exc:
        raise ValueError(
            f"axis_name={axis_name!r} is not a mapped axis here: call hcl_loss inside jax.shard_map, jax.pmap "
            f"or jax.vmap over an axis of that name (or pass axis_name=None for single-device negatives)"
        ) from exc


def as_varying(x: Optional[jax.Array], axis_name: Any) -> Optional[jax.Array]:
    """Inside ``shard_map``, mark a value that is the same on every device (a replicated bank or temperature) as
    varying over ``axis_name`` (``lax.pcast(..., to="varying")``, whose transpose is ``psum``).

    The custom VJP returns a cotangent for it that depends on the device's anchors; JAX's manual-axis types
    require the input to be varying for that, exactly as its own autodiff inserts the cast implicitly. Outside
    ``shard_map`` (``pmap``, ``vmap``) there are no manual-axis types and ``x`` is returned unchanged.
    """
    if x is None:
        return None
    mat = getattr(jax.typeof(x), "mat", None)
    if mat is None:
        return x
    for axis in axis_name if isinstance(axis_name, tuple) else (axis_name,):
        if axis in mat.varying:
            continue
        try:
            x = lax.pcast(x, axis, to="varying")
        except ValueError:  # not under shard_map: nothing to mark
            return x
    return x


def gather_batch(z1: jax.Array, z2: jax.Array, labels: Optional[jax.Array], axis_name: Any) -> Gathered:
    """All-gather z1, z2 (with gradient) and labels over ``axis_name``, in axis-index order.

    JAX maps equally shaped shards only, so every device holds the same B_l; a global batch that does not
    divide by the axis size is rejected by ``shard_map`` / ``pmap`` before this runs.
    """
    B_l = z1.shape[0]
    gz1 = lax.all_gather(z1, axis_name, tiled=True)
    gz2 = lax.all_gather(z2, axis_name, tiled=True)
    glab = None if labels is None else lax.all_gather(labels, axis_name, tiled=True)
    row0 = (lax.axis_index(axis_name) * B_l).astype(jnp.int32)
    return Gathered(gz1, gz2, glab, row0)
