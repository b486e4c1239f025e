"""The 1-D CNN encoder: its architecture, NumPy initialisation, NumPy forward pass and PyTorch forward pass.

Architecture (SimCLR-style: the backbone output ``h`` is evaluated, the projection ``z`` feeds the loss)::

    x (1 x 40) -> Conv1d(1, 16, k=5, pad 2)            -> ReLU  -> 16 x 40
               -> Conv1d(16, 32, k=5, stride 2, pad 2) -> ReLU  -> 32 x 20
               -> Conv1d(32, 32, k=3, stride 2, pad 1) -> ReLU  -> 32 x 10 -> flatten (channel-major) 320
               -> Linear(320, 128)                     -> ReLU  = h  (representation, 128-d)
    h          -> Linear(128, 128) -> ReLU -> Linear(128, 64)   = z  (projection, 64-d)

The supervised reference row trains the same backbone with a linear classifier ``h -> Linear(128, 10)``
instead of the projection head.

Initial weights are drawn once in NumPy from the seed, like PyTorch's defaults for ``nn.Conv1d`` and
``nn.Linear`` (weights and biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = in_channels x kernel for a
convolution), so every method starts from the same point whatever framework state. Convolution weights
are (out, in, kernel) as in ``torch.nn.functional.conv1d`` (a cross-correlation); linear weights are
(fan_in, fan_out) and a layer computes ``x @ W + b``.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np

from .data import SIGNAL_LENGTH

__all__ = ["CONVS", "DENSE", "REPRESENTATION_DENSE", "N_CLASSES", "param_names", "init_params",
           "init_classifier", "forward", "torch_forward"]

#: (in_channels, out_channels, kernel, stride, padding) of each convolution, in order.
CONVS: List[Tuple[int, int, int, int, int]] = [(1, 16, 5, 1, 2), (16, 32, 5, 2, 2), (32, 32, 3, 2, 1)]
#: (fan_in, fan_out) of each linear layer after the convolutions, in order.
DENSE: List[Tuple[int, int]] = [(320, 128), (128, 128), (128, 64)]
#: The first REPRESENTATION_DENSE linear layers belong to the backbone (output h); the rest are the head.
REPRESENTATION_DENSE = 1
#: Classes of the supervised reference row's classifier.
N_CLASSES = 10

Params = Dict[str, np.ndarray]


def _conv_out(length: int, k: int, stride: int, pad: int) -> int:
    return (length + 2 * pad - k) // stride + 1


def _flat_size() -> int:
    length = SIGNAL_LENGTH
    for _, c_out, k, s, p in CONVS:
        length = _conv_out(length, k, s, p)
    return CONVS[-1][1] * length


assert _flat_size() == DENSE[0][0], "CONVS and DENSE disagree on the flattened size"


def param_names() -> List[str]:
    """Parameter names in a fixed order: ``conv0_w, conv0_b, ..., dense0_w, dense0_b, ...``."""
    names = [f"conv{i}_{k}" for i in range(len(CONVS)) for k in ("w", "b")]
    return names + [f"dense{i}_{k}" for i in range(len(DENSE)) for k in ("w", "b")]


def init_params(seed: int) -> Params:
    """Initial weights of the encoder for ``seed`` (float32), in :func:`param_names` order."""
    rng = np.random.default_rng([seed, 0xC41])  # a stream separate from the data's
    params: Params = {}
    for i, (c_in, c_out, k, _, _) in enumerate(CONVS):
        bound = 1.0 / np.sqrt(c_in * k)
        params[f"conv{i}_w"] = rng.uniform(-bound, bound, size=(c_out, c_in, k)).astype(np.float32)
        params[f"conv{i}_b"] = rng.uniform(-bound, bound, size=(c_out,)).astype(np.float32)
    for i, (fan_in, fan_out) in enumerate(DENSE):
        bound = 1.0 / np.sqrt(fan_in)
        params[f"dense{i}_w"] = rng.uniform(-bound, bound, size=(fan_in, fan_out)).astype(np.float32)
        params[f"dense{i}_b"] = rng.uniform(-bound, bound, size=(fan_out,)).astype(np.float32)
    return params


def init_classifier(seed: int) -> Params:
    """Initial weights of the supervised row's linear classifier on h: ``cls_w`` (128, 10), ``cls_b`` (10,)."""
    rng = np.random.default_rng([seed, 0xC1A5])
    fan_in = DENSE[REPRESENTATION_DENSE - 1][1]
    bound = 1.0 / np.sqrt(fan_in)
    return {
        "cls_w": rng.uniform(-bound, bound, size=(fan_in, N_CLASSES)).astype(np.float32),
        "cls_b": rng.uniform(-bound, bound, size=(N_CLASSES,)).astype(np.float32),
    }


def _conv1d(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """(N, C_in, L) * (C_out, C_in, k) cross-correlation with zero padding -> (N, C_out, L_out)."""
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(xp, w.shape[2], axis=2)[:, :, ::stride, :]
    return np.einsum("nclk,ock->nol", win, w, optimize=True) + b[None, :, None]


def forward(params: Params, x: np.ndarray, dtype=np.float32) -> Tuple[np.ndarray, np.ndarray]:
    """NumPy forward pass (the definition the PyTorch version follows).

    Parameters
    ----------
    params : dict of arrays (see :func:`init_params`)
    x : float array, shape (N, 40)
    dtype : the arithmetic's dtype (float32 for evaluation; float64 for the tests' reference)

    Returns
    -------
    h : (N, 128) representation (after its ReLU); evaluated by the probes.
    z : (N, 64) projection; what the contrastive loss sees (it L2-normalises z itself).
    """
    p = {k: np.asarray(v, dtype=dtype) for k, v in params.items()}
    a = np.asarray(x, dtype=dtype).reshape(len(x), 1, -1)
    for i, (_, _, _, stride, pad) in enumerate(CONVS):
        a = np.maximum(_conv1d(a, p[f"conv{i}_w"], p[f"conv{i}_b"], stride, pad), 0.0)
    a = a.reshape(len(a), -1)
    h = a
    for i in range(len(DENSE)):
        a = a @ p[f"dense{i}_w"] + p[f"dense{i}_b"]
        if i < len(DENSE) - 1:
            a = np.maximum(a, 0.0)
        if i == REPRESENTATION_DENSE - 1:
            h = a
    return h, a


def torch_forward(params: Dict[str, "torch.Tensor"], x: "torch.Tensor", *, head: bool = True):  # noqa: F821
    """The same network in PyTorch. ``params`` maps :func:`param_names` to tensors; x is (N, 40).

    Returns ``(h, z)`` with ``head=True``, ``h`` alone with ``head=False`` (the supervised row).
    """
    import torch.nn.functional as F

    a = x.reshape(x.shape[0], 1, -1)
    for i, (_, _, _, stride, pad) in enumerate(CONVS):
        a = F.relu(F.conv1d(a, params[f"conv{i}_w"], params[f"conv{i}_b"], stride=stride, padding=pad))
    a = a.reshape(a.shape[0], -1)
    h = a
    n = len(DENSE) if head else REPRESENTATION_DENSE
    for i in range(n):
        a = a @ params[f"dense{i}_w"] + params[f"dense{i}_b"]
        if i < len(DENSE) - 1:
            a = F.relu(a)
        if i == REPRESENTATION_DENSE - 1:
            h = a
    return (h, a) if head else h
