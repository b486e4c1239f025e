r"""The graphs experiment: methods, presets, training loop, evaluation, the JSON record.

Methods (``hardneg_torch.jsd_loss`` arguments; the loss is InfoGraph's local–global estimator)

===============  ===========  ======  ======  ==========================================================
key              convention   beta    tau+    what it is
===============  ===========  ======  ======  ==========================================================
infograph        released     0       0       upstream InfoGraph's JSD (both conventions equal it here)
released-b0      released     0       0.5     the released HCL code's ``JSD_hard`` at its β loop, τ⁺ as
released-b1      released     1       0.5     released (never passed, so 0.5)
released-b2      released     2       0.5
released-b10     released     10      0.5
corrected-b0     corrected    0       0.125   the paper's construction: debiased (τ⁺ = class prior 1/8)
corrected-b1     corrected    1       0.125   hard negatives, weights tilted towards high scores
corrected-b2     corrected    2       0.125
corrected-b10    corrected    10      0.125
===============  ===========  ======  ======  ==========================================================

τ⁺ for ``corrected``: docs/graphs.md advises τ⁺ = the class prior of the data, the probability that a
negative graph shares the anchor's class; the data set has 8 balanced classes, so τ⁺ = 1/8.

Reference for the paired differences: ``infograph`` (β = 0, τ⁺ = 0), the method the hard-negative versions
modify. Secondary comparison: ``corrected`` minus ``released`` at each β.

Reference rows (no training; evaluated like the methods, same seeds and folds):

- ``degree histogram``: counts of degree 0 … 32 per graph, no encoder.
- :data:`RANDOM_INIT_BN` (the fair untrained encoder): the model of seed ``s`` at its initial weights, with
  every BatchNorm's running statistics estimated on the data by :func:`calibrate_batchnorm` — one no-grad
  training-mode pass over the batches training's first epoch sees, weights untouched. Every method is also
  compared with it, per seed (``paired["vs_random_init"]``): does pre-training beat an untrained encoder?
- :data:`RANDOM_INIT` : the same initial weights with BatchNorm at its *initial* running statistics (mean 0,
  variance 1: in eval mode an identity, i.e. no normalisation at all). This was the only random-init row
  first published; it is kept to show how much BatchNorm calibration alone is worth. A trained model's
  running statistics have seen the data (training updates them with momentum 0.1), so comparing it with
  this row credits pre-training with the calibration.

Training (the released graph code's settings, scaled down in epochs for a CPU): batch 128 graphs, Adam
with learning rate 1e-3 (no weight decay), a fresh random order of the graphs every epoch (the last, smaller
batch kept, as PyTorch Geometric's DataLoader does). Seed ``s`` fixes the initial weights, the batch order and
the evaluation folds; within a seed all methods share all three, so they differ only in the loss. torch
runs on one thread (deterministic; faster on a busy 2-core machine).
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, List, Tuple

import numpy as np

from ..progress import Progress
from ..stats import paired_t_interval, summarize
from . import data as data_mod
from . import evaluate

__all__ = ["GraphMethod", "METHODS", "REFERENCE", "Config", "DEFAULT", "QUICK", "run_experiment", "BETAS",
           "TAU_CORRECTED", "DEGREE_HISTOGRAM", "RANDOM_INIT", "RANDOM_INIT_BN", "REFERENCE_ROWS",
           "calibrate_batchnorm", "calibrated_random_init"]

BETAS: Tuple[float, ...] = (0.0, 1.0, 2.0, 10.0)
TAU_RELEASED = 0.5
TAU_CORRECTED = 1.0 / len(data_mod.FAMILIES)


@dataclass(frozen=True)
class GraphMethod:
    key: str
    label: str
    convention: str
    beta: float
    tau_plus: float

    def loss_kwargs(self) -> Dict[str, Any]:
        return dict(beta=self.beta, tau_plus=self.tau_plus, convention=self.convention)


METHODS: Tuple[GraphMethod, ...] = (
    (GraphMethod("infograph", "InfoGraph (JSD)", "released", 0.0, 0.0),)
    + tuple(GraphMethod(f"released-b{b:g}", "released", "released", b, TAU_RELEASED) for b in BETAS)
    + tuple(GraphMethod(f"corrected-b{b:g}", "corrected", "corrected", b, TAU_CORRECTED) for b in BETAS)
)
REFERENCE = "infograph"

#: The reference rows (no training), as they appear in ``record["baselines"]`` and the tables.
DEGREE_HISTOGRAM = "degree histogram"
RANDOM_INIT = "random-init encoder, BatchNorm at its initial statistics"
RANDOM_INIT_BN = "random-init encoder, BatchNorm statistics estimated on the data"
REFERENCE_ROWS: Tuple[str, ...] = (DEGREE_HISTOGRAM, RANDOM_INIT, RANDOM_INIT_BN)


@dataclass(frozen=True)
class Config:
    """Everything that fixes a run's numbers (besides the library versions)."""

    epochs: int
    seeds: Tuple[int, ...]
    outer_folds: int = evaluate.OUTER_FOLDS
    inner_folds: int = evaluate.INNER_FOLDS
    batch_size: int = 128
    lr: float = 1e-3
    per_class: int = data_mod.PER_CLASS
    noise: float = data_mod.NOISE
    data_seed: int = data_mod.DATA_SEED
    methods: Tuple[GraphMethod, ...] = field(default=METHODS)

    def with_seeds(self, n: int) -> "Config":
        return replace(self, seeds=tuple(range(int(n))))

    def to_json(self) -> Dict[str, Any]:
        d = asdict(self)
        d["seeds"] = list(self.seeds)
        d["methods"] = [asdict(m) for m in self.methods]
        d["reference"] = REFERENCE
        d["reference_rows"] = list(REFERENCE_ROWS)
        d["untrained_reference"] = RANDOM_INIT_BN
        d["families"] = list(data_mod.FAMILIES)
        d["c_grid"] = list(evaluate.C_GRID)
        return d


#: Presets, fixed for run time before any method was compared (docs/reproduce.md, "Graphs").
DEFAULT = Config(epochs=20, seeds=tuple(range(5)))
QUICK = Config(epochs=3, seeds=(0, 1), outer_folds=3, inner_folds=2)


def batch_order(n: int, seed: int, epochs: int, batch_size: int) -> List[np.ndarray]:
    """The graph indices of every step: a fresh permutation per epoch, cut into batches (the last smaller;
    a final batch of one graph is dropped, as the estimator needs at least two graphs)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(epochs):
        perm = rng.permutation(n)
        out += [b for b in np.array_split(perm, range(batch_size, n, batch_size)) if len(b) >= 2]
    return out


def _tensors(data, idx):
    import torch

    ei, b, n = data_mod.collate(data, idx)
    return torch.as_tensor(ei), torch.as_tensor(b), n, len(idx)


def embed(model, data) -> np.ndarray:
    """Frozen graph embeddings (G, 96) of every graph, encoder in eval mode (BatchNorm running statistics)."""
    import torch

    model.eval()
    with torch.no_grad():
        g, _ = model.encoder(*_tensors(data, np.arange(len(data))))
    return g.double().numpy()


def calibrate_batchnorm(model, stream):
    r"""Estimate the encoder's BatchNorm running statistics on the data, weights untouched; return ``model``.

    Every ``BatchNorm1d`` of ``model.encoder`` is reset (running mean 0, variance 1, count 0) and switched to
    a cumulative average (``momentum=None``); then the encoder runs once, in training mode and without
    gradients, over the batches ``stream`` (tuples ``(edge_index, batch, num_nodes, num_graphs)``, as
    :func:`train` takes). In training mode each BatchNorm normalises with its batch's statistics (as training
    does) and accumulates, over the K batches,

    .. math::  \hat\mu = \frac1K \sum_k \mu_k, \qquad
               \hat\sigma^2 = \frac1K \sum_k \frac{n_k}{n_k - 1}\, \sigma_k^2 ,

    with :math:`\mu_k, \sigma_k^2` the mean and (biased) variance of that BatchNorm's input over the
    :math:`n_k` nodes of batch k (PyTorch's cumulative moving average; the running variance is the unbiased
    one). No parameter changes (no optimizer, no gradient); the momentum and the train / eval mode are
    restored afterwards. This is what an untrained encoder needs before it is embedded in eval mode: at
    initialisation the running statistics are mean 0 and variance 1, so eval-mode BatchNorm does not
    normalise at all, while a trained model's statistics have been estimated on the data during training.
    """
    import torch

    bns = [m for m in model.encoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    was_training = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    try:
        model.encoder.train()
        with torch.no_grad():
            for ei, b, n, g in stream:
                model.encoder(ei, b, n, g)
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        model.train(was_training)
    return model


def calibrated_random_init(data, seed: int, batch_size: int = 128, dtype=None):
    """The reference row :data:`RANDOM_INIT_BN`: ``build_model(seed)`` with its BatchNorm statistics estimated
    by :func:`calibrate_batchnorm` on the batches of training's first epoch for this seed
    (``batch_order(len(data), seed, 1, batch_size)``, the same graphs in the same order as every method's
    first epoch), one pass."""
    import torch

    from .model_torch import build_model

    model = build_model(seed, torch.float32 if dtype is None else dtype)
    stream = [_tensors(data, idx) for idx in batch_order(len(data), seed, 1, batch_size)]
    return calibrate_batchnorm(model, stream)


def train(model, stream, method: GraphMethod, lr: float, on_step=None) -> List[float]:
    """Train ``model`` in place on the batches ``stream``; return the loss of every step."""
    import torch

    import hardneg_torch

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    kw = method.loss_kwargs()
    for ei, b, n, g in stream:
        local, graph = model(ei, b, n, g)
        loss = hardneg_torch.jsd_loss(local, graph, b, **kw)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step()
    return losses


def _svc(x, y, seed, cfg: Config) -> float:
    return evaluate.svc_accuracy(x, y, seed, outer_folds=cfg.outer_folds, inner_folds=cfg.inner_folds)


def run_experiment(cfg: Config, *, progress: bool = True) -> Dict[str, Any]:
    """Train every method for every seed and evaluate it; return the JSON-ready record.

    Record: ``meta`` (versions, machine, timings), ``config``, ``runs`` (method, seed, accuracy, loss per
    epoch, seconds), ``baselines`` (per seed, the :data:`REFERENCE_ROWS`: degree histogram, random-init
    encoder with initial and with data-estimated BatchNorm statistics), ``summary`` (per method and reference
    row: mean, std, n, values) and ``paired``, each a 95 % t-interval of per-seed differences:
    ``vs_reference`` (method minus InfoGraph), ``corrected_minus_released`` (at each β) and
    ``vs_random_init`` (every method and the other two reference rows minus :data:`RANDOM_INIT_BN`).
    """
    import torch
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            return _run(cfg, progress)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: Config, progress: bool) -> Dict[str, Any]:
    import torch

    import hardneg

    from .model_torch import build_model

    t_start = time.perf_counter()
    data = data_mod.make_dataset(cfg.per_class, cfg.noise, cfg.data_seed)
    y = data.labels
    streams = {s: batch_order(len(data), s, cfg.epochs, cfg.batch_size) for s in cfg.seeds}
    per_epoch = len(streams[cfg.seeds[0]]) // cfg.epochs
    bar = Progress(sum(len(v) for v in streams.values()) * len(cfg.methods), enabled=progress)

    t0 = time.perf_counter()
    hist = data_mod.degree_histogram(data)
    baselines: Dict[str, List[Dict[str, Any]]] = {name: [] for name in REFERENCE_ROWS}
    for s in cfg.seeds:
        baselines[DEGREE_HISTOGRAM].append(dict(seed=s, accuracy=_svc(hist, y, s, cfg)))
        baselines[RANDOM_INIT].append(dict(seed=s, accuracy=_svc(embed(build_model(s), data), y, s, cfg)))
        calibrated = calibrated_random_init(data, s, cfg.batch_size)
        baselines[RANDOM_INIT_BN].append(dict(seed=s, accuracy=_svc(embed(calibrated, data), y, s, cfg)))
    t_baselines = time.perf_counter() - t0

    runs: List[Dict[str, Any]] = []
    for s in cfg.seeds:
        init = build_model(s).state_dict()
        stream = [_tensors(data, idx) for idx in streams[s]]
        for m in cfg.methods:
            bar.set_label(f"{m.key} seed {s}")
            model = build_model(s)
            model.load_state_dict(init)
            t0 = time.perf_counter()
            losses = train(model, stream, m, cfg.lr, on_step=bar.step)
            t_train = time.perf_counter() - t0
            acc = _svc(embed(model, data), y, s, cfg)
            t_eval = time.perf_counter() - t0 - t_train
            curve = np.asarray(losses)
            runs.append(dict(
                method=m.key, seed=s, accuracy=acc,
                loss_per_epoch=[float(v) for v in curve[: per_epoch * cfg.epochs].reshape(cfg.epochs, -1).mean(1)],
                final_loss_finite=bool(np.isfinite(curve).all()),
                train_seconds=t_train, eval_seconds=t_eval,
            ))
            bar.run_finished(f"{m.key:<14} seed {s}: SVC accuracy {100 * acc:.1f}%  ({t_train:.1f} s + {t_eval:.1f} s)")
    bar.close()

    def acc_of(key):
        return {r["seed"]: r["accuracy"] for r in runs if r["method"] == key}

    summary = {m.key: summarize([r["accuracy"] for r in runs if r["method"] == m.key]) for m in cfg.methods}
    for name, rows in baselines.items():
        summary[name] = summarize([r["accuracy"] for r in rows])
    ref = acc_of(REFERENCE)
    paired: Dict[str, Any] = {"vs_reference": {}, "corrected_minus_released": {}, "vs_random_init": {}}
    for m in cfg.methods:
        if m.key != REFERENCE:
            a = acc_of(m.key)
            paired["vs_reference"][m.key] = paired_t_interval([a[s] - ref[s] for s in cfg.seeds])
    keys = {m.key for m in cfg.methods}
    for b in BETAS:
        kc, kr = f"corrected-b{b:g}", f"released-b{b:g}"
        if kc in keys and kr in keys:
            c, r = acc_of(kc), acc_of(kr)
            paired["corrected_minus_released"][f"{b:g}"] = paired_t_interval([c[s] - r[s] for s in cfg.seeds])
    # Does pre-training beat an untrained encoder whose BatchNorm has seen the data? Same seed, same folds.
    base = {row["seed"]: row["accuracy"] for row in baselines[RANDOM_INIT_BN]}
    for key in [m.key for m in cfg.methods] + [n for n in REFERENCE_ROWS if n != RANDOM_INIT_BN]:
        a = acc_of(key) if key in keys else {row["seed"]: row["accuracy"] for row in baselines[key]}
        paired["vs_random_init"][key] = paired_t_interval([a[s] - base[s] for s in cfg.seeds])

    import networkx
    import sklearn

    return dict(
        meta=dict(
            task="graphs",
            hardneg_version=hardneg.__version__,
            spec_version=hardneg.SPEC_VERSION,
            backend="torch",
            framework=f"torch {torch.__version__}",
            networkx=networkx.__version__,
            scikit_learn=sklearn.__version__,
            python=platform.python_version(),
            numpy=np.__version__,
            machine=f"{platform.machine()}, {os.cpu_count()} CPU cores",
            seconds_total=time.perf_counter() - t_start,
            seconds_training=sum(r["train_seconds"] for r in runs),
            seconds_evaluation=sum(r["eval_seconds"] for r in runs) + t_baselines,
            n_graphs=len(data),
            n_nodes=int(data.sizes.sum()),
            n_edges=int(sum(len(e) for e in data.edges)),
            steps_per_epoch=per_epoch,
        ),
        config=cfg.to_json(),
        runs=runs,
        baselines=baselines,
        summary=summary,
        paired=paired,
    )
