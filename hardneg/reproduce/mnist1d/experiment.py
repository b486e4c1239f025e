"""Run every method for every seed on MNIST-1D (PyTorch) and collect the results (JSON-ready).

The record has the layout of the digits task's (:func:`hardneg.reproduce.experiment.run_experiment`), so
one report code path (:mod:`hardneg.reproduce.report`) renders both: ``meta`` (with ``task="mnist1d"``),
``config``, ``runs``, ``baselines`` and ``summary``. Reference rows, evaluated exactly like the
pre-trained encoders: the raw signal (no encoder), the encoder at its random initialisation (per seed) and
the same encoder trained with labels (per seed; the supervised ceiling).
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any, Dict, List

import numpy as np

from ..evaluate import evaluate_features, knn_accuracy_matmul
from ..experiment import METRICS, BackendUnavailable, Results
from ..progress import Progress
from ..stats import summarize
from . import augment, data as data_mod
from .encoder import init_params
from .recipe import Config, batch_list, steps_per_epoch

__all__ = ["EVAL_VIEWS_SEED", "eval_views", "run_experiment", "RAW", "RANDOM_INIT", "SUPERVISED"]

#: Seed of the held-out views used by the alignment metric (fixed; the same for every run).
EVAL_VIEWS_SEED = 0xE7A1
#: Names of the reference rows in ``record["baselines"]``.
RAW, RANDOM_INIT, SUPERVISED = "raw signal", "random-init encoder", "supervised encoder (labels)"


def eval_views(signals: np.ndarray):
    """The fixed pair of augmented views of ``signals`` used for alignment: (N, 40) float32 each."""
    return augment.two_views(signals, np.random.default_rng(EVAL_VIEWS_SEED))


def _evaluate(trainer, params, d: data_mod.Signals, views, knn_k: int):
    h_tr, _ = trainer.representations(params, d.x_train)
    h_te, z_te = trainer.representations(params, d.x_test)
    _, z1 = trainer.representations(params, views[0])
    _, z2 = trainer.representations(params, views[1])
    return evaluate_features(h_tr, d.y_train, h_te, d.y_test, z_te, z1, z2, knn_k=knn_k, knn=knn_accuracy_matmul), h_te


def _epoch_means(curve: np.ndarray, per_epoch: int) -> List[float]:
    return [float(x) for x in curve.reshape(-1, per_epoch).mean(axis=1)] if curve.size else []


def _beta_changes(method, per_epoch: int, epochs: int) -> List[List[float]]:
    """``[[step, beta], ...]``: the (0-based) steps where beta takes a new value (one entry if constant;
    none for NT-Xent)."""
    if method.estimator == "easy":
        return []
    out: List[List[float]] = []
    for step in range(epochs * per_epoch):
        b = method.beta_at(step, per_epoch, epochs)
        if not out or out[-1][1] != b:
            out.append([step, b])
    return out


def load_trainer():
    try:
        import hardneg_torch  # noqa: F401
        import torch  # noqa: F401
    except ModuleNotFoundError as exc:
        raise BackendUnavailable(
            f"the mnist1d task needs PyTorch: {exc}. Install it with: pip install 'hardneg[torch,reproduce]'"
        ) from exc
    from . import train_torch as train

    return train


def run_experiment(config: Config, *, progress: bool = True) -> Results:
    """Pre-train every method for every seed in PyTorch and evaluate it (see the module docstring).

    Returns
    -------
    Results
        ``record``: ``meta`` (versions, machine, timings, the data's fingerprint), ``config``, ``runs`` (one per
        method and seed: metrics, loss per epoch, seconds), ``baselines`` (the three reference rows) and
        ``summary`` (per method and metric: mean, std over seeds, n, values). ``embeddings``: held-out
        representations of the first seed (and of the raw signal), ``labels`` their classes.
    """
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    with threadpool_limits(limits=1, user_api="blas"):  # see hardneg.reproduce.experiment.run_experiment
        return _run(config, progress)


def _run(config: Config, progress: bool) -> Results:
    t_start = time.perf_counter()
    trainer = load_trainer()
    t_import = time.perf_counter() - t_start
    d = data_mod.load()
    views = eval_views(d.x_test)
    per_epoch = steps_per_epoch(len(d.x_train), config.batch_size)
    n_train_runs = len(config.methods) + int(config.supervised)
    bar = Progress(len(config.seeds) * n_train_runs * config.epochs * per_epoch, enabled=progress)
    results = Results(record={}, labels=np.asarray(d.y_test))

    raw = evaluate_features(d.x_train, d.y_train, d.x_test, d.y_test, d.x_test, views[0], views[1],
                            knn_k=config.knn_k, knn=knn_accuracy_matmul)
    results.embeddings[RAW] = np.asarray(d.x_test)
    references: Dict[str, List[Dict[str, Any]]] = {RANDOM_INIT: [], SUPERVISED: []}
    runs: List[Dict[str, Any]] = []
    train_seconds = 0.0
    for seed in config.seeds:
        params0 = init_params(seed)
        metrics, _ = _evaluate(trainer, params0, d, views, config.knn_k)
        references[RANDOM_INIT].append(dict(seed=seed, metrics=metrics))
        stream = batch_list(d.x_train, seed, config.epochs, config.batch_size)
        for method in config.methods:
            bar.set_label(f"{method.key} seed {seed}")
            t0 = time.perf_counter()
            params, curve = trainer.train_contrastive(
                params0, stream,
                loss_kwargs_at=lambda step, m=method: m.loss_kwargs(
                    config.temperature, m.beta_at(step, per_epoch, config.epochs)),
                lr=config.lr, weight_decay=config.weight_decay, adam=config.adam,
                on_step=bar.step,
            )
            t_train = time.perf_counter() - t0
            train_seconds += t_train
            metrics, h_te = _evaluate(trainer, params, d, views, config.knn_k)
            t_eval = time.perf_counter() - t0 - t_train
            if seed == config.seeds[0]:
                results.embeddings[method.key] = h_te
            runs.append(dict(method=method.key, seed=seed, metrics=metrics,
                             loss_per_epoch=_epoch_means(curve, per_epoch),
                             beta_changes=_beta_changes(method, per_epoch, config.epochs),
                             train_seconds=t_train, eval_seconds=t_eval))
            bar.run_finished(f"{method.key:<12} seed {seed}: linear probe {100 * metrics['linear_probe']:.1f}%  "
                             f"kNN {100 * metrics['knn']:.1f}%  ({t_train:.1f} s)")
        if config.supervised:
            bar.set_label(f"supervised seed {seed}")
            t0 = time.perf_counter()
            params, curve = trainer.train_supervised(params0, stream, d.y_train, seed=seed, lr=config.lr,
                                                     weight_decay=config.weight_decay, adam=config.adam,
                                                     on_step=bar.step)
            t_train = time.perf_counter() - t0
            train_seconds += t_train
            metrics, _ = _evaluate(trainer, params, d, views, config.knn_k)
            references[SUPERVISED].append(dict(seed=seed, metrics=metrics, train_seconds=t_train,
                                               loss_per_epoch=_epoch_means(curve, per_epoch)))
            bar.run_finished(f"{'supervised':<12} seed {seed}: linear probe {100 * metrics['linear_probe']:.1f}%  "
                             f"kNN {100 * metrics['knn']:.1f}%  ({t_train:.1f} s)")
    bar.close()

    summary = {m.key: {name: summarize([r["metrics"][name] for r in runs if r["method"] == m.key]) for name in METRICS}
               for m in config.methods}
    baselines = {RAW: {name: summarize([raw[name]]) for name in METRICS}}
    for name_ref, rows in references.items():
        if rows:
            baselines[name_ref] = {name: summarize([r["metrics"][name] for r in rows]) for name in METRICS}
    import hardneg

    results.record = dict(
        meta=dict(
            task="mnist1d",
            hardneg_version=hardneg.__version__,
            spec_version=hardneg.SPEC_VERSION,
            backend="torch",
            framework=trainer.framework_version(),
            python=platform.python_version(),
            numpy=np.__version__,
            mnist1d=_version("mnist1d"),
            scipy=_version("scipy"),
            machine=f"{platform.machine()}, {os.cpu_count()} CPU cores",
            seconds_total=time.perf_counter() - t_start,
            seconds_training=train_seconds,
            seconds_framework_import=t_import,
            n_train=int(len(d.x_train)),
            n_test=int(len(d.x_test)),
            steps_per_epoch=per_epoch,
            data_args=dict(data_mod.GENERATOR_ARGS),
            data_fingerprint=data_mod.fingerprint(d),
        ),
        config=config.to_json(),
        runs=runs,
        reference_runs={k: v for k, v in references.items() if v},
        baselines=baselines,
        summary=summary,
    )
    return results


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"
