"""hardneg_tf against the naive TensorFlow transliteration of the released code, side by side (issue 6).

Usage (from the repository root; run heavy measurements one at a time)::

    flock /tmp/hardneg-heavy.lock python benchmarks/tf_blocked_vs_naive.py time   --batch 4096 --rounds 9
    flock /tmp/hardneg-heavy.lock python benchmarks/tf_blocked_vs_naive.py memory --batch 4096
    flock /tmp/hardneg-heavy.lock python benchmarks/tf_blocked_vs_naive.py large  --batch 65536

Everything is float32, d = 128, one forward + backward step (loss and the gradients of z1, z2), on CPU.

time
    One process holds every implementation (hardneg_tf as a tf.function graph and under XLA, the naive code
    as a graph and under XLA, and the floor: the three (2B x d)(d x 2B) products compiled by XLA; and the
    cross layout, ``layout="cross"`` under XLA, beside the naive CLIP-style code under XLA) and calls them in
    interleaved rounds, so that a busy shared machine slows all of them alike; it prints the median time of
    each and the median over rounds of its ratio to its baseline (naive XLA of the same layout).
memory
    One subprocess per implementation and batch; peak extra memory = peak RSS (VmHWM) at ``--batch`` minus
    peak RSS of the same program at B = 256 (interpreter, TensorFlow and compiled code cancel).
large
    One hardneg_tf step (tf.function graph) at a batch the naive code cannot hold; prints time and peak RSS.

Naive code: :mod:`hardneg.bench.naive_tf` (raw exponentials, full (2B x 2B) matrices).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

IMPLS = ("hardneg_tf", "hardneg_tf_xla", "naive_tf", "naive_tf_xla", "floor_xla", "hardneg_tf_cross_xla",
         "naive_tf_cross_xla")
#: The baseline of each implementation's ratio (default: naive_tf_xla): the cross layout against the naive
#: CLIP-style code (two (B x B) logit matrices), both under XLA.
BASE = {"hardneg_tf_cross_xla": "naive_tf_cross_xla", "naive_tf_cross_xla": "naive_tf_cross_xla"}


def _vm_hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM not available (Linux only)")


def _inputs(batch, dim=128, seed=0):
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    return (tf.constant(rng.standard_normal((batch, dim), dtype=np.float32)),
            tf.constant(rng.standard_normal((batch, dim), dtype=np.float32)))


def build(name, budget=None):
    """A function (z1, z2) -> (loss, [dz1, dz2]) (or the floor's products), compiled as its name says;
    ``budget`` is hardneg_tf's ``memory_budget`` (default: its own)."""
    import tensorflow as tf

    if name.startswith("hardneg_tf"):
        import hardneg_tf

        kw = dict(layout="cross") if "_cross" in name else {}
        kw["memory_budget"] = budget

        def step(a, b):
            with tf.GradientTape() as tape:
                tape.watch([a, b])
                loss = hardneg_tf.hcl_loss(a, b, **kw)
            return loss, tape.gradient(loss, [a, b])

        return tf.function(step, jit_compile=name.endswith("_xla"))
    from hardneg.bench import naive_tf

    if name == "floor_xla":
        return lambda a, b: naive_tf.floor_xla(tf.concat([a, b], 0))
    if name == "naive_tf_cross_xla":
        return naive_tf.make_value_and_grad_cross(jit_compile=True)
    return naive_tf.make_value_and_grad(jit_compile=name.endswith("_xla"))


def _sync(out):
    import tensorflow as tf

    tf.reshape(tf.nest.flatten(out)[-1], [-1])[:1].numpy()


def cmd_time(args):
    import numpy as np

    z1, z2 = _inputs(args.batch)
    fns = {name: build(name, args.budget) for name in args.impls}
    for f in fns.values():  # compile, then one warm call
        _sync(f(z1, z2))
        _sync(f(z1, z2))
    times = {name: [] for name in fns}
    for _ in range(args.rounds):
        for name, f in fns.items():
            t0 = time.perf_counter()
            _sync(f(z1, z2))
            times[name].append(time.perf_counter() - t0)
    print(f"B={args.batch} d=128 float32 forward+backward, {args.rounds} interleaved rounds")
    print(f"{'implementation':20s} {'median s':>9s} {'min s':>7s} {'ratio to baseline':>18s}  baseline")
    out = {}
    for name, ts in times.items():
        ts = np.array(ts)
        base_name = BASE.get(name, "naive_tf_xla")
        base_name = base_name if base_name in times else args.impls[0]
        ratio = float(np.median(ts / np.array(times[base_name])))
        out[name] = dict(median_s=float(np.median(ts)), min_s=float(ts.min()), ratio=ratio, baseline=base_name)
        print(f"{name:20s} {np.median(ts):9.3f} {ts.min():7.3f} {ratio:18.2f}  {base_name}")
    print("JSON " + json.dumps(out))


def _one_memory(name, batch, budget=None):
    """Child: one warm step of ``name`` at ``batch``; prints its peak RSS."""
    z1, z2 = _inputs(batch)
    f = build(name, budget)
    _sync(f(z1, z2))
    _sync(f(z1, z2))
    print("PEAK", _vm_hwm())


def cmd_memory(args):
    rows = {}
    for name in args.impls:
        peaks = []
        for batch in (256, args.batch):
            proc = subprocess.run([sys.executable, __file__, "_child", name, str(batch), str(args.budget or 0)],
                                  capture_output=True,
                                  text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("PEAK ")]
            if proc.returncode != 0 or not line:
                print(f"{name} B={batch}: failed\n{proc.stderr[-2000:]}")
                break
            peaks.append(int(line[0].split()[1]))
        if len(peaks) == 2:
            rows[name] = peaks[1] - peaks[0]
    print(f"B={args.batch} d=128 float32 forward+backward: peak extra memory (VmHWM(B) - VmHWM(256))")
    for name, extra in rows.items():
        base_name = BASE.get(name, "naive_tf_xla")
        base = rows.get(base_name)
        ratio = f"{extra / base:8.3f}" if base else ""
        print(f"{name:20s} {extra / 2**20:10.1f} MiB   ratio to {base_name} {ratio}")
    print("JSON " + json.dumps(rows))


def cmd_large(args):
    z1, z2 = _inputs(args.batch)
    f = build("hardneg_tf")
    t0 = time.perf_counter()
    loss, grads = f(z1, z2)
    _sync(grads)
    dt = time.perf_counter() - t0
    print(f"hardneg_tf B={args.batch} d=128 float32 forward+backward: loss {float(loss):.6f}, "
          f"{dt:.1f} s (first call, tracing included), peak RSS {_vm_hwm() / 2**30:.2f} GiB")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_child":
        return _one_memory(argv[1], int(argv[2]), int(argv[3]) or None)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["time", "memory", "large"])
    p.add_argument("--batch", type=int, default=4096, help="pairs B (2B anchors)")
    p.add_argument("--rounds", type=int, default=9, help="interleaved timing rounds")
    p.add_argument("--impls", default=",".join(IMPLS), help=f"comma-separated subset of {', '.join(IMPLS)}")
    p.add_argument("--budget", type=int, help="hardneg_tf's memory_budget in bytes (default: its own)")
    args = p.parse_args(argv)
    args.impls = [x for x in args.impls.split(",") if x]
    {"time": cmd_time, "memory": cmd_memory, "large": cmd_large}[args.command](args)


if __name__ == "__main__":
    main()
