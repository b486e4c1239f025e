"""``hardneg bench`` as a user meets it: the load warning, ``--help``, and plots whose legends cover no data.

The load is injected (no sleeping, no busy processes) and nothing asserts on a time. The one end-to-end run
uses a NumPy stand-in implementation (the reference's loss and gradient) at B = 8, so it needs no framework.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap

import pytest

from hardneg.bench import cli as bench_cli


def test_no_warning_at_or_below_the_core_count():
    assert bench_cli.load_warning(None, 2, None) is None  # no load average on this system
    assert bench_cli.load_warning(0.3, 2, None) is None
    assert bench_cli.load_warning(2.0, 2, None) is None  # one runnable job per CPU is not overload


def test_warning_above_the_core_count_points_to_threads():
    msg = bench_cli.load_warning(2.5, 2, None)
    assert msg is not None
    assert "2.50" in msg and "2 CPUs" in msg  # the figures that triggered it
    assert "--threads 1" in msg  # the remedy


def test_warning_with_threads_set_does_not_suggest_them_again():
    msg = bench_cli.load_warning(7.0, 4, 1)
    assert msg is not None and "7.00" in msg and "4 CPUs" in msg
    assert "--threads" not in msg


def _bench_help() -> str:
    from hardneg.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices["bench"].format_help()


def _option_help(text: str, option: str) -> str:
    """The help text of ``option`` in argparse's formatted help (up to the next option)."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.strip().startswith(option + " ") or ln.strip() == option)
    out = [lines[start].strip()[len(option):]]
    for ln in lines[start + 1:]:
        if ln.strip().startswith("-") or not ln.strip():
            break
        out.append(ln.strip())
    return " ".join(" ".join(out).split())


@pytest.mark.parametrize(
    "option, words",
    [
        ("--device", ("cpu", "cuda", "memory")),
        ("--budget", ("memory", "8GB", "killed")),
        ("--out", ("directory", "results.json", "plots")),
        ("--threads", ("CPUs", "--threads 1")),
    ],
)
def test_help_describes_the_options(option, words):
    text = _option_help(_bench_help(), option)
    missing = [w for w in words if w not in text]
    assert missing == [], f"hardneg bench --help says of {option} only: {text!r}"


def test_help_mentions_the_load_warning():
    assert "load average" in " ".join(_bench_help().split())


STANDIN = textwrap.dedent("""
    import numpy as np

    import hardneg


    def build(batch, dim, dtype, device, estimator, hp, seed=0):
        # a stand-in implementation: the reference's loss and closed-form gradient, NumPy only
        rng = np.random.default_rng(seed)
        z1, z2 = rng.standard_normal((2, batch, dim))
        return lambda: hardneg.hcl_loss_and_grad(z1, z2, estimator=estimator, **hp)
""")


def test_loaded_machine_is_reported_on_stderr_and_in_the_json(tmp_path, monkeypatch, capsys):
    (tmp_path / "numpy_standin.py").write_text(STANDIN)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setattr(sys, "path", [str(tmp_path)] + sys.path)
    monkeypatch.setattr(bench_cli, "machine_load", lambda: 9.5)  # as if other jobs kept the CPUs busy
    monkeypatch.setattr(bench_cli, "usable_cpus", lambda: 2)
    from hardneg.cli import main

    out = tmp_path / "out"
    rc = main(["bench", "--impl", "numpy_standin:build", "--batch", "8", "--dtype", "float64", "--estimator",
               "hard", "--dim", "4", "--reps", "1", "--small-batch", "4", "--no-max-batch", "--out", str(out)])
    assert rc == 0
    err = capsys.readouterr().err
    assert "load average 9.50 on 2 CPUs" in err and "--threads 1" in err
    load = json.loads((out / "results.json").read_text())["meta"]["load"]
    assert load["load1_start"] == 9.5 and load["cpus"] == 2 and load["threads"] is None
    assert "--threads 1" in load["warning"]


def test_idle_machine_records_no_warning(tmp_path, monkeypatch, capsys):
    (tmp_path / "numpy_standin.py").write_text(STANDIN)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setattr(sys, "path", [str(tmp_path)] + sys.path)
    monkeypatch.setattr(bench_cli, "machine_load", lambda: 0.5)
    monkeypatch.setattr(bench_cli, "usable_cpus", lambda: 2)
    from hardneg.cli import main

    out = tmp_path / "out"
    rc = main(["bench", "--impl", "numpy_standin:build", "--batch", "8", "--dtype", "float64", "--estimator",
               "hard", "--dim", "4", "--reps", "1", "--small-batch", "4", "--no-max-batch", "--out", str(out)])
    assert rc == 0
    assert "loaded" not in capsys.readouterr().err
    assert json.loads((out / "results.json").read_text())["meta"]["load"]["warning"] is None


# ---------------------------------------------------------------------------------------------------------
# plots: the legend is drawn where it covers no data


def _overlaps(fig, legend, axes) -> list:
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = legend.get_window_extent(renderer)
    return [ax.get_title() for ax in axes if box.overlaps(ax.get_window_extent(renderer))]


def _bench_data():
    rows = []
    for dtype in ("float32", "bfloat16"):
        for impl, kind, fw, scale in [("hardneg_torch", "backend", "torch", 1.0),
                                      ("naive_torch", "naive", "torch", 6.0),
                                      ("floor_torch", "floor", "torch", 0.8), ("hardneg_jax", "backend", "jax", 1.1),
                                      ("naive_jax", "naive", "jax", 2.0), ("floor_jax", "floor", "jax", 0.9),
                                      ("hardneg_tf", "backend", "tf", 1.2), ("hardneg_tf_xla", "backend", "tf", 1.0),
                                      ("naive_tf", "naive", "tf", 3.0)]:
            for b in (256, 1024, 4096):
                rows.append(dict(impl=impl, kind=kind, framework=fw, batch=b, dtype=dtype, estimator="hard",
                                 status="ok", median_s=scale * (b / 256) ** 2 * 1e-3, extra_bytes=int(scale * b * 1e4)))
    return {"measurements": rows, "settings": {"small_batch": 16, "dim": 128, "device": "cpu"}}


@pytest.mark.parametrize("metric", ["time", "memory"])
def test_bench_plot_legend_covers_no_panel(metric, tmp_path):
    pytest.importorskip("matplotlib")
    from hardneg.bench.plots import figure, write_plots

    fig = figure(_bench_data(), "hard", metric)
    (legend,) = fig.legends
    assert all(ax.get_legend() is None for ax in fig.axes)
    labels = [t.get_text() for t in legend.get_texts()]
    assert sorted(labels) == sorted({m["impl"] for m in _bench_data()["measurements"]
                                     if metric == "time" or m["kind"] != "floor"})
    assert _overlaps(fig, legend, fig.axes) == []
    # and the saved PNG makes room for it (bbox_inches="tight")
    paths = write_plots(_bench_data(), str(tmp_path))
    assert {os.path.basename(p) for p in paths} == {"time_hard.png", "memory_hard.png"}


def _reproduce_record():
    methods = [dict(key="ntxent", label="NT-Xent", estimator="easy", beta=0.0, tau_plus=0.0)]
    methods += [dict(key=f"hard_{b}", label=f"β = {b}", estimator="hard", beta=b, tau_plus=0.1)
                for b in (0.0, 0.5, 1.0)]
    stat = {"linear_probe": {"mean": 0.9, "std": 0.02}, "knn": {"mean": 0.88, "std": 0.03}}
    # the figure draws 95 % t-intervals from the per-seed runs
    runs = [{"method": m["key"], "seed": s, "metrics": {"linear_probe": 0.9 + 0.01 * s * i, "knn": 0.88 - 0.01 * s}}
            for i, m in enumerate(methods) for s in (0, 1, 2)]
    return {"config": {"methods": methods, "knn_k": 5, "seeds": [0, 1, 2]}, "runs": runs,
            "summary": {m["key"]: stat for m in methods},
            "baselines": {"raw pixels": stat}, "meta": {"backend": "torch"}}


def test_reproduce_plot_has_a_legend_entry_for_the_shaded_band():
    pytest.importorskip("matplotlib")
    from matplotlib.patches import Rectangle

    from hardneg.reproduce.report import accuracy_figure

    fig = accuracy_figure(_reproduce_record())
    (legend,) = fig.legends
    labels = [t.get_text() for t in legend.get_texts()]
    assert any("95 %" in label and "NT-Xent" in label for label in labels), labels
    band_handles = [h for h in legend.legend_handles if isinstance(h, Rectangle)]
    assert band_handles, "the shaded band has no patch in the legend"
    assert _overlaps(fig, legend, fig.axes) == []
