"""The headline comparison of issues 4-6 for one framework: backend vs naive vs floor, one run, with targets.

Used by ``benchmarks/bench_{torch,jax,tf}.py``; each measurement is still its own process (the harness).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import List, Tuple

from . import impls as _impls
from .harness import Harness, Settings, format_bytes, parse_bytes

__all__ = ["TARGETS", "compare", "main"]

# (implementation, baseline, quantity, bound): quantity "speedup" = baseline time / time (>= bound),
# "x floor" = time / floor time (<= bound), "memory" = extra memory / baseline's (<= bound).
TARGETS = {
    "torch": [("hardneg_torch", "naive_torch", "speedup", 4.0), ("hardneg_torch", "floor_torch", "x floor", 2.5),
              ("hardneg_torch", "naive_torch", "memory", 0.1),
              ("hardneg_torch_cross", "naive_torch_cross", "speedup", 4.0),
              ("hardneg_torch_cross", "naive_torch_cross", "memory", 0.1)],
    "jax": [("hardneg_jax", "naive_jax", "speedup", 1.0), ("hardneg_jax", "floor_jax", "x floor", 2.5),
            ("hardneg_jax", "naive_jax", "memory", 0.1),
            ("hardneg_jax_cross", "naive_jax_cross", "speedup", 1.0),
            ("hardneg_jax_cross", "naive_jax_cross", "memory", 0.1)],
    "tf": [("hardneg_tf", "naive_tf_xla", "speedup", 0.8), ("hardneg_tf", "naive_tf", "speedup", 1.0),
           ("hardneg_tf", "naive_tf_xla", "memory", 0.1),
           ("hardneg_tf_xla", "naive_tf_xla", "speedup", 0.8), ("hardneg_tf_xla", "naive_tf", "speedup", 1.0),
           ("hardneg_tf_xla", "naive_tf_xla", "memory", 0.1),
           ("hardneg_tf_cross_xla", "naive_tf_cross_xla", "speedup", 1.0),
           ("hardneg_tf_cross_xla", "naive_tf_cross_xla", "memory", 0.1)],
}
ORDER = {
    "torch": ["floor_torch", "symfloor_torch", "naive_torch", "hardneg_torch",
              "hardneg.bench.naive_torch:build_floor_cross",
              "naive_torch_cross", "hardneg_torch_cross"],
    "jax": ["floor_jax", "symfloor_jax", "naive_jax", "hardneg_jax", "naive_jax_cross", "hardneg_jax_cross"],
    "tf": ["floor_tf", "symfloor_tf", "naive_tf_xla", "naive_tf", "hardneg_tf", "hardneg_tf_xla", "naive_tf_cross_xla",
           "hardneg_tf_cross_xla"],
}


def _ratio(a: dict, b: dict, quantity: str, stat: str = "median_s"):
    if not a or not b or a["status"] != "ok" or b["status"] != "ok":
        return None
    if quantity == "speedup":
        return b[stat] / a[stat]
    if quantity == "x floor":
        return a[stat] / b[stat]
    if not b["extra_bytes"] or b["extra_bytes"] <= 0 or a["extra_bytes"] is None:
        return None
    return a["extra_bytes"] / b["extra_bytes"]


def _pool(rows: List[dict]) -> dict:
    """One implementation's rounds as one measurement: all repetitions pooled, the largest memory of any round."""
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return rows[-1]
    times = sorted(t for r in ok for t in r["times_s"])
    out = dict(ok[0], times_s=times, median_s=statistics.median(times), min_s=times[0], max_s=times[-1],
               extra_bytes=max(r["extra_bytes"] for r in ok), rounds=len(ok))
    if len(ok) < len(rows):
        out["message"] = f"{len(rows) - len(ok)} of {len(rows)} rounds failed"
    return out


def compare(framework: str, *, batch: int = 4096, dim: int = 128, dtype: str = "float32", reps: int = 3,
            rounds: int = 3, budget: int = 16 * 10**9, estimator: str = "hard",
            large: List[int] = (), threads=None) -> Tuple[Harness, List[str]]:
    """Measure the framework's floor, naive baseline(s) and backend at one batch; return the harness and report lines.

    ``rounds`` times, each implementation runs in a fresh process, in an order rotated every round, so that
    a load that comes and goes on a shared machine falls on all of them alike; the repetitions of all rounds
    are pooled (median, min, max) and the memory is the largest of the rounds.
    """
    h = Harness(Settings(dim=dim, reps=reps, budget_bytes=budget, max_s=120.0, threads=threads))
    lines: List[str] = []
    names = []
    for n in ORDER[framework]:
        msg = _impls.availability(_impls.get(n))
        if msg:
            lines.append(msg)
        else:
            names.append(n)
    per: dict = {n: [] for n in names}
    for r in range(max(1, rounds)):
        order = names[r % len(names):] + names[:r % len(names)] if names else []
        for n in order:
            per[n].append(h.measure(n, batch, dtype, estimator, label=f"[round {r + 1}/{rounds}] "))
    got = {n: _pool(per[n]) for n in names}
    lines.append(f"\n{framework}: B={batch} pairs, d={dim}, {dtype}, estimator={estimator}, forward+backward, "
                 f"{rounds} rounds x {reps} repetitions (median [min-max]); memory = peak RSS above a "
                 f"B={h.s.small_batch} run; threads: {threads or 'all CPUs'}")
    for n, m in got.items():
        if m["status"] == "ok":
            lines.append(f"  {n:<15} {m['median_s']:8.4f} s [{m['min_s']:.4f}-{m['max_s']:.4f}]  "
                         f"{format_bytes(m['extra_bytes'], plus=True)}")
        else:
            lines.append(f"  {n:<15} {m['status']}: {m['message'].splitlines()[0] if m['message'] else ''}")
    lines.append("ratios (same run) against the issue's targets")
    for impl, base, quantity, bound in TARGETS[framework]:
        r = _ratio(got.get(impl), got.get(base), quantity)
        if r is None:
            lines.append(f"  {impl} {quantity} vs {base}: not measured")
            continue
        ok = r >= bound if quantity == "speedup" else r <= bound
        sign = ">=" if quantity == "speedup" else "<="
        shown = f"{r:.3f}" if quantity == "memory" else f"{r:.2f}x"
        if quantity != "memory":  # on a busy machine the fastest repetitions are the least disturbed
            shown += f" (from the fastest repetitions: {_ratio(got.get(impl), got.get(base), quantity, 'min_s'):.2f}x)"
        lines.append(f"  {impl} {quantity} vs {base}: {shown}  (target {sign} {bound:g}: {'met' if ok else 'MISSED'})")
    # the two-product floor of the symmetric in-batch layout (S = U U^T, (G + G^T) U): no target, reported
    sym = _impls.SYMMETRIC_FLOORS[framework]
    for n in names:
        if _impls.get(n).kind not in ("backend", "naive"):
            continue
        r = _ratio(got.get(n), got.get(sym), "x floor")
        if r is not None:
            lines.append(f"  {n} x symmetric floor ({sym}, 2 products): {r:.2f}x "
                         f"(from the fastest repetitions: {_ratio(got.get(n), got.get(sym), 'x floor', 'min_s'):.2f}x)")
    for big in large:
        backend = [n for n in names if _impls.get(n).kind == "backend"]
        for n in backend:
            m = h.measure(n, big, dtype, estimator, warmup=1, reps=0)
            if m["status"] == "ok":
                lines.append(f"  {n} at B={big}: ran; one call {m['median_s']:.1f} s (compilation included), "
                             f"{format_bytes(m['extra_bytes'], plus=True)} above the small run")
            else:
                lines.append(f"  {n} at B={big}: {m['status']}: {m['message'].splitlines()[0] if m['message'] else ''}")
    return h, lines


def main(framework: str, argv=None) -> int:
    p = argparse.ArgumentParser(description=f"{framework}: backend vs naive vs floor, B=4096 d=128 fp32 (issues 4-6)")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions per process (default 3)")
    p.add_argument("--rounds", type=int, default=3,
                   help="fresh processes per implementation, in rotated order (default 3)")
    p.add_argument("--estimator", default="hard", choices=("hard", "easy"))
    p.add_argument("--threads", type=int, help="run every measurement on this many CPUs (default: all)")
    p.add_argument("--budget", default="16GB", help="memory one measurement may use (default 16GB)")
    p.add_argument("--large", type=int, action="append", default=[],
                   help="also run the backend once at this batch (e.g. 65536) and report its memory")
    a = p.parse_args(argv)
    _, lines = compare(framework, batch=a.batch, dim=a.dim, dtype=a.dtype, reps=a.reps, rounds=a.rounds,
                       budget=parse_bytes(a.budget), threads=a.threads,
                       estimator=a.estimator, large=a.large)
    print("\n".join(lines))
    sys.stdout.flush()
    return 0
