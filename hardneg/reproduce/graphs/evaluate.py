r"""InfoGraph's evaluation of frozen graph embeddings: an SVC with an inner grid search over C inside an outer
stratified 10-fold cross-validation (as ``evaluate_embedding.svc_classify`` in the released code).

For each of the 10 outer folds, ``GridSearchCV(SVC(), {"C": [1e-3, 1e-2, …, 1e3]}, cv=5)`` (RBF kernel,
``gamma="scale"``, scikit-learn's defaults, as released) is fitted on the other 9 folds and scored on the
held-out fold; the accuracy is the mean over the 10 folds. The released code draws the outer folds at random
(``random_state=None``); here they are drawn from the training seed, so within a seed every method and
reference row is scored on the same folds (a paired comparison) and a run is reproducible.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["svc_accuracy", "C_GRID", "OUTER_FOLDS", "INNER_FOLDS"]

C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3)
OUTER_FOLDS = 10
INNER_FOLDS = 5


def svc_accuracy(x: np.ndarray, y: np.ndarray, seed: int, *, outer_folds: int = OUTER_FOLDS,
                 inner_folds: int = INNER_FOLDS) -> float:
    """Mean outer-fold accuracy of the grid-searched SVC on features ``x`` (G, d) with labels ``y`` (G,).

    ``outer_folds`` / ``inner_folds``: 10 and 5 as released (``--quick`` uses 3 and 2 to save time).

    Non-finite features (a diverged run) give NaN rather than an exception.
    """
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.svm import SVC

    x = np.asarray(x, dtype=np.float64)
    if not np.isfinite(x).all():
        return float("nan")
    outer = StratifiedKFold(n_splits=int(outer_folds), shuffle=True, random_state=int(seed))
    accs = []
    for tr, te in outer.split(x, y):
        clf = GridSearchCV(SVC(), {"C": list(C_GRID)}, cv=int(inner_folds), scoring="accuracy")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # constant-feature warnings of a collapsed encoder
            clf.fit(x[tr], y[tr])
        accs.append(float(np.mean(clf.predict(x[te]) == y[te])))
    return float(np.mean(accs))
