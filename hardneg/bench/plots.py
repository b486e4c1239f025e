"""PNG figures of a benchmark run: time and memory against batch size, log-log, one line per implementation.

Uses matplotlib's Agg backend (no display needed); imported only when plots are written.
"""

from __future__ import annotations

import math
import os
from typing import Dict, List

__all__ = ["write_plots"]

# Colour says the framework, line style the kind (solid backend, dashed naive, dotted floor, dash-dot other).
_COLOR = {"torch": "tab:red", "jax": "tab:blue", "tf": "tab:green"}
_STYLE = {"backend": "-", "naive": "--", "floor": ":", "external": "-.", "custom": "-."}
_EXTRA = {"lightly_ntxent": "tab:purple", "pml_ntxent": "tab:brown"}


def _style(impl: str, kind: str, framework: str) -> dict:
    xla = impl.endswith("_xla")
    marker = "^" if impl.startswith("symfloor_") else "s" if xla else "o"  # the two floors share colour and style
    return {"color": _EXTRA.get(impl, _COLOR.get(framework, "tab:gray")), "linestyle": _STYLE.get(kind, "-"),
            "marker": marker, "markerfacecolor": "white" if xla else None}


def _figure(data: dict, estimator: str, metric: str, path: str) -> None:
    figure(data, estimator, metric).savefig(path, dpi=110, bbox_inches="tight")


def figure(data: dict, estimator: str, metric: str):
    """The matplotlib Figure of one plot: a panel per dtype, one legend for all of them below the panels, so
    that it never covers a line (saved with ``bbox_inches="tight"``, which makes room for it)."""
    # A Figure with its own Agg canvas, outside pyplot: no display, no global state, nothing to close.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [m for m in data["measurements"] if m["estimator"] == estimator and m["status"] == "ok"]
    if metric == "memory":
        rows = [m for m in rows if m["kind"] != "floor"]  # the floor's memory is not a target
    dtypes = list(dict.fromkeys(m["dtype"] for m in rows))
    fig = Figure(figsize=(6.0 * max(1, len(dtypes)), 4.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, max(1, len(dtypes)), squeeze=False)
    s = data["settings"]
    for ax, dtype in zip(axes[0], dtypes):
        lines: Dict[str, List[dict]] = {}
        for m in rows:
            if m["dtype"] == dtype:
                lines.setdefault(m["impl"], []).append(m)
        for impl, pts in lines.items():
            pts.sort(key=lambda m: m["batch"])
            xs = [m["batch"] for m in pts]
            if metric == "time":
                ys = [m["median_s"] for m in pts]
            else:
                ys = [max(m["extra_bytes"], 1) / 1e6 for m in pts]  # log axis: clip the noise floor at 1 byte
            ax.plot(xs, ys, label=impl, **_style(impl, pts[0]["kind"], pts[0]["framework"]))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch B (pairs)")
        ax.set_ylabel("forward+backward time per step (s)" if metric == "time"
                      else f"peak memory above B={s['small_batch']} run (MB)")
        ax.set_title(f"{dtype}, estimator={estimator}, d={s['dim']}, {s['device']}")
        ax.grid(True, which="both", alpha=0.3)
    handles = {}
    for ax in axes[0]:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    fig.tight_layout()
    if handles:
        rows = math.ceil(len(handles) / (3 * max(1, len(dtypes))))  # at most 3 entries per panel width
        fig.legend(list(handles.values()), list(handles), loc="upper center", bbox_to_anchor=(0.5, 0.0),
                   ncol=math.ceil(len(handles) / rows), fontsize=8, frameon=False)
    return fig


def write_plots(data: dict, out_dir: str) -> List[str]:
    """Write ``time_<estimator>.png`` and ``memory_<estimator>.png`` into ``out_dir``; return their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for est in dict.fromkeys(m["estimator"] for m in data["measurements"]):
        for metric in ("time", "memory"):
            path = os.path.join(out_dir, f"{metric}_{est}.png")
            _figure(data, est, metric, path)
            paths.append(path)
    return paths
