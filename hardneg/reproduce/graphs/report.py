"""Outputs of ``hardneg reproduce --task graphs``: results.md, results.json and the accuracy-vs-β figure.

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend change).
"""

from __future__ import annotations

import math
import os
from typing import Any, Dict

from ..report import _figure, write_json  # the digits and mnist1d tasks' JSON and figure helpers
from ..stats import format_interval
from .experiment import DEGREE_HISTOGRAM, RANDOM_INIT, RANDOM_INIT_BN

__all__ = ["markdown", "accuracy_figure", "write_json", "write_all", "OUTPUT_FILES"]

#: The files :func:`write_all` writes into the output directory.
OUTPUT_FILES = ("results.json", "results.md", "graphs_accuracy_vs_beta.png")


def _pct(stat: Dict[str, Any], digits: int = 1) -> str:
    mean = stat["mean"]
    if mean is None or not math.isfinite(mean):
        return "diverged"
    if stat["n"] > 1:
        return f"{100 * mean:.{digits}f} ± {100 * stat['std']:.{digits}f}"
    return f"{100 * mean:.{digits}f}"


def markdown(record: Dict[str, Any]) -> str:
    """The results as markdown: accuracy table, paired differences with 95 % t-intervals, the run's facts."""
    meta, cfg, summary, paired = record["meta"], record["config"], record["summary"], record["paired"]
    seeds = cfg["seeds"]
    seed_txt = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}–{seeds[-1]}"
    ref = cfg["reference"]
    vr = paired.get("vs_random_init", {})
    rows = cfg.get("reference_rows", [k for k in summary if k not in {m["key"] for m in cfg["methods"]}])
    untrained = cfg.get("untrained_reference")
    lines = [
        f"### hardneg reproduce --task graphs — {meta['framework']}",
        "",
        f"{meta['n_graphs']} synthetic graphs in {len(cfg['families'])} balanced classes (networkx families, edge "
        f"noise {cfg['noise']:g}); InfoGraph (GIN 3 × 32, sum pooling) pre-trained without labels for "
        f"{cfg['epochs']} epochs × {meta['steps_per_epoch']} steps, batch {cfg['batch_size']}, Adam "
        f"{cfg['lr']:g}. Accuracy of an SVC (grid over C, inner {cfg['inner_folds']}-fold) in outer stratified "
        f"{cfg['outer_folds']}-fold CV on the frozen 96-d graph embeddings; mean ± std over {len(seeds)} {seed_txt}.",
        "",
        "| method | convention | β | τ⁺ | SVC accuracy (%) | Δ vs InfoGraph (pp), 95 % CI "
        "| Δ vs random-init, BN from data (pp), 95 % CI |",
        "|---|---|---|---|---|---|---|",
    ]
    vs = paired["vs_reference"]

    def vs_untrained(key):
        if key == untrained:
            return "reference"
        return format_interval(vr[key]) if key in vr else "–"

    for m in cfg["methods"]:
        d = "reference" if m["key"] == ref else format_interval(vs[m["key"]])
        conv = "–" if m["key"] == ref else m["convention"]
        lines.append(f"| {m['label']} | {conv} | {m['beta']:g} | {m['tau_plus']:g} | {_pct(summary[m['key']])} | {d} "
                     f"| {vs_untrained(m['key'])} |")
    for name in rows:
        lines.append(f"| *{name} (no training)* | – | – | – | {_pct(summary[name])} | – | {vs_untrained(name)} |")
    cmr = paired["corrected_minus_released"]
    if cmr:
        lines += ["", "Corrected minus released at the same β (pp, 95 % CI): "
                  + "; ".join(f"β = {b}: {format_interval(p)}" for b, p in cmr.items()) + "."]
    lines += [
        "",
        "Δ: accuracy minus InfoGraph's (or minus the random-init encoder's with BatchNorm statistics estimated "
        "on the data) on the same seed (same initial weights, batches and folds), mean and Student-t 95 % "
        "interval over seeds; ✱ = the interval excludes 0. \"BatchNorm at its initial statistics\": running "
        "mean 0, variance 1, so in eval mode no normalisation; \"estimated on the data\": one no-grad pass in "
        "training mode over training's first-epoch batches, weights untouched (a trained model's statistics "
        "are estimated on the data during training).",
        "",
        f"Run: {meta['machine']}, Python {meta['python']}, NumPy {meta['numpy']}, scikit-learn "
        f"{meta['scikit_learn']}, networkx {meta['networkx']}, hardneg {meta['hardneg_version']}; "
        f"{meta['seconds_total']:.0f} s in total ({meta['seconds_training']:.0f} s training, "
        f"{meta['seconds_evaluation']:.0f} s evaluation).",
        "",
    ]
    return "\n".join(lines)


def accuracy_figure(record: Dict[str, Any]):
    """Two panels against β, one line per convention. Left: SVC accuracy, mean and 95 % t-interval of the
    mean over seeds, with InfoGraph and the three reference rows as horizontal lines. Right: the paired
    difference to InfoGraph on the same seed, mean and its 95 % t-interval (the criterion of the protocol)."""
    from ..stats import paired_t_interval

    cfg, summary, vs = record["config"], record["summary"], record["paired"]["vs_reference"]
    fig = _figure(10.0, 4.0)
    ax, ax2 = fig.subplots(1, 2)
    betas_all = sorted({m["beta"] for m in cfg["methods"]})
    pos = {b: i for i, b in enumerate(betas_all)}  # β = 10 on an even spacing: categorical axis

    def bar(ci):
        hi = ci.get("hi")
        return 100 * (hi - ci["mean"]) if hi is not None and math.isfinite(hi) else 0.0

    for k, conv in enumerate(("released", "corrected")):
        ms = sorted((m for m in cfg["methods"] if m["convention"] == conv and m["key"] != cfg["reference"]),
                    key=lambda m: m["beta"])
        if not ms:
            continue
        xs = [pos[m["beta"]] + (k - 0.5) * 0.08 for m in ms]
        color, label = f"C{3 if conv == 'released' else 0}", f"{conv} (τ⁺ = {ms[0]['tau_plus']:g})"
        cis = [paired_t_interval(summary[m["key"]]["values"]) for m in ms]  # interval of the mean accuracy
        ax.errorbar(xs, [100 * _nan(c["mean"]) for c in cis], yerr=[bar(c) for c in cis], marker="o", capsize=4,
                    color=color, label=label)
        ds = [vs[m["key"]] for m in ms]
        ax2.errorbar(xs, [100 * _nan(d["mean"]) for d in ds], yerr=[bar(d) for d in ds], marker="o", capsize=4,
                     color=color, label=label)
    styles = {cfg["reference"]: ("k", "--", "InfoGraph (β = 0, τ⁺ = 0)"),
              RANDOM_INIT_BN: ("C4", (0, (5, 2, 1, 2)), "random-init, BN stats from data"),
              RANDOM_INIT: ("0.5", ":", "random-init, initial BN stats"),
              DEGREE_HISTOGRAM: ("C2", "-.", "degree histogram")}
    for key, (col, ls, label) in styles.items():
        s = summary.get(key)
        if s and s["mean"] is not None and math.isfinite(s["mean"]):
            ax.axhline(100 * s["mean"], color=col, ls=ls, lw=1, label=label)
    ax2.axhline(0.0, color="k", ls="--", lw=1)
    n = len(cfg["seeds"])
    for a in (ax, ax2):
        a.set_xticks(range(len(betas_all)))
        a.set_xticklabels([f"{b:g}" for b in betas_all])
        a.set_xlabel("β (hardness)")
        a.grid(alpha=0.3)
    ax.set_ylabel(f"SVC accuracy, {cfg['outer_folds']}-fold CV (%)")
    ax.set_title("accuracy (95 % t-interval of the mean)", fontsize=9)
    ax2.set_ylabel("Δ accuracy vs InfoGraph, same seed (pp)")
    ax2.set_title("paired difference to InfoGraph (95 % t-interval)", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"Graphs (InfoGraph, {cfg['epochs']} epochs): {n} seed{'s' * (n > 1)}", fontsize=10)
    fig.tight_layout()
    return fig


def _nan(x) -> float:
    return float("nan") if x is None else float(x)


def write_all(record: Dict[str, Any], out_dir: str) -> Dict[str, str]:
    """Write every file of :data:`OUTPUT_FILES` into ``out_dir`` (created if needed); return name -> path."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {name: os.path.join(out_dir, name) for name in OUTPUT_FILES}
    write_json(record, paths["results.json"])
    with open(paths["results.md"], "w", encoding="utf-8") as f:
        f.write(markdown(record))
    accuracy_figure(record).savefig(paths["graphs_accuracy_vs_beta.png"])
    return paths
