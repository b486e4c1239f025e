"""Pre-training in TensorFlow, with ``hardneg_tf.hcl_loss`` (imported only when this backend is chosen).

The encoder is :mod:`hardneg.reproduce.encoder`'s MLP in TF ops on ``tf.Variable`` s loaded from the NumPy
initial weights; one ``tf.function`` computes the loss, its gradient (``tf.GradientTape``) and the Adam
update of :mod:`hardneg.reproduce.recipe` (written out: Keras' Adam places epsilon differently and decays
weights decoupled, so it would not be the same recipe).
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np
import tensorflow as tf
from hardneg_tf import hcl_loss

from .encoder import LAYERS, param_names

__all__ = ["NAME", "framework_version", "forward", "loss_and_grads", "train"]

NAME = "tf"


def framework_version() -> str:
    return f"tensorflow {tf.__version__}"


def forward(params, x):
    """The projection z of :func:`hardneg.reproduce.encoder.forward`; ``params`` in ``param_names()`` order."""
    a = x
    last = len(LAYERS) - 1
    for i in range(len(LAYERS)):
        a = tf.matmul(a, params[2 * i]) + params[2 * i + 1]
        if i < last:
            a = tf.nn.relu(a)
    return a


def _loss(params, x1, x2, loss_kwargs):
    z = forward(params, tf.concat([x1, x2], axis=0))
    b = tf.shape(x1)[0] if x1.shape[0] is None else x1.shape[0]
    return hcl_loss(z[:b], z[b:], **loss_kwargs)


def loss_and_grads(params: Dict[str, np.ndarray], x1, x2, loss_kwargs: dict) -> Tuple[float, Dict[str, np.ndarray]]:
    """Loss of one batch and its gradient with respect to every parameter (NumPy in, NumPy out)."""
    names = param_names()
    p = [tf.Variable(params[n]) for n in names]
    with tf.GradientTape() as tape:
        loss = _loss(p, tf.constant(x1), tf.constant(x2), loss_kwargs)
    grads = tape.gradient(loss, p)
    return float(loss.numpy()), {n: g.numpy() for n, g in zip(names, grads)}


def train(
    params0: Dict[str, np.ndarray],
    stream: Iterable[Tuple[np.ndarray, np.ndarray]],
    *,
    loss_kwargs: dict,
    lr: float,
    weight_decay: float,
    adam: dict,
    on_step: Optional[Callable[[], None]] = None,
) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
    """Run the recipe's Adam on every batch of ``stream``; return the final parameters and the loss per step."""
    names = param_names()
    p = [tf.Variable(params0[n]) for n in names]
    m = [tf.Variable(tf.zeros_like(t)) for t in p]
    v = [tf.Variable(tf.zeros_like(t)) for t in p]
    b1, b2, eps = adam["beta1"], adam["beta2"], adam["eps"]

    @tf.function  # graph mode; XLA (jit_compile=True) measured slower here: 17 vs 10.5 ms per step
    def step(k, x1, x2):
        with tf.GradientTape() as tape:
            loss = _loss(p, x1, x2, loss_kwargs)
        grads = tape.gradient(loss, p)
        bc1, bc2 = 1.0 - b1**k, 1.0 - b2**k
        for t, g, mt, vt in zip(p, grads, m, v):
            g = g + weight_decay * t
            mt.assign(b1 * mt + (1.0 - b1) * g)
            vt.assign(b2 * vt + (1.0 - b2) * g * g)
            t.assign_sub(lr * (mt / bc1) / (tf.sqrt(vt / bc2) + eps))
        return loss

    losses: List = []
    for k, (x1, x2) in enumerate(stream, start=1):
        losses.append(step(tf.constant(k, tf.float32), tf.constant(x1), tf.constant(x2)))
        if on_step is not None:
            on_step()
    curve = np.array([float(x) for x in losses], dtype=np.float64)
    return {n: t.numpy().copy() for n, t in zip(names, p)}, curve
