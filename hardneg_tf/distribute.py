"""Cross-replica negatives for ``hcl_loss(..., gather=True)`` under ``tf.distribute`` (issue 7).

Inside ``strategy.run`` (MirroredStrategy, MultiWorkerMirroredStrategy, ...) each replica holds b_r pairs.
The views are all-gathered with the replica context's ``all_gather``, whose gradient sums the cotangents
of every replica and hands each its own slice: so each replica computes its *local* anchors against the
*global* negatives, and the gradient reaching a replica's z is the derivative of the sum of all replicas'
values, exactly as with one replica holding the concatenated batch.

Scaling. With R replicas and N global anchors (2 sum_r b_r in-batch or cross symmetric, sum_r b_r with a bank or
cross one-way):

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

Cross layout (spec 1.1): z1 and z2 are gathered; the local z1 rows are anchors against every replica's z2 rows
and the local bank (a per-anchor bank is indexed by the local row), and with ``symmetric`` the local z2 rows
against every replica's z1 rows; N = 2 sum_r b_r (or sum_r b_r one-way). A tensor temperature is an input of
each replica's custom gradient; its gradient follows the same scaling as the weights'.

Empty shards: a replica with b_r = 0 runs one all-padding block and contributes no anchors.

Agreement (issue 19): the gathered shapes and the scaling depend on the views' dtype and d, on whether labels
are given, on the layout, ``symmetric`` and the bank kind. The replicas of this process are compared when the
step is traced (``merge_call``, a ValueError naming the difference); the codes also travel in the all-gather of
the shard sizes, and a mismatch across workers stops the step (InvalidArgumentError) before the views are
gathered, instead of breaking the collective.
"""

from __future__ import annotations

import functools
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
    offset: Any = 0  # int32 scalar: the global index of this replica's first row (cross layout)

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


#: What every replica must agree on (the gathered shapes and the scaling depend on it), in the order of the
#: integer codes exchanged at run time.
_AGREE = ("dtype", "feature dimension d", "labels given", "layout", "symmetric", "bank")
_LAYOUT_CODES = {"in_batch": 0, "bank": 1, "cross": 2}
_BANK_CODES = {"none": 0, "shared": 1, "per_anchor": 2}
_DTYPE_CODES = {"float16": 0, "bfloat16": 1, "float32": 2, "float64": 3}


def _describe(i, value):
    if _AGREE[i] == "dtype":
        return {v: k for k, v in _DTYPE_CODES.items()}.get(value, str(value))
    if _AGREE[i] == "layout":
        return {v: k for k, v in _LAYOUT_CODES.items()}.get(value, str(value))
    if _AGREE[i] == "bank":
        return {v: k for k, v in _BANK_CODES.items()}.get(value, str(value))
    if _AGREE[i] in ("labels given", "symmetric"):
        return str(bool(value))
    return str(value)


def disagreement(rows) -> str:
    """The error message for per-replica metadata ``rows`` (one tuple of :data:`_AGREE` values per replica), or
    an empty string when they agree."""
    for i, what in enumerate(_AGREE):
        values = [r[i] for r in rows]
        if any(v != values[0] for v in values):
            per = ", ".join(f"replica {k}: {_describe(i, v)}" for k, v in enumerate(values))
            return (
                f"hcl_loss(gather=True): the replicas disagree on the {what} ({per}); every replica must pass "
                "views of the same dtype and feature dimension, labels on all replicas or on none, and the same "
                "layout, symmetric and bank kind"
            )
    return ""


def _metadata(xs, labels, setup):
    """This replica's :data:`_AGREE` values: static Python values (None for an unknown d) and int32 codes."""
    d = xs[0].shape[1]
    static = (xs[0].dtype.name, None if d is None else int(d), labels is not None, setup.layout,
              bool(setup.symmetric), setup.bank)
    codes = [_DTYPE_CODES.get(static[0], -1), tf.shape(xs[0], out_type=tf.int32)[1], int(static[2]),
             _LAYOUT_CODES[static[3]], int(static[4]), _BANK_CODES[static[5]]]
    return static, codes


def _check_static(ctx, static):
    """The replicas of this process, compared when the step is traced (MirroredStrategy: all of them)."""

    def merge(strategy, meta):
        rows = [tuple(r) for r in strategy.experimental_local_results(meta)]
        if any(r[1] is None for r in rows):  # d unknown when traced: left to the run-time check
            rows = [r[:1] + (0,) + r[2:] for r in rows]
        msg = disagreement([tuple(_static_code(i, v) for i, v in enumerate(r)) for r in rows])
        if msg:
            raise ValueError(msg)

    if ctx.num_replicas_in_sync > 1:
        ctx.merge_call(merge, args=(static,))


def _static_code(i, v):
    if _AGREE[i] == "dtype":
        return _DTYPE_CODES.get(v, -1)
    if _AGREE[i] == "layout":
        return _LAYOUT_CODES[v]
    if _AGREE[i] == "bank":
        return _BANK_CODES[v]
    if _AGREE[i] in ("labels given", "symmetric"):
        return int(v)
    return v


def _offset(ctx, local_rows, codes):
    """This replica's first global row and the global row count (shards may be uneven), after checking that
    every replica (every worker's too) agrees on ``codes``: one all-gather of (R, 1 + len(codes)) int32."""
    mine = tf.stack([tf.cast(local_rows, tf.int32)] + [tf.cast(c, tf.int32) for c in codes])[None, :]
    meta = ctx.all_gather(mine, axis=0)  # (R, 1 + n)
    sizes = meta[:, 0]
    agree = tf.reduce_all(tf.equal(meta[:, 1:], meta[:1, 1:]))
    if tf.executing_eagerly():
        if not bool(agree):
            raise ValueError(disagreement([tuple(r) for r in meta[:, 1:].numpy().tolist()]))
    else:
        # a traced step (e.g. MultiWorkerMirroredStrategy, where another worker's replicas are not visible when
        # tracing): fail before the views are gathered, on every replica, naming what differs
        check = tf.debugging.Assert(agree, [
            "hcl_loss(gather=True): the replicas disagree on the dtype, feature dimension d, labels given, "
            "layout, symmetric or bank kind; per replica (dtype code, d, labels given, layout, symmetric, bank):",
            meta[:, 1:]], summarize=64)
        with tf.control_dependencies([check]):
            sizes = tf.identity(sizes)
    rid = ctx.replica_id_in_sync_group
    before = tf.reduce_sum(sizes[: rid] if isinstance(rid, int) else tf.gather(sizes, tf.range(rid)))
    return before, tf.reduce_sum(sizes)


def gathered_loss(xs, labels, negative_labels, setup, cfg, hp, *, budget, compute, grad_wanted, temperature=None):
    """Replica share of the loss with every replica's samples as negatives (see the module docstring)."""
    ctx = _replica_context()
    R = int(ctx.num_replicas_in_sync)
    z1 = xs[0]
    b = _local_rows(z1)
    static, codes = _metadata(xs, labels, setup)
    _check_static(ctx, static)
    off, B_global = _offset(ctx, b, codes)
    run = functools.partial(_loss_mod._loss, setup=setup, cfg=cfg, hp=hp, budget=budget, compute=compute,
                            grad_wanted=grad_wanted, temperature=temperature)
    if setup.layout == "bank":
        g = Gathered(anchors=None, replicas=R, n_global=B_global)
        return run(xs, labels, negative_labels, gathered=g)
    Z1, Z2 = ctx.all_gather([xs[0], xs[1]], axis=0)  # differentiable: the backward sums over replicas
    L = None if labels is None else ctx.all_gather(tf.cast(labels, tf.int64), axis=0)
    local = off + tf.range(b, dtype=tf.int32)
    if setup.layout == "in_batch":
        anchors = tf.concat([local, B_global + local], 0)  # z1 rows, then z2 rows, of this replica
        g = Gathered(anchors=anchors, replicas=R, n_global=2 * B_global)
        return run([Z1, Z2], L, None, gathered=g)
    # cross: this replica's anchors against every replica's candidates; the bank (if any) stays local
    n_global = 2 * B_global if setup.symmetric else B_global
    g = Gathered(anchors=local, replicas=R, n_global=n_global, offset=off)
    return run([Z1, Z2] + list(xs[2:]), L, negative_labels, gathered=g)


def _local_rows(z):
    """This replica's row count: a Python int when static (so that the block plan stays static), else a tensor."""
    b = z.shape[0]
    return int(b) if b is not None else tf.shape(z, out_type=tf.int32)[0]
