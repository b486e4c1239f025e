"""One measurement in one process: ``python -m hardneg.bench.worker '<json spec>'``.

The spec (JSON) holds ``impl, batch, dim, dtype, device, estimator, hp, warmup, reps, min_rep_s, max_s``
(``reps = 0``: a single call, timed including compilation, for batches too large to repeat).
The worker builds the step (imports the one framework it needs), runs ``warmup`` untimed calls (the first
compiles), then ``reps`` timed repetitions, and prints one line ``RESULT_TAG <json>`` with

    status     "ok", "oom" (the framework reported out of memory) or "error"
    times_s    seconds per step of each repetition; a repetition averages ``inner`` steps when one step is
               shorter than ``min_rep_s`` so that timer resolution and scheduling noise stay small
    first_s    seconds of the first call (compilation included)
    peak_bytes peak resident set size of the whole process (VmHWM, CPU) or peak allocated device memory (CUDA)

The parent (:mod:`hardneg.bench.harness`) subtracts the peak of a small-batch run of the same program, so
interpreter, imports and compiled code cancel, and enforces the memory budget and the timeout from outside.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback

RESULT_TAG = "HARDNEG_BENCH_RESULT"


class _Done(Exception):
    """Internal: measurement finished early (reps == 0)."""


def _vm_hwm_bytes() -> int:
    """Peak resident set size of this process (Linux /proc/self/status VmHWM), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM not found in /proc/self/status (Linux only)")


def _device_peak_bytes(framework: str) -> int:
    if framework == "torch":
        import torch

        return int(torch.cuda.max_memory_allocated())
    if framework == "jax":
        import jax

        return int(jax.devices("gpu")[0].memory_stats().get("peak_bytes_in_use", 0))
    if framework == "tf":
        import tensorflow as tf

        return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])
    raise ValueError(f"no device memory counter for framework {framework!r}")


def _limit_device_memory(framework: str, budget: int) -> None:
    """Make the framework refuse allocations beyond ``budget`` bytes on the GPU (torch only; others: best effort)."""
    if framework == "torch" and budget:
        import torch

        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, budget / total))


def _is_oom(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}".lower()
    return isinstance(exc, MemoryError) or any(
        k in text for k in ("out of memory", "outofmemory", "resource_exhausted", "resource exhausted", "oom",
                            "allocate memory")
    )


def limit_threads(n: int) -> None:
    """Run on ``n`` CPUs: an affinity mask (which every framework sizes its thread pools from) plus the usual
    thread-count variables. Called before any framework is imported."""
    cpus = sorted(os.sched_getaffinity(0))[:n]
    os.sched_setaffinity(0, cpus)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
        os.environ[var] = str(len(cpus))
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"


def measure(spec: dict) -> dict:
    """Run one measurement in this process; returns the result dict (see the module docstring)."""
    if spec.get("threads"):
        limit_threads(int(spec["threads"]))
    from . import impls

    impl = impls.get(spec["impl"])
    out = {"status": "ok", "times_s": [], "inner": 1, "first_s": None, "peak_bytes": None, "message": ""}
    framework = impl.framework
    try:
        if spec["device"] == "cuda":
            # before the first allocation, so a batch beyond the budget fails as out-of-memory
            _limit_device_memory(framework, spec.get("device_budget", 0))
        step = impls.build(
            spec["impl"], spec["batch"], spec["dim"], spec["dtype"], spec["device"], spec["estimator"], spec["hp"]
        )
        t0 = time.perf_counter()
        step()
        out["first_s"] = time.perf_counter() - t0
        if spec.get("reps", 3) == 0:  # one call only (a huge batch): its time includes compilation
            out["times_s"] = [out["first_s"]]
            out["first_call_only"] = True
            raise _Done
        warm = None  # duration of a compiled (not first) call, when one was made
        for _ in range(max(0, spec.get("warmup", 1) - 1)):
            t0 = time.perf_counter()
            step()
            warm = time.perf_counter() - t0
        min_rep_s = spec.get("min_rep_s", 0.0)
        inner = 1 if warm is None else max(1, min(1000, math.ceil(min_rep_s / max(warm, 1e-6))))
        spent, max_s, reps = 0.0, spec.get("max_s", math.inf), spec.get("reps", 3)
        while len(out["times_s"]) < reps:
            t0 = time.perf_counter()
            for _ in range(inner):
                step()
            dt = time.perf_counter() - t0
            spent += dt
            if warm is None and inner == 1 and dt < min_rep_s:
                # the only warm-up call compiled, so the step length was unknown: this call was the probe
                warm = dt
                inner = max(1, min(1000, math.ceil(min_rep_s / max(dt, 1e-6))))
                continue
            out["times_s"].append(dt / inner)
            if spent > max_s:  # out of time: keep the repetitions measured so far (at least one)
                break
        out["inner"] = inner
    except _Done:
        pass
    except BaseException as exc:  # the parent needs every failure as data
        out["status"] = "oom" if _is_oom(exc) else "error"
        msg = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()
        out["message"] = (msg[-1] if msg else repr(exc))[:500]
    try:
        out["peak_bytes"] = _device_peak_bytes(framework) if spec["device"] == "cuda" else _vm_hwm_bytes()
    except Exception as exc:  # a missing counter must not lose the timings
        out["message"] = (out["message"] + f" (peak memory unavailable: {exc})").strip()
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(argv[0])
    result = measure(spec)
    sys.stdout.write(f"\n{RESULT_TAG} {json.dumps(result)}\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
