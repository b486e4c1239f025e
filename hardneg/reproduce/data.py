"""The data: scikit-learn's bundled 8x8 handwritten digits and a fixed train / held-out split.

``sklearn.datasets.load_digits`` ships with scikit-learn (1797 images, 10 balanced classes, UCI ML
hand-written digits test set), so nothing is downloaded. The split is fixed once for everyone
(stratified, 75 % / 25 %, ``random_state=0``) and does not depend on the experiment's seeds: pre-training
uses the training images without labels; the linear probe and kNN are fitted on the training images'
features with their labels and scored on the held-out images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Digits", "load", "SPLIT_SEED", "HELD_OUT_FRACTION"]

#: Seed of the train / held-out split (fixed; independent of the experiment's seeds).
SPLIT_SEED = 0
#: Fraction of the images held out for evaluation.
HELD_OUT_FRACTION = 0.25


@dataclass(frozen=True)
class Digits:
    """The split data set.

    Attributes
    ----------
    x_train, x_test : float32 arrays, shape (N, 8, 8)
        Images with pixel values scaled from 0..16 to [0, 1]. N = 1347 train, 450 held out.
    y_train, y_test : int64 arrays, shape (N,)
        Digit classes 0..9 (used for evaluation only, never for pre-training).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def n_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1


def load() -> Digits:
    """Load the bundled digits and split them (deterministic; no download)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=HELD_OUT_FRACTION, stratify=y, random_state=SPLIT_SEED
    )
    return Digits(np.ascontiguousarray(x_tr), y_tr, np.ascontiguousarray(x_te), y_te)
