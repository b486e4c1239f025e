"""Pre-training in JAX, with ``hardneg_jax.hcl_loss`` (imported only when this backend is chosen).

The encoder is :mod:`hardneg.reproduce.encoder`'s MLP in ``jax.numpy`` on the NumPy initial weights; one
jitted function computes the loss, its gradient and the Adam update of :mod:`hardneg.reproduce.recipe`
(written out, the same formula as the other backends). float32 throughout (JAX's default).
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from hardneg_jax import hcl_loss

from .encoder import LAYERS, param_names

__all__ = ["NAME", "framework_version", "forward", "loss_and_grads", "train"]

NAME = "jax"


def framework_version() -> str:
    return f"jax {jax.__version__}"


def forward(params, x):
    """The projection z of :func:`hardneg.reproduce.encoder.forward`; ``params`` in ``param_names()`` order."""
    a = x
    last = len(LAYERS) - 1
    for i in range(len(LAYERS)):
        a = a @ params[2 * i] + params[2 * i + 1]
        if i < last:
            a = jax.nn.relu(a)
    return a


def _loss(params, x1, x2, loss_kwargs):
    z = forward(params, jnp.concatenate([x1, x2]))
    b = x1.shape[0]
    return hcl_loss(z[:b], z[b:], **loss_kwargs)


def loss_and_grads(params: Dict[str, np.ndarray], x1, x2, loss_kwargs: dict) -> Tuple[float, Dict[str, np.ndarray]]:
    """Loss of one batch and its gradient with respect to every parameter (NumPy in, NumPy out)."""
    names = param_names()
    p = [jnp.asarray(params[n]) for n in names]
    fn = jax.jit(jax.value_and_grad(partial(_loss, loss_kwargs=loss_kwargs)))  # jitted: eager dispatch is slow
    loss, grads = fn(p, jnp.asarray(x1), jnp.asarray(x2))
    return float(loss), {n: np.asarray(g) for n, g in zip(names, grads)}


_STEPS: Dict[tuple, Callable] = {}


def _make_step(loss_kwargs: dict, lr: float, weight_decay: float, adam: dict):
    # One jitted step per recipe, reused across seeds (compiling it again for each run would cost seconds).
    key = (tuple(sorted(loss_kwargs.items())), lr, weight_decay, tuple(sorted(adam.items())))
    if key not in _STEPS:
        _STEPS[key] = _build_step(loss_kwargs, lr, weight_decay, adam)
    return _STEPS[key]


def _build_step(loss_kwargs: dict, lr: float, weight_decay: float, adam: dict):
    b1, b2, eps = adam["beta1"], adam["beta2"], adam["eps"]

    @jax.jit
    def step(p, m, v, k, x1, x2):
        loss, grads = jax.value_and_grad(partial(_loss, loss_kwargs=loss_kwargs))(p, x1, x2)
        bc1, bc2 = 1.0 - b1**k, 1.0 - b2**k
        new_p, new_m, new_v = [], [], []
        for t, g, mt, vt in zip(p, grads, m, v):
            g = g + weight_decay * t
            mt = b1 * mt + (1.0 - b1) * g
            vt = b2 * vt + (1.0 - b2) * g * g
            new_p.append(t - lr * (mt / bc1) / (jnp.sqrt(vt / bc2) + eps))
            new_m.append(mt)
            new_v.append(vt)
        return new_p, new_m, new_v, loss

    return step


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
    p = [jnp.asarray(params0[n]) for n in names]
    m = [jnp.zeros_like(t) for t in p]
    v = [jnp.zeros_like(t) for t in p]
    step = _make_step(loss_kwargs, lr, weight_decay, adam)
    losses: List = []
    for k, (x1, x2) in enumerate(stream, start=1):
        # k as a float32 array: one compilation for all steps; b**k is then computed in float32 like torch's
        # bias corrections are applied to float32 tensors.
        p, m, v, loss = step(p, m, v, jnp.float32(k), jnp.asarray(x1), jnp.asarray(x2))
        losses.append(loss)
        if on_step is not None:
            on_step()
    curve = np.asarray(jnp.stack(losses), dtype=np.float64) if losses else np.zeros(0)
    return {n: np.array(t) for n, t in zip(names, p)}, curve
