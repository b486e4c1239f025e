"""``hardneg bench``: forward+backward time and peak memory of each backend against naive code and the floor.

Usage::

    hardneg bench [--backend torch|jax|tf|all] [--quick | --full] [--device cpu|cuda] [--out DIR]
                  [--budget 8GB] [--dtype float32,bfloat16] [--batch 1024,4096] [--estimator hard,easy]

Presets (``--batch``, ``--estimator``, ``--reps`` and ``--max-batch`` override them):

    --quick    B in {1024, 4096}, float32, estimator hard, 3 repetitions, no largest-batch search
    default    B in {256, 1024, 4096}, float32 and bfloat16, estimators hard and easy, 3 repetitions,
               largest-batch search (float32, steps up to 30 s)
    --full     B in {256, ..., 8192}, float32 and bfloat16, estimators hard and easy, 5 repetitions,
               largest-batch search (float32, steps up to 300 s)

Every measurement runs in its own process (see :mod:`hardneg.bench.harness`). The headline is each
implementation's ratio to the naive baseline and to the two floors measured in the same run: the
three-product floor (S = U U^T, G U, G^T U) and the two-product symmetric floor (S = U U^T, (G + G^T) U).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import sys
from typing import List, Optional

from . import impls as _impls
from .harness import Harness, Settings, format_bytes, parse_bytes

PRESETS = {
    "quick": dict(batches=[1024, 4096], dtypes=["float32"], estimators=["hard"], reps=3, max_batch=False,
                  time_cap=10.0),
    "default": dict(batches=[256, 1024, 4096], dtypes=["float32", "bfloat16"], estimators=["hard", "easy"], reps=3,
                    max_batch=True, time_cap=30.0),
    "full": dict(batches=[256, 512, 1024, 2048, 4096, 8192], dtypes=["float32", "bfloat16"],
                 estimators=["hard", "easy"], reps=5, max_batch=True, time_cap=300.0),
}
_DTYPES = ("float32", "bfloat16", "float16", "float64")


def _csv(kind, choices=None):
    def parse(text: str) -> List:
        items = [kind(x.strip()) for x in text.split(",") if x.strip()]
        if not items:
            raise argparse.ArgumentTypeError("empty list")
        if choices:
            bad = [x for x in items if x not in choices]
            if bad:
                raise argparse.ArgumentTypeError(f"invalid choice(s) {bad}; choose from {', '.join(choices)}")
        return items

    return parse


def _bytes(text: str) -> int:
    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "presets:\n"
        "  --quick   B in {1024, 4096}, float32, estimator hard, 3 repetitions, no largest-batch search\n"
        "  default   B in {256, 1024, 4096}, float32 and bfloat16, hard and easy, largest-batch search\n"
        "  --full    B in {256, ..., 8192}, 5 repetitions, largest-batch search up to 300 s per step\n"
        "implementations: " + ", ".join(_impls.IMPLS) + "\n"
        "Each measurement runs in its own process; memory is the peak above a small-batch run of the same\n"
        "program. Ratios to the naive baseline and to the matmul floors measured in the same run are the\n"
        "headline: x floor (3 products: S = U U^T, G U, G^T U) and x sym floor (2 products: S, (G + G^T) U).\n"
        "On a loaded machine (1-minute load average above the CPU count) a warning is printed and recorded in\n"
        "results.json: measure on an idle machine, or with --threads 1."
    )
    parser.add_argument("--backend", default="all", type=_csv(str, ("torch", "jax", "tf", "all")),
                        help="framework(s) to benchmark, comma-separated: torch, jax, tf or all (default: all)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="two sizes, float32, no largest-batch search")
    mode.add_argument("--full", action="store_true", help="more sizes and repetitions (long)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where the tensors live: cpu (default; memory is the process's peak resident "
                             "memory) or cuda (the first GPU; memory is the framework's peak device memory)")
    parser.add_argument("--out", metavar="DIR",
                        help="directory to write results.json (every measurement, the ratios, the machine and "
                             "its load) and the PNG plots time_<estimator>.png and memory_<estimator>.png; "
                             "created if missing (default: print the table only)")
    parser.add_argument("--budget", type=_bytes, default=parse_bytes("8GB"), metavar="SIZE",
                        help="memory one measurement may use above its small-batch run, e.g. 8GB, 512MB, "
                             "4GiB; on cpu a process beyond it is killed, on cuda torch may allocate no more "
                             "than it; the largest-batch search stays within it (default 8GB)")
    parser.add_argument("--dtype", type=_csv(str, _DTYPES),
                        help="comma-separated dtypes (default float32,bfloat16; float32 with --quick)")
    parser.add_argument("--batch", type=_csv(int), help="comma-separated batch sizes B (pairs); overrides the preset")
    parser.add_argument("--dim", type=int, default=128, help="feature dimension d (default 128)")
    parser.add_argument("--estimator", type=_csv(str, ("hard", "easy")),
                        help="comma-separated estimators; lightly and PML run with 'easy' (default: preset)")
    parser.add_argument("--impl", type=_csv(str),
                        help="measure only these implementations (names from the table, or module:function)")
    parser.add_argument("--reps", type=int, help="timed repetitions per measurement (default: preset)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls first (default 1; the first compiles)")
    parser.add_argument("--max-batch", dest="max_batch", action=argparse.BooleanOptionalAction, default=None,
                        help="search the largest batch in --budget by doubling (default: on except with --quick)")
    parser.add_argument("--time-cap", type=float,
                        help="largest-batch search stops before a step predicted to take longer (seconds)")
    parser.add_argument("--small-batch", type=int, default=16,
                        help="batch of the run whose peak memory is subtracted (default 16)")
    parser.add_argument("--timeout", type=float, default=900.0, help="kill one measurement after this (seconds)")
    parser.add_argument("--threads", type=int,
                        help="run every measurement on this many CPUs (default: all, the frameworks' default); "
                             "on a machine shared with other jobs, --threads 1 keeps thread pools from "
                             "waiting on a descheduled thread")


def _version(dist: str):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
        with open("/proc/meminfo") as f:
            info["memory"] = format_bytes(int(f.readline().split()[1]) * 1024)
    except OSError:
        pass
    info["versions"] = {d: _version(d) for d in ("hardneg", "torch", "jax", "jaxlib", "tensorflow",
                                                  "tensorflow-cpu", "lightly", "pytorch-metric-learning")}
    return info


def machine_load() -> Optional[float]:
    """The 1-minute load average, or None where the system has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_warning(load1: Optional[float], cpus: int, threads: Optional[int]) -> Optional[str]:
    """The warning for a machine whose 1-minute load average is above its CPU count, else None.

    Other jobs slow every measurement, and multi-threaded ones most: at B = 1024 torch's two OpenMP threads
    were measured 10x slower next to another job, where a single thread loses only its share of the CPU.
    """
    if load1 is None or load1 <= cpus:
        return None
    msg = (f"warning: the machine is loaded (1-minute load average {load1:.2f} on {cpus} CPUs): other jobs "
           "slow the measurements, multi-threaded ones most (torch's two OpenMP threads measured 10x slower "
           "at B = 1024 next to another job). Measure on an idle machine")
    if threads is None:
        msg += (", or pass --threads 1 (--threads N: N CPUs per measurement) so that no thread pool waits on "
                "a descheduled thread")
    return msg + "; ratios measured in the same run suffer less than absolute times."


def _plan(args, preset):
    """Which implementations run, and the messages for those that cannot."""
    backends = list(_impls.FRAMEWORKS) if "all" in args.backend else list(dict.fromkeys(args.backend))
    skipped, chosen = [], []
    estimators = args.estimator or preset["estimators"]
    names = []
    if args.impl:
        names = [_impls.get(n).name for n in args.impl]
    else:
        for est in estimators:
            names += [i.name for i in _impls.for_backends(backends, est)]
        names = list(dict.fromkeys(names))
        if "easy" not in estimators and "torch" in backends:
            skipped.append("lightly / pytorch-metric-learning NTXentLoss: measured only with --estimator easy")
    for n in names:
        msg = _impls.availability(_impls.get(n))
        (skipped.append(msg) if msg else chosen.append(n))
    return chosen, estimators, skipped


def run(args) -> int:
    preset = PRESETS["quick" if args.quick else "full" if args.full else "default"]
    batches = args.batch or preset["batches"]
    dtypes = args.dtype or preset["dtypes"]
    reps = args.reps or preset["reps"]
    do_max = preset["max_batch"] if args.max_batch is None else args.max_batch
    time_cap = args.time_cap or preset["time_cap"]
    chosen, estimators, skipped = _plan(args, preset)
    for msg in skipped:
        print(msg, file=sys.stderr)
    if not chosen:
        print("hardneg bench: nothing to measure (no selected implementation is installed)", file=sys.stderr)
        return 2

    load = {"load1_start": machine_load(), "cpus": usable_cpus(), "threads": args.threads}
    load["warning"] = load_warning(load["load1_start"], load["cpus"], args.threads)
    if load["warning"]:
        print(f"hardneg bench: {load['warning']}", file=sys.stderr)

    settings = Settings(dim=args.dim, device=args.device, warmup=max(1, args.warmup), reps=max(1, reps),
                        timeout_s=args.timeout, budget_bytes=args.budget, small_batch=args.small_batch,
                        threads=args.threads)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    harness = Harness(settings)
    jobs = [(est, dt, b, impl) for est in estimators for dt in dtypes for b in batches
            for impl in chosen if est in _impls.get(impl).estimators]
    print(f"hardneg bench: {len(jobs)} measurements ({len(chosen)} implementations x {len(dtypes)} dtypes x "
          f"{len(batches)} batch sizes), each in its own process; budget {format_bytes(args.budget)}",
          file=sys.stderr)
    for k, (est, dt, b, impl) in enumerate(jobs, 1):
        harness.measure(impl, b, dt, est, label=f"[{k}/{len(jobs)}] ")
    if do_max:
        for impl in chosen:
            entry = _impls.get(impl)
            if entry.kind == "floor":
                continue
            est = estimators[0] if estimators[0] in entry.estimators else entry.estimators[0]
            ok = [m["batch"] for m in harness.measurements if m["impl"] == impl and m["status"] == "ok"
                  and m["dtype"] == dtypes[0] and m["estimator"] == est]
            harness.largest_batch(impl, dtypes[0], est, start=max(ok) if ok else min(batches),
                                  time_cap_s=time_cap)

    meta = {"command": "hardneg bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else " ".join(sys.argv),
            "date": started,
            "machine": _machine(), "load": dict(load, load1_end=machine_load()), "skipped": skipped,
            "implementations": {
                n: {"label": _impls.get(n).label, "kind": _impls.get(n).kind, "framework": _impls.get(n).framework}
                for n in chosen}}
    data = harness.to_json(meta)
    from .report import format_results

    print(format_results(data))
    if load["warning"]:
        print(f"\n(measured on a loaded machine: load average {load['load1_start']:.2f} on {load['cpus']} CPUs "
              "at the start; see the warning above)")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, "results.json")
        with open(path, "w") as f:
            json.dump(data, f, indent=1)
        from .plots import write_plots

        pngs = write_plots(data, args.out)
        print(f"\nwrote {path} and {', '.join(os.path.basename(p) for p in pngs)}")
    else:
        print("\n(pass --out DIR to write results.json and plots)")
    bad = [m for m in data["measurements"] if m["status"] in ("error", "crashed")]
    return 1 if bad else 0
