"""Outputs of ``hardneg reproduce``: a markdown table, the JSON record and PNG figures.

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend change).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, Optional

import numpy as np

from .experiment import Results

__all__ = ["markdown", "paired_differences", "write_json", "plot_accuracy_vs_beta", "plot_embeddings",
           "plot_alignment_uniformity", "write_all", "OUTPUT_FILES"]

#: The files :func:`write_all` writes into the output directory.
OUTPUT_FILES = ("results.json", "results.md", "accuracy_vs_beta.png", "embeddings_pca.png",
                "alignment_uniformity.png")


def _beta_str(b: float) -> str:
    return "∞" if math.isinf(b) else f"{b:g}"


def _pm(stat: Dict[str, Any], scale: float = 1.0, digits: int = 1) -> str:
    mean = stat["mean"]
    if mean is None or not math.isfinite(mean):
        return "diverged"
    if stat["n"] > 1:
        return f"{scale * mean:.{digits}f} ± {scale * stat['std']:.{digits}f}"
    return f"{scale * mean:.{digits}f}"


def paired_differences(record: Dict[str, Any], reference: str = "ntxent") -> Dict[str, Dict[str, Dict[str, Any]]]:
    """Per method, accuracy minus the reference method's accuracy on the same seed: mean, std, n.

    Methods share initial weights, data order and views within a seed, so the paired difference cancels
    the seed-to-seed variation the methods have in common.
    """
    from .experiment import summarize

    runs = record["runs"]
    ref = {r["seed"]: r["metrics"] for r in runs if r["method"] == reference}
    out: Dict[str, Dict[str, Dict[str, Any]]] = {}
    for m in record["config"]["methods"]:
        key = m["key"]
        if key == reference or not ref:
            continue
        out[key] = {}
        for name in ("linear_probe", "knn"):
            diffs = [r["metrics"][name] - ref[r["seed"]][name] for r in runs if r["method"] == key and r["seed"] in ref]
            out[key][name] = summarize(diffs)
    return out


def markdown(record: Dict[str, Any]) -> str:
    """The results as a markdown document: the main table, the paired differences, the run's facts."""
    meta, cfg, summary = record["meta"], record["config"], record["summary"]
    seeds = cfg["seeds"]
    seed_txt = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}–{seeds[-1]}"
    lines = [
        f"### hardneg reproduce — backend {meta['backend']} ({meta['framework']})",
        "",
        f"8×8 digits, {meta['n_train']} training images (no labels) / {meta['n_test']} held out; "
        f"{cfg['epochs']} epochs × {meta['steps_per_epoch']} steps, batch {cfg['batch_size']} pairs, "
        f"t = {cfg['temperature']:g}; mean ± std over {len(seeds)} {seed_txt}. "
        "Accuracies of the frozen 128-d representation on the held-out images; "
        "alignment and uniformity (Wang & Isola 2020) of the normalised 64-d embedding, lower is better.",
        "",
        f"| method | estimator | β | τ⁺ | linear probe (%) | kNN, k={cfg['knn_k']} (%) | alignment ↓ | uniformity ↓ |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in cfg["methods"]:
        s = summary[m["key"]]
        easy = m["estimator"] == "easy"
        beta = "–" if easy else _beta_str(m["beta"])
        tau = "–" if easy else f"{m['tau_plus']:g}"
        lines.append(
            f"| {m['label']} | {m['estimator']} | {beta} | {tau} | "
            f"{_pm(s['linear_probe'], 100)} | {_pm(s['knn'], 100)} | "
            f"{_pm(s['alignment'], digits=3)} | {_pm(s['uniformity'], digits=3)} |"
        )
    for name, s in record["baselines"].items():
        lines.append(
            f"| *{name} (no training)* | – | – | – | {_pm(s['linear_probe'], 100)} | {_pm(s['knn'], 100)} | "
            f"{_pm(s['alignment'], digits=3)} | {_pm(s['uniformity'], digits=3)} |"
        )
    diffs = paired_differences(record)
    if diffs and len(seeds) > 1:
        lines += [
            "",
            "Paired difference to NT-Xent on the same seed (same initial weights, data order and views), "
            "in percentage points, mean ± std over seeds:",
            "",
            "| method | β | Δ linear probe (pp) | Δ kNN (pp) |",
            "|---|---|---|---|",
        ]
        for m in cfg["methods"]:
            if m["key"] in diffs:
                d = diffs[m["key"]]
                lines.append(
                    f"| {m['label']} | {_beta_str(m['beta'])} | "
                    f"{_pm(d['linear_probe'], 100, 2)} | {_pm(d['knn'], 100, 2)} |"
                )
    lines += [
        "",
        f"Run: {meta['machine']}, Python {meta['python']}, NumPy {meta['numpy']}, hardneg {meta['hardneg_version']}; "
        f"{meta['seconds_total']:.0f} s in total, of which {meta['seconds_training']:.0f} s training.",
        "",
    ]
    return "\n".join(lines)


def _clean(x: Any) -> Any:
    """JSON-safe copy: non-finite floats become null, NumPy scalars Python numbers."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def write_json(record: Dict[str, Any], path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(_clean(record), f, indent=1, allow_nan=False)
        f.write("\n")


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def plot_accuracy_vs_beta(record: Dict[str, Any], path: str) -> None:
    """Linear-probe and kNN accuracy against beta (tau+ > 0 methods), error bars = std over seeds;
    NT-Xent and the raw pixels as horizontal reference lines, NT-Xent's std over seeds as a shaded band."""
    accuracy_figure(record).savefig(path)


def accuracy_figure(record: Dict[str, Any]):
    """The matplotlib Figure of :func:`plot_accuracy_vs_beta`, legend below the two panels."""
    cfg, summary = record["config"], record["summary"]
    sweep = sorted((m for m in cfg["methods"] if m["estimator"] == "hard"), key=lambda m: m["beta"])
    easy = [m for m in cfg["methods"] if m["estimator"] == "easy"]
    fig = _figure(9.0, 3.6)
    axes = fig.subplots(1, 2)
    for ax, name, title in zip(axes, ("linear_probe", "knn"), ("linear probe", f"kNN (k = {cfg['knn_k']})")):
        if sweep:
            betas = [m["beta"] for m in sweep]
            mean = [100 * _nan(summary[m["key"]][name]["mean"]) for m in sweep]
            std = [100 * summary[m["key"]][name]["std"] for m in sweep]
            ax.errorbar(betas, mean, yerr=std, marker="o", capsize=4, color="C3",
                        label=f"debiased / hard (τ⁺ = {sweep[0]['tau_plus']:g})")
        for m in easy:
            s = summary[m["key"]][name]
            mu, sd = 100 * _nan(s["mean"]), 100 * s["std"]
            ax.axhline(mu, color="C0", ls="--", label=m["label"])
            ax.axhspan(mu - sd, mu + sd, color="C0", alpha=0.15, lw=0, label=f"{m['label']} ± std over seeds")
        raw = record["baselines"].get("raw pixels")
        if raw:
            ax.axhline(100 * _nan(raw[name]["mean"]), color="0.4", ls=":", label="raw pixels")
        ax.set_xlabel("β (hardness)")
        ax.set_ylabel("held-out accuracy (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    n = len(cfg["seeds"])
    fig.suptitle(f"Accuracy vs β — {record['meta']['backend']}, mean ± std over {n} seed{'s' * (n > 1)}", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def _nan(x: Optional[float]) -> float:
    return float("nan") if x is None else float(x)


def _pca2(x: np.ndarray) -> np.ndarray:
    """First two principal components (via SVD of the centred data); sign fixed for reproducible plots."""
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(axis=0)
    if not np.isfinite(x).all():
        return np.full((len(x), 2), np.nan)
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    proj = x @ vt[:2].T
    signs = np.sign(proj[np.argmax(np.abs(proj), axis=0), range(proj.shape[1])])
    return proj * np.where(signs == 0, 1, signs)


def plot_embeddings(results: Results, path: str) -> None:
    """2-D PCA of the held-out representations of each method (first seed) and of the raw pixels,
    coloured by digit class."""
    record = results.record
    labels_of = {m["key"]: (m["label"] if m["estimator"] == "easy" else f"{m['label']} β={_beta_str(m['beta'])}")
                 for m in record["config"]["methods"]}
    keys = [k for k in results.embeddings if k != "raw pixels"]
    keys += ["raw pixels"] if "raw pixels" in results.embeddings else []
    cols = min(4, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig = _figure(3.0 * cols, 3.0 * rows + 0.5)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    y = results.labels
    for ax, key in zip(axes, keys):
        p = _pca2(results.embeddings[key])
        sc = ax.scatter(p[:, 0], p[:, 1], c=y, cmap="tab10", vmin=-0.5, vmax=9.5, s=5, lw=0)
        ax.set_title(labels_of.get(key, key), fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(keys):]:
        ax.axis("off")
    seed = record["config"]["seeds"][0]
    fig.suptitle(f"PCA of held-out representations (seed {seed}), colour = digit class", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.93, 1))
    cax = fig.add_axes((0.94, 0.15, 0.015, 0.7))
    cb = fig.colorbar(sc, cax=cax, ticks=range(10))
    cb.ax.tick_params(labelsize=7)
    fig.savefig(path)


def plot_alignment_uniformity(record: Dict[str, Any], path: str) -> None:
    """Each method's (uniformity, alignment), one point per seed, as in Wang & Isola's figures."""
    fig = _figure(4.8, 3.8)
    ax = fig.subplots()
    for i, m in enumerate(record["config"]["methods"]):
        runs = [r for r in record["runs"] if r["method"] == m["key"]]
        pts = [(r["metrics"]["uniformity"], r["metrics"]["alignment"]) for r in runs]
        pts = np.array([p for p in pts if None not in p], dtype=np.float64).reshape(-1, 2)
        label = m["label"] if m["estimator"] == "easy" else f"{m['label']} β={_beta_str(m['beta'])}"
        ax.scatter(pts[:, 0], pts[:, 1], s=18, color=f"C{i}", label=label)
    ax.set_xlabel("uniformity ↓")
    ax.set_ylabel("alignment ↓")
    ax.set_title("Alignment and uniformity (held-out)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def write_all(results: Results, out_dir: str) -> Dict[str, str]:
    """Write every file of :data:`OUTPUT_FILES` into ``out_dir`` (created if needed); return name -> path."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {name: os.path.join(out_dir, name) for name in OUTPUT_FILES}
    write_json(results.record, paths["results.json"])
    with open(paths["results.md"], "w", encoding="utf-8") as f:
        f.write(markdown(results.record))
    plot_accuracy_vs_beta(results.record, paths["accuracy_vs_beta.png"])
    plot_embeddings(results, paths["embeddings_pca.png"])
    plot_alignment_uniformity(results.record, paths["alignment_uniformity.png"])
    return paths
