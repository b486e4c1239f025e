"""Run every method for every seed in one backend and collect the results (JSON-ready).

Per seed: the initial weights and the stream of augmented batches are generated once (NumPy) and reused by
every method, so methods differ only in the loss. Two reference points are evaluated the same way:
the raw pixels (no encoder) and the encoder at its random initialisation (per seed, no training).
"""

from __future__ import annotations

import importlib
import os
import platform
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np

from ..backends import FUNCTION_BACKENDS
from . import data as data_mod
from .encoder import init_params
from .evaluate import eval_views, evaluate_features, evaluate_params
from .progress import Progress
from .recipe import Config, batch_list, steps_per_epoch
from .stats import summarize  # re-exported: one definition for every task

__all__ = ["BACKENDS", "load_backend", "Results", "run_experiment", "summarize", "METRICS"]

BACKENDS = tuple(b.name for b in FUNCTION_BACKENDS)
#: Metric name -> (higher is better?)
METRICS = {"linear_probe": True, "knn": True, "alignment": False, "uniformity": False}


class BackendUnavailable(RuntimeError):
    """The chosen backend (its framework or its ``hardneg_<name>`` package) is not installed."""


def load_backend(name: str):
    """The training module of backend ``name`` (imports the framework and ``hardneg_<name>``)."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {name!r}")
    try:
        return importlib.import_module(f"hardneg.reproduce.train_{name}")
    except ModuleNotFoundError as exc:
        raise BackendUnavailable(
            f"backend {name!r} is not available: {exc}. Install it with: pip install 'hardneg[{name},reproduce]'"
        ) from exc


@dataclass
class Results:
    """Everything one experiment produced.

    ``record`` is the JSON document (see :func:`run_experiment`); ``embeddings`` maps a method key (and
    ``"raw pixels"``) to the held-out representations of seed ``seeds[0]``, with ``labels`` their classes,
    for the projection figure.
    """

    record: Dict[str, Any]
    embeddings: Dict[str, np.ndarray] = field(default_factory=dict)
    labels: Optional[np.ndarray] = None


def _epoch_means(curve: np.ndarray, per_epoch: int) -> List[float]:
    if curve.size == 0:
        return []
    return [float(x) for x in curve.reshape(-1, per_epoch).mean(axis=1)]


def run_experiment(config: Config, backend: str = "torch", *, progress: bool = True) -> Results:
    """Pre-train every method for every seed with ``backend`` and evaluate it.

    Returns
    -------
    Results
        ``record`` holds: ``meta`` (versions, machine, timings), ``config``, ``runs`` (one per method and
        seed: metrics, loss per epoch, seconds), ``baselines`` (raw pixels; random-init encoder per seed) and
        ``summary`` (per method and metric: mean, std over seeds, n, values).
    """
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    # NumPy's and scikit-learn's BLAS work here is small; more than one thread only adds spin-waiting on a
    # shared machine (see hardneg.reproduce.evaluate._one_blas_thread).
    with threadpool_limits(limits=1, user_api="blas"):
        return _run(config, backend, progress)


def _run(config: Config, backend: str, progress: bool) -> Results:
    t_start = time.perf_counter()
    trainer = load_backend(backend)
    t_import = time.perf_counter() - t_start
    digits = data_mod.load()
    views = eval_views(digits.x_test)
    per_epoch = steps_per_epoch(len(digits.x_train), config.batch_size)
    total = len(config.seeds) * len(config.methods) * config.epochs * per_epoch
    bar = Progress(total, enabled=progress)
    results = Results(record={}, labels=digits.y_test)

    # Reference points, evaluated exactly like the trained encoders.
    x_tr = digits.x_train.reshape(len(digits.x_train), -1)
    x_te = digits.x_test.reshape(len(digits.x_test), -1)
    raw = evaluate_features(x_tr, digits.y_train, x_te, digits.y_test, x_te, views[0], views[1], knn_k=config.knn_k)
    results.embeddings["raw pixels"] = x_te
    random_init = []
    for seed in config.seeds:
        metrics, _ = evaluate_params(init_params(seed), digits, views, knn_k=config.knn_k)
        random_init.append(dict(seed=seed, metrics=metrics))

    runs: List[Dict[str, Any]] = []
    train_seconds = 0.0
    for seed in config.seeds:
        params0 = init_params(seed)
        stream = batch_list(digits.x_train, seed, config.epochs, config.batch_size)
        for method in config.methods:
            bar.set_label(f"{method.key} seed {seed}")
            t0 = time.perf_counter()
            params, curve = trainer.train(
                params0,
                stream,
                loss_kwargs=method.loss_kwargs(config.temperature),
                lr=config.lr,
                weight_decay=config.weight_decay,
                adam=config.adam,
                on_step=bar.step,
            )
            t_train = time.perf_counter() - t0
            train_seconds += t_train
            metrics, h_te = evaluate_params(params, digits, views, knn_k=config.knn_k)
            t_eval = time.perf_counter() - t0 - t_train
            if seed == config.seeds[0]:
                results.embeddings[method.key] = h_te
            runs.append(
                dict(
                    method=method.key,
                    seed=seed,
                    metrics=metrics,
                    loss_per_epoch=_epoch_means(curve, per_epoch),
                    train_seconds=t_train,
                    eval_seconds=t_eval,
                )
            )
            bar.run_finished(
                f"{method.key:<10} seed {seed}: linear probe {100 * metrics['linear_probe']:.1f}%  "
                f"kNN {100 * metrics['knn']:.1f}%  ({t_train:.1f} s)"
            )
    bar.close()

    summary = {
        m.key: {name: summarize([r["metrics"][name] for r in runs if r["method"] == m.key]) for name in METRICS}
        for m in config.methods
    }
    baselines = {
        "raw pixels": {name: summarize([raw[name]]) for name in METRICS},
        "random-init encoder": {name: summarize([r["metrics"][name] for r in random_init]) for name in METRICS},
    }
    import hardneg

    results.record = dict(
        meta=dict(
            hardneg_version=hardneg.__version__,
            spec_version=hardneg.SPEC_VERSION,
            backend=backend,
            framework=trainer.framework_version(),
            python=platform.python_version(),
            numpy=np.__version__,
            machine=f"{platform.machine()}, {os.cpu_count()} CPU cores",
            seconds_total=time.perf_counter() - t_start,
            seconds_training=train_seconds,
            seconds_framework_import=t_import,
            n_train=int(len(digits.x_train)),
            n_test=int(len(digits.x_test)),
            steps_per_epoch=per_epoch,
        ),
        config=config.to_json(),
        runs=runs,
        baselines=baselines,
        summary=summary,
    )
    return results
