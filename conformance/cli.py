"""``hardneg verify``: run the conformance suite on the installed backends or on any target.

    hardneg verify [--backend torch|jax|tf|all] [--target MODULE:FUNCTION --framework numpy|torch|jax|tensorflow]
                   [--command CMD [--timeout S]] [--errors exact|type] [--profile strict|practical]
                   [--max-examples N] [--seed S] [--json PATH]

Without arguments every installed backend of :data:`conformance.BACKENDS` is verified; a progress bar runs on
stderr, then a table (backend, framework version, device, features verified, examples, worst value and gradient
error as a fraction of tolerance, verdict), the examples each feature drew per backend and, for each failure, a
runnable snippet that reproduces it. The exit status is 1 when anything failed. Backends run in worker processes,
two at a time, the longest first; JAX, which spends its time compiling, is verified by two workers (the
``hcl_loss`` features and the graph objective's, see :data:`SPLIT`), so that it keeps both cores busy once the
other backends are done.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional

__all__ = ["add_arguments", "run", "DEFAULT_EXAMPLES"]

from .backends import DEFAULT_MAX_EXAMPLES as DEFAULT_EXAMPLES  # noqa: E402 - per framework, see backends.py


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=["torch", "jax", "tf", "all"], default=None,
                        help="verify this backend (default: every installed backend)")
    parser.add_argument("--target", metavar="MODULE:FUNCTION", default=None,
                        help="verify any implementation with the spec's signature (requires --framework)")
    parser.add_argument("--framework", choices=["numpy", "torch", "jax", "tensorflow"], default=None,
                        help="framework of --target: inputs are built and gradients taken in it")
    parser.add_argument("--command", metavar="CMD", default=None, dest="port_command",  # "command": hardneg's
                        help="verify a port in any language: CMD is started once through the shell and answers "
                             "JSON-lines requests on stdin/stdout (docs/conformance.md, the protocol)")
    parser.add_argument("--timeout", type=float, default=None, metavar="S",
                        help="--command: seconds the port may take to answer one request (default 60)")
    parser.add_argument("--errors", choices=["exact", "type"], default=None,
                        help="error contract: exception type and message (exact, default of the strict profile) "
                             "or type only (type, default of the practical profile)")
    parser.add_argument("--profile", choices=["strict", "practical"], default="strict",
                        help="strict (default): the whole input space; practical: realistic input magnitudes "
                             "and error types only, to see first whether a port's math is right")
    parser.add_argument("--max-examples", type=int, default=None, metavar="N",
                        help="examples per feature (default: %s)" % ", ".join(
                            f"{k} {v}" for k, v in DEFAULT_EXAMPLES.items()))
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="Hypothesis seed (default 0)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="where the backends compute: cuda (the first GPU; torch's inputs are put there, JAX and "
                             "TensorFlow must see a GPU, else the backend's worker fails saying so) or cpu (GPUs "
                             "hidden from every framework); default: each framework's own placement (torch: cpu; "
                             "JAX and TensorFlow: a GPU when they see one)")
    parser.add_argument("--json", metavar="PATH", default=None, help="also write the full reports as JSON")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--part", choices=["hcl", "jsd"], default=None, help=argparse.SUPPRESS)


#: Backends verified by two worker processes each: one runs the ``hcl_loss`` features, the other the graph
#: objective's (``jsd_loss``, which need none of the ``hcl_loss`` probes); their reports are merged into one.
SPLIT = ("jax",)


# --------------------------------------------------------------------------------------------------- progress


class _Progress:
    """A one-line progress bar on stderr (plain lines when stderr is not a terminal)."""

    def __init__(self, total: int, stream=None):
        self.total, self.done = max(1, total), 0
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.label = ""
        self.last = 0.0
        self.t0 = time.perf_counter()
        self.seen: set = set()

    def update(self, label: str, n: int = 1) -> None:
        self.done = min(self.total, self.done + n)
        self.label = label
        now = time.perf_counter()
        if self.tty and (now - self.last > 0.1 or self.done == self.total):
            width = 30
            k = int(width * self.done / self.total)
            self.stream.write(f"\r[{'#' * k}{'.' * (width - k)}] {100 * self.done // self.total:3d}% "
                              f"{time.perf_counter() - self.t0:5.0f}s  {label[:40]:<40}")
            self.stream.flush()
            self.last = now
        elif not self.tty and label not in self.seen:
            self.seen.add(label)
            self.stream.write(f"  ... {label}\n")
            self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\r" + " " * 90 + "\r")
            self.stream.flush()


# ----------------------------------------------------------------------------------------------------- running


def _examples(args, framework: str) -> int:
    return args.max_examples if args.max_examples is not None else DEFAULT_EXAMPLES.get(framework, 6)


def _part_features(part: Optional[str]) -> Optional[List[str]]:
    """The features of a worker's part: "jsd" the graph objective's, "hcl" the others, None all of them."""
    if part is None:
        return None
    from .jsd_suite import FEATURES as JSD
    from .suite import FEATURES

    return [f for f in FEATURES if (f in JSD) == (part == "jsd")]


def _verify_one(name: str, target, framework: str, args, progress) -> "object":
    from .suite import verify

    return verify(target, framework=framework, max_examples=_examples(args, framework), seed=args.seed,
                  features=_part_features(getattr(args, "part", None)),
                  progress=(lambda feature, n: progress(f"{name}: {feature}", n)) if progress else None,
                  errors=getattr(args, "errors", None), profile=getattr(args, "profile", "strict"))


def _jax_compilation_cache() -> None:
    """JAX's persistent compilation cache for the verification worker: compiled programs are reused by later
    ``hardneg verify`` runs (the examples of a seed are the same), which then spend seconds, not minutes,
    compiling. In ``$HARDNEG_CACHE`` (default ``~/.cache/hardneg``)/jax; ``HARDNEG_CACHE=off`` disables it. The
    executable is the one XLA compiles, so what is verified does not change."""
    root = os.environ.get("HARDNEG_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hardneg")
    if root == "off":
        return
    try:
        import jax

        path = os.path.join(root, "jax")
        os.makedirs(path, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    except Exception:  # noqa: BLE001 - a cache is an optimisation: verify without it
        pass


def _worker(args) -> int:
    """Verify one backend, printing progress lines and finally the report as one JSON line (internal)."""
    from .backends import backend_target

    t0 = time.perf_counter()
    fn, framework, why = backend_target(args.backend)
    if fn is None:
        key = "not_installed" if why.startswith("not installed") else "crashed"
        print(json.dumps({key: why}), flush=True)
        return 0
    if framework == "jax":
        _jax_compilation_cache()

    def progress(label, n):
        print("P\t" + label, flush=True)

    rep = _verify_one(args.backend, fn, framework, args, progress)
    d = rep.to_dict()
    # the worker's time from importing the framework on, and its CPU time since it started (every thread: XLA's
    # compilers included)
    d["workers"] = [{"part": args.part or "all", "wall_s": round(time.perf_counter() - t0, 1),
                     "cpu_s": round(time.process_time(), 1)}]
    print("R\t" + json.dumps(d, default=str), flush=True)
    return 0


def _run_workers(names: List[str], args, bar: _Progress) -> Dict[str, dict]:
    """Run backends in worker processes, two at a time (the backends of :data:`SPLIT` as two parts each, merged);
    returns name -> report dict (or not_installed / crashed)."""
    slots = max(1, min(2, os.cpu_count() or 1))
    jobs = [(n, p) for n in names for p in (("hcl", "jsd") if n in SPLIT else (None,))]
    # the longest first (measured CPU time, docs/conformance.md): JAX's hcl_loss part, TensorFlow, JAX's graph
    # objective, PyTorch; so the second slot runs the shorter jobs while the first runs the longest
    cost = {("jax", "hcl"): 0, ("tf", None): 1, ("jax", "jsd"): 2, ("torch", None): 3}
    pending = sorted(jobs, key=lambda j: cost.get(j, len(cost)))
    running: Dict[tuple, subprocess.Popen] = {}
    results: Dict[tuple, dict] = {}
    lines: "queue.Queue" = queue.Queue()

    def pump(job, proc):
        for line in proc.stdout:
            lines.put((job, line.rstrip("\n")))
        lines.put((job, None))

    def start(job):
        name, part = job
        cmd = [sys.executable, "-m", "conformance.cli", "--worker", "--backend", name, "--seed", str(args.seed)]
        cmd += ["--part", part] if part else []
        if args.max_examples is not None:
            cmd += ["--max-examples", str(args.max_examples)]
        cmd += ["--profile", args.profile] + (["--errors", args.errors] if args.errors else [])
        env = dict(os.environ)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        err = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a chatty framework cannot block the worker
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        proc.errfile = err
        running[job] = proc
        threading.Thread(target=pump, args=(job, proc), daemon=True).start()

    while pending or running:
        while pending and len(running) < slots:
            start(pending.pop(0))
        job, line = lines.get()
        if line is None:
            proc = running.pop(job)
            proc.wait()
            proc.errfile.seek(0)
            err = proc.errfile.read()[-3000:]
            proc.errfile.close()
            if job not in results:
                results[job] = {"crashed": f"worker exited with status {proc.returncode}: {err}"}
            continue
        if line.startswith("P\t"):
            bar.update(line[2:])
        elif line.startswith("R\t"):
            results[job] = json.loads(line[2:])
        elif line.startswith("{"):
            results[job] = json.loads(line)
    from .report import merge_reports

    out: Dict[str, dict] = {}
    for name in names:
        parts = [d for (n, _), d in results.items() if n == name]
        bad = [d for d in parts if "crashed" in d or "not_installed" in d]
        out[name] = bad[0] if bad else dict(merge_reports(parts), workers=[w for d in parts for w in d["workers"]])
    return out


def _examples_table(results: Dict[str, dict]) -> str:
    """Examples drawn per feature (rows) and backend (columns); a feature that did not run shows its status."""
    from .report import FAILED, PASSED, format_table

    names = [n for n, d in results.items() if d.get("features")]
    feats = list(dict.fromkeys(f["name"] for n in names for f in results[n]["features"]))
    rows = []
    for feat in feats:
        row = [feat]
        for n in names:
            fr = next((f for f in results[n]["features"] if f["name"] == feat), None)
            row.append("-" if fr is None else str(fr["examples"]) if fr["status"] in (PASSED, FAILED) else fr["status"])
        rows.append(row)
    return format_table(rows, ["examples per feature"] + names)


def _fmt(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.2g}"


def _row(name: str, d: dict) -> List[str]:
    if "not_installed" in d:
        return [name, "-", "-", "-", "-", "-", "-", d["not_installed"]]
    if "crashed" in d:
        return [name, "-", "-", "-", "-", "-", "-", "ERROR (the worker crashed)"]
    return [name, f"{d['framework']} {d['framework_version']}", d["device"], d["features_verified"],
            str(d["examples"]), _fmt(d["worst_value"]), _fmt(d["worst_grad"]), d["verdict"]]


def run(args) -> int:
    from .backends import BACKENDS
    from .report import format_table
    from .suite import planned_examples

    if args.worker:
        return _worker(args)
    if args.port_command and (args.target or args.framework or args.backend):
        print("hardneg verify: --command goes alone (not with --target, --framework or --backend)", file=sys.stderr)
        return 2
    if args.timeout is not None and not args.port_command:
        print("hardneg verify: --timeout goes with --command", file=sys.stderr)
        return 2
    if args.target and not args.framework:
        print("hardneg verify: --target needs --framework (numpy, torch, jax or tensorflow)", file=sys.stderr)
        return 2
    if args.framework and not args.target:
        print("hardneg verify: --framework goes with --target", file=sys.stderr)
        return 2
    import hardneg

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.device:  # read by the adapters (conformance.adapters.DEVICE_ENV); the workers inherit it
        os.environ["HARDNEG_VERIFY_DEVICE"] = args.device
        if args.device == "cpu":  # before any framework is imported, here or in a worker
            os.environ["JAX_PLATFORMS"] = "cpu"
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
    results: Dict[str, dict] = {}
    t0 = time.perf_counter()
    if args.port_command:
        from .command import DEFAULT_TIMEOUT, verify_command

        n = _examples(args, "command")
        print(f"hardneg verify: the port `{args.port_command}` against spec {hardneg.SPEC_VERSION}, seed {args.seed}, "
              f"{n} examples per feature, profile {args.profile}", file=sys.stderr)
        bar = _Progress(planned_examples(n))
        rep = verify_command(args.port_command, max_examples=n, seed=args.seed, errors=args.errors,
                             profile=args.profile,
                             timeout=args.timeout if args.timeout is not None else DEFAULT_TIMEOUT,
                             progress=lambda feature, k: bar.update(f"port: {feature}", k))
        bar.close()
        results["port"] = rep.to_dict()
    elif args.target:
        from .adapters import resolve_target

        fw = {"tf": "tensorflow"}.get(args.framework, args.framework)
        n = _examples(args, fw)
        print(f"hardneg verify: {args.target} ({fw}) against spec {hardneg.SPEC_VERSION}, seed {args.seed}, "
              f"{n} examples per feature", file=sys.stderr)
        bar = _Progress(planned_examples(n))
        # As ``python -m`` and pytest do, the current folder is importable: the ``hardneg`` console script's
        # sys.path[0] is its bin folder, so without this ``--target mymodule:fn`` next to mymodule.py fails.
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            target = resolve_target(args.target)
        except Exception as e:  # noqa: BLE001
            print(f"hardneg verify: cannot import {args.target}: {type(e).__name__}: {e}", file=sys.stderr)
            return 2
        rep = _verify_one(args.target, target, fw, args, bar.update)
        bar.close()
        results[args.target] = rep.to_dict()
    else:
        names = list(BACKENDS) if args.backend in (None, "all") else [args.backend]
        total = sum(planned_examples(_examples(args, BACKENDS[n][1])) for n in names)
        print(f"hardneg verify: backends {', '.join(names)} against spec {hardneg.SPEC_VERSION}, seed {args.seed}"
              + ("" if args.max_examples is None else f", {args.max_examples} examples per feature"),
              file=sys.stderr)
        bar = _Progress(total)
        results = _run_workers(names, args, bar)
        bar.close()
        results = {n: results[n] for n in names}

    header = ["backend", "framework", "device", "features verified", "examples", "worst value err",
              "worst grad err", "verdict"]
    print(format_table([_row(n, d) for n, d in results.items()], header))
    print("(errors are fractions of each example's derived tolerance: <= 1 conforms; docs/conformance.md)")
    if any(d.get("features") for d in results.values()):
        print("\n" + _examples_table(results))
    failed = False
    from .report import group_failures

    for name, d in results.items():
        if "crashed" in d:
            failed = True
            print(f"\n{name}: {d['crashed']}")
        if "profile" in d:
            print(f"{name}: profile {d['profile']}, error contract: "
                  + ("exception type and message" if d["errors"] == "exact" else "exception type only")
                  + "".join(f"; {n}" for n in d.get("notes", []) if name == "port"))
        # one failure, one line: the same cause in several features is shown once, with its smallest example
        fails = [f for fr in d.get("features", []) for f in fr["failures"]]
        for f, feats in group_failures(fails):
            failed = True
            where = (f"feature '{feats[0]}'" if len(feats) == 1 else
                     f"{len(feats)} features ({', '.join(feats)}); the smallest example, from '{f['feature']}'")
            print(f"\n=== {name}: {where} failed: {f['check']}\n{f['message']}\n"
                  f"example: {f['case']}\n--- snippet (paste into Python) ---\n{f['snippet']}")
        for fr in d.get("features", []):
            if fr["status"] == "not supported":
                why = "the port answered \"unsupported\"" if name == "port" else "the target raised NotImplementedError"
                print(f"{name}: feature '{fr['name']}' not supported ({why})")
    cpu = [f"{n} {sum(w['cpu_s'] for w in d['workers']):.0f} s" for n, d in results.items() if d.get("workers")]
    print(f"\n{'FAIL' if failed else 'PASS'} in {time.perf_counter() - t0:.0f} s"
          + (f" (CPU time of the workers: {', '.join(cpu)})" if cpu else ""))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"spec_version": hardneg.SPEC_VERSION, "seed": args.seed, "ok": not failed,
                       "results": results}, fh, indent=2, default=str)
    return 1 if failed else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conformance.cli")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
