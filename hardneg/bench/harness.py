"""Run measurements in subprocesses, subtract the small-batch memory, find the largest batch in a budget.

Each measurement is a fresh ``python -m hardneg.bench.worker`` process, so one implementation's caches,
allocator pools or compiled code never affect another's figures. The parent watches the child's resident
memory (CPU) and kills it when it exceeds the budget, so a naive (2B)^2 implementation cannot take the
machine down; the child itself reports out-of-memory errors from the framework (CUDA).

Memory is reported *above a small-batch run of the same program* (same implementation, dtype, device,
estimator; batch ``small_batch``): interpreter, imports, framework runtime and compiled code cancel, what
remains is what the batch costs.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from . import impls as _impls
from .worker import RESULT_TAG

__all__ = ["Settings", "Harness", "parse_bytes", "format_bytes"]


def parse_bytes(text: str) -> int:
    """'8GB' -> 8e9, '512MiB' -> 512 * 2**20, '1e9' -> 1e9 (decimal units SI, binary units IEC)."""
    s = str(text).strip().replace(" ", "")
    units = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
             "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
             "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
    i = len(s)
    while i > 0 and s[i - 1].isalpha():
        i -= 1
    num, unit = s[:i], s[i:].lower()
    if unit not in units or not num:
        raise ValueError(f"cannot parse a size from {text!r} (examples: 8GB, 512MB, 4GiB)")
    return int(float(num) * units[unit])


def format_bytes(n: Optional[float], plus: bool = False) -> str:
    """'1.71 GB', '-246 kB'; ``plus`` writes a + before non-negative values (memory above a baseline)."""
    if n is None:
        return "-"
    sign = "-" if n < 0 else ("+" if plus else "")
    n = abs(n)
    for unit, f in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= f:
            return f"{sign}{n / f:.3g} {unit}"
    return f"{sign}{n:.0f} B"


@dataclass
class Settings:
    """What every measurement of one run shares.

    Attributes
    ----------
    dim : feature dimension d (default 128, the released code's).
    device : "cpu" or "cuda".
    hp : temperature, beta, tau_plus (the released defaults 0.5, 1.0, 0.1).
    warmup : untimed calls before timing (the first compiles).
    reps : timed repetitions; the median is quoted, min and max give the spread.
    min_rep_s : a repetition loops over several steps until it lasts this long (timer resolution, noise).
    max_s : stop repeating once the timed repetitions of one measurement took this long (>= 1 repetition).
    timeout_s : kill a measurement process after this many seconds.
    budget_bytes : memory above the small-batch run allowed to one measurement; the process is killed beyond.
    small_batch : batch of the run whose peak memory is subtracted.
    poll_s : how often the parent samples the child's resident memory.
    threads : run each measurement on this many CPUs (None: the framework's default, all CPUs). On a machine
        shared with other jobs, 1 avoids thread pools waiting on a descheduled thread.
    """

    dim: int = 128
    device: str = "cpu"
    hp: dict = field(default_factory=lambda: {"temperature": 0.5, "beta": 1.0, "tau_plus": 0.1})
    warmup: int = 1
    reps: int = 3
    min_rep_s: float = 0.05
    max_s: float = 60.0
    timeout_s: float = 900.0
    budget_bytes: int = 8 * 10**9
    small_batch: int = 16
    poll_s: float = 0.02
    threads: Optional[int] = None


def _rss_bytes(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _child_env() -> dict:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter is not a result
    env.setdefault("PYTHONWARNINGS", "ignore")
    return env


def run_worker(spec: dict, *, rss_limit: Optional[int], timeout_s: float, poll_s: float = 0.02) -> dict:
    """Run one worker process; return its result, or a result saying why it has none.

    ``status`` is the worker's ("ok", "oom", "error"), or "over_budget" (resident memory passed
    ``rss_limit``; killed), "timeout" (killed), "crashed" (no result line, e.g. killed by the kernel).
    ``max_rss_seen`` is the largest resident size the parent sampled.
    """
    cmd = [sys.executable, "-m", "hardneg.bench.worker", json.dumps(spec)]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=_child_env())
        t0 = time.monotonic()
        killed, seen = None, 0
        while proc.poll() is None:
            rss = _rss_bytes(proc.pid)
            if rss is not None:
                seen = max(seen, rss)
                if rss_limit is not None and rss > rss_limit:
                    killed = "over_budget"
            if time.monotonic() - t0 > timeout_s:
                killed = "timeout"
            if killed:
                proc.kill()
                proc.wait()
                break
            time.sleep(poll_s)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    result = None
    for line in stdout.splitlines():
        if line.startswith(RESULT_TAG + " "):
            result = json.loads(line[len(RESULT_TAG) + 1:])
    if killed:
        why = (f"resident memory passed the limit ({format_bytes(rss_limit)})" if killed == "over_budget"
               else f"no result within {timeout_s:.0f} s")
        return {"status": killed, "times_s": [], "peak_bytes": seen or None, "message": why, "max_rss_seen": seen}
    if result is None:
        tail = "\n".join((stderr or stdout).strip().splitlines()[-5:])
        return {"status": "crashed", "times_s": [], "peak_bytes": seen or None, "max_rss_seen": seen,
                "message": f"exit code {proc.returncode}, no result; last output:\n{tail}"}
    result["max_rss_seen"] = seen
    return result


def _stats(times: List[float]) -> dict:
    if not times:
        return {"median_s": None, "min_s": None, "max_s": None}
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


class Harness:
    """Measures implementations one process at a time and remembers every result.

    Parameters
    ----------
    settings : Settings
    progress : callable taking one line of text (default: print to stderr), called before and after each
        measurement.
    """

    def __init__(self, settings: Settings, progress: Optional[Callable[[str], None]] = None):
        self.s = settings
        self._t0 = time.monotonic()
        self.progress = progress or self._print_progress
        self.measurements: List[dict] = []
        self.max_batch: List[dict] = []
        self._small: Dict[Tuple[str, str, str], dict] = {}

    def _print_progress(self, line: str) -> None:
        # "..." lines announce a measurement; on a terminal the result line overwrites them
        if line.endswith("..."):
            if sys.stderr.isatty():
                print(f"{self._elapsed()} {line}", end="\r", file=sys.stderr, flush=True)
            return
        print(f"{self._elapsed()} {line}", file=sys.stderr, flush=True)

    def _elapsed(self) -> str:
        t = int(time.monotonic() - self._t0)
        return f"{t // 60:3d}:{t % 60:02d}"

    # -------------------------------------------------------------------------------------------------
    def _spec(self, impl: str, batch: int, dtype: str, estimator: str, *, warmup=None, reps=None) -> dict:
        s = self.s
        return {
            "impl": impl, "batch": batch, "dim": s.dim, "dtype": dtype, "device": s.device,
            "estimator": estimator, "hp": s.hp, "warmup": s.warmup if warmup is None else warmup,
            "reps": s.reps if reps is None else reps, "min_rep_s": s.min_rep_s, "max_s": s.max_s,
            "device_budget": s.budget_bytes, "threads": s.threads,
        }

    def small_run(self, impl: str, dtype: str, estimator: str) -> dict:
        """The small-batch run whose peak memory is subtracted (cached per implementation, dtype, estimator)."""
        key = (impl, dtype, estimator)
        if key not in self._small:
            spec = self._spec(impl, self.s.small_batch, dtype, estimator)
            self._small[key] = run_worker(spec, rss_limit=None, timeout_s=self.s.timeout_s, poll_s=self.s.poll_s)
        return self._small[key]

    def measure(self, impl: str, batch: int, dtype: str, estimator: str, *, warmup=None, reps=None,
                record: bool = True, label: str = "") -> dict:
        """Time and extra peak memory of one implementation at one batch size (a new process).

        Returns a dict with the spec's fields plus ``status``, ``times_s``, ``median_s``, ``min_s``, ``max_s``,
        ``first_s``, ``peak_bytes``, ``small_peak_bytes``, ``extra_bytes`` (peak minus the small run's),
        ``message``.
        """
        entry = _impls.get(impl)
        row = {"impl": impl, "framework": entry.framework, "kind": entry.kind, "batch": batch, "dim": self.s.dim,
               "dtype": dtype, "device": self.s.device, "estimator": estimator}
        self.progress(f"{label}{impl:<16} {dtype:<9} B={batch:<6} ...")
        small = self.small_run(impl, dtype, estimator)
        if small["status"] != "ok":
            res = dict(small, status="error", times_s=[],
                       message=f"small-batch run failed ({small['status']}): {small.get('message', '')}")
            small_peak = None
        else:
            small_peak = small["peak_bytes"]
            limit = None if self.s.device == "cuda" or small_peak is None else small_peak + self.s.budget_bytes
            spec = self._spec(impl, batch, dtype, estimator, warmup=warmup, reps=reps)
            res = run_worker(spec, rss_limit=limit, timeout_s=self.s.timeout_s, poll_s=self.s.poll_s)
        row.update(status=res["status"], times_s=res.get("times_s", []), inner=res.get("inner"),
                   first_call_only=bool(res.get("first_call_only")),
                   first_s=res.get("first_s"), peak_bytes=res.get("peak_bytes"), small_peak_bytes=small_peak,
                   message=res.get("message", ""))
        row.update(_stats(row["times_s"]))
        extra = None
        if row["peak_bytes"] is not None and small_peak is not None:
            extra = row["peak_bytes"] - small_peak
        row["extra_bytes"] = extra
        if row["status"] == "ok" and extra is not None and extra > self.s.budget_bytes:
            row["status"] = "over_budget"
            row["message"] = f"peak {format_bytes(extra)} above the small-batch run exceeds the budget"
        self.progress(f"{label}{impl:<16} {dtype:<9} B={batch:<6} {self._summary(row)}")
        if record:
            self.measurements.append(row)
        return row

    @staticmethod
    def _summary(row: dict) -> str:
        if row["status"] != "ok":
            return f"{row['status']}: {row['message'].splitlines()[0] if row['message'] else ''}"
        spread = ""
        if len(row["times_s"]) > 1:
            spread = f" [{row['min_s']:.3g}-{row['max_s']:.3g}]"
        return f"{row['median_s']:.4g} s{spread}  {format_bytes(row['extra_bytes'], plus=True)}"

    # -------------------------------------------------------------------------------------------------
    def largest_batch(self, impl: str, dtype: str, estimator: str, *, start: int, time_cap_s: float,
                      max_batch: int = 2**22) -> dict:
        """The largest batch B = start * 2^k whose extra peak memory fits the budget, found by doubling.

        Batches already measured in this run are reused. Doubling stops at the first batch that exceeds the
        budget or fails, or when the next step is predicted (from the measured growth of the step time, taken
        between linear and quadratic) to take longer than ``time_cap_s`` per call; the result then says
        so and the true limit is at least the reported batch.
        """
        known = {m["batch"]: m for m in self.measurements
                 if m["impl"] == impl and m["dtype"] == dtype and m["estimator"] == estimator}
        tried, fit, stopped = [], None, "max_batch"
        B = start
        while B <= max_batch:
            m = known.get(B) or self.measure(impl, B, dtype, estimator, warmup=1, reps=1, record=False,
                                             label="[max batch] ")
            tried.append({k: m[k] for k in ("batch", "status", "median_s", "extra_bytes", "message")})
            if m["status"] != "ok":
                stopped = m["status"]
                break
            fit = B
            prev = known.get(B // 2) or next((t for t in tried if t["batch"] == B // 2), None)
            growth = 4.0
            if prev and prev.get("median_s") and m["median_s"]:
                growth = min(4.0, max(2.0, m["median_s"] / prev["median_s"]))
            if m["median_s"] * growth > time_cap_s:
                stopped = "time_cap"
                break
            B *= 2
        rec = {"impl": impl, "dtype": dtype, "estimator": estimator, "largest_fit": fit, "stopped_by": stopped,
               "budget_bytes": self.s.budget_bytes, "time_cap_s": time_cap_s, "tried": tried}
        self.max_batch.append(rec)
        return rec

    # -------------------------------------------------------------------------------------------------
    def ratios(self) -> List[dict]:
        """Headline ratios of each implementation against its baseline and floor measured in this run.

        ``speedup_vs_baseline`` = baseline time / time; ``time_vs_floor`` = time / floor time (three products:
        S = U U^T, G U, G^T U); ``time_vs_symmetric_floor`` = time / symmetric floor time (two products:
        S = U U^T, (G + G^T) U); ``memory_vs_baseline`` = extra memory / the baseline's extra memory. Only
        "ok" measurements count; a ratio whose reference was not measured in this run is None.
        """
        ok = {(m["impl"], m["batch"], m["dtype"], m["estimator"]): m for m in self.measurements
              if m["status"] == "ok" and not m.get("first_call_only")}
        out = []
        for (impl, batch, dtype, est), m in ok.items():
            entry = _impls.get(impl)
            if entry.kind == "floor":
                continue
            base_name = _impls.BASELINES.get(impl)
            floor_name = _impls.FLOORS.get(entry.framework)
            sym_name = _impls.SYMMETRIC_FLOORS.get(entry.framework)
            base = ok.get((base_name, batch, dtype, est)) if base_name else None
            floor = ok.get((floor_name, batch, dtype, est)) if floor_name else None
            sym = ok.get((sym_name, batch, dtype, est)) if sym_name else None
            r = {"impl": impl, "batch": batch, "dtype": dtype, "estimator": est,
                 "baseline": base_name if base else None, "floor": floor_name if floor else None,
                 "symmetric_floor": sym_name if sym else None,
                 "speedup_vs_baseline": None, "memory_vs_baseline": None, "time_vs_floor": None,
                 "time_vs_symmetric_floor": None}
            if base:
                r["speedup_vs_baseline"] = base["median_s"] / m["median_s"]
                if base["extra_bytes"] and m["extra_bytes"] is not None and base["extra_bytes"] > 0:
                    r["memory_vs_baseline"] = m["extra_bytes"] / base["extra_bytes"]
            if floor:
                r["time_vs_floor"] = m["median_s"] / floor["median_s"]
            if sym:
                r["time_vs_symmetric_floor"] = m["median_s"] / sym["median_s"]
            if base or floor or sym:
                out.append(r)
        return out

    def to_json(self, meta: dict) -> dict:
        return {"meta": meta, "settings": asdict(self.s), "measurements": self.measurements,
                "ratios": self.ratios(), "max_batch": self.max_batch}
