r"""The MNIST-1D recipe: methods, presets and the batch stream every method trains on.

Methods (all with temperature t = 0.5, the released code's default; ``clamp=True`` for every ``"hard"`` one)

===============  ===========  ==========  ======  =====================================================
key              estimator    beta        tau+    what it is
===============  ===========  ==========  ======  =====================================================
ntxent           ``"easy"``   -           -       NT-Xent / InfoNCE (SimCLR)
debiased         ``"hard"``   0           0.1     debiased contrastive loss (Chuang et al. 2020)
hard-b0.5        ``"hard"``   0.5         0.1     hard negatives (Robinson et al. 2021)
hard-b1          ``"hard"``   1           0.1     the paper's default beta
hard-b2          ``"hard"``   2           0.1
hard-b6          ``"hard"``   6           0.1
hard-b1-down     ``"hard"``   1 -> 0      0.1     the released code's ``--anneal down`` schedule
===============  ===========  ==========  ======  =====================================================

tau+ = 0.1 is the true class prior (ten balanced classes). The annealed row follows the released code
(docs/hyperparameters.md, "The released beta annealing schedule"): the nine values
``linspace(beta, 0, 9)``, moving to the next after every ``epochs // 9`` epochs, where the first move
keeps beta itself (:func:`released_beta`).

Training: batches of B = 256 signals -> two views each -> 2B = 512 embeddings per step (510 negatives per
anchor); 31 steps per epoch over the 8000 training signals in a fresh order each epoch (the last incomplete
batch dropped); the Adam of :mod:`hardneg.reproduce.recipe` (lr 1e-3, L2 weight decay 1e-6). The
supervised reference row trains the backbone and a linear classifier with cross-entropy on the first view
of the same batches, with the same optimiser and epochs.

Seeds: seed ``s`` fixes the initial weights and the batch stream (order and views); within a seed all
methods share both. Seeds are 0, 1, ..., N-1, never a selection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from .. import recipe
from . import augment

__all__ = ["Method", "METHODS", "Config", "DEFAULT", "QUICK", "released_beta", "batch_list",
           "steps_per_epoch", "ANNEAL_STEPS"]

#: Values of the released annealing schedule (``numpy.linspace(beta, 0, ANNEAL_STEPS)``).
ANNEAL_STEPS = 9


def released_beta(epoch: int, epochs: int, beta: float, n_steps: int = ANNEAL_STEPS) -> float:
    """The beta of the released code's ``--anneal down`` in ``epoch`` (1-based) of ``epochs`` (>= n_steps)."""
    if epochs < n_steps:
        raise ValueError(f"the released annealing needs at least {n_steps} epochs; got {epochs}")
    every = epochs // n_steps
    changes = min((epoch - 1) // every, n_steps)
    return float(beta) if changes == 0 else float(np.linspace(beta, 0.0, n_steps)[changes - 1])


@dataclass(frozen=True)
class Method(recipe.Method):
    """One pre-training objective: the digits recipe's :class:`~hardneg.reproduce.recipe.Method` plus
    ``anneal``; ``anneal="down"``: beta follows :func:`released_beta` from ``beta``."""

    anneal: Optional[str] = None

    def beta_at(self, step: int, per_epoch: int, epochs: int) -> float:
        """beta at training step ``step`` (0-based) of ``epochs * per_epoch``.

        ``anneal="down"`` follows :func:`released_beta` epoch by epoch, as the released code does, when
        there are at least :data:`ANNEAL_STEPS` epochs; shorter runs (``--quick``) apply the same rule to
        steps instead of epochs.
        """
        if self.anneal != "down":
            return self.beta
        if epochs >= ANNEAL_STEPS:
            return released_beta(step // per_epoch + 1, epochs, self.beta)
        return released_beta(step + 1, epochs * per_epoch, self.beta)


METHODS: Tuple[Method, ...] = (
    Method("ntxent", "NT-Xent (SimCLR)", "easy", 0.0, 0.0),
    Method("debiased", "Debiased", "hard", 0.0, 0.1),
    Method("hard-b0.5", "Hard", "hard", 0.5, 0.1),
    Method("hard-b1", "Hard", "hard", 1.0, 0.1),
    Method("hard-b2", "Hard", "hard", 2.0, 0.1),
    Method("hard-b6", "Hard", "hard", 6.0, 0.1),
    Method("hard-b1-down", "Hard, annealed down", "hard", 1.0, 0.1, anneal="down"),
)


@dataclass(frozen=True)
class Config(recipe.Config):
    """Everything that defines an MNIST-1D run (``DEFAULT`` and ``QUICK`` are the CLI's presets): the digits
    recipe's fields (:class:`hardneg.reproduce.recipe.Config`) with this task's methods, plus

    ``supervised``: also train the supervised reference row (same encoder, labels, cross-entropy).
    """

    methods: Tuple[Method, ...] = METHODS
    supervised: bool = True


#: The default run (<= 10 minutes on 2 cores). Chosen for run time (NT-Xent alone, seed 100) before any
#: method was compared; docs/reproduce.md.
DEFAULT = Config(epochs=10, seeds=(0, 1, 2, 3, 4))
#: ``--quick`` (<= 1 minute on 2 cores): fewer epochs and seeds, same everything else.
QUICK = Config(epochs=3, seeds=(0,))


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Full batches per epoch (the last incomplete batch is dropped)."""
    return n // batch_size


def batch_list(signals: np.ndarray, seed: int, epochs: int, batch_size: int
               ) -> List[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The training stream of one seed, materialised so every method of the seed reuses the same arrays.

    Returns
    -------
    list of ``epochs * steps_per_epoch`` triples ``(x1, x2, idx)``: the two views, float32 (B, 40), and the
    int64 (B,) indices of the signals into ``signals`` (the supervised row reads their labels).
    """
    rng = np.random.default_rng([seed, 0x1D])
    n = len(signals)
    per_epoch = steps_per_epoch(n, batch_size)
    if per_epoch < 1:
        raise ValueError(f"batch_size {batch_size} exceeds the {n} training signals")
    out = []
    for _ in range(epochs):
        order = rng.permutation(n)
        for k in range(per_epoch):
            idx = order[k * batch_size: (k + 1) * batch_size]
            v1, v2 = augment.two_views(signals[idx], rng)
            out.append((v1, v2, idx))
    return out
