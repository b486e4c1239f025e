"""The NumPy reference wrapped as a differentiable function of each framework.

``torch_hcl_loss``, ``jax_hcl_loss`` and ``tf_hcl_loss`` have the spec's signature, validate through
``hardneg.validation`` with the framework's shapes and dtype names (as a backend does), evaluate the float64
reference, and return the value in the input dtype with a custom gradient (``torch.autograd.Function``,
``jax.custom_vjp`` + ``jax.pure_callback``, ``tf.custom_gradient``) that calls ``hcl_loss_and_grad`` with the
incoming cotangent. They are exact by construction, so ``verify`` must accept them: they prove the suite and
its adapters before (and independently of) the real backends, and serve as a template for wrapping a port.
Each framework is imported when its function is first called.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

import hardneg
from hardneg.validation import check_call

__all__ = ["torch_hcl_loss", "jax_hcl_loss", "tf_hcl_loss"]


def _validate(z1, z2, negatives, labels, negative_labels, hp, name):
    def shape(x):
        return None if x is None else tuple(int(s) if s is not None else None for s in x.shape)

    return check_call(
        z1_shape=shape(z1), z2_shape=shape(z2), z1_dtype=name(z1), z2_dtype=name(z2),
        negatives_shape=shape(negatives), negatives_dtype=name(negatives),
        labels_shape=shape(labels), labels_dtype=name(labels),
        negative_labels_shape=shape(negative_labels), negative_labels_dtype=name(negative_labels), **hp,
    )


def _ref(arrs, labels, negative_labels, hp, cot=None, want_grad=False):
    z1, z2, neg = (None if a is None else np.asarray(a, dtype=np.float64) for a in arrs)
    kw = dict(negatives=neg, labels=labels, negative_labels=negative_labels, **hp)
    if not want_grad:
        return np.asarray(hardneg.hcl_loss(z1, z2, **kw)), None
    v, g = hardneg.hcl_loss_and_grad(z1, z2, cotangent=cot, **kw)
    return np.asarray(v), g


# --------------------------------------------------------------------------------------------------------- torch


def torch_hcl_loss(z1, z2, *, temperature=0.5, beta=1.0, tau_plus=0.1, estimator="hard", clamp=True,
                   normalize=True, negatives=None, labels=None, negative_labels=None, reduction="mean"):
    """The reference as a PyTorch function (custom ``autograd.Function``); exact, CPU."""
    import torch

    hp = dict(temperature=temperature, beta=beta, tau_plus=tau_plus, estimator=estimator, clamp=clamp,
              normalize=normalize, reduction=reduction)
    name = lambda x: None if x is None else str(x.dtype).replace("torch.", "")  # noqa: E731
    _validate(z1, z2, negatives, labels, negative_labels, hp, name)
    lab = None if labels is None else labels.cpu().numpy()
    nlab = None if negative_labels is None else negative_labels.cpu().numpy()
    dtype = z1.dtype

    def np64(x):
        return None if x is None else x.detach().cpu().double().numpy()

    class _Fn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a, b, *n):
            ctx.save_for_backward(a, b, *n)
            v, _ = _ref((np64(a), np64(b), np64(n[0]) if n else None), lab, nlab, hp)
            return torch.as_tensor(v, dtype=torch.float64).to(dtype)

        @staticmethod
        def backward(ctx, g):
            saved = ctx.saved_tensors
            arrs = (np64(saved[0]), np64(saved[1]), np64(saved[2]) if len(saved) > 2 else None)
            cot = g.detach().cpu().double().numpy()
            _, gr = _ref(arrs, lab, nlab, hp, cot=cot if hp["reduction"] == "none" else float(cot), want_grad=True)
            outs = [gr.z1, gr.z2] + ([gr.negatives] if len(saved) > 2 else [])
            return tuple(torch.as_tensor(o, dtype=torch.float64).to(dtype) for o in outs)

    args = (z1, z2) + (() if negatives is None else (negatives,))
    return _Fn.apply(*args)


# ----------------------------------------------------------------------------------------------------------- jax


def jax_hcl_loss(z1, z2, *, temperature=0.5, beta=1.0, tau_plus=0.1, estimator="hard", clamp=True,
                 normalize=True, negatives=None, labels=None, negative_labels=None, reduction="mean"):
    """The reference as a JAX function (``jax.custom_vjp`` over ``jax.pure_callback``); works under jit."""
    import jax
    import jax.numpy as jnp

    hp = dict(temperature=temperature, beta=beta, tau_plus=tau_plus, estimator=estimator, clamp=clamp,
              normalize=normalize, reduction=reduction)
    name = lambda x: None if x is None else jnp.dtype(x.dtype).name  # noqa: E731
    problem = _validate(z1, z2, negatives, labels, negative_labels, hp, name)
    lab = None if labels is None else np.asarray(labels)
    nlab = None if negative_labels is None else np.asarray(negative_labels)
    dtype = jnp.dtype(z1.dtype)
    out_shape = (problem.n_anchors,) if reduction == "none" else ()
    has_bank = negatives is not None

    def value_cb(*arrs):
        v, _ = _ref(tuple(arrs) + ((None,) if not has_bank else ()), lab, nlab, hp)
        with np.errstate(over="ignore"):  # a result beyond float16's range is inf, as IEEE casting says
            return np.asarray(v, dtype=np.float64).astype(dtype)

    def grad_cb(cot, *arrs):
        c = np.asarray(cot, dtype=np.float64)
        _, g = _ref(tuple(arrs) + ((None,) if not has_bank else ()), lab, nlab, hp,
                    cot=c if reduction == "none" else float(c), want_grad=True)
        outs = [g.z1, g.z2] + ([g.negatives] if has_bank else [])
        with np.errstate(over="ignore"):
            return tuple(np.asarray(o).astype(dtype) for o in outs)

    @jax.custom_vjp
    def f(*arrs):
        return jax.pure_callback(value_cb, jax.ShapeDtypeStruct(out_shape, dtype), *arrs)

    def fwd(*arrs):
        return f(*arrs), arrs

    def bwd(arrs, cot):
        shapes = tuple(jax.ShapeDtypeStruct(a.shape, dtype) for a in arrs)
        return jax.pure_callback(grad_cb, shapes, cot, *arrs)

    f.defvjp(fwd, bwd)
    return f(z1, z2, *(() if not has_bank else (negatives,)))


# ---------------------------------------------------------------------------------------------------- tensorflow


def tf_hcl_loss(z1, z2, *, temperature=0.5, beta=1.0, tau_plus=0.1, estimator="hard", clamp=True,
                normalize=True, negatives=None, labels=None, negative_labels=None, reduction="mean"):
    """The reference as a TensorFlow function (``tf.custom_gradient``); eager mode."""
    import tensorflow as tf

    hp = dict(temperature=temperature, beta=beta, tau_plus=tau_plus, estimator=estimator, clamp=clamp,
              normalize=normalize, reduction=reduction)
    name = lambda x: None if x is None else x.dtype.name  # noqa: E731
    z1, z2 = tf.convert_to_tensor(z1), tf.convert_to_tensor(z2)
    negatives = None if negatives is None else tf.convert_to_tensor(negatives)
    labels = None if labels is None else tf.convert_to_tensor(labels)
    negative_labels = None if negative_labels is None else tf.convert_to_tensor(negative_labels)
    _validate(z1, z2, negatives, labels, negative_labels, hp, name)
    lab = None if labels is None else labels.numpy()
    nlab = None if negative_labels is None else negative_labels.numpy()
    dtype = z1.dtype

    def np64(x: Optional[object]):
        return None if x is None else tf.cast(x, tf.float64).numpy()

    def core(*arrs):
        a = tuple(np64(x) for x in arrs) + ((None,) if len(arrs) == 2 else ())
        v, _ = _ref(a, lab, nlab, hp)

        def grad(g):
            c = tf.cast(g, tf.float64).numpy()
            _, gr = _ref(a, lab, nlab, hp, cot=c if reduction == "none" else float(c), want_grad=True)
            outs = [gr.z1, gr.z2] + ([gr.negatives] if len(arrs) > 2 else [])
            return [tf.cast(tf.constant(o, tf.float64), dtype) for o in outs]

        return tf.cast(tf.constant(v, tf.float64), dtype), grad

    f = tf.custom_gradient(core)
    return f(z1, z2, *(() if negatives is None else (negatives,)))
