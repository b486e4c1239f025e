"""The NumPy reference wrapped as a differentiable function of each framework.

``torch_hcl_loss``, ``jax_hcl_loss`` and ``tf_hcl_loss`` have the spec's signature, validate through
``hardneg.validation`` with the framework's shapes and dtype names (as a backend does), evaluate the float64
reference, and return the value in the input dtype with a custom gradient (``torch.autograd.Function``,
``jax.custom_vjp`` + ``jax.pure_callback``, ``tf.custom_gradient``) that calls ``hcl_loss_and_grad`` with the
incoming cotangent. They are exact by construction, so ``verify`` must accept them: they prove the suite and
its adapters before (and independently of) the real backends, and serve as a template for wrapping a port.
Each framework is imported when its function is first called.

Spec 1.1: they take ``layout`` and ``symmetric``, and a temperature that is a 0-d tensor of the framework, whose
gradient is ``Grads.temperature``; such a temperature's value is not validated, and one that is <= 0 or not finite
gives NaN for the value and every gradient (spec sections 1.1 and 6).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

import hardneg
from hardneg.validation import UNKNOWN, check_call, check_temperature_tensor

__all__ = ["torch_hcl_loss", "jax_hcl_loss", "tf_hcl_loss"]


def _validate(z1, z2, negatives, labels, negative_labels, hp, name, temperature=None):
    def shape(x):
        return None if x is None else tuple(int(s) if s is not None else None for s in x.shape)

    if temperature is not None:  # a tensor temperature: dtype and rank checked, value not (spec 1.1)
        check_temperature_tensor(shape(temperature), name(temperature))
        hp = dict(hp, temperature=UNKNOWN)
    return check_call(
        z1_shape=shape(z1), z2_shape=shape(z2), z1_dtype=name(z1), z2_dtype=name(z2),
        negatives_shape=shape(negatives), negatives_dtype=name(negatives),
        labels_shape=shape(labels), labels_dtype=name(labels),
        negative_labels_shape=shape(negative_labels), negative_labels_dtype=name(negative_labels), **hp,
    )


def _ref(arrs, labels, negative_labels, hp, cot=None, want_grad=False):
    """The reference's value (and Grads); NaN everywhere for a temperature that is <= 0 or not finite."""
    z1, z2, neg = (None if a is None else np.asarray(a, dtype=np.float64) for a in arrs)
    kw = dict(negatives=neg, labels=labels, negative_labels=negative_labels, **hp)
    t = float(hp["temperature"])
    if not (np.isfinite(t) and t > 0 and np.isfinite(1.0 / t)):
        kw["temperature"] = 1.0  # shapes only: every output is NaN
        v = np.asarray(hardneg.hcl_loss(z1, z2, **kw)) * np.nan
        if not want_grad:
            return v, None
        nan = lambda x: None if x is None else np.full(np.shape(x), np.nan)  # noqa: E731
        return v, hardneg.Grads(nan(z1), nan(z2), nan(neg), np.float64(np.nan))
    if not want_grad:
        return np.asarray(hardneg.hcl_loss(z1, z2, **kw)), None
    v, g = hardneg.hcl_loss_and_grad(z1, z2, cotangent=cot, **kw)
    return np.asarray(v), g


def _hp(temperature, beta, tau_plus, estimator, clamp, normalize, reduction, layout, symmetric):
    return dict(temperature=temperature, beta=beta, tau_plus=tau_plus, estimator=estimator, clamp=clamp,
                normalize=normalize, reduction=reduction, layout=layout, symmetric=symmetric)


# --------------------------------------------------------------------------------------------------------- torch


def torch_hcl_loss(z1, z2, *, temperature=0.5, beta=1.0, tau_plus=0.1, estimator="hard", clamp=True,
                   normalize=True, negatives=None, labels=None, negative_labels=None, reduction="mean",
                   layout=None, symmetric=True):
    """The reference as a PyTorch function (custom ``autograd.Function``); exact, CPU."""
    import torch

    hp = _hp(temperature, beta, tau_plus, estimator, clamp, normalize, reduction, layout, symmetric)
    name = lambda x: None if x is None else str(x.dtype).replace("torch.", "")  # noqa: E731
    t_tensor = temperature if isinstance(temperature, torch.Tensor) else None
    _validate(z1, z2, negatives, labels, negative_labels, hp, name, t_tensor)
    lab = None if labels is None else labels.cpu().numpy()
    nlab = None if negative_labels is None else negative_labels.cpu().numpy()
    dtype = z1.dtype
    has_bank = negatives is not None

    def np64(x):
        return None if x is None else x.detach().cpu().double().numpy()

    def unpack(xs):
        xs = list(xs)
        a, b = xs.pop(0), xs.pop(0)
        n = xs.pop(0) if has_bank else None
        h = dict(hp, temperature=float(np64(xs.pop(0)))) if t_tensor is not None else hp
        return (np64(a), np64(b), np64(n)), h

    class _Fn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *xs):
            ctx.save_for_backward(*xs)
            arrs, h = unpack(xs)
            v, _ = _ref(arrs, lab, nlab, h)
            return torch.as_tensor(v, dtype=torch.float64).to(dtype)

        @staticmethod
        def backward(ctx, g):
            saved = ctx.saved_tensors
            arrs, h = unpack(saved)
            cot = g.detach().cpu().double().numpy()
            _, gr = _ref(arrs, lab, nlab, h, cot=cot if reduction == "none" else float(cot), want_grad=True)
            outs = [gr.z1, gr.z2] + ([gr.negatives] if has_bank else [])
            res = [torch.as_tensor(o, dtype=torch.float64).to(dtype) for o in outs]
            if t_tensor is not None:
                res.append(torch.as_tensor(gr.temperature, dtype=torch.float64).to(t_tensor.dtype))
            return tuple(res)

    args = (z1, z2) + (() if negatives is None else (negatives,)) + (() if t_tensor is None else (t_tensor,))
    return _Fn.apply(*args)


# ----------------------------------------------------------------------------------------------------------- jax


def jax_hcl_loss(z1, z2, *, temperature=0.5, beta=1.0, tau_plus=0.1, estimator="hard", clamp=True,
                 normalize=True, negatives=None, labels=None, negative_labels=None, reduction="mean",
                 layout=None, symmetric=True):
    """The reference as a JAX function (``jax.custom_vjp`` over ``jax.pure_callback``); works under jit."""
    import jax
    import jax.numpy as jnp

    hp = _hp(temperature, beta, tau_plus, estimator, clamp, normalize, reduction, layout, symmetric)
    name = lambda x: None if x is None else jnp.dtype(x.dtype).name  # noqa: E731
    t_tensor = temperature if isinstance(temperature, jax.Array) else None  # tracers are jax.Arrays
    problem = _validate(z1, z2, negatives, labels, negative_labels, hp, name, t_tensor)
    lab = None if labels is None else np.asarray(labels)
    nlab = None if negative_labels is None else np.asarray(negative_labels)
    dtype = jnp.dtype(z1.dtype)
    out_shape = (problem.n_anchors,) if reduction == "none" else ()
    has_bank = negatives is not None

    def unpack(arrs):
        arrs = list(arrs)
        a, b = arrs.pop(0), arrs.pop(0)
        n = arrs.pop(0) if has_bank else None
        h = dict(hp, temperature=float(np.asarray(arrs.pop(0), np.float64))) if t_tensor is not None else hp
        return (a, b, n), h

    def value_cb(*arrs):
        a, h = unpack(arrs)
        v, _ = _ref(a, lab, nlab, h)
        with np.errstate(over="ignore"):  # a result beyond float16's range is inf, as IEEE casting says
            return np.asarray(v, dtype=np.float64).astype(dtype)

    def grad_cb(cot, *arrs):
        c = np.asarray(cot, dtype=np.float64)
        a, h = unpack(arrs)
        _, g = _ref(a, lab, nlab, h, cot=c if reduction == "none" else float(c), want_grad=True)
        outs = [g.z1, g.z2] + ([g.negatives] if has_bank else [])
        with np.errstate(over="ignore"):
            res = [np.asarray(o).astype(dtype) for o in outs]
            if t_tensor is not None:
                res.append(np.asarray(g.temperature).astype(jnp.dtype(t_tensor.dtype)))
        return tuple(res)

    @jax.custom_vjp
    def f(*arrs):
        return jax.pure_callback(value_cb, jax.ShapeDtypeStruct(out_shape, dtype), *arrs)

    def fwd(*arrs):
        return f(*arrs), arrs

    def bwd(arrs, cot):
        shapes = tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in arrs)
        return jax.pure_callback(grad_cb, shapes, cot, *arrs)

    f.defvjp(fwd, bwd)
    return f(z1, z2, *(() if not has_bank else (negatives,)), *(() if t_tensor is None else (t_tensor,)))


# ---------------------------------------------------------------------------------------------------- tensorflow


def tf_hcl_loss(z1, z2, *, temperature=0.5, beta=1.0, tau_plus=0.1, estimator="hard", clamp=True,
                normalize=True, negatives=None, labels=None, negative_labels=None, reduction="mean",
                layout=None, symmetric=True):
    """The reference as a TensorFlow function (``tf.custom_gradient``); eager mode."""
    import tensorflow as tf

    hp = _hp(temperature, beta, tau_plus, estimator, clamp, normalize, reduction, layout, symmetric)
    name = lambda x: None if x is None else x.dtype.name  # noqa: E731
    z1, z2 = tf.convert_to_tensor(z1), tf.convert_to_tensor(z2)
    negatives = None if negatives is None else tf.convert_to_tensor(negatives)
    labels = None if labels is None else tf.convert_to_tensor(labels)
    negative_labels = None if negative_labels is None else tf.convert_to_tensor(negative_labels)
    # a tf.Variable or tf.Tensor temperature: read it once, so that its gradient flows through this input
    t_tensor = tf.convert_to_tensor(temperature) if (tf.is_tensor(temperature) or
                                                     isinstance(temperature, tf.Variable)) else None
    _validate(z1, z2, negatives, labels, negative_labels, hp, name, t_tensor)
    lab = None if labels is None else labels.numpy()
    nlab = None if negative_labels is None else negative_labels.numpy()
    dtype = z1.dtype
    has_bank = negatives is not None

    def np64(x: Optional[object]):
        return None if x is None else tf.cast(x, tf.float64).numpy()

    def core(*arrs):
        xs = list(arrs)
        a = (np64(xs[0]), np64(xs[1]), np64(xs[2]) if has_bank else None)
        h = dict(hp, temperature=float(np64(xs[-1]))) if t_tensor is not None else hp
        v, _ = _ref(a, lab, nlab, h)

        def grad(g):
            c = tf.cast(g, tf.float64).numpy()
            _, gr = _ref(a, lab, nlab, h, cot=c if reduction == "none" else float(c), want_grad=True)
            outs = [gr.z1, gr.z2] + ([gr.negatives] if has_bank else [])
            res = [tf.cast(tf.constant(o, tf.float64), dtype) for o in outs]
            if t_tensor is not None:
                res.append(tf.cast(tf.constant(gr.temperature, tf.float64), t_tensor.dtype))
            return res

        return tf.cast(tf.constant(v, tf.float64), dtype), grad

    f = tf.custom_gradient(core)
    return f(z1, z2, *(() if negatives is None else (negatives,)), *(() if t_tensor is None else (t_tensor,)))
