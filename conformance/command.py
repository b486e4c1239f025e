"""``hardneg verify --command CMD``: verify a port in any language over a JSON-lines protocol on stdin/stdout.

The suite starts ``CMD`` once through the shell and writes one JSON request per line to its stdin; the port
answers each with one JSON line on its stdout (docs/conformance.md, "Verify a port in any language" has the
protocol and a complete example exchange). The port needs nothing but a JSON library:

* request ``{"id", "fn": "hcl_loss" | "jsd_loss", "inputs", "shapes", "dtypes", "kwargs", "cotangent", "grad",
  "grad_temperature"}``;
* response ``{"id", "value", "grads"}``, ``{"id", "error": {"type", "message"}}`` or ``{"id", "unsupported"}``;
* non-finite numbers are ``{"$float": "nan" | "inf" | "-inf"}`` in both directions.

:class:`Port` is the client (one process, per-request timeout, a clear :class:`PortError` with the tail of the
port's stderr when it exits, hangs or writes an invalid response — after which it is restarted, a bounded number of
times); :class:`CommandAdapter` plugs it into :func:`conformance.verify` as the framework ``"command"``;
:func:`verify_command` is the entry point. :func:`serve` is the other side, in Python: ``python -m
conformance.command --serve-reference`` answers with the float64 reference (a port that passes every check).
"""

from __future__ import annotations

import builtins
import json
import math
import os
import queue
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from .adapters import Adapter, Outcome
from .cases import Case, round_to_dtype

__all__ = ["Port", "PortError", "CommandAdapter", "verify_command", "encode", "decode", "serve", "run", "port",
           "DEFAULT_TIMEOUT", "HCL_KWARGS"]

#: Seconds a port may take to answer one request (``--timeout``); the first request includes its start-up.
DEFAULT_TIMEOUT = 60.0
#: Protocol failures after which the port is not restarted any more (each later request fails at once).
MAX_RESTARTS = 5
#: Every keyword of ``hcl_loss`` (spec 1.1) with its default: a request always carries all of them.
HCL_KWARGS = dict(temperature=0.5, beta=1.0, tau_plus=0.1, estimator="hard", clamp=True, normalize=True,
                  reduction="mean", layout=None, symmetric=True)
JSD_KWARGS = dict(beta=1.0, tau_plus=0.5, convention="released", reduction="mean")
_STDERR_TAIL = 2000


class PortError(Exception):
    """The port exited, did not answer in time, or wrote something that is not a valid response."""


# ------------------------------------------------------------------------------------------------------ JSON


def encode(x: Any) -> Any:
    """A JSON-ready value: arrays as nested lists, non-finite floats as ``{"$float": ...}``, NumPy scalars as
    Python numbers."""
    if isinstance(x, np.ndarray):
        if x.dtype.kind in "iub":
            return x.tolist()
        return encode(np.asarray(x, dtype=np.float64).tolist())
    if isinstance(x, (list, tuple)):
        return [encode(v) for v in x]
    if isinstance(x, dict):
        return {k: encode(v) for k, v in x.items()}
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        f = float(x)
        if math.isnan(f):
            return {"$float": "nan"}
        if math.isinf(f):
            return {"$float": "inf" if f > 0 else "-inf"}
        return f
    return x


_SPECIAL = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _hook(d: dict):
    if len(d) == 1 and "$float" in d:
        v = d["$float"]
        if v not in _SPECIAL:
            raise ValueError(f'{{"$float": {v!r}}}: the value must be "nan", "inf" or "-inf"')
        return _SPECIAL[v]
    return d


def _no_constant(name: str):
    raise ValueError(f"bare {name} is not JSON: write {{\"$float\": \"{_SPECIAL_NAME[name]}\"}}")


_SPECIAL_NAME = {"NaN": "nan", "Infinity": "inf", "-Infinity": "-inf"}


def decode(line: str) -> Any:
    """Parse one protocol line (``{"$float": ...}`` -> float; bare NaN/Infinity rejected)."""
    return json.loads(line, object_hook=_hook, parse_constant=_no_constant)


def dumps(obj: Any) -> str:
    return json.dumps(encode(obj), allow_nan=False, separators=(",", ":"))


def _array(x: Any, what: str) -> np.ndarray:
    """A response's number or nested list of numbers as float64 (PortError on anything else)."""
    def bad(why):
        raise PortError(f"invalid response: {what} {why}")

    def check(v, path):
        if isinstance(v, list):
            for i, e in enumerate(v):
                check(e, path + (i,))
        elif v is None:
            bad(f"holds null at {path} (JavaScript's JSON.stringify writes NaN and Infinity as null: "
                f"write {{\"$float\": \"nan\"}})")
        elif isinstance(v, bool) or not isinstance(v, (int, float)):
            bad(f"holds {v!r} at {path}, not a number")

    check(x, ())
    try:
        a = np.asarray(x, dtype=np.float64)
    except (ValueError, TypeError):
        bad("is a ragged nested list (rows of different lengths)")
    return a


# ------------------------------------------------------------------------------------------------------ the client


class Port:
    """One port process, spoken to over stdin/stdout, one JSON object per line each way.

    Calling the port object (``port(z1, z2, **kwargs)``) sends an ``hcl_loss`` request for the value only and
    returns it, raising the exception the port reported: it is a callable target like any other (the error
    contract and the failure snippets call it that way); ``port.jsd_loss`` does the same for ``jsd_loss``.
    """

    def __init__(self, command: str, timeout: float = DEFAULT_TIMEOUT, max_restarts: int = MAX_RESTARTS,
                 env: Optional[Dict[str, str]] = None):
        self.command = command
        self.timeout = float(timeout)
        self.max_restarts = int(max_restarts)
        self.env = env
        self.proc: Optional[subprocess.Popen] = None
        self.lines: "queue.Queue" = queue.Queue()
        self.errfile = None
        self.next_id = 1
        self.starts = 0
        self.failures: List[str] = []  # protocol failures, in order
        self.requests = 0
        self.seconds = 0.0
        self.jsd_loss = _JsdEntry(self)

    # -- process ------------------------------------------------------------------------------------------
    def _start(self) -> None:
        if self.starts > self.max_restarts:
            raise PortError(f"the port is not restarted any more after {self.starts} starts; first failure: "
                            f"{self.failures[0] if self.failures else '?'}")
        self.starts += 1
        self.errfile = tempfile.TemporaryFile(mode="w+b")
        self.lines = queue.Queue()
        self.proc = subprocess.Popen(self.command, shell=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.errfile, env=self.env, start_new_session=True)
        threading.Thread(target=self._pump, args=(self.proc, self.lines), daemon=True).start()

    @staticmethod
    def _pump(proc, lines) -> None:
        for raw in proc.stdout:
            lines.put(raw)
        lines.put(None)

    def stderr_tail(self, n: int = _STDERR_TAIL) -> str:
        if self.errfile is None:
            return ""
        try:
            self.errfile.flush()
            size = self.errfile.seek(0, os.SEEK_END)
            self.errfile.seek(max(0, size - n))
            return self.errfile.read().decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""

    def _kill(self) -> None:
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        try:
            if proc.stdin:
                proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the shell and whatever it started (its own session)
            except OSError:
                pass
            try:
                proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                pass

    def close(self) -> None:
        """End the port: close its stdin (the protocol's end), then kill it if it has not exited within 2 s."""
        self._kill()
        if self.errfile is not None:
            self.errfile.close()
            self.errfile = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _invalid(self, what: str) -> PortError:
        """A well-formed response whose content is wrong (a null in an array, a missing gradient): the example
        fails; the port keeps running."""
        msg = f"{what} (command: {self.command})"
        self.failures.append(msg)
        return PortError(msg)

    def _fail(self, what: str, fatal: bool = False) -> PortError:
        """Record a protocol failure, end the process (restarted by the next request unless ``fatal``)."""
        if fatal:  # a hang: restarting would cost a timeout per example
            self.starts = self.max_restarts + 1
        if self.proc is not None:  # killed at once (a write blocked on a full pipe then fails instead of hanging)
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
        tail = self.stderr_tail().rstrip()
        msg = f"{what} (command: {self.command})"
        msg += f"\n--- the port's stderr (last {_STDERR_TAIL} characters) ---\n{tail}" if tail else \
            " (the port wrote nothing on stderr)"
        self.failures.append(msg)
        self._kill()
        return PortError(msg)

    # -- one exchange -------------------------------------------------------------------------------------
    def request(self, req: Dict[str, Any]) -> Dict[str, Any]:
        """Send one request (``id`` is assigned) and return the port's validated response object."""
        if self.proc is None or self.proc.poll() is not None:
            if self.proc is not None:
                raise self._fail(f"the port exited with status {self.proc.returncode}")
            self._start()
        rid = self.next_id
        self.next_id += 1
        req = {"id": rid, **req}
        data = (dumps(req) + "\n").encode()
        t0 = time.perf_counter()
        # written by a thread: a port that stops reading must not block verify once the pipe's buffer is full
        wrote: List[BaseException] = []

        def write(stdin=self.proc.stdin):
            try:
                stdin.write(data)
                stdin.flush()
            except (OSError, ValueError) as e:  # BrokenPipeError: the port exited; ValueError: closed by _kill
                wrote.append(e)

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        self.requests += 1
        try:
            raw = self.lines.get(timeout=self.timeout)
        except queue.Empty:
            raise self._fail(f"the port did not answer request {rid} ({req['fn']}) within {self.timeout:g} s "
                             "(--timeout); it was killed and is not restarted", fatal=True)
        finally:
            self.seconds += time.perf_counter() - t0
        if raw is None:
            try:
                code = self.proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                code = "unknown: it closed its stdout"
            when = "before request {rid} could be sent" if wrote else "instead of answering request {rid}"
            raise self._fail(f"the port exited with status {code} " + when.format(rid=rid) + f" ({req['fn']})")
        text = raw.decode("utf-8", "replace").strip()
        try:
            resp = decode(text)
        except ValueError as e:
            raise self._fail(f"invalid response to request {rid}: not a JSON line ({e}): {text[:200]!r} (stdout "
                             "carries responses only: write logs to stderr)")
        if not isinstance(resp, dict):
            raise self._fail(f"invalid response to request {rid}: not a JSON object: {text[:200]!r}")
        if resp.get("id") != rid:
            raise self._fail(f"invalid response to request {rid}: its id is {resp.get('id')!r}")
        kinds = [k for k in ("value", "error", "unsupported") if k in resp]
        if len(kinds) != 1:
            raise self._fail(f"invalid response to request {rid}: it must hold exactly one of \"value\", \"error\", "
                             f"\"unsupported\"; got keys {sorted(resp)}")
        if "error" in resp:
            err = resp["error"]
            if not (isinstance(err, dict) and isinstance(err.get("type"), str)
                    and isinstance(err.get("message"), str)):
                raise self._fail(f"invalid response to request {rid}: \"error\" must be {{\"type\": str, "
                                 f"\"message\": str}}; got {err!r}")
        if "unsupported" in resp and not isinstance(resp["unsupported"], str):
            raise self._fail(f"invalid response to request {rid}: \"unsupported\" must be a string (the reason)")
        return resp

    def call(self, req: Dict[str, Any]) -> Dict[str, Any]:
        """:meth:`request`, raising the port's error (its type) or NotImplementedError for "unsupported"."""
        resp = self.request(req)
        if "unsupported" in resp:
            raise NotImplementedError(f"the port: {resp['unsupported']}")
        if "error" in resp:
            raise _exception(resp["error"]["type"])(resp["error"]["message"])
        return resp

    # -- as a callable target -----------------------------------------------------------------------------
    def __call__(self, z1, z2, **kwargs):
        req = raw_request("hcl_loss", {"z1": z1, "z2": z2, **{k: kwargs.pop(k, None) for k in
                                                             ("negatives", "labels", "negative_labels")}},
                          {**HCL_KWARGS, **kwargs})
        return _array(self.call(req)["value"], "value")

    def __repr__(self) -> str:
        return f"Port({self.command!r})"


class _JsdEntry:
    """``port.jsd_loss(local, graph, batch, **kwargs)``: the port's ``jsd_loss`` as a callable (value only)."""

    __name__ = "jsd_loss"

    def __init__(self, port: Port):
        self.port = port

    def __call__(self, local, graph, batch, **kwargs):
        req = raw_request("jsd_loss", {"local": local, "graph": graph, "batch": batch}, {**JSD_KWARGS, **kwargs})
        return _array(self.port.call(req)["value"], "value")


_EXC_CACHE: Dict[str, type] = {}


def _exception(name: str) -> type:
    """The exception class a port reported by name: a builtin one, or a new class of that name."""
    got = getattr(builtins, name, None)
    if isinstance(got, type) and issubclass(got, Exception):
        return got
    if name not in _EXC_CACHE:
        _EXC_CACHE[name] = type(name if name.isidentifier() else "PortException", (Exception,), {})
    return _EXC_CACHE[name]


def _dtype_of(x) -> str:
    return np.asarray(x).dtype.name


def raw_request(fn: str, arrays: Dict[str, Any], kwargs: Dict[str, Any], *, cotangent: Any = 1.0,
                grad: bool = False, grad_temperature: bool = False, dtype: Optional[str] = None) -> Dict[str, Any]:
    """A request from NumPy arrays (any dtype and shape: the error contract) and keyword arguments."""
    inputs, shapes, dtypes = {}, {}, {}
    for k, v in arrays.items():
        if v is None:
            inputs[k] = None
            continue
        a = np.asarray(v)
        inputs[k] = a
        shapes[k] = list(a.shape)
        dtypes[k] = dtype if (dtype is not None and a.dtype.kind in "fV") else _dtype_of(a)
    return {"fn": fn, "inputs": inputs, "shapes": shapes, "dtypes": dtypes, "kwargs": dict(kwargs),
            "cotangent": cotangent, "grad": bool(grad), "grad_temperature": bool(grad_temperature)}


def case_request(case: Case, want_grad: bool) -> Dict[str, Any]:
    """The request of one conformance case (every input value exactly representable in ``case.dtype``)."""
    arrays = {"z1": case.z1, "z2": case.z2, "negatives": case.negatives, "labels": case.labels,
              "negative_labels": case.negative_labels}
    kw = {**HCL_KWARGS, **case.params}
    return raw_request("hcl_loss", arrays, kw, cotangent=case.cotangent, grad=want_grad,
                       grad_temperature=want_grad and case.temperature_grad, dtype=case.dtype)


def read_outputs(resp: Dict[str, Any], names: List[str], dtype: str, want_grad: bool):
    """``(value, grads or None)`` as float64 arrays rounded to ``dtype``, from a response with a value."""
    value = round_to_dtype(_array(resp["value"], "value"), dtype)
    if not want_grad:
        return value, None
    grads = resp.get("grads")
    if not isinstance(grads, dict):
        raise PortError(f"invalid response: \"grads\" must be an object with {names}; got {grads!r}")
    out = {}
    for k in names:
        if grads.get(k) is None:
            raise PortError(f"invalid response: \"grads\" has no {k!r} (the request asked for the gradients of "
                            f"{', '.join(names)})")
        out[k] = round_to_dtype(_array(grads[k], f"grads.{k}"), dtype)
    return value, out


# ------------------------------------------------------------------------------------------------------ the adapter


class CommandAdapter(Adapter):
    """The framework ``"command"``: cases become protocol requests to a :class:`Port` (the target).

    Numbers come back as JSON (float64) and are rounded to the case's dtype, so results are "returned in the
    input dtype" by construction; the port's gradients are its own (``"grad": true``). The temperature is a number
    (as for a NumPy target): ``"grad_temperature": true`` asks for d loss / d t as ``grads.temperature``.
    """

    framework = "command"
    dtypes = ("float64", "float32", "float16", "bfloat16")
    has_autodiff = True

    def version(self) -> str:
        return "json-lines"

    def device(self) -> str:
        return "-"

    def tensor(self, x, dtype):
        return np.asarray(x)

    def to_numpy(self, x):
        return np.asarray(x, dtype=np.float64)

    def call(self, target: Port, case: Case, want_grad: bool = True) -> Outcome:
        resp = target.call(case_request(case, want_grad))
        names = list(case.arrays) + (["temperature"] if case.temperature_grad else [])
        try:
            value, grads = read_outputs(resp, names, case.dtype, want_grad)
        except PortError as e:
            raise target._invalid(str(e)) from None
        out = Outcome(value, case.dtype)
        if grads is not None:
            out.grads = grads
            out.grad_dtypes = {k: case.dtype for k in grads}
        return out

    def call_raw(self, target, arrays, kwargs):
        z1, z2 = arrays.pop("z1"), arrays.pop("z2")
        return target(z1, z2, **arrays, **kwargs)

    def call_jsd(self, target: "_JsdEntry", case, want_grad: bool = True):
        """``(value, grads, value dtype, grad dtypes)`` of a :class:`conformance.jsd_suite.JsdCase`."""
        req = raw_request("jsd_loss", {"local": case.local, "graph": case.graph, "batch": case.batch},
                          {**JSD_KWARGS, **case.params}, cotangent=case.cotangent, grad=want_grad,
                          dtype=case.dtype)
        resp = target.port.call(req)
        try:
            value, grads = read_outputs(resp, ["local", "graph"], case.dtype, want_grad)
        except PortError as e:
            raise target.port._invalid(str(e)) from None
        return value, grads, case.dtype, {k: case.dtype for k in (grads or {})}


# ------------------------------------------------------------------------------------------------------ verify


def verify_command(command: str, max_examples: Optional[int] = None, seed: int = 0, *, timeout: float = DEFAULT_TIMEOUT,
                   errors: Optional[str] = None, profile: str = "strict", features=None, progress=None,
                   env: Optional[Dict[str, str]] = None, **kw):
    """Verify the port that ``command`` starts (through the shell); returns a :class:`~conformance.report.Report`.

    Protocol failures (the port exited, hung past ``timeout`` seconds, or wrote an invalid response) fail the
    example that caused them, with the tail of the port's stderr; the port is then restarted (at most
    :data:`MAX_RESTARTS` times).
    """
    from .suite import verify

    port = Port(command, timeout=timeout, env=env)
    try:
        rep = verify(port, framework="command", max_examples=max_examples, seed=seed, errors=errors,
                     profile=profile, features=features, progress=progress, **kw)
    finally:
        port.close()
    rep.target = command
    rep.notes.append(f"{port.requests} requests, {port.seconds:.1f} s waiting for the port, {port.starts} start(s)")
    if port.failures:
        rep.notes.append(f"{len(port.failures)} protocol failure(s); the first: {port.failures[0]}")
    return rep


# ------------------------------------------------------------------------------------------------------ snippets

SNIPPET_HEADER = "import numpy as np\nimport conformance.command as cc\n"
SNIPPET_RUN = '''
def run(z1, z2, negatives=None, labels=None, negative_labels=None, *, dtype, cotangent, temperature_grad=False,
        **kwargs):
    """One request to the port (the JSON line is printed: pipe it into the command to replay it by hand)."""
    return cc.run(target, z1, z2, negatives=negatives, labels=labels, negative_labels=negative_labels, dtype=dtype,
                  cotangent=cotangent, temperature_grad=temperature_grad, **kwargs)
'''


def port(command: str, timeout: float = DEFAULT_TIMEOUT) -> Port:
    """A :class:`Port` for a failure snippet (closed at interpreter exit)."""
    import atexit

    p = Port(command, timeout=timeout, max_restarts=0)
    atexit.register(p.close)
    return p


def run(target: Port, z1, z2, *, dtype: str, cotangent=1.0, negatives=None, labels=None, negative_labels=None,
        temperature_grad: bool = False, **kwargs):
    """Send one case to ``target`` (a :class:`Port`), print the request line, return ``(value, grads)``."""
    arr = lambda v: None if v is None else np.asarray(v, dtype=np.float64)  # noqa: E731
    case = Case(z1=arr(z1), z2=arr(z2), negatives=arr(negatives),
                labels=None if labels is None else np.asarray(labels),
                negative_labels=None if negative_labels is None else np.asarray(negative_labels),
                params={**kwargs}, dtype=dtype, cotangent=cotangent, temperature_grad=bool(temperature_grad))
    req = case_request(case, True)
    print("request (without its id):", dumps(req))
    out = CommandAdapter().call(target, case, True)
    return out.value, out.grads


# ------------------------------------------------------------------------------------------------------ serving


def serve(hcl: Callable, jsd: Optional[Callable] = None, stdin=None, stdout=None) -> int:
    """The port side in Python: answer requests on ``stdin`` with ``hcl(request) -> response`` (and ``jsd``).

    ``hcl``/``jsd`` get the decoded request (inputs as NumPy arrays of their dtype) and return the response body
    (``{"value": ..., "grads": ...}``); exceptions become ``{"error": ...}``, NotImplementedError
    ``{"unsupported": ...}``. Used by ``--serve-reference`` and as a template.
    """
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    for line in stdin:
        if not line.strip():
            continue
        req = decode(line)
        fn = {"hcl_loss": hcl, "jsd_loss": jsd}.get(req.get("fn"))
        try:
            if fn is None:
                raise NotImplementedError(f"fn {req.get('fn')!r} is not implemented")
            body = fn(req)
        except NotImplementedError as e:
            body = {"unsupported": str(e) or "not implemented"}
        except Exception as e:  # noqa: BLE001 - reported to the suite, which checks type and message
            body = {"error": {"type": type(e).__name__, "message": str(e)}}
        stdout.write(dumps({"id": req.get("id"), **body}) + "\n")
        stdout.flush()
    return 0


def _np_inputs(req) -> Dict[str, Any]:
    """A request's inputs as NumPy arrays of their dtype and shape (bfloat16 via ml_dtypes)."""
    out = {}
    for k, v in req["inputs"].items():
        if v is None:
            out[k] = None
            continue
        dt = req["dtypes"][k]
        if dt == "bfloat16":
            import ml_dtypes

            dt = ml_dtypes.bfloat16
        out[k] = np.asarray(v, dtype=np.float64 if np.dtype(dt).kind in "fV" else None).astype(dt).reshape(
            req["shapes"][k])
    return out


def _serve_reference() -> int:
    """Answer with the float64 reference (inputs in their dtype, results rounded to it): a conforming port."""
    import hardneg

    def hcl(req):
        x = _np_inputs(req)
        kw = dict(req["kwargs"])
        dt = req["dtypes"].get("z1", "float64")
        if not req["grad"]:
            return {"value": hardneg.hcl_loss(x.pop("z1"), x.pop("z2"), **x, **kw)}
        v, g = hardneg.hcl_loss_and_grad(x.pop("z1"), x.pop("z2"), **x, **kw,
                                         cotangent=np.asarray(req["cotangent"], dtype=np.float64))
        r = lambda a: None if a is None else round_to_dtype(np.asarray(a, dtype=np.float64), dt)  # noqa: E731
        grads = {"z1": r(g.z1), "z2": r(g.z2), "negatives": r(g.negatives)}
        if req.get("grad_temperature"):
            grads["temperature"] = r(g.temperature)
        return {"value": r(v), "grads": grads}

    def jsd(req):
        x = _np_inputs(req)
        kw = dict(req["kwargs"])
        dt = req["dtypes"].get("local", "float64")
        r = lambda a: round_to_dtype(np.asarray(a, dtype=np.float64), dt)  # noqa: E731
        if not req["grad"]:
            return {"value": hardneg.jsd_loss(x["local"], x["graph"], x["batch"], **kw)}
        v, g = hardneg.jsd_loss_and_grad(x["local"], x["graph"], x["batch"], **kw,
                                         cotangent=np.asarray(req["cotangent"], dtype=np.float64))
        return {"value": r(v), "grads": {"local": r(g.local), "graph": r(g.graph)}}

    return serve(hcl, jsd)


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve-reference"]:
        sys.exit(_serve_reference())
    print(f"usage: python -m conformance.command --serve-reference   (got {shlex.join(sys.argv[1:])})", file=sys.stderr)
    sys.exit(2)
