"""``hardneg_tf.hcl_loss``: the HCL objective of docs/spec.md in TensorFlow, with its closed-form gradient.

Works eagerly, inside ``tf.function`` (also with unknown batch dimensions) and under
``tf.function(jit_compile=True)``. The gradient is a ``tf.custom_gradient`` built from spec §8; forward and
backward walk row blocks (:mod:`hardneg_tf.blocks`) so no (A x C) similarity matrix is ever held.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import tensorflow as tf

from hardneg._docs import fill_doc
from hardneg.validation import UNKNOWN, check_call, check_memory_budget, check_temperature_tensor

from . import blocks, symmetric
from .numerics import make_config, normalize, normalize_backward

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
    gather: bool = False,
):
    r"""Hard-negative contrastive loss (Robinson et al., ICLR 2021) in TensorFlow, blockwise.

    {{hcl_loss.math}}

    Evaluated in log space (docs/spec.md §5). ``beta=0`` is the debiased loss (Chuang et al., NeurIPS
    2020); ``beta=0, tau_plus=0`` (or ``estimator="easy"``) is NT-Xent; ``beta=math.inf`` the worst case.
    At ``estimator="easy"``, ``layout="cross"`` is CLIP's loss (``symmetric=True``) and sentence-transformers'
    MultipleNegativesRankingLoss with scale 1/t (``symmetric=False``, hard negatives as a shared bank).

    Parameters
    ----------
    z1, z2 : tf.Tensor (or array-like), shape (B, d), float16, bfloat16, float32 or float64
        Two views; row k of z1 and row k of z2 form a positive pair. B may be unknown (None) in a graph.
    temperature : float or 0-d floating tf.Tensor / tf.Variable, default 0.5
        t > 0. A tensor is differentiable: ``tape.gradient`` gives d loss / d t (eager, tf.function, XLA,
        every layout). Its value is not checked: <= 0 or not finite makes the loss and every gradient NaN.
    beta : float, default 1.0
        {{hcl_loss.beta}}
    tau_plus : float, default 0.1
        {{hcl_loss.tau_plus}}
    estimator : {"hard", "easy"}, default "hard"
    clamp : bool, default True
        {{hcl_loss.clamp}}
    normalize : bool, default True
        {{hcl_loss.normalize}}
    negatives : tf.Tensor, shape (K, d) or (B, K, d), optional
        An explicit bank (shared, or one per anchor). With the default layout, anchors are z1's rows, positives
        z2's rows, and in-batch samples are not negatives; with ``layout="cross"`` the bank rows are extra
        candidates after z2's rows.
    labels : integer tf.Tensor, shape (B,), optional
        {{hcl_loss.labels}}
    negative_labels : integer tf.Tensor, shape (K,) or (B, K), optional
        {{hcl_loss.negative_labels}}
    reduction : {"mean", "sum", "none"}, default "mean"
        "none" returns the per-anchor losses, shape (2B,) (z1 rows then z2 rows), or (B,) with a bank
        (layout "bank") or with ``layout="cross", symmetric=False``.
    layout : {None, "in_batch", "bank", "cross"}, default None
        Which rows are anchors and candidates (docs/spec.md §3). ``None``: "in_batch" without ``negatives``
        (SimCLR), "bank" with them (MoCo). "cross" (CLIP, sentence-transformers): anchor z1[i], candidates z2's
        rows then the bank rows, positive z2[i]; every other candidate is a negative (M = B - 1 + K).
    symmetric : bool, default True
        Cross layout only: also the reverse direction (anchor z2[i], candidates z1's rows, no bank), as CLIP
        does. ``False`` with another layout raises ValueError.
    memory_budget : int, optional
        Bytes of transient working memory for one row block. The block holds about six (rows x candidates)
        arrays of the compute dtype; smaller budgets mean more, smaller blocks. Default: 64 MiB, raised to
        256 anchor rows' worth when the rows are wider (2B > 10922 in float32); in the cross layout 16 MiB
        per direction, at least 128 rows. These are the CPU defaults; on a GPU or TPU the default is 1 GiB
        for every layout (:mod:`hardneg.budget`; TensorFlow does not report the card's memory, so the
        rule's fallback applies). The two-pass kernels (large in-batch and symmetric cross calls, see
        :mod:`hardneg_tf.symmetric`) hold four (T x T) tiles instead, T <= 1024 rows. Results do not depend on
        it beyond rounding.
    gather : bool, default False
        Inside ``strategy.run`` of a ``tf.distribute`` strategy: use every replica's samples as negatives
        (through the replica context's differentiable ``all_gather``). Each replica's value covers its local
        anchors, scaled so that the *average over replicas* of the value and of the gradients equals the
        single-replica result on the concatenated batch (see docs/backends/tensorflow.md). A replica may hold
        no rows; replicas must agree on dtype, d, whether labels are given, layout, symmetric and bank kind
        (ValueError otherwise).

    Returns
    -------
    tf.Tensor
        Scalar, or shape (n_anchors,) for ``reduction="none"``, in the dtype of z1 (float16/bfloat16 inputs
        are computed in float32 inside).

    Notes
    -----
    Hyper-parameters other than a tensor temperature are Python values fixed at trace time. The gradient is
    closed-form (spec §8), d loss / d t included, and
    computed over the same row blocks; when a ``tf.GradientTape`` is recording at call time and the
    reduction is "mean" or "sum", forward and backward run in one sweep. Non-finite inputs make every
    output NaN; an undefined anchor (``clamp=False``, denominator <= 0) makes every gradient NaN (spec §6).

    References
    ----------
    {{hcl_loss.references}}
    """
    t_tensor = _temperature_tensor(temperature)
    hp = dict(
        temperature=UNKNOWN if t_tensor is not None else _static_hparam("temperature", temperature),
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
    if t_tensor is not None:
        check_temperature_tensor(_shape(t_tensor, "temperature"), t_tensor.dtype.name)
    z1_shape, z2_shape = _shape(z1, "z1"), _shape(z2, "z2")
    if gather is True and len(z1_shape) == 2 and z1_shape[:1] == z2_shape[:1] and z1_shape[0] in (0, 1):
        # this replica's shard may be empty or hold one pair: the global batch decides (checked per replica
        # at run time would need a collective; the other replicas' rows are the negatives)
        z1_shape, z2_shape = (None,) + z1_shape[1:], (None,) + z2_shape[1:]
    problem = check_call(
        z1_shape=z1_shape,
        z2_shape=z2_shape,
        z1_dtype=z1.dtype.name,
        z2_dtype=z2.dtype.name,
        negatives_shape=None if negatives is None else _shape(negatives, "negatives"),
        negatives_dtype=None if negatives is None else negatives.dtype.name,
        labels_shape=None if labels is None else _shape(labels, "labels"),
        labels_dtype=None if labels is None else labels.dtype.name,
        negative_labels_shape=None if negative_labels is None else _shape(negative_labels, "negative_labels"),
        negative_labels_dtype=None if negative_labels is None else negative_labels.dtype.name,
        layout=layout,
        symmetric=symmetric,
        **hp,
    )
    budget = check_memory_budget(memory_budget)  # None: blocks' default plan
    if budget is None:  # per-device default (hardneg.budget): None on CPU, larger blocks on a GPU/TPU
        budget = blocks.device_default_budget(z1)
    if not isinstance(gather, bool):
        raise TypeError(f"gather must be a bool (True or False); got {gather!r} of type {type(gather).__name__}")
    compute = tf.float64 if z1.dtype == tf.float64 else tf.float32
    cfg = dict(
        temperature=hp["temperature"],
        beta=hp["beta"],
        tau_plus=hp["tau_plus"],
        estimator=hp["estimator"],
        clamp=hp["clamp"],
        compute_dtype=compute,
    )
    if t_tensor is None:
        cfg = make_config(**cfg)
    xs = [z1, z2] + ([negatives] if negatives is not None else [])
    watched = xs + ([t_tensor] if t_tensor is not None else [])
    grad_wanted = True if _tape_watches is None else bool(_tape_watches(watched))
    setup = Setup(problem.layout, problem.bank, bool(problem.symmetric))
    if gather:
        from .distribute import gathered_loss

        return gathered_loss(
            xs, labels, negative_labels, setup, cfg, hp, budget=budget, compute=compute, grad_wanted=grad_wanted,
            temperature=t_tensor,
        )
    return _loss(xs, labels, negative_labels, setup, cfg, hp, budget, compute, grad_wanted, temperature=t_tensor)


class Setup(NamedTuple):
    """The resolved layout of a call: ``layout`` ("in_batch", "bank", "cross"), ``bank`` ("none", "shared",
    "per_anchor") and ``symmetric`` (the cross layout's reverse direction)."""

    layout: str
    bank: str
    symmetric: bool


def _temperature_tensor(temperature):
    """A differentiable temperature (tf.Tensor / tf.Variable / Keras variable) as a tensor, else None."""
    if isinstance(temperature, tf.Variable) or tf.is_tensor(temperature):
        return tf.convert_to_tensor(temperature)
    if hasattr(temperature, "__tf_tensor__"):  # e.g. a keras.Variable under the TensorFlow backend
        return tf.convert_to_tensor(temperature)
    return None


def _parts(setup: Setup, us, labels, negative_labels, cfg, gathered, budget=None, normalized=False):
    """The layouts (directions) of one call and, per layout, where its gradients go: a list of
    (layout, targets) with ``targets`` the input index of each array :meth:`finish` returns ("split" for the
    in-batch layout's (2n, d) gradient of [u1; u2]). The symmetric cross layout without a bank may be one
    :class:`~hardneg_tf.symmetric.CrossPair` (both directions on shared tiles) instead of two parts."""
    anchors = None if gathered is None else gathered.anchors
    if setup.layout == "in_batch":
        lab = None if labels is None else tf.concat([labels, labels], 0)
        layout = blocks.InBatch(tf.concat(us[:2], 0), cfg, anchors=anchors, labels=lab)
        layout.normalized = normalized  # the two-pass kernel's automatic choice (hardneg_tf.symmetric)
        return [(layout, "split")]
    if (setup.layout == "cross" and setup.symmetric and len(us) == 2 and gathered is None
            and symmetric.choose_cross(us[0], cfg, budget, normalized)):
        return [(symmetric.CrossPair(us[0], us[1], cfg, labels=labels, normalized=normalized), (0, 1))]
    if setup.layout == "bank":
        cls = blocks.SharedBank if setup.bank == "shared" else blocks.PerAnchorBank
        return [(cls(*us, cfg, labels=labels, negative_labels=negative_labels), (0, 1, 2))]
    offset = 0 if gathered is None else gathered.offset
    V = us[2] if len(us) > 2 else None
    parts = [(blocks.Cross(us[0], us[1], cfg, V=V, anchors=anchors, labels=labels,
                           negative_labels=negative_labels, offset=offset), (0, 1, 2))]
    if setup.symmetric:  # reverse direction: anchors z2, candidates z1 only
        parts.append((blocks.Cross(us[1], us[0], cfg, anchors=anchors, labels=labels, offset=offset), (1, 0, None)))
    return parts


def _scatter_grads(acc, out, targets):
    out = list(out) if isinstance(out, (tuple, list)) else [out]
    if targets == "split":  # dl/dU (n, d) -> the two views
        half = tf.shape(out[0])[0] // 2
        out, targets = [out[0][:half], out[0][half:]], (0, 1)
    for g, k in zip(out, targets):
        if g is not None and k is not None:
            acc[k] = g if acc[k] is None else acc[k] + g


def _loss(
    xs,
    labels,
    negative_labels,
    setup: Setup,
    cfg,
    hp: dict,
    budget: int,
    compute: tf.DType,
    grad_wanted: bool,
    gathered=None,
    temperature=None,
):
    """The differentiable core: ``xs`` = [z1, z2] or [z1, z2, negatives] (already gathered when ``gathered``).

    ``cfg`` is a :class:`~hardneg_tf.numerics.Config` for a Python temperature, or the keywords of :func:`make_config` when
    ``temperature`` is a 0-d tensor (then an input of the custom gradient, which returns d loss / d t).
    ``gathered`` (cross-replica mode, see :mod:`hardneg_tf.distribute`) carries the local anchor indices, the
    offset of the local rows and the value scale.
    """
    in_dtype = xs[0].dtype
    reduction = hp["reduction"]
    scalar = reduction != "none"
    do_norm = hp["normalize"]
    labels_c = None if labels is None else tf.cast(labels, tf.int64)
    nlabels_c = None if negative_labels is None else tf.cast(negative_labels, tf.int64)
    anchors = None if gathered is None else gathered.anchors
    n_x = len(xs)
    args = list(xs) + ([temperature] if temperature is not None else [])

    @tf.custom_gradient
    def f(*args):
        zs = [tf.cast(z, compute) for z in args[:n_x]]
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(z)) for z in zs])
        if temperature is not None:
            # a tensor temperature's value is not validated: t <= 0 or not finite gives NaN everywhere
            t = tf.cast(args[n_x], compute)
            t_ok = tf.logical_and(tf.logical_and(tf.math.is_finite(t), t > 0), tf.math.is_finite(1.0 / t))
            finite = tf.logical_and(finite, t_ok)
            cfg_ = make_config(**dict(cfg, temperature=tf.where(t_ok, t, tf.ones_like(t))))
        else:
            cfg_ = cfg
        if do_norm:
            normed = [normalize(z) for z in zs]
            us = [u for u, _ in normed]
        else:
            us = zs
        parts = _parts(setup, us, labels_c, nlabels_c, cfg_, gathered, budget, do_norm)
        counts = [p.n_anchors for p, _ in parts]
        if gathered is not None:
            scale = gathered.scale(reduction, compute)  # value scale per anchor
        elif reduction == "mean":
            A = counts[0] if len(counts) == 1 else tf.add_n([tf.cast(c, tf.int32) for c in counts])
            scale = 1.0 / tf.cast(A, compute)
        else:
            scale = tf.constant(1.0, compute)
        fused = grad_wanted and scalar
        states, losses = [], []
        for layout, _ in parts:
            if fused:
                loss, res = blocks.fused(layout, cfg_, budget, anchors=anchors)
            else:
                loss, res = blocks.forward(layout, cfg_, budget, anchors=anchors)
            losses.append(loss)
            states.append(res)
        loss = losses[0] if len(losses) == 1 else tf.concat(losses, 0)
        # (gathered: each replica's flag covers its anchors; the all-gather's backward sums the NaN everywhere)
        undefined = tf.reduce_any(tf.math.is_nan(loss))
        nan = tf.constant(math.nan, compute)
        if reduction == "none":
            value = tf.where(finite, loss, nan)
        else:
            value = tf.where(finite, tf.reduce_sum(loss) * scale, nan)

        ok = tf.logical_and(finite, tf.logical_not(undefined))

        def combine(per_part):
            """Sum the parts' (row gradients, d/dt) into the inputs' gradients, NaN where undefined."""
            acc, dt = [None] * n_x, []
            for (_, targets), (g_p, dt_p) in zip(parts, per_part):
                _scatter_grads(acc, g_p, targets)
                if dt_p is not None:
                    dt.append(dt_p)
            if do_norm:
                acc = [normalize_backward(g, u, nrm) for g, (u, nrm) in zip(acc, normed)]
            out = [tf.where(ok, g, nan) for g in acc]
            if temperature is not None:
                out.append(tf.where(ok, tf.add_n(dt) if len(dt) > 1 else dt[0], nan))
            return out

        if fused:
            # the gradient of the plain sum is complete now: keep only it (no similarity-sized state, and no
            # per-direction copies, live between the forward and the backward pass); the backward scales it
            unit = combine([res if cfg_.learn_t else (res, None) for res in states])

        def grad(dy):
            dy = tf.cast(dy, compute)
            if fused:
                out = [g * (dy * scale) for g in unit]
            else:
                per_part, start = [], 0
                for (layout, _), res, loss_p, count in zip(parts, states, losses, counts):
                    if reduction == "none":
                        cot = dy if len(parts) == 1 else dy[start:start + count]
                        start = start + count
                    else:
                        cot = tf.fill(tf.shape(loss_p), dy * scale)
                    res_b = blocks.backward(layout, cfg_, budget, res, cot, anchors=anchors)
                    per_part.append(res_b if cfg_.learn_t else (res_b, None))
                out = combine(per_part)
            grads = [tf.cast(g, in_dtype) for g in out[:n_x]]
            if temperature is not None:
                grads.append(tf.cast(out[n_x], temperature.dtype))
            return grads

        return tf.cast(value, in_dtype), grad

    return f(*args)
