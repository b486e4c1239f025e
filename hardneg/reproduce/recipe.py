r"""The recipe: methods, fixed hyper-parameters, and the batch stream every method and backend trains on.

Methods (all with temperature t = 0.5, the released code's default)

============  ===========  =====  ======  ==========================================================
key           estimator    beta   tau+    what it is
============  ===========  =====  ======  ==========================================================
ntxent        ``"easy"``   -      -       NT-Xent / InfoNCE (SimCLR)
debiased      ``"hard"``   0      0.1     debiased contrastive loss (Chuang et al. 2020) = sweep beta 0
hard-b0.5     ``"hard"``   0.5    0.1     hard negatives (Robinson et al. 2021)
hard-b1       ``"hard"``   1      0.1     hard negatives, the paper's default beta
hard-b2       ``"hard"``   2      0.1
hard-b6       ``"hard"``   6      0.1
============  ===========  =====  ======  ==========================================================

The beta sweep is (0, 0.5, 1, 2, 6) at tau+ = 0.1; its beta = 0 point is the debiased method and its beta = 1
point the hard method, so each is trained once. tau+ = 0.1 is also the true class prior of the digits
(10 balanced classes). ``clamp=True`` (the released code's floor on Ng) for every ``"hard"`` method.

Training (fixed before any result was seen; identical for every method and backend)

- batch of B = 256 images -> two views each -> 2B = 512 embeddings per step (negatives: the other 510);
  each epoch visits the training images in a fresh random order, dropping the last incomplete batch
  (5 steps per epoch on the 1347 training images);
- Adam (Kingma & Ba 2015) with L2 weight decay as ``torch.optim.Adam(lr, weight_decay)`` computes it,
  written out in each backend so all three apply the same update to every parameter :math:`\theta`
  at step k = 1, 2, ...:

  .. math::

      g = \nabla_\theta L + \lambda\theta,\quad m \leftarrow \beta_1 m + (1-\beta_1) g,\quad
      v \leftarrow \beta_2 v + (1-\beta_2) g^2,\quad
      \theta \leftarrow \theta - \eta\,\frac{m / (1-\beta_1^k)}{\sqrt{v / (1-\beta_2^k)} + \epsilon}

  with eta = 1e-3, lambda = 1e-6 (the released code's values), beta1 = 0.9, beta2 = 0.999, eps = 1e-8.

Presets: ``DEFAULT`` 150 epochs, seeds 0-4; ``QUICK`` 30 epochs, seeds 0-1 (chosen for run time, before any
method was compared; docs/reproduce.md).

Seeds: seed ``s`` fixes the initial weights (:func:`hardneg.reproduce.encoder.init_params`), the order of
the images and every augmented view (:func:`batches`). Within a seed all methods share all three; the
experiment uses seeds 0, 1, ..., N-1, never a selection.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from . import augment

__all__ = ["Method", "METHODS", "SWEEP_BETAS", "Config", "DEFAULT", "QUICK", "batches", "steps_per_epoch", "ADAM"]


@dataclass(frozen=True)
class Method:
    """One pre-training objective: the ``hcl_loss`` arguments that select it."""

    key: str
    label: str
    estimator: str
    beta: float
    tau_plus: float

    def loss_kwargs(self, temperature: float, beta: Optional[float] = None) -> Dict[str, Any]:
        """Keyword arguments for every backend's ``hcl_loss`` (``estimator="easy"`` ignores beta, tau+);
        ``beta`` overrides the method's (an annealed schedule's value at a step)."""
        if self.estimator == "easy":
            return dict(temperature=temperature, estimator="easy")
        return dict(temperature=temperature, estimator="hard", beta=self.beta if beta is None else float(beta),
                    tau_plus=self.tau_plus, clamp=True)


#: The beta sweep (at tau+ = 0.1).
SWEEP_BETAS: Tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 6.0)

METHODS: Tuple[Method, ...] = (
    Method("ntxent", "NT-Xent (SimCLR)", "easy", 0.0, 0.0),
    Method("debiased", "Debiased", "hard", 0.0, 0.1),
    Method("hard-b0.5", "Hard", "hard", 0.5, 0.1),
    Method("hard-b1", "Hard", "hard", 1.0, 0.1),
    Method("hard-b2", "Hard", "hard", 2.0, 0.1),
    Method("hard-b6", "Hard", "hard", 6.0, 0.1),
)

#: Adam's constants (see the module docstring); lr and weight decay are in :class:`Config`.
ADAM = dict(beta1=0.9, beta2=0.999, eps=1e-8)


@dataclass(frozen=True)
class Config:
    """Everything that defines a run. ``DEFAULT`` and ``QUICK`` are the two presets of the CLI.

    Attributes
    ----------
    epochs : int
        Passes over the 1347 training images.
    seeds : tuple of int
        The seeds 0..N-1 (each: initial weights, data order, views).
    methods : tuple of Method
    batch_size : int
        Pairs per step (B); the loss sees 2B embeddings.
    temperature : float
    lr, weight_decay : float
        Adam's step size and L2 weight decay.
    knn_k : int
        Neighbours of the kNN classifier.
    """

    epochs: int
    seeds: Tuple[int, ...]
    methods: Tuple[Method, ...] = METHODS
    batch_size: int = 256
    temperature: float = 0.5
    lr: float = 1e-3
    weight_decay: float = 1e-6
    knn_k: int = 5
    adam: Dict[str, float] = field(default_factory=lambda: dict(ADAM))

    def with_seeds(self, n: int) -> "Config":
        return replace(self, seeds=tuple(range(int(n))))

    def to_json(self) -> Dict[str, Any]:
        d = asdict(self)
        d["methods"] = [asdict(m) for m in self.methods]
        d["seeds"] = list(self.seeds)
        return d


#: The default run (<= 5 minutes on 2 cores). Chosen for run time alone, before any method was compared.
DEFAULT = Config(epochs=150, seeds=(0, 1, 2, 3, 4))
#: ``--quick`` (<= 1 minute on 2 cores): fewer epochs and seeds, same everything else.
QUICK = Config(epochs=30, seeds=(0, 1))


def steps_per_epoch(n_images: int, batch_size: int) -> int:
    """Full batches per epoch (the last incomplete batch is dropped)."""
    return n_images // batch_size


def batches(images: np.ndarray, seed: int, epochs: int, batch_size: int) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """The training stream of one seed: ``epochs * steps_per_epoch`` pairs of views.

    Parameters
    ----------
    images : float32 array, shape (N, 8, 8)
    seed, epochs, batch_size : int

    Yields
    ------
    (x1, x2) : two float32 arrays, shape (batch_size, 64): the two views of the same images, row by row.
    """
    rng = np.random.default_rng([seed, 0xDA7A])
    n = len(images)
    per_epoch = steps_per_epoch(n, batch_size)
    if per_epoch < 1:
        raise ValueError(f"batch_size {batch_size} exceeds the {n} training images")
    for _ in range(epochs):
        order = rng.permutation(n)
        for k in range(per_epoch):
            idx = order[k * batch_size : (k + 1) * batch_size]
            v1, v2 = augment.two_views(images[idx], rng)
            yield v1.reshape(len(idx), -1), v2.reshape(len(idx), -1)


def batch_list(images: np.ndarray, seed: int, epochs: int, batch_size: int) -> List[Tuple[np.ndarray, np.ndarray]]:
    """:func:`batches` materialised (so every method of a seed reuses the same arrays without regenerating)."""
    return list(batches(images, seed, epochs, batch_size))
