"""The encoder every backend trains: a small MLP, its initial weights (NumPy) and its NumPy forward pass.

Architecture (SimCLR-style: a backbone whose output ``h`` is evaluated, and a projection head whose output
``z`` the contrastive loss sees)::

    x (64 pixels) -> Linear(64, 256) -> ReLU -> Linear(256, 128) -> ReLU = h   (representation, 128-d)
    h             -> Linear(128, 128) -> ReLU -> Linear(128, 64)        = z   (projection, 64-d)

Initial weights are drawn once in NumPy from the seed, like PyTorch's default ``nn.Linear`` initialisation
(weights and biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))), and loaded into whichever framework trains them,
so every method and backend starts from the same point. Weights are stored as (fan_in, fan_out) float32
arrays; a layer computes ``x @ W + b``.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np

__all__ = ["LAYERS", "REPRESENTATION_LAYERS", "param_names", "init_params", "forward"]

#: (fan_in, fan_out) of each linear layer, in order.
LAYERS: List[Tuple[int, int]] = [(64, 256), (256, 128), (128, 128), (128, 64)]
#: The first REPRESENTATION_LAYERS layers form the backbone (output h); the rest are the projection head.
REPRESENTATION_LAYERS = 2

Params = Dict[str, np.ndarray]


def param_names() -> List[str]:
    """Names of the parameters, in a fixed order: ``w0, b0, w1, b1, ...``."""
    return [f"{kind}{i}" for i in range(len(LAYERS)) for kind in ("w", "b")]


def init_params(seed: int) -> Params:
    """Initial weights for ``seed``: ``{"w0": (64, 256), "b0": (256,), ...}``, float32."""
    rng = np.random.default_rng([seed, 0x1E1])  # a stream separate from the data's
    params: Params = {}
    for i, (fan_in, fan_out) in enumerate(LAYERS):
        bound = 1.0 / np.sqrt(fan_in)
        params[f"w{i}"] = rng.uniform(-bound, bound, size=(fan_in, fan_out)).astype(np.float32)
        params[f"b{i}"] = rng.uniform(-bound, bound, size=(fan_out,)).astype(np.float32)
    return params


def forward(params: Params, x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """NumPy forward pass (the definition the framework versions follow).

    Parameters
    ----------
    params : dict of float arrays
    x : float array, shape (N, 8, 8) or (N, 64)

    Returns
    -------
    h : (N, 128) representation (backbone output, after its ReLU); evaluated by the probes.
    z : (N, 64) projection (head output); what the contrastive loss sees (it L2-normalises z itself).
    """
    a = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    h = a
    n_layers = len(LAYERS)
    for i in range(n_layers):
        a = a @ params[f"w{i}"] + params[f"b{i}"]
        if i < n_layers - 1:
            a = np.maximum(a, 0.0)
        if i == REPRESENTATION_LAYERS - 1:
            h = a
    return h, a
