r"""Evaluation of a pre-trained encoder: linear probe, kNN accuracy, alignment and uniformity.

Labels are used here only. The classifiers are fitted on the training images' representations ``h``
(clean images, no augmentation) and scored on the held-out images:

- **linear probe**: features standardised (mean 0, variance 1 per dimension, statistics of the training
  split), then multinomial logistic regression (``sklearn.linear_model.LogisticRegression``, L2, C = 1,
  lbfgs) — the usual "linear evaluation" of self-supervised features;
- **kNN**: majority vote of the ``k`` nearest training representations under cosine similarity
  (``sklearn.neighbors.KNeighborsClassifier``, brute force; ties go to the smaller class label).

Wang & Isola (ICML 2020), "Understanding Contrastive Representation Learning through Alignment and
Uniformity on the Hypersphere", measure the L2-normalised embedding :math:`f(x) = z/\lVert z\rVert` the loss
sees; lower is better for both:

.. math::

    \mathcal{L}_\mathrm{align} = \mathbb{E}_{(x, y)\,\sim\,\mathrm{pos}}\, \lVert f(x) - f(y) \rVert_2^{\alpha}
    \quad(\alpha = 2),\qquad
    \mathcal{L}_\mathrm{uniform} = \log\, \mathbb{E}_{x, y\,\sim\,\mathrm{data}}\, e^{-t \lVert f(x) - f(y) \rVert_2^2}
    \quad(t = 2).

Here the positive pairs are two augmented views of each held-out image (the same views for every method,
:func:`eval_views`), and uniformity averages over all pairs i < j of distinct held-out images (clean).
Uniformity lies in [-4t, 0] = [-8, 0]: 0 when all embeddings coincide, -8 only if every pair were antipodal.
"""

from __future__ import annotations

import math
import warnings
from typing import Dict, Tuple

import numpy as np

from . import augment
from .encoder import forward

__all__ = [
    "EVAL_VIEWS_SEED",
    "l2_normalize",
    "alignment",
    "uniformity",
    "linear_probe_accuracy",
    "knn_accuracy",
    "knn_accuracy_matmul",
    "eval_views",
    "evaluate_features",
    "evaluate_params",
]

#: Seed of the held-out views used by the alignment metric (fixed; the same for every run).
EVAL_VIEWS_SEED = 0xE7A1


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows divided by ``max(||row||_2, eps)`` (a zero row stays zero), in float64."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


def alignment(u1: np.ndarray, u2: np.ndarray, alpha: float = 2.0) -> float:
    r"""Mean of :math:`\lVert u1_i - u2_i \rVert_2^\alpha` over rows (inputs are used as given: normalise first)."""
    d = np.linalg.norm(np.asarray(u1, np.float64) - np.asarray(u2, np.float64), axis=1)
    return float(np.mean(d**alpha))


def uniformity(u: np.ndarray, t: float = 2.0) -> float:
    r""":math:`\log` of the mean of :math:`e^{-t \lVert u_i - u_j \rVert^2}` over all pairs i < j (log-sum-exp).

    Parameters
    ----------
    u : array, shape (N, d), N >= 2
        Embeddings, used as given (normalise first for Wang & Isola's metric).
    t : float, default 2
    """
    u = np.asarray(u, dtype=np.float64)
    n = len(u)
    if n < 2:
        raise ValueError("uniformity needs at least two embeddings")
    sq = np.sum(u * u, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (u @ u.T), 0.0)
    iu = np.triu_indices(n, k=1)
    x = -t * d2[iu]
    m = x.max()
    return float(m + math.log(np.mean(np.exp(x - m))))


def _one_blas_thread():
    """Limit BLAS/OpenMP to one thread: these problems are tiny, and on a busy machine multi-threaded
    BLAS spin-waits (measured: lbfgs on 1347 x 128 features 0.06 s with one thread, 2.6 s with two)."""
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    return threadpool_limits(limits=1)


def linear_probe_accuracy(f_train, y_train, f_test, y_test, *, C: float = 1.0, max_iter: int = 2000) -> float:
    """Held-out accuracy of standardised features + multinomial logistic regression (fraction in [0, 1])."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    with warnings.catch_warnings(), _one_blas_thread():
        # If lbfgs stops at max_iter the probe is still a valid (slightly under-fitted) linear classifier.
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(np.asarray(f_train, np.float64), y_train)
    return float(clf.score(np.asarray(f_test, np.float64), y_test))


def knn_accuracy(f_train, y_train, f_test, y_test, *, k: int = 5) -> float:
    """Held-out accuracy of a k-nearest-neighbour vote under cosine similarity (fraction in [0, 1])."""
    from sklearn.neighbors import KNeighborsClassifier

    clf = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute")
    with _one_blas_thread():
        clf.fit(np.asarray(f_train, np.float64), y_train)
        return float(clf.score(np.asarray(f_test, np.float64), y_test))


def knn_accuracy_matmul(f_train, y_train, f_test, y_test, *, k: int = 5, chunk: int = 1024) -> float:
    """:func:`knn_accuracy` computed with one matrix product per chunk of held-out rows (same classifier).

    Cosine similarity of L2-normalised float64 rows, the ``k`` most similar training rows by
    ``argpartition``, a majority vote with ties going to the smaller class label (as scikit-learn's
    ``KNeighborsClassifier`` with uniform weights). It differs from :func:`knn_accuracy` only where two
    training rows are exactly equally similar at the k-th place (the order among them is arbitrary in
    both). scikit-learn's brute-force cosine path took 2-5 s for 2000 x 8000 rows of 128 features on the
    2-core development machine, this one 0.3-1 s; the MNIST-1D task uses it, the digits task keeps
    :func:`knn_accuracy` (its published numbers were measured with it).
    """
    a = l2_normalize(f_train)
    b = l2_normalize(f_test)
    y_train = np.asarray(y_train, dtype=np.int64)
    n_classes = int(y_train.max()) + 1
    pred = np.empty(len(b), dtype=np.int64)
    with _one_blas_thread():
        for start in range(0, len(b), chunk):
            s = b[start:start + chunk] @ a.T
            nn = np.argpartition(-s, k - 1, axis=1)[:, :k]
            votes = np.zeros((len(s), n_classes), dtype=np.int64)
            np.add.at(votes, (np.repeat(np.arange(len(s)), k), y_train[nn].ravel()), 1)
            pred[start:start + chunk] = votes.argmax(axis=1)  # first maximum = smallest label on ties
    return float(np.mean(pred == np.asarray(y_test)))


def eval_views(images: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The fixed pair of augmented views of ``images`` used for alignment: (N, 64) float32 each."""
    v1, v2 = augment.two_views(images, np.random.default_rng(EVAL_VIEWS_SEED))
    return v1.reshape(len(images), -1), v2.reshape(len(images), -1)


def evaluate_features(
    h_train, y_train, h_test, y_test, z_test, z_view1, z_view2, *, knn_k: int = 5, knn=None
) -> Dict[str, float]:
    """All four metrics from already computed features.

    Parameters
    ----------
    h_train, h_test : (N, D) representations of the clean training / held-out images (for the classifiers)
    z_test : (N_test, d) embeddings of the clean held-out images (for uniformity)
    z_view1, z_view2 : (N_test, d) embeddings of the two held-out views (for alignment)
    knn : the kNN accuracy function (default :func:`knn_accuracy`; :func:`knn_accuracy_matmul` is faster)

    Returns
    -------
    dict with ``linear_probe`` and ``knn`` (accuracies in [0, 1]), ``alignment``, ``uniformity``.
    """
    if not all(np.isfinite(a).all() for a in (h_train, h_test, z_test, z_view1, z_view2)):
        nan = float("nan")  # a diverged run: report it as such rather than crash the experiment
        return dict(linear_probe=nan, knn=nan, alignment=nan, uniformity=nan)
    return dict(
        linear_probe=linear_probe_accuracy(h_train, y_train, h_test, y_test),
        knn=(knn or knn_accuracy)(h_train, y_train, h_test, y_test, k=knn_k),
        alignment=alignment(l2_normalize(z_view1), l2_normalize(z_view2)),
        uniformity=uniformity(l2_normalize(z_test)),
    )


def evaluate_params(params, data, views, *, knn_k: int = 5) -> Tuple[Dict[str, float], np.ndarray]:
    """Evaluate encoder weights (NumPy forward pass): the metrics and the held-out representations h.

    Parameters
    ----------
    params : dict of float32 arrays (see :mod:`hardneg.reproduce.encoder`)
    data : :class:`hardneg.reproduce.data.Digits`
    views : the pair returned by :func:`eval_views` for ``data.x_test``
    """
    h_tr, _ = forward(params, data.x_train)
    h_te, z_te = forward(params, data.x_test)
    _, z1 = forward(params, views[0])
    _, z2 = forward(params, views[1])
    metrics = evaluate_features(h_tr, data.y_train, h_te, data.y_test, z_te, z1, z2, knn_k=knn_k)
    return metrics, h_te
