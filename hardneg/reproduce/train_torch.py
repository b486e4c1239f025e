"""Pre-training in PyTorch, with ``hardneg_torch.hcl_loss`` (imported only when this backend is chosen).

The encoder is :mod:`hardneg.reproduce.encoder`'s MLP written in torch ops on plain leaf tensors loaded
from the NumPy initial weights; the update is the Adam of :mod:`hardneg.reproduce.recipe`, written out so
that every backend applies the same formula.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch
from hardneg_torch import hcl_loss

from .encoder import LAYERS, param_names

__all__ = ["NAME", "framework_version", "forward", "loss_and_grads", "train"]

NAME = "torch"


def framework_version() -> str:
    return f"torch {torch.__version__}"


def forward(params: List[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The projection z of :func:`hardneg.reproduce.encoder.forward`; ``params`` in ``param_names()`` order."""
    a = x
    last = len(LAYERS) - 1
    for i in range(len(LAYERS)):
        a = a @ params[2 * i] + params[2 * i + 1]
        if i < last:
            a = torch.relu(a)
    return a


def _loss(params: List[torch.Tensor], x1: np.ndarray, x2: np.ndarray, loss_kwargs: dict) -> torch.Tensor:
    # One forward pass over both views (the MLP treats rows independently, so this equals two passes).
    z = forward(params, torch.from_numpy(np.concatenate([x1, x2])))
    b = len(x1)
    return hcl_loss(z[:b], z[b:], **loss_kwargs)


def loss_and_grads(params: Dict[str, np.ndarray], x1, x2, loss_kwargs: dict) -> Tuple[float, Dict[str, np.ndarray]]:
    """Loss of one batch and its gradient with respect to every parameter (NumPy in, NumPy out)."""
    names = param_names()
    p = [torch.tensor(params[n]).requires_grad_() for n in names]
    loss = _loss(p, x1, x2, loss_kwargs)
    grads = torch.autograd.grad(loss, p)
    return float(loss.detach()), {n: g.numpy() for n, g in zip(names, grads)}


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
    """Run the recipe's Adam on every batch of ``stream``; return the final parameters and the loss per step.

    Runs torch on one intra-op thread (restored afterwards): the tensors are small, and on a busy 2-core
    machine torch's two OpenMP threads spin-wait for each other (measured 136-222 ms per step with two
    threads, 13-16 ms with one, same machine and load).
    """
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(params0, stream, loss_kwargs=loss_kwargs, lr=lr, weight_decay=weight_decay, adam=adam,
                      on_step=on_step)
    finally:
        torch.set_num_threads(prev_threads)


def _train(params0, stream, *, loss_kwargs, lr, weight_decay, adam, on_step):
    names = param_names()
    p = [torch.tensor(params0[n]).requires_grad_() for n in names]
    m = [torch.zeros_like(t) for t in p]
    v = [torch.zeros_like(t) for t in p]
    b1, b2, eps = adam["beta1"], adam["beta2"], adam["eps"]
    losses: List[torch.Tensor] = []
    for k, (x1, x2) in enumerate(stream, start=1):
        loss = _loss(p, x1, x2, loss_kwargs)
        grads = torch.autograd.grad(loss, p)
        bc1, bc2 = 1.0 - b1**k, 1.0 - b2**k
        with torch.no_grad():
            for t, g, mt, vt in zip(p, grads, m, v):
                g = g + weight_decay * t
                mt.mul_(b1).add_(g, alpha=1.0 - b1)
                vt.mul_(b2).addcmul_(g, g, value=1.0 - b2)
                t.sub_(lr * (mt / bc1) / ((vt / bc2).sqrt() + eps))
        losses.append(loss.detach())
        if on_step is not None:
            on_step()
    curve = torch.stack(losses).numpy().astype(np.float64) if losses else np.zeros(0)
    return {n: t.detach().numpy().copy() for n, t in zip(names, p)}, curve
