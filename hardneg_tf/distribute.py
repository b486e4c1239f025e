"""Cross-replica negatives for ``hcl_loss(..., gather=True)`` under ``tf.distribute`` (issue 7).

Inside ``strategy.run`` (MirroredStrategy, MultiWorkerMirroredStrategy, ...) each replica holds b_r pairs.
The views are all-gathered with the replica context's ``all_gather``, whose gradient sums the cotangents
of every replica and hands each its own slice: so each replica computes its *local* anchors against the
*global* negatives, and the gradient reaching a replica's z is the derivative of the sum of all replicas'
values, exactly as with one replica holding the concatenated batch.

Scaling. With R replicas and N global anchors (2 sum_r b_r in-batch, sum_r b_r with a bank):

    "mean":  value_r = (R / N) * sum_{local anchors} l_i    (the average over replicas is the global mean)
    "sum":   value_r = R * sum_{local anchors} l_i          (the average over replicas is the global sum)
    "none":  the local anchors' losses, z1 rows then z2 rows of this replica.

So the replica-averaged value and the replica-averaged parameter gradient equal the single-replica ones on
the concatenated batch, for even and uneven shards alike. The spec's rule "an undefined (NaN) anchor makes
every gradient element NaN" holds across replicas without a collective of its own: the replica with such an
anchor returns an all-NaN cotangent for the gathered views, and the all-gather's backward sums it into
every replica's gradient. Optimizers under tf.distribute *sum* the
replicas' gradients, so divide by R before taking gradients (``HCLLoss`` does, as Keras' losses do).

Banks: the anchors and their negatives are local (a shared bank is the same on every replica in the usual
setups, e.g. a replicated queue), so nothing is gathered but the global anchor count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import tensorflow as tf

from . import loss as _loss_mod

__all__ = ["gathered_loss"]


@dataclass
class Gathered:
    """What :func:`hardneg_tf.loss._loss` needs to evaluate a replica's share of a gathered batch."""

    anchors: Any  # (A_local,) int32 global indices of the local anchors, or None for all of them
    replicas: int
    n_global: Any  # int32 scalar: N

    def scale(self, reduction: str, dtype):
        if reduction == "mean":
            return tf.cast(self.replicas, dtype) / tf.cast(self.n_global, dtype)
        if reduction == "sum":
            return tf.cast(self.replicas, dtype)
        return tf.constant(1.0, dtype)



def _replica_context():
    ctx = tf.distribute.get_replica_context()
    if ctx is None:
        raise RuntimeError(
            "hcl_loss(gather=True) must run in a replica context: call it inside strategy.run(...) (or a Keras "
            "train_step under strategy.scope()); it was called in the cross-replica context"
        )
    return ctx


def _offset(ctx, local_rows):
    """This replica's first global row and the global row count (shards may be uneven)."""
    sizes = ctx.all_gather(tf.reshape(tf.cast(local_rows, tf.int32), [1]), axis=0)  # (R,)
    rid = ctx.replica_id_in_sync_group
    before = tf.reduce_sum(sizes[: rid] if isinstance(rid, int) else tf.gather(sizes, tf.range(rid)))
    return before, tf.reduce_sum(sizes)


def gathered_loss(xs, labels, negative_labels, problem, cfg, hp, *, budget, compute, grad_wanted):
    """Replica share of the loss with every replica's samples as negatives (see the module docstring)."""
    ctx = _replica_context()
    R = int(ctx.num_replicas_in_sync)
    z1 = xs[0]
    b = tf.shape(z1)[0]
    off, B_global = _offset(ctx, b)
    if problem.bank != "none":
        g = Gathered(anchors=None, replicas=R, n_global=B_global)
        return _loss_mod._loss(xs, labels, negative_labels, problem.bank, cfg, hp, budget, compute, grad_wanted,
                               gathered=g)
    Z1, Z2 = ctx.all_gather([xs[0], xs[1]], axis=0)  # differentiable: the backward sums over replicas
    L = None if labels is None else ctx.all_gather(tf.cast(labels, tf.int64), axis=0)
    local = off + tf.range(b, dtype=tf.int32)
    anchors = tf.concat([local, B_global + local], 0)  # z1 rows, then z2 rows, of this replica
    g = Gathered(anchors=anchors, replicas=R, n_global=2 * B_global)
    return _loss_mod._loss([Z1, Z2], L, None, "none", cfg, hp, budget, compute, grad_wanted, gathered=g)
