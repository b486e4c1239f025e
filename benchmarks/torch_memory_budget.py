"""hardneg_torch's ``memory_budget`` sweep, interleaved with the naive loss and the matrix-product floor.

All variants run in one process, round-robin (so slow phases of a shared machine hit every variant alike);
each time is the fastest of ``--reps`` forward+backward passes (float32, CPU, d = 128). This produced the
table in docs/backends/torch.md; benchmarks/bench_torch.py gives the one-process-per-variant figures::

    flock /tmp/hardneg-heavy.lock python benchmarks/torch_memory_budget.py --batch 4096 --budgets-mib 1,2,4,8,32,128
"""

from __future__ import annotations

import argparse
import statistics
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--beta", type=float, default=1.0)
    p.add_argument("--budgets-mib", default="32", help="comma-separated memory budgets in MiB")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--no-naive", action="store_true", help="skip the naive loss (it needs ~2 GB at B = 4096)")
    args = p.parse_args(argv)

    import torch

    from hardneg.bench.naive_torch import floor
    from hardneg.bench.naive_torch import hcl_loss as naive
    from hardneg_torch import hcl_loss

    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(args.batch, args.dim, generator=g).requires_grad_(True)
    z2 = torch.randn(args.batch, args.dim, generator=g).requires_grad_(True)
    u = torch.nn.functional.normalize(torch.cat([z1, z2]).detach(), dim=1)

    def loss_step(fn):
        def step():
            z1.grad = z2.grad = None
            fn(z1, z2).backward()

        return step

    variants = {"floor": lambda: floor(u)}
    if not args.no_naive:
        variants["naive"] = loss_step(lambda a, b: naive(a, b, beta=args.beta))
    for mib in args.budgets_mib.split(","):
        budget = int(float(mib) * 2**20)
        variants[f"hardneg_torch {mib} MiB"] = loss_step(
            lambda a, b, budget=budget: hcl_loss(a, b, beta=args.beta, memory_budget=budget))
    for step in variants.values():  # warm-up
        step()
    times = {k: [] for k in variants}
    for _ in range(args.reps):
        for k, step in variants.items():
            t0 = time.perf_counter()
            step()
            times[k].append(time.perf_counter() - t0)
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    floor_s = min(times["floor"])
    print(f"B = {args.batch}, d = {args.dim}, beta = {args.beta}, float32, {torch.get_num_threads()} threads, "
          f"fastest of {args.reps} (load average {load})")
    for k, v in times.items():
        line = f"  {k:24s} {min(v):8.3f} s (median {statistics.median(v):.3f})   x floor {min(v) / floor_s:5.2f}"
        if "naive" in times and k.startswith("hardneg"):
            line += f"   naive / this {min(times['naive']) / min(v):5.2f}"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
