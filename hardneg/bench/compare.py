"""The headline comparison of issues 4-6 for one framework: backend vs naive vs floor, one run, with targets.

Used by ``benchmarks/bench_{torch,jax,tf}.py``; each measurement is still its own process (the harness).
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Tuple

from . import impls as _impls
from .harness import Harness, Settings, format_bytes, parse_bytes

__all__ = ["TARGETS", "compare", "main"]

# (implementation, baseline, quantity, bound): quantity "speedup" = baseline time / time (>= bound),
# "x floor" = time / floor time (<= bound), "memory" = extra memory / baseline's (<= bound).
TARGETS = {
    "torch": [("hardneg_torch", "naive_torch", "speedup", 4.0), ("hardneg_torch", "floor_torch", "x floor", 2.5),
              ("hardneg_torch", "naive_torch", "memory", 0.1)],
    "jax": [("hardneg_jax", "naive_jax", "speedup", 1.0), ("hardneg_jax", "floor_jax", "x floor", 2.5),
            ("hardneg_jax", "naive_jax", "memory", 0.1)],
    "tf": [("hardneg_tf", "naive_tf_xla", "speedup", 0.8), ("hardneg_tf", "naive_tf", "speedup", 1.0),
           ("hardneg_tf", "naive_tf_xla", "memory", 0.1),
           ("hardneg_tf_xla", "naive_tf_xla", "speedup", 0.8), ("hardneg_tf_xla", "naive_tf", "speedup", 1.0),
           ("hardneg_tf_xla", "naive_tf_xla", "memory", 0.1)],
}
ORDER = {
    "torch": ["floor_torch", "naive_torch", "hardneg_torch"],
    "jax": ["floor_jax", "naive_jax", "hardneg_jax"],
    "tf": ["floor_tf", "naive_tf_xla", "naive_tf", "hardneg_tf", "hardneg_tf_xla"],
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


def compare(framework: str, *, batch: int = 4096, dim: int = 128, dtype: str = "float32", reps: int = 5,
            budget: int = 16 * 10**9, estimator: str = "hard", large: List[int] = ()) -> Tuple[Harness, List[str]]:
    """Measure the framework's floor, naive baseline(s) and backend at one batch; return the harness and report lines."""
    h = Harness(Settings(dim=dim, reps=reps, budget_bytes=budget, max_s=120.0))
    lines: List[str] = []
    names = []
    for n in ORDER[framework]:
        msg = _impls.availability(_impls.get(n))
        if msg:
            lines.append(msg)
        else:
            names.append(n)
    got = {n: h.measure(n, batch, dtype, estimator) for n in names}
    lines.append(f"\n{framework}: B={batch} pairs, d={dim}, {dtype}, estimator={estimator}, forward+backward, "
                 f"{reps} repetitions (median [min-max]); memory = peak RSS above a B={h.s.small_batch} run")
    for n, m in got.items():
        if m["status"] == "ok":
            lines.append(f"  {n:<15} {m['median_s']:8.4f} s [{m['min_s']:.4f}-{m['max_s']:.4f}]  "
                         f"+{format_bytes(m['extra_bytes'])}")
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
    for big in large:
        backend = [n for n in names if _impls.get(n).kind == "backend"]
        for n in backend:
            m = h.measure(n, big, dtype, estimator, warmup=1, reps=0)
            if m["status"] == "ok":
                lines.append(f"  {n} at B={big}: ran; one call {m['median_s']:.1f} s (compilation included), "
                             f"+{format_bytes(m['extra_bytes'])} above the small run")
            else:
                lines.append(f"  {n} at B={big}: {m['status']}: {m['message'].splitlines()[0] if m['message'] else ''}")
    return h, lines


def main(framework: str, argv=None) -> int:
    p = argparse.ArgumentParser(description=f"{framework}: backend vs naive vs floor, B=4096 d=128 fp32 (issues 4-6)")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--estimator", default="hard", choices=("hard", "easy"))
    p.add_argument("--budget", default="16GB", help="memory one measurement may use (default 16GB)")
    p.add_argument("--large", type=int, action="append", default=[],
                   help="also run the backend once at this batch (e.g. 65536) and report its memory")
    a = p.parse_args(argv)
    _, lines = compare(framework, batch=a.batch, dim=a.dim, dtype=a.dtype, reps=a.reps, budget=parse_bytes(a.budget),
                       estimator=a.estimator, large=a.large)
    print("\n".join(lines))
    sys.stdout.flush()
    return 0
