"""``hardneg_tf.hcl_loss``: the HCL objective of docs/spec.md in TensorFlow, with its closed-form gradient.

Works eagerly, inside ``tf.function`` (also with unknown batch dimensions) and under
``tf.function(jit_compile=True)``. The gradient is a ``tf.custom_gradient`` built from spec §8; forward and
backward walk row blocks (:mod:`hardneg_tf.blocks`) so no (A x C) similarity matrix is ever held.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional

import tensorflow as tf

from hardneg.validation import check_call

from . import blocks
from .numerics import Config, make_config, normalize, normalize_backward

__all__ = ["hcl_loss", "DEFAULT_MEMORY_BUDGET"]

#: Default transient working memory of one row block, in bytes (64 MiB; raised to 256 anchor rows when rows
#: are wider than 256 KiB, e.g. 2B > 10922 in float32): at 2B = 8192 float32 that is blocks of ~340 rows.
DEFAULT_MEMORY_BUDGET = blocks.DEFAULT_BUDGET

try:  # whether a GradientTape is recording: decides between the fused and the two-pass computation
    from tensorflow.python.eager.record import should_record_backprop as _tape_watches
except ImportError:  # pragma: no cover - a future TF without this module: always prepare the gradient
    _tape_watches = None


def _shape(x: tf.Tensor, name: str):
    if x.shape.rank is None:
        raise ValueError(f"{name} must have a known rank (hardneg_tf needs it when the graph is traced)")
    return tuple(x.shape.as_list())


def _static_hparam(name: str, value):
    """Hyper-parameters fix the traced computation: accept Python/NumPy values and eager scalar tensors."""
    if isinstance(value, (tf.Tensor, tf.Variable)):
        if not tf.executing_eagerly() or value.shape.rank != 0:
            raise TypeError(
                f"hardneg_tf needs {name} as a Python value (it is fixed when the graph is traced); got a "
                f"{'symbolic ' if not tf.executing_eagerly() else ''}tensor {value!r}. Pass a Python number, "
                "and retrace (a new tf.function or Keras compile) to change it"
            )
        value = value.numpy().item()
    return value


def _check_budget(memory_budget):
    if memory_budget is None:
        return None  # blocks' default plan
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, numbers.Integral) or memory_budget < 1:
        raise ValueError(f"memory_budget must be None or a positive integer number of bytes; got {memory_budget!r}")
    return int(memory_budget)


def _as_tensor(x, name):
    if x is None:
        return None
    if isinstance(x, tf.Variable):
        return tf.convert_to_tensor(x)
    try:
        return tf.convert_to_tensor(x)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be convertible to a tf.Tensor; got {type(x).__name__}: {exc}") from None


@tf.autograph.experimental.do_not_convert
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
    memory_budget: Optional[int] = None,
    gather: bool = False,
):
    r"""Hard-negative contrastive loss (Robinson et al., ICLR 2021) in TensorFlow, blockwise.

    For anchors :math:`i` with positive logit :math:`a_i` and negatives :math:`j \in N_i`
    (:math:`M_i = |N_i|`), :math:`s_{ij} = u_i \cdot u_j / t`:

    .. math::

        R_i = M_i \frac{\sum_j e^{(1+\beta) s_{ij}}}{\sum_j e^{\beta s_{ij}}},\qquad
        Ng_i = \max\Big(\frac{R_i - \tau^+ M_i e^{a_i}}{1-\tau^+},\; M_i e^{-1/t}\Big),\qquad
        \ell_i = \log\big(e^{a_i} + Ng_i\big) - a_i,

    evaluated in log space (docs/spec.md §5). ``beta=0`` is the debiased loss (Chuang et al., NeurIPS
    2020); ``beta=0, tau_plus=0`` (or ``estimator="easy"``) is NT-Xent; ``beta=math.inf`` the worst case.

    Parameters
    ----------
    z1, z2 : tf.Tensor (or array-like), shape (B, d), float16, bfloat16, float32 or float64
        Two views; row k of z1 and row k of z2 form a positive pair. B may be unknown (None) in a graph.
    temperature : float, default 0.5
        t > 0.
    beta : float, default 1.0
        Hardness, >= 0; ``math.inf`` allowed.
    tau_plus : float, default 0.1
        Class prior for debiasing, 0 <= tau_plus < 1.
    estimator : {"hard", "easy"}, default "hard"
    clamp : bool, default True
        Floor Ng at M e^{-1/t} (hard estimator only).
    normalize : bool, default True
        Use u = z / max(||z||_2, 1e-12); False uses z as given.
    negatives : tf.Tensor, shape (K, d) or (B, K, d), optional
        An explicit bank (shared, or one per anchor): anchors are z1's rows, positives z2's rows, and
        in-batch samples are not negatives.
    labels : integer tf.Tensor, shape (B,), optional
        Samples sharing the anchor's label are removed from its negatives.
    negative_labels : integer tf.Tensor, shape (K,) or (B, K), optional
        Labels of the bank rows; required with ``labels`` when a bank is given.
    reduction : {"mean", "sum", "none"}, default "mean"
        "none" returns the per-anchor losses, shape (2B,) (z1 rows then z2 rows), or (B,) with a bank.
    memory_budget : int, optional
        Bytes of transient working memory for one row block. The block holds about six (rows x candidates)
        arrays of the compute dtype; smaller budgets mean more, smaller blocks. Default: 64 MiB, raised to
        256 anchor rows' worth when the rows are wider (2B > 10922 in float32). Results do not depend on
        it beyond rounding.
    gather : bool, default False
        Inside ``strategy.run`` of a ``tf.distribute`` strategy: use every replica's samples as negatives
        (through the replica context's differentiable ``all_gather``). Each replica's value covers its local
        anchors, scaled so that the *average over replicas* of the value and of the gradients equals the
        single-replica result on the concatenated batch (see docs/backends/tensorflow.md).

    Returns
    -------
    tf.Tensor
        Scalar, or shape (n_anchors,) for ``reduction="none"``, in the dtype of z1 (float16/bfloat16 inputs
        are computed in float32 inside).

    Notes
    -----
    Hyper-parameters are Python values fixed at trace time. The gradient is closed-form (spec §8) and
    computed over the same row blocks; when a ``tf.GradientTape`` is recording at call time and the
    reduction is "mean" or "sum", forward and backward run in one sweep. Non-finite inputs make every
    output NaN; an undefined anchor (``clamp=False``, denominator <= 0) makes every gradient NaN (spec §6).

    References
    ----------
    Robinson, Chuang, Sra, Jegelka. Contrastive Learning with Hard Negative Samples. ICLR 2021.
    Chuang, Robinson, Lin, Torralba, Jegelka. Debiased Contrastive Learning. NeurIPS 2020.
    """
    hp = dict(
        temperature=_static_hparam("temperature", temperature),
        beta=_static_hparam("beta", beta),
        tau_plus=_static_hparam("tau_plus", tau_plus),
        estimator=estimator,
        clamp=_static_hparam("clamp", clamp),
        normalize=_static_hparam("normalize", normalize),
        reduction=reduction,
    )
    z1, z2 = _as_tensor(z1, "z1"), _as_tensor(z2, "z2")
    negatives = _as_tensor(negatives, "negatives")
    labels, negative_labels = _as_tensor(labels, "labels"), _as_tensor(negative_labels, "negative_labels")
    problem = check_call(
        z1_shape=_shape(z1, "z1"),
        z2_shape=_shape(z2, "z2"),
        z1_dtype=z1.dtype.name,
        z2_dtype=z2.dtype.name,
        negatives_shape=None if negatives is None else _shape(negatives, "negatives"),
        negatives_dtype=None if negatives is None else negatives.dtype.name,
        labels_shape=None if labels is None else _shape(labels, "labels"),
        labels_dtype=None if labels is None else labels.dtype.name,
        negative_labels_shape=None if negative_labels is None else _shape(negative_labels, "negative_labels"),
        negative_labels_dtype=None if negative_labels is None else negative_labels.dtype.name,
        **hp,
    )
    budget = _check_budget(memory_budget)
    if not isinstance(gather, bool):
        raise TypeError(f"gather must be a bool (True or False); got {gather!r} of type {type(gather).__name__}")
    compute = tf.float64 if z1.dtype == tf.float64 else tf.float32
    cfg = make_config(
        temperature=hp["temperature"],
        beta=hp["beta"],
        tau_plus=hp["tau_plus"],
        estimator=hp["estimator"],
        clamp=hp["clamp"],
        compute_dtype=compute,
    )
    xs = [z1, z2] + ([negatives] if negatives is not None else [])
    grad_wanted = True if _tape_watches is None else bool(_tape_watches(xs))
    if gather:
        from .distribute import gathered_loss

        return gathered_loss(
            xs, labels, negative_labels, problem, cfg, hp, budget=budget, compute=compute, grad_wanted=grad_wanted
        )
    return _loss(xs, labels, negative_labels, problem.bank, cfg, hp, budget, compute, grad_wanted)


def _layout(bank, us, labels, negative_labels, cfg, anchors=None):
    if bank == "none":
        lab = None if labels is None else tf.concat([labels, labels], 0)
        return blocks.InBatch(tf.concat(us, 0), cfg, anchors=anchors, labels=lab)
    cls = blocks.SharedBank if bank == "shared" else blocks.PerAnchorBank
    return cls(*us, cfg, labels=labels, negative_labels=negative_labels)


def _loss(
    xs,
    labels,
    negative_labels,
    bank: str,
    cfg: Config,
    hp: dict,
    budget: int,
    compute: tf.DType,
    grad_wanted: bool,
    gathered=None,
):
    """The differentiable core: ``xs`` = [z1, z2] or [z1, z2, negatives] (already gathered when ``gathered``).

    ``gathered`` (cross-replica mode, see :mod:`hardneg_tf.distribute`) carries the local anchor indices
    and the value scale.
    """
    in_dtype = xs[0].dtype
    reduction = hp["reduction"]
    scalar = reduction != "none"
    do_norm = hp["normalize"]
    labels_c = None if labels is None else tf.cast(labels, tf.int64)
    nlabels_c = None if negative_labels is None else tf.cast(negative_labels, tf.int64)
    anchors = None if gathered is None else gathered.anchors

    @tf.custom_gradient
    def f(*args):
        zs = [tf.cast(z, compute) for z in args]
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(z)) for z in zs])
        if do_norm:
            normed = [normalize(z) for z in zs]
            us = [u for u, _ in normed]
        else:
            us = zs
        if bank == "none":
            us_layout = [us[0], us[1]]
        else:
            us_layout = us
        layout = _layout(bank, us_layout, labels_c, nlabels_c, cfg, anchors=anchors)
        A = layout.n_anchors if anchors is None else blocks._dim(anchors, 0)
        if gathered is not None:
            scale = gathered.scale(reduction, compute)  # value scale per anchor
        elif reduction == "mean":
            scale = 1.0 / tf.cast(A, compute)
        else:
            scale = tf.constant(1.0, compute)
        if grad_wanted and scalar:
            loss, unit = blocks.fused(layout, cfg, budget, anchors=anchors)
            unit = list(unit) if isinstance(unit, (tuple, list)) else [unit]
            saved = None
        else:
            loss, saved = blocks.forward(layout, cfg, budget, anchors=anchors)
            unit = None
        # (gathered: each replica's flag covers its anchors; the all-gather's backward sums the NaN everywhere)
        undefined = tf.reduce_any(tf.math.is_nan(loss))
        nan = tf.constant(math.nan, compute)
        if reduction == "none":
            value = tf.where(finite, loss, nan)
        else:
            value = tf.where(finite, tf.reduce_sum(loss) * scale, nan)

        def grad(dy):
            dy = tf.cast(dy, compute)
            if unit is not None:
                g_rows = [g * (dy * scale) for g in unit]
            else:
                cot = dy if reduction == "none" else tf.fill(tf.shape(loss), dy * scale)
                g_rows = blocks.backward(layout, cfg, budget, saved, cot, anchors=anchors)
                if not isinstance(g_rows, (tuple, list)):
                    g_rows = [g_rows]
            g_rows = list(g_rows)
            if bank == "none":  # dl/dU (n, d) -> the two views
                half = tf.shape(g_rows[0])[0] // 2
                g_rows = [g_rows[0][:half], g_rows[0][half:]]
            if do_norm:
                g_rows = [normalize_backward(g, u, nrm) for g, (u, nrm) in zip(g_rows, normed)]
            ok = tf.logical_and(finite, tf.logical_not(undefined))
            return [tf.cast(tf.where(ok, g, nan), in_dtype) for g in g_rows]

        return tf.cast(value, in_dtype), grad

    return f(*xs)
