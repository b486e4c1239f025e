"""Elementwise and per-row numerics of the HCL objective in TensorFlow (docs/spec.md §2, §5, §8).

Everything here works on vectors of anchor rows or on (rows, d) arrays; nothing is (rows x candidates).
The block loops in :mod:`hardneg_tf.blocks` call these functions once per row block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from hardneg.validation import NORM_EPS

__all__ = ["Config", "make_config", "normalize", "normalize_backward", "log1mexp", "softplus", "row_tail"]

_LOG2 = math.log(2.0)


@dataclass(frozen=True)
class Config:
    """Hyper-parameters of one call, resolved for the compute dtype (all static Python values).

    Attributes
    ----------
    inv_t : float
        1 / temperature.
    beta : float
        Hardness after resolving the estimator ("easy" is beta = 0).
    kind : {"zero", "one", "finite", "inf"}
        How the importance sums are formed: beta == 0 in the compute dtype (S0 = M, one exp), beta == 1
        (e^{2d} = (e^d)^2, one exp), any other finite beta (two exps), or beta = inf (max only). A beta whose
        1 + beta overflows the compute dtype is the limit "inf" (the weights are then those of the maxima).
    tau : float
        tau_plus after resolving the estimator ("easy" is tau_plus = 0).
    clamp : bool
        The floor Ng >= M e^{-1/t} ("easy" has none).
    learn_t : bool
        The temperature is a tensor whose gradient is wanted: ``inv_t`` is then a scalar tensor of the compute
        dtype, and the passes also return the per-anchor d l_i / d lf_i (the clamp floor's log) for d loss / d t.
    """

    inv_t: Any
    beta: float
    kind: str
    tau: float
    clamp: bool
    learn_t: bool = False


def make_config(*, temperature, beta, tau_plus, estimator, clamp, compute_dtype: tf.DType) -> Config:
    """Resolve validated hyper-parameters into a :class:`Config` for ``compute_dtype``.

    ``temperature`` is a Python number, or a 0-d tensor of ``compute_dtype`` (a differentiable temperature:
    ``inv_t`` becomes the tensor 1 / t and ``learn_t`` is set).
    """
    if estimator == "easy":  # spec §4: hard with beta = tau+ = 0 and no clamp
        beta, tau_plus, clamp = 0.0, 0.0, False
    np_dt = compute_dtype.as_numpy_dtype
    b = float(beta)
    with np.errstate(over="ignore"):
        bc, b1 = np_dt(b), np_dt(1.0) + np_dt(b)
    if math.isinf(b) or not np.isfinite(b1):
        kind = "inf"
    elif bc < np.finfo(np_dt).tiny:
        # beta below the smallest normal number is 0 to the arithmetic: CPUs flush subnormals to zero in TF and
        # XLA, and 0 * (-inf) would be NaN; the value differs from beta = 0 by O(beta), far below rounding
        kind = "zero"
    elif b == 1.0:
        kind = "one"
    else:
        kind = "finite"
    if tf.is_tensor(temperature):
        return Config(inv_t=1.0 / temperature, beta=b, kind=kind, tau=float(tau_plus), clamp=bool(clamp),
                      learn_t=True)
    return Config(inv_t=1.0 / float(temperature), beta=b, kind=kind, tau=float(tau_plus), clamp=bool(clamp))


def normalize(z):
    """u = z / max(||z||_2, 1e-12) row-wise, the norm scaled by max|z| so it cannot overflow or underflow.

    Parameters
    ----------
    z : tf.Tensor, (..., d), float32 or float64

    Returns
    -------
    u : (..., d); norm : (..., 1), the row norms (needed by :func:`normalize_backward`).
    """
    scale = tf.reduce_max(tf.abs(z), axis=-1, keepdims=True)
    safe = tf.where(scale > 0, scale, tf.ones_like(scale))
    norm = scale * tf.sqrt(tf.reduce_sum(tf.square(z / safe), axis=-1, keepdims=True))
    return z / tf.maximum(norm, NORM_EPS), norm


def normalize_backward(gu, u, norm):
    """dL/dz from dL/du through :func:`normalize` (spec §8): (g - u (u.g)) / ||z||, or g / eps below eps."""
    radial = tf.reduce_sum(gu * u, axis=-1, keepdims=True)
    # The tie ||z|| == eps takes the norm's branch, like torch's clamp_min.
    return tf.where(norm >= NORM_EPS, (gu - u * radial) / tf.maximum(norm, NORM_EPS), gu / NORM_EPS)


def log1mexp(x):
    """log(1 - e^x) for x <= 0, accurate on both sides of -log 2 (Maechler 2012)."""
    return tf.where(x > -_LOG2, tf.math.log(-tf.math.expm1(x)), tf.math.log1p(-tf.exp(x)))


def softplus(x):
    """log(1 + e^x) = logaddexp(0, x), exact for tiny results and for x = -inf."""
    return tf.maximum(x, 0.0) + tf.math.log1p(tf.exp(-tf.abs(x)))


def row_tail(a, lr, M, has, cfg: Config):
    """Per-anchor loss and derivatives from the log-sums (spec §5 and §8).

    Parameters
    ----------
    a : (R,) positive logits a_i.
    lr : (R,) log R_i = log M_i + m_i + log S1_i - log S0_i (any finite value where ``has`` is False).
    M : (R,) number of negatives, as a float.
    has : (R,) bool, M_i > 0 (and the row is a real anchor, not block padding).
    cfg : Config

    Returns
    -------
    loss : (R,) l_i (0 where not ``has``; NaN where undefined, clamp=False with D <= 0).
    da : (R,) dl_i/da_i.
    rho : (R,) the factor of the negatives' weights, dl_i/ds_ij = rho_i w_ij (0 on the floor).
    dlf : (R,) dl_i/dlf_i, lf_i = log M_i - 1/t the log of the clamp floor (nonzero only where it binds);
        only when ``cfg.learn_t`` (d loss / d t needs it), else None.
    """
    dt = a.dtype
    logM = tf.math.log(tf.where(has, M, tf.ones_like(M)))
    log1m_tau = math.log1p(-cfg.tau)
    if cfg.tau > 0.0:
        x = math.log(cfg.tau) + logM + a - lr  # log(tau+ M e^a / R)
    else:
        x = tf.fill(tf.shape(a), tf.constant(-math.inf, dt))
    ng_pos = x < 0.0
    neg_inf = tf.fill(tf.shape(a), tf.constant(-math.inf, dt))
    gu = tf.where(ng_pos, lr + log1mexp(tf.minimum(x, 0.0)) - log1m_tau, neg_inf)  # log of the unclamped Ng
    zero = tf.zeros_like(a)
    # The loss is delta = log D - a, evaluated as softplus(gamma - a) (or log1mexp(y) when Ng < 0): forming
    # log D first and subtracting a would lose every digit of a loss below the rounding of a (spec §5).
    if cfg.clamp:
        lf = logM - cfg.inv_t  # log of the floor M e^{-1/t}
        floor = gu < lf  # the tie takes the unclamped branch
        delta = softplus(tf.where(floor, lf, gu) - a)
        rho = tf.where(floor, zero, tf.exp(lr - log1m_tau - a - delta))
        da = tf.where(floor, -tf.exp(lf - a - delta), -rho)
        dlf = tf.where(floor, -da, zero) if cfg.learn_t else None  # d softplus(lf - a) / d lf
    else:
        if cfg.tau > 0.0:
            # Ng_u <= 0: D = e^a - N'/(1 - tau+) with log N' = log tau+ + log M + a + log1mexp(-x).
            y = math.log(cfg.tau) + logM + log1mexp(-tf.maximum(x, 0.0)) - log1m_tau
            nan = tf.fill(tf.shape(a), tf.constant(math.nan, dt))
            delta_neg = tf.where(y < 0.0, log1mexp(tf.minimum(y, 0.0)), nan)  # D <= 0: undefined
            delta = tf.where(ng_pos, softplus(gu - a), delta_neg)
        else:
            delta = softplus(gu - a)
        rho = tf.exp(lr - log1m_tau - a - delta)
        da = -rho
        dlf = zero if cfg.learn_t else None
    loss = delta
    if dlf is not None:
        dlf = tf.where(has, dlf, zero)
    return tf.where(has, loss, zero), tf.where(has, da, zero), tf.where(has, rho, zero), dlf
