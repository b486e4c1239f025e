"""PyTorch training loops of the MNIST-1D task: contrastive pre-training and the supervised reference row.

Both apply the Adam of :mod:`hardneg.reproduce.recipe` (written out, as in the digits task) to plain leaf
tensors loaded from the NumPy initial weights, on one intra-op thread (see
:func:`hardneg.reproduce.train_torch.train` for the measurement behind that choice).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from hardneg_torch import hcl_loss

from .encoder import REPRESENTATION_DENSE, init_classifier, param_names, torch_forward

__all__ = ["framework_version", "loss_and_grads", "train_contrastive", "train_supervised", "representations"]


def framework_version() -> str:
    return f"torch {torch.__version__}"


def _tensors(params: Dict[str, np.ndarray], names: Sequence[str], dtype=torch.float32) -> Dict[str, torch.Tensor]:
    return {n: torch.tensor(np.asarray(params[n]), dtype=dtype).requires_grad_() for n in names}


def _contrastive_loss(p: Dict[str, torch.Tensor], x1, x2, loss_kwargs: dict) -> torch.Tensor:
    # One pass over both views (the network treats samples independently, so this equals two passes).
    x = torch.from_numpy(np.concatenate([x1, x2])).to(next(iter(p.values())).dtype)
    _, z = torch_forward(p, x)
    b = len(x1)
    return hcl_loss(z[:b], z[b:], **loss_kwargs)


def loss_and_grads(params: Dict[str, np.ndarray], x1, x2, loss_kwargs: dict) -> Tuple[float, Dict[str, np.ndarray]]:
    """Contrastive loss of one batch and its gradient for every encoder parameter, in float32."""
    p = _tensors(params, param_names())
    loss = _contrastive_loss(p, x1, x2, loss_kwargs)
    grads = torch.autograd.grad(loss, list(p.values()))
    return float(loss.detach()), {n: g.numpy() for n, g in zip(p, grads)}


class _Adam:
    """The recipe's Adam with L2 weight decay (``torch.optim.Adam(lr, weight_decay)``'s arithmetic)."""

    def __init__(self, params: List[torch.Tensor], lr: float, weight_decay: float, adam: dict):
        self.p, self.lr, self.wd = params, lr, weight_decay
        self.b1, self.b2, self.eps = adam["beta1"], adam["beta2"], adam["eps"]
        self.m = [torch.zeros_like(t) for t in params]
        self.v = [torch.zeros_like(t) for t in params]
        self.k = 0

    @torch.no_grad()
    def step(self, grads) -> None:
        self.k += 1
        bc1, bc2 = 1.0 - self.b1**self.k, 1.0 - self.b2**self.k
        for t, g, mt, vt in zip(self.p, grads, self.m, self.v):
            g = g + self.wd * t
            mt.mul_(self.b1).add_(g, alpha=1.0 - self.b1)
            vt.mul_(self.b2).addcmul_(g, g, value=1.0 - self.b2)
            t.sub_(self.lr * (mt / bc1) / ((vt / bc2).sqrt() + self.eps))


def _one_thread(fn):
    def wrapped(*args, **kwargs):
        prev = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(prev)

    wrapped.__doc__, wrapped.__name__ = fn.__doc__, fn.__name__
    return wrapped


@_one_thread
def train_contrastive(
    params0: Dict[str, np.ndarray],
    stream: Sequence[Tuple[np.ndarray, np.ndarray, np.ndarray]],
    *,
    loss_kwargs_at: Callable[[int], dict],
    lr: float,
    weight_decay: float,
    adam: dict,
    on_step: Optional[Callable[[], None]] = None,
) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
    """Pre-train the encoder on ``stream`` without labels.

    Parameters
    ----------
    params0 : initial encoder weights (:func:`hardneg.reproduce.mnist1d.encoder.init_params`)
    stream : the ``(x1, x2, idx)`` batches of :func:`hardneg.reproduce.mnist1d.recipe.batch_list`
    loss_kwargs_at : step (0-based) -> ``hcl_loss`` keyword arguments (beta may change during training)

    Returns
    -------
    (final weights as float32 NumPy arrays, loss per step as a float64 array)
    """
    names = param_names()
    p = _tensors(params0, names)
    opt = _Adam(list(p.values()), lr, weight_decay, adam)
    losses: List[torch.Tensor] = []
    for k, (x1, x2, _) in enumerate(stream):
        loss = _contrastive_loss(p, x1, x2, loss_kwargs_at(k))
        opt.step(torch.autograd.grad(loss, list(p.values())))
        losses.append(loss.detach())
        if on_step is not None:
            on_step()
    curve = torch.stack(losses).numpy().astype(np.float64) if losses else np.zeros(0)
    return {n: t.detach().numpy().copy() for n, t in p.items()}, curve


@_one_thread
def train_supervised(
    params0: Dict[str, np.ndarray],
    stream: Sequence[Tuple[np.ndarray, np.ndarray, np.ndarray]],
    labels: np.ndarray,
    *,
    seed: int,
    lr: float,
    weight_decay: float,
    adam: dict,
    on_step: Optional[Callable[[], None]] = None,
) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
    """The supervised reference: backbone + linear classifier, cross-entropy on the first view of each batch.

    Returns the backbone's final weights (the projection head's entries are returned unchanged, unused by
    the evaluation of h) and the loss per step.
    """
    names = param_names()
    p = _tensors(params0, names)
    cls = _tensors(init_classifier(seed), ("cls_w", "cls_b"))
    backbone = [f"dense{i}_" for i in range(REPRESENTATION_DENSE)]
    trained = [t for n, t in p.items() if n.startswith("conv") or n[:7] in backbone] + list(cls.values())
    opt = _Adam(trained, lr, weight_decay, adam)
    y_all = torch.from_numpy(np.array(labels, dtype=np.int64))  # a writable copy (the data are read-only)
    losses: List[torch.Tensor] = []
    for x1, _, idx in stream:
        h = torch_forward(p, torch.from_numpy(x1), head=False)
        loss = F.cross_entropy(h @ cls["cls_w"] + cls["cls_b"], y_all[torch.from_numpy(idx)])
        opt.step(torch.autograd.grad(loss, trained))
        losses.append(loss.detach())
        if on_step is not None:
            on_step()
    curve = torch.stack(losses).numpy().astype(np.float64) if losses else np.zeros(0)
    return {n: t.detach().numpy().copy() for n, t in p.items()}, curve


@_one_thread
@torch.no_grad()
def representations(params: Dict[str, np.ndarray], x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``(h, z)`` of signals ``x`` (N, 40) in float32 PyTorch (for evaluation; equals the NumPy forward
    to float32 rounding, which the tests check)."""
    p = {n: torch.from_numpy(np.asarray(v, dtype=np.float32)) for n, v in params.items()}
    h, z = torch_forward(p, torch.from_numpy(np.array(x, dtype=np.float32)))  # a copy: the data are read-only
    return h.numpy(), z.numpy()
