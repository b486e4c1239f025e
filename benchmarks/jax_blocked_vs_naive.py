"""hardneg_jax against the naive jitted transliteration of the released arithmetic, side by side (issues 5, 13).

One forward+backward step (``jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))``) of three programs at the
same B, d, float32, CPU:

hardneg_jax   blocked custom-VJP implementation (default memory budget)
naive_jax     hardneg.bench.naive_jax: full (2B x 2B) matrices, raw exp, autodiff
floor_jax     the three (2B x d)(d x 2B)-class matrix products alone (S = U U^T, G U, G^T U)

Time: the three steps run interleaved in one process (``--reps`` rounds after a compiling warm-up); each
program's minimum is reported, so background load affects all three alike. Memory, two ways: XLA's buffer
assignment of the compiled step (``memory_analysis().temp_size_in_bytes``, deterministic) and the peak
resident set size (VmHWM) of a fresh process running one step, minus that of the same program at B = 64
(interpreter, imports and compiled code cancel). ``--large B`` also runs hardneg_jax alone once at B pairs
in a fresh process (compilation included) and reports its time and peak memory.

``--layout cross`` compares the cross layout (``hcl_loss(z1, z2, layout="cross")``, symmetric: 2B anchors,
B candidates each) with the naive CLIP-style program ``naive_jax.cross_value_and_grad`` (one (B x B) logit matrix
and its transpose, the released formula per direction, autodiff); the floor is then the three (B x d)(d x B)
products.

Run it under the shared lock so that timings are not disturbed by other heavy jobs::

    flock /tmp/hardneg-heavy.lock python benchmarks/jax_blocked_vs_naive.py --batch 4096 --large 65536
    flock /tmp/hardneg-heavy.lock python benchmarks/jax_blocked_vs_naive.py --batch 4096 --layout cross
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

HP = {"temperature": 0.5, "beta": 1.0, "tau_plus": 0.1}


def _steps(batch: int, dim: int, layout: str = "in_batch"):
    import jax
    import jax.numpy as jnp
    import numpy as np

    import hardneg_jax
    from hardneg.bench import naive_jax

    rng = np.random.default_rng(0)
    z1 = jnp.asarray(rng.standard_normal((batch, dim), dtype=np.float32))
    z2 = jnp.asarray(rng.standard_normal((batch, dim), dtype=np.float32))
    u = jnp.concatenate([z1, z2])
    t, b, tp = HP["temperature"], HP["beta"], HP["tau_plus"]
    if layout == "cross":
        ours = jax.jit(jax.value_and_grad(lambda a, b: hardneg_jax.hcl_loss(a, b, layout="cross", **HP),
                                          argnums=(0, 1)))
        return {
            "hardneg_jax_cross": (ours, (z1, z2)),
            "naive_jax_cross": (naive_jax.cross_value_and_grad, (z1, z2, t, b, tp)),
            "floor_jax": (naive_jax.floor, (z1,)),  # the (B x d)(d x B)-class products
        }
    ours = jax.jit(jax.value_and_grad(lambda a, b: hardneg_jax.hcl_loss(a, b, **HP), argnums=(0, 1)))
    programs = {
        "hardneg_jax": (ours, (z1, z2)),
        "naive_jax": (naive_jax.value_and_grad, (z1, z2, t, b, tp)),
        "floor_jax": (naive_jax.floor, (u,)),
    }
    return programs


def time_and_temp(batch: int, dim: int, reps: int, layout: str = "in_batch") -> dict:
    """Interleaved minimum step time and XLA temporary bytes of each program."""
    import jax

    programs = _steps(batch, dim, layout)
    out = {}
    for name, (fn, args) in programs.items():
        temp = fn.lower(*args).compile().memory_analysis().temp_size_in_bytes
        out[name] = {"temp_bytes": temp, "time_s": float("inf")}
        jax.block_until_ready(fn(*args))  # compile + first run
    for _ in range(reps):
        for name, (fn, args) in programs.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            out[name]["time_s"] = min(out[name]["time_s"], time.perf_counter() - t0)
    return out


def peak_rss(impl: str, batch: int, dim: int, reps: int = 1) -> dict:
    """Peak RSS of a fresh process running ``impl`` (hardneg.bench.worker): one compiled step (reps=0: the first)."""
    spec = {"impl": impl, "batch": batch, "dim": dim, "dtype": "float32", "device": "cpu", "estimator": "hard",
            "hp": HP, "warmup": 1, "reps": reps, "min_rep_s": 0.0}
    proc = subprocess.run([sys.executable, "-m", "hardneg.bench.worker", json.dumps(spec)], capture_output=True,
                          text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("HARDNEG_BENCH_RESULT ")]
    if not lines:
        raise RuntimeError(f"worker failed for {impl} at B={batch}: {proc.stderr[-2000:]}")
    return json.loads(lines[-1].split(" ", 1)[1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=4096, help="pairs B (default 4096)")
    ap.add_argument("--dim", type=int, default=128, help="feature dimension d (default 128)")
    ap.add_argument("--reps", type=int, default=5, help="interleaved timing rounds (default 5)")
    ap.add_argument("--large", type=int, default=0, help="also run hardneg_jax once at this many pairs")
    ap.add_argument("--layout", choices=("in_batch", "cross"), default="in_batch",
                    help="in_batch (default) or cross (against the naive CLIP-style program)")
    args = ap.parse_args(argv)

    cross = args.layout == "cross"
    res = time_and_temp(args.batch, args.dim, args.reps, args.layout)
    for name in res:
        # the worker's floor_jax multiplies 2B rows; the cross layout's floor has B rows
        b = args.batch // 2 if (cross and name == "floor_jax") else args.batch
        big, small = peak_rss(name, b, args.dim), peak_rss(name, 64, args.dim)
        res[name]["peak_extra_bytes"] = big["peak_bytes"] - small["peak_bytes"]
    suffix = "_cross" if cross else ""
    n, f, o = res["naive_jax" + suffix], res["floor_jax"], res["hardneg_jax" + suffix]
    print(f"B = {args.batch} pairs, d = {args.dim}, float32, CPU, forward+backward under jax.jit, layout "
          f"{args.layout}, min of {args.reps} interleaved rounds\n")
    print("| program | time (s) | time / naive | time / floor | XLA temp (MB) | peak RSS extra (MB) |")
    print("|---|---|---|---|---|---|")
    for name, r in res.items():
        print(f"| {name} | {r['time_s']:.3f} | {r['time_s'] / n['time_s']:.2f} | {r['time_s'] / f['time_s']:.2f} | "
              f"{r['temp_bytes'] / 2**20:.1f} | {r['peak_extra_bytes'] / 2**20:.0f} |")
    print(f"\nhardneg_jax / naive: time {o['time_s'] / n['time_s']:.2f}x, XLA temp "
          f"{o['temp_bytes'] / n['temp_bytes']:.3f}x, "
          f"peak RSS extra {o['peak_extra_bytes'] / n['peak_extra_bytes']:.3f}x; "
          f"hardneg_jax / floor: time {o['time_s'] / f['time_s']:.2f}x")
    if args.large:
        r = peak_rss("hardneg_jax" + suffix, args.large, args.dim, reps=0)
        if r["status"] != "ok":
            print(f"\nB = {args.large}: {r['status']}: {r['message']}")
            return 1
        print(f"\nB = {args.large} pairs: one forward+backward step (compilation included) "
              f"{r['times_s'][0]:.1f} s, peak RSS of the process {r['peak_bytes'] / 2**30:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
