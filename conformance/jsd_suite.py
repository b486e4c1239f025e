"""Conformance of the graph objective ``jsd_loss`` (docs/spec.md section 14): features, cases, checks, snippets.

:func:`conformance.verify` runs these features on the ``jsd_loss`` found next to the verified ``hcl_loss`` (same
module or same top-level package; a target without one has them "skipped"); :func:`verify_jsd` verifies a
``jsd_loss`` alone (used for the planted defects of :mod:`conformance.jsd_defects`).

Tolerances are derived per example from its conditioning, measured with the float64 reference itself: the inputs
are perturbed by a relative (d + 4)·u in random directions (u the unit roundoff of the compute dtype: what a
rounded matrix product and the elementwise operations do), the reference's change of value and gradients is the
propagated error, and the rounding of the terms themselves (their magnitude times u) is added; half precision
adds the rounding of the returned dtype. Examples within rounding of a non-differentiable point (the scale c's
maximum changing hands, the corrected floor) have their gradients not compared.
"""

from __future__ import annotations

import functools
import math
import zlib
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from hardneg.validation import CONVENTIONS, REDUCTIONS

from .cases import COMPUTE_DTYPE, OUTPUT_ROUNDOFF, TINY, UNIT_ROUNDOFF, quantize, round_to_dtype
from .checks import CheckResult, _value_check, check_error, returned_grad

__all__ = ["FEATURES", "JsdCase", "find_target", "jsd_cases", "call", "compare", "error_cases", "run_feature",
           "verify_jsd", "infograph_jsd", "run_jsd", "check_jsd"]

#: feature name -> description (appended to conformance.FEATURES, in this order)
FEATURES = {
    "jsd_released": "graph objective (jsd_loss), convention='released': beta = 0 and beta > 0, every reduction",
    "jsd_corrected": "graph objective, convention='corrected' (weights towards hard negatives, debiased, floored)",
    "jsd_float32": "graph objective, both conventions, float32 inputs",
    "jsd_half": "graph objective, float16 and bfloat16 inputs (computed in float32)",
    "jsd_special": "graph objective at beta = 0, tau_plus = 0: InfoGraph's JSD loss (closed form), both conventions",
    "jsd_nonfinite": "graph objective: a NaN/inf element of local or graph makes every output element NaN",
    "jsd_errors": "graph objective: every bad input raises the reference's exception type and message",
}

_ARRAYS = ("local", "graph")


def find_target(fn) -> Optional[Callable]:
    """The ``jsd_loss`` next to ``fn``: in its module, else in its top-level package (None if neither has one)."""
    import importlib
    import sys

    if getattr(fn, "__name__", "") in ("jsd_loss", "jsd_loss_and_grad"):
        return fn
    if isinstance(getattr(fn, "command", None), str) and callable(getattr(fn, "jsd_loss", None)):
        return fn.jsd_loss  # a port over the JSON-lines protocol (conformance.command.Port)
    modname = getattr(fn, "__module__", None) or ""
    for name in (modname, modname.split(".")[0]):
        if not name:
            continue
        mod = sys.modules.get(name)
        if mod is None:
            try:
                mod = importlib.import_module(name)
            except Exception:  # noqa: BLE001 - no importable package: no jsd_loss
                continue
        got = getattr(mod, "jsd_loss", None)
        if callable(got):
            return got
    return None


@dataclass
class JsdCase:
    """One ``jsd_loss`` call: float64 arrays exactly representable in ``dtype``, the batch vector, parameters."""

    local: np.ndarray
    graph: np.ndarray
    batch: np.ndarray
    params: Dict[str, Any]
    dtype: str = "float64"
    cotangent: Any = 1.0
    origin: Dict[str, Any] = field(default_factory=dict)

    @property
    def arrays(self) -> Dict[str, np.ndarray]:
        return {"local": self.local, "graph": self.graph}

    def summary(self) -> str:
        p = self.params
        return (f"N={self.local.shape[0]}, G={self.graph.shape[0]}, d={self.local.shape[1]}, {self.dtype}, "
                f"convention={p['convention']!r}, beta={p['beta']!r}, tau_plus={p['tau_plus']!r}, "
                f"reduction={p['reduction']!r}")

    def key(self):
        return (self.local.tobytes(), self.graph.tobytes(), self.batch.tobytes(), repr(sorted(self.params.items())),
                self.dtype, repr(self.cotangent))

    def reference(self, want_grad: bool = True, local=None, graph=None):
        from hardneg.jsd import _run

        lo = self.local if local is None else local
        gr = self.graph if graph is None else graph
        cot = np.asarray(self.cotangent, dtype=np.float64) if want_grad else None
        return _run(lo, gr, self.batch, dict(self.params), want_grad, cot)


# ------------------------------------------------------------------------------------------------------------
# Strategies


#: (N, G, d) of a quick run's examples (``few=True``); the first is the shape of the dtype probe (``_probe_case``).
QUICK_SHAPES = ((5, 3, 2), (7, 5, 4))


def quick_combinations(conventions=CONVENTIONS, betas: str = "any", reductions=REDUCTIONS,
                       rotation: int = 0) -> Tuple[dict, ...]:
    """A quick run's combinations of the options that change JAX's compiled program (convention, beta = 0 or
    not, reduction) and the shape: the simplest in the probe's shape, then choice ``rotation mod n`` of each
    option in the larger shape (as :func:`conformance.strategies.quick_combinations` for ``hcl_loss``)."""
    modes = {"zero": ("zero",), "positive": ("positive",), "any": ("positive", "zero")}[betas]
    options = {"convention": tuple(conventions), "beta": modes, "reduction": tuple(reductions)}
    first = dict({k: v[0] for k, v in options.items()}, shape=0)
    other = dict({k: v[rotation % len(v)] for k, v in options.items()}, shape=1)
    return (first, other)


def jsd_cases(dtype: str = "float64", conventions=CONVENTIONS, betas: str = "any", taus: str = "any",
              reductions=REDUCTIONS, few: bool = False, rotation: int = 0):
    """Hypothesis strategy of :class:`JsdCase` (small: N <= 7, G <= 5, d <= 4; values of modest size).

    ``betas``: "zero", "positive" or "any"; ``taus``: "zero" or "any". ``few`` (a quick run of a compiling
    framework): the shape, the convention, whether beta is 0 and the reduction come from
    :func:`quick_combinations` (``rotation``: which), everything else is drawn as usual.
    """
    from hypothesis import strategies as st

    @st.composite
    def draw_case(draw):
        combo = draw(st.sampled_from(quick_combinations(conventions, betas, reductions, rotation))) if few else None
        if few:
            N, G, d = QUICK_SHAPES[combo["shape"]]
        else:
            N, G, d = draw(st.integers(1, 7)), draw(st.integers(2, 5)), draw(st.integers(1, 4))
        rseed = draw(st.integers(0, 2**32 - 1))
        scale = draw(st.sampled_from([1.0, 0.25, 2.0, 4.0]))
        bits = draw(st.sampled_from([None, 5]))  # coarse values: readable snippets, exact ties of the scale c
        rng = np.random.default_rng(rseed)
        local = round_to_dtype(quantize(rng.standard_normal((N, d)) * scale, bits), dtype)
        graph = round_to_dtype(quantize(rng.standard_normal((G, d)) * scale, bits), dtype)
        batch = rng.integers(0, G, N)
        if draw(st.booleans()):
            batch = np.sort(batch)  # PyTorch Geometric's batches are sorted
        conv = combo["convention"] if few else draw(st.sampled_from(list(conventions)))
        if betas == "zero" or (few and combo["beta"] == "zero"):
            beta = 0.0
        elif betas == "positive":
            beta = draw(st.sampled_from([1.0, 2.0, 10.0]) | st.floats(0.05, 12.0))
        elif few:  # the combination says beta > 0: any positive beta a full run draws
            beta = draw(st.sampled_from([1.0, 2.0, 10.0]) | st.floats(0.0, 12.0).filter(lambda b: b > 0.0))
        else:
            beta = draw(st.sampled_from([0.0, 1.0, 2.0, 10.0]) | st.floats(0.0, 12.0))
        tau = 0.0 if taus == "zero" else draw(st.sampled_from([0.5, 0.0, 0.1, 0.9]) | st.floats(0.0, 0.95))
        red = combo["reduction"] if few else draw(st.sampled_from(list(reductions)))
        if red == "none":
            cot = round_to_dtype(np.round(rng.uniform(-2, 2, N) * 8) / 8, dtype)
        else:
            cot = float(draw(st.sampled_from([1.0, -0.5, 3.0])))
        return JsdCase(local, graph, batch.astype(np.int64),
                       dict(beta=float(beta), tau_plus=float(tau), convention=conv, reduction=red), dtype, cot)

    return draw_case()


# ------------------------------------------------------------------------------------------------------------
# Calling a target through its framework


def _dt(x) -> str:
    from .adapters import _dtype_name

    return _dtype_name(x.dtype)


def call(adapter, target: Callable, case: JsdCase, want_grad: bool = True):
    """``(value, grads or None, value dtype, grad dtypes)`` as float64 NumPy, gradients by the framework."""
    fw = adapter.framework
    kw = dict(case.params)
    if fw == "command":  # a port over the JSON-lines protocol (conformance.command)
        return adapter.call_jsd(target, case, want_grad)
    with adapter.context():
        lo, gr = adapter.tensor(case.local, case.dtype), adapter.tensor(case.graph, case.dtype)
        b = adapter.tensor(case.batch, "int64")
        cot64 = np.asarray(case.cotangent, dtype=np.float64)
        if fw == "numpy":
            from .adapters import NumpyAdapter

            twin = NumpyAdapter.twin(target) if want_grad else None
            if twin is None:
                v = target(lo, gr, b, **kw)
                v = v[0] if isinstance(v, tuple) else v
                return adapter.to_numpy(v), None, np.asarray(v).dtype.name, {}
            v, g = twin(lo, gr, b, cotangent=cot64, **kw)
            gd = dict(zip(_ARRAYS, g)) if not hasattr(g, "_fields") else {k: getattr(g, k) for k in _ARRAYS}
            return (adapter.to_numpy(v), {k: adapter.to_numpy(x) for k, x in gd.items()}, np.asarray(v).dtype.name,
                    {k: np.asarray(x).dtype.name for k, x in gd.items()})
        if fw == "torch":
            t = adapter.torch
            lo.requires_grad_(want_grad)
            gr.requires_grad_(want_grad)
            v = target(lo, gr, b, **kw)
            if not want_grad:
                return adapter.to_numpy(v), None, _dt(v), {}
            cot = t.tensor(cot64, dtype=t.float64).to(v.dtype).reshape(v.shape)
            gs = t.autograd.grad(v, [lo, gr], grad_outputs=cot, allow_unused=True)
            gs = [t.zeros_like(x) if g is None else g for x, g in zip((lo, gr), gs)]
        elif fw == "jax":
            jax, jnp = adapter.jax, adapter.jnp
            if not want_grad:
                v = target(lo, gr, b, **kw)
                return adapter.to_numpy(v), None, _dt(v), {}
            v, vjp = jax.vjp(lambda x, y: target(x, y, b, **kw), lo, gr)
            gs = vjp(jnp.asarray(cot64.astype(v.dtype).reshape(v.shape)))  # NumPy: no eager JAX op to compile
        else:
            tf = adapter.tf
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(lo)
                tape.watch(gr)
                v = target(lo, gr, b, **kw)
            if not want_grad:
                return adapter.to_numpy(v), None, _dt(v), {}
            cot = tf.reshape(tf.cast(tf.constant(cot64), v.dtype), v.shape)
            gs = tape.gradient(v, [lo, gr], output_gradients=cot)
            gs = [tf.zeros_like(x) if g is None else g for x, g in zip((lo, gr), gs)]
        return (adapter.to_numpy(v), {k: adapter.to_numpy(g) for k, g in zip(_ARRAYS, gs)}, _dt(v),
                {k: _dt(g) for k, g in zip(_ARRAYS, gs)})


# ------------------------------------------------------------------------------------------------------------
# Tolerances and the comparison


def _magnitudes(case: JsdCase) -> np.ndarray:
    """Per-node sum of the magnitudes of the terms that make l_n (their rounding is u times this)."""
    S = case.local @ case.graph.T
    N, G = S.shape
    M = G - 1
    tau = case.params["tau_plus"]
    r = tau / (1.0 - tau)
    sp = np.logaddexp(0.0, np.abs(S))
    a = np.abs(S[np.arange(N), case.batch])
    neg = G * np.sum(sp, axis=1) / (M * (1.0 - tau)) + G * math.log(2.0) / M
    pos = (1.0 + r) * np.logaddexp(0.0, a) + (M * r + 2.0) * math.log(2.0)
    return neg + pos + a


def tolerances(case: JsdCase, rv, rg, want_grad: bool):
    """``(tol_value, {name: tol_grad}, ill_posed_reason)`` for ``case`` (see the module docstring)."""
    from hardneg.jsd import _diagnostics

    cdt = COMPUTE_DTYPE[case.dtype]
    u = UNIT_ROUNDOFF[case.dtype]
    uo = OUTPUT_ROUNDOFF[case.dtype]
    d = case.local.shape[1]
    rng = np.random.default_rng(zlib.crc32(repr(case.key()).encode()))  # reproducible across processes
    k = (d + 4) * u
    dv = np.zeros_like(np.asarray(rv, dtype=np.float64))
    dg = {n: np.zeros_like(getattr(rg, n)) for n in _ARRAYS} if want_grad else {}
    for _ in range(3):
        lo = case.local * (1.0 + k * rng.choice([-1.0, 1.0], case.local.shape))
        gr = case.graph * (1.0 + k * rng.choice([-1.0, 1.0], case.graph.shape))
        v2, g2 = case.reference(want_grad, local=lo, graph=gr)
        with np.errstate(invalid="ignore"):
            dv = np.maximum(dv, np.abs(np.asarray(v2) - rv))
            for n in dg:
                dg[n] = np.maximum(dg[n], np.abs(getattr(g2, n) - getattr(rg, n)))
    mag = _magnitudes(case)
    red = case.params["reduction"]
    N, G = case.local.shape[0], case.graph.shape[0]
    own = mag if red == "none" else (mag.mean() if red == "mean" else mag.sum())
    tol_v = 8.0 * (dv + 16.0 * u * (N + G + d) * own + TINY[cdt] * (N + G + d)) + uo * np.abs(rv)
    tol_g = {}
    cot = np.abs(np.asarray(case.cotangent, dtype=np.float64))
    cmax = float(np.max(cot)) if cot.size else 1.0
    if dg:
        from hardneg.jsd import _gradient_magnitudes

        with np.errstate(all="ignore"):
            gmag = _gradient_magnitudes(case.local, case.graph, case.batch, case.params, case.cotangent)
    for n in dg:
        g = getattr(rg, n)
        # the terms the gradient sums, before cancellation: u times their magnitude per operation, over sums of
        # length N + G + d (Higham's gamma_n); the perturbation measures the conditioning of the inputs' rounding
        own_g = (N + G + d) * (np.abs(g) + getattr(gmag, n))
        # underflow: a term below the compute dtype's smallest normal may be flushed to 0 (e.g. sigma(-a) for a
        # large positive score), an absolute error of TINY per term, times the cotangent and the other input
        other = case.graph if n == "local" else case.local
        flush = TINY[cdt] * (N + G + d) * max(1.0, cmax) * (float(np.max(np.abs(other))) if other.size else 0.0)
        tol_g[n] = (8.0 * (dg[n] + 16.0 * u * own_g + flush) + uo * np.abs(g)
                    + (2.0**-24 if case.dtype == "float16" else 0.0))
    why = None
    if want_grad:
        diag = _diagnostics(case.local, case.graph, case.batch, beta=case.params["beta"],
                            tau_plus=case.params["tau_plus"], convention=case.params["convention"])
        S_scale = float(np.max(np.abs(case.local)) * np.max(np.abs(case.graph)) * d) if case.local.size else 0.0
        near = 64.0 * (d + 4) * UNIT_ROUNDOFF[cdt] * max(S_scale, 1e-300)
        if case.params["beta"] > 0 and 0.0 < diag["c_gap"] < near:
            why = "the scale c's maximum is within rounding of changing hands (c is not differentiable there)"
        elif np.any(diag["floor_margin"] < 64.0 * u * mag):
            why = "a node's corrected estimate is within rounding of its floor 0 (the loss has a kink there)"
    return tol_v, tol_g, why


def compare(case: JsdCase, value, grads, value_dtype=None, grad_dtypes=None, check_dtypes=True,
            expected=None) -> CheckResult:
    """Compare a target's value and gradients on ``case`` with the float64 reference."""
    res = CheckResult()
    want_grad = grads is not None
    rv, rg = expected if expected is not None else case.reference(want_grad)
    rv = np.asarray(rv, dtype=np.float64)
    finite = np.isfinite(case.local).all() and np.isfinite(case.graph).all()
    if finite:
        tol_v, tol_g, why = tolerances(case, rv, rg, want_grad)
    else:
        tol_v, tol_g, why = np.zeros_like(rv), {k: np.zeros_like(v) for k, v in case.arrays.items()}, None
    value = np.asarray(value, dtype=np.float64)
    if value.shape != rv.shape:
        return res.fail(f"value has shape {value.shape}, expected {rv.shape} (reduction={case.params['reduction']!r})")
    if check_dtypes and value_dtype is not None and value_dtype != case.dtype:
        res.fail(f"value returned as {value_dtype}, expected the input dtype {case.dtype}")
    res.value_frac = _value_check(res, "value", value, rv, tol_v, case.dtype)
    if not want_grad:
        return res
    if why is not None:
        res.skipped = why
        return res
    worst = 0.0
    for k in _ARRAYS:
        want = getattr(rg, k)
        g = returned_grad(res, k, grads.get(k), want, grad_dtypes, case.dtype, check_dtypes)
        if g is not None:
            worst = max(worst, _value_check(res, f"gradient of {k}", g, want, tol_g[k], case.dtype))
    res.grad_frac = worst
    return res


def infograph_jsd(local, graph, batch) -> np.ndarray:
    """Per-node terms of upstream InfoGraph's JSD loss (sunfanyunn/InfoGraph, unsupervised/losses.py), written
    directly: mean over the node's negatives of sp(s) - log 2, minus (log 2 - sp(-s+)). float64."""
    S = np.asarray(local, dtype=np.float64) @ np.asarray(graph, dtype=np.float64).T
    N, G = S.shape
    neg = np.ones((N, G), dtype=bool)
    neg[np.arange(N), batch] = False
    log2 = math.log(2.0)
    e_neg = np.sum(np.where(neg, np.logaddexp(0.0, S) - log2, 0.0), axis=1) / (G - 1)
    e_pos = log2 - np.logaddexp(0.0, -S[np.arange(N), batch])
    return e_neg - e_pos


def with_nonfinite(case: JsdCase, rng, kind: str) -> JsdCase:
    lo, gr = case.local.copy(), case.graph.copy()
    bad = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}[kind]
    arr = lo if rng.random() < 0.5 else gr
    arr[tuple(rng.integers(0, s) for s in arr.shape)] = bad
    return replace(case, local=lo, graph=gr, origin={"nonfinite": kind})


# ------------------------------------------------------------------------------------------------------------
# The error contract


def error_cases(dtype: str = "float64") -> List[Tuple[str, Dict[str, np.ndarray], Dict[str, Any]]]:
    """Every condition of spec 14.7 on a small valid base call: ``(name, arrays, kwargs)``."""
    rng = np.random.default_rng(0)
    N, G, d = 4, 3, 2
    f = lambda *s: rng.standard_normal(s).round(2).astype(dtype)  # noqa: E731
    other = "float32" if dtype == "float64" else "float64"
    base = {"local": f(N, d), "graph": f(G, d), "batch": np.array([0, 1, 2, 1])}
    out = []

    def add(name, arrays=None, **kw):
        out.append((name, {**base, **(arrays or {})}, kw))

    add("local 1-D", {"local": f(N)})
    add("graph 3-D", {"graph": f(G, d, 1)})
    add("d mismatch", {"graph": f(G, d + 1)})
    add("N = 0", {"local": f(0, d), "batch": np.zeros(0, dtype=np.int64)})
    add("d = 0", {"local": f(N, 0), "graph": f(G, 0)})
    add("G = 1", {"graph": f(1, d), "batch": np.zeros(N, dtype=np.int64)})
    add("integer local", {"local": np.ones((N, d), dtype=np.int64)})
    add("integer graph", {"graph": np.ones((G, d), dtype=np.int32)})
    add("dtypes differ", {"graph": f(G, d).astype(other)})
    add("batch too short", {"batch": np.array([0, 1, 2])})
    add("batch 2-D", {"batch": np.array([[0, 1, 2, 1]])})
    add("float batch", {"batch": np.array([0.0, 1.0, 2.0, 1.0])})
    add("batch value = G", {"batch": np.array([0, 1, 3, 1])})
    add("negative batch value", {"batch": np.array([0, -1, 2, 1])})
    for v in ("1", -0.5, math.nan, math.inf):
        add(f"beta={v!r}", beta=v)
    for v in ("0.5", -0.1, 1.0, math.nan):
        add(f"tau_plus={v!r}", tau_plus=v)
    add("convention='paper'", convention="paper")
    add("convention=None", convention=None)
    add("reduction='max'", reduction="max")
    return out


def _expected_error(arrays, kwargs) -> Optional[BaseException]:
    import hardneg

    try:
        hardneg.jsd_loss(arrays["local"], arrays["graph"], arrays["batch"], **kwargs)
    except Exception as e:  # noqa: BLE001 - the exception is the expected result
        return e
    return None


def _call_raw(adapter, target, arrays, kwargs):
    with adapter.context():
        conv = {k: adapter.tensor(np.asarray(v), np.asarray(v).dtype.name) for k, v in arrays.items()}
        return target(conv["local"], conv["graph"], conv["batch"], **kwargs)


# ------------------------------------------------------------------------------------------------------------
# Snippets (runnable reproductions of a failure)


def _lit(x) -> str:
    if isinstance(x, np.ndarray):
        return f"np.array({x.tolist()!r}, dtype=np.{x.dtype.name})"
    return repr(x)


def run_jsd(target, framework: str, local, graph, batch, *, dtype="float64", cotangent=1.0, **kwargs):
    """Call ``target`` (a ``jsd_loss``) through ``framework``; ``(value, grads)`` as float64 NumPy."""
    from .adapters import get_adapter

    case = JsdCase(np.asarray(local, dtype=np.float64), np.asarray(graph, dtype=np.float64), np.asarray(batch),
                   dict(kwargs), dtype, cotangent)
    v, g, _, _ = call(get_adapter(framework), target, case, want_grad=True)
    return v, g


def check_jsd(value, grads, local, graph, batch, *, dtype="float64", cotangent=1.0, **kwargs):
    """Assert that ``(value, grads)`` agree with the reference within the suite's tolerances."""
    case = JsdCase(np.asarray(local, dtype=np.float64), np.asarray(graph, dtype=np.float64), np.asarray(batch),
                   dict(kwargs), dtype, cotangent)
    res = compare(case, value, grads, check_dtypes=False)
    assert res.ok, res.message()
    print("conforms" + (f" (gradients not compared: {res.skipped})" if res.skipped else ""))


def _snippet(title: str, framework: str, path: Optional[str], case: JsdCase) -> str:
    if framework == "command":  # a port over the JSON-lines protocol: path is its command
        imp = f"import conformance.command as cc\ntarget = cc.port({path!r}).jsd_loss\n"
    elif path:
        mod, _, name = path.partition(":")
        imp = f"from {mod} import {name} as target\n"
    else:
        imp = "target = ...  # the jsd_loss under test (not importable by path)\n"
    kw = ", ".join(f"{k}={v!r}" for k, v in case.params.items())
    return (f"# {title}\n"
            "import numpy as np\n"
            "from conformance.jsd_suite import run_jsd, check_jsd\n" + imp +
            f"local = {_lit(case.local)}\n"
            f"graph = {_lit(case.graph)}\n"
            f"batch = {_lit(case.batch)}\n"
            f"kwargs = dict({kw})\n"
            f"dtype, cotangent = {case.dtype!r}, {_lit(case.cotangent)}\n"
            f"value, grads = run_jsd(target, {framework!r}, local, graph, batch, dtype=dtype, cotangent=cotangent, "
            "**kwargs)\n"
            "check_jsd(value, grads, local, graph, batch, dtype=dtype, cotangent=cotangent, **kwargs)\n")


# ------------------------------------------------------------------------------------------------------------
# Running the features


def _probe_case(dtype: str) -> JsdCase:
    """A small valid call, in the shape of a quick run's simplest combination (its compiled program is reused)."""
    return JsdCase(np.array([[0.5, -1.0], [1.0, 0.25], [-0.75, 0.5], [0.25, 1.5], [1.0, -0.5]]),
                   np.array([[1.0, 0.5], [-0.5, 1.0], [0.25, -1.25]]), np.array([0, 1, 2, 0, 1]),
                   dict(beta=1.0, tau_plus=0.5, convention="released", reduction="mean"), dtype, 1.0)


def _supported_dtypes(ctx, target) -> Dict[str, bool]:
    out = {}
    for dt in ("float64", "float32", "float16", "bfloat16"):
        ok = dt in ctx.adapter.dtypes
        if ok and ctx.adapter.framework == "numpy" and dt == "bfloat16":
            try:
                import ml_dtypes  # noqa: F401
            except ImportError:
                ok = False
        if ok:
            case = _probe_case(dt)
            try:
                call(ctx.adapter, target, case, want_grad=ctx.want_grad)
            except NotImplementedError:
                ok = False
            except Exception:  # noqa: BLE001 - found and reported by the features themselves
                pass
        out[dt] = ok
    return out


def run_feature(ctx, fres, name: str, n: int, target: Optional[Callable], path: Optional[str]) -> None:
    """Run one feature of :data:`FEATURES` on ``target`` (a ``jsd_loss``) with the suite's driver."""
    from hypothesis import strategies as hst

    from .report import FAILED, SKIPPED, Failure
    from .suite import _run_hypothesis

    if target is None:
        fres.status = SKIPPED
        fres.notes.append("no jsd_loss next to the target (the graph objective is verified with the package's "
                          "jsd_loss)")
        return
    cases_ = functools.partial(jsd_cases, few=getattr(ctx, "programs", "all") == "few",
                               rotation=list(FEATURES).index(name))
    sup = _supported_dtypes(ctx, target)
    if not any(sup.values()):  # e.g. a port that answers "unsupported" for jsd_loss
        fres.status = "not supported"
        fres.notes.append("the target's jsd_loss raised NotImplementedError in every dtype")
        return
    base = "float64" if sup["float64"] else "float32"
    fw = ctx.adapter.framework
    want_grad = ctx.want_grad if fw != "numpy" else True

    def compare_body(title):
        def body(case: JsdCase):
            try:
                v, g, vd, gd = call(ctx.adapter, target, case, want_grad=want_grad)
            except NotImplementedError:
                return None
            except Exception as e:  # noqa: BLE001 - an exception on a valid input is a failure
                res = CheckResult(check="call").fail(f"raised {type(e).__name__}: {e}")
            else:
                res = compare(case, v, g, vd, gd, check_dtypes=fw != "numpy")
            return res, lambda: _snippet(f"feature '{title}', {res.check} ({case.summary()})", fw, path, case)
        return body

    if name == "jsd_errors":
        for ename, arrays, kwargs in error_cases(base):
            want = _expected_error(arrays, kwargs)
            if want is None:
                continue
            got = None
            try:
                _call_raw(ctx.adapter, target, arrays, kwargs)
            except Exception as e:  # noqa: BLE001 - the exception is what is checked
                got = e
            res = check_error(got, want, type_only=getattr(ctx, "errors", "exact") == "type")
            fres.examples += 1
            if ctx.progress:
                ctx.progress(fres.name, 1)
            if not res.ok:
                fres.status = FAILED
                fres.failures.append(Failure(fres.name, f"error contract ({ename})", res.message(), "", ename))
        return
    if name == "jsd_special":
        cmp = compare_body(name)

        def body(case: JsdCase):
            case = replace(case, params={**case.params, "beta": 0.0, "tau_plus": 0.0})
            out = cmp(case)  # against the reference, gradients included
            if out is None or not out[0].ok:
                return out
            v, _, _, _ = call(ctx.adapter, target, case, want_grad=False)
            terms = infograph_jsd(case.local, case.graph, case.batch)
            red = case.params["reduction"]
            want = terms if red == "none" else (terms.mean() if red == "mean" else terms.sum())
            res = compare(case, v, None, check_dtypes=False, expected=(want, None))
            res.check = "InfoGraph's JSD loss (closed form)"
            res.value_frac = max(res.value_frac or 0.0, out[0].value_frac or 0.0)
            res.grad_frac = out[0].grad_frac
            return res, out[1]

        _run_hypothesis(ctx, fres, cases_(base, betas="zero", taus="zero"), body, n)
        return
    if name == "jsd_nonfinite":
        cmp = compare_body(name)

        def body(ex):
            case, kind, rseed = ex
            out = cmp(with_nonfinite(case, np.random.default_rng(rseed), kind))
            if out is not None:
                out[0].check = "non-finite input"
            return out

        _run_hypothesis(ctx, fres, hst.tuples(cases_(base), hst.sampled_from(["nan", "inf", "-inf"]),
                                              hst.integers(0, 2**31)), body, n)
        return
    if name == "jsd_released":
        strat = cases_(base, conventions=("released",))
    elif name == "jsd_corrected":
        strat = cases_(base, conventions=("corrected",))
    elif name == "jsd_float32":
        if not sup["float32"] or base == "float32":
            fres.status = SKIPPED
            fres.notes.append("float32 not supported" if not sup["float32"] else "covered by the other features")
            return
        strat = cases_("float32")
    else:  # jsd_half
        halves = [dt for dt in ("float16", "bfloat16") if sup[dt]]
        if not halves:
            fres.status = SKIPPED
            fres.notes.append("no half-precision dtype supported")
            return
        strat = hst.one_of(*[cases_(dt) for dt in halves])
    _run_hypothesis(ctx, fres, strat, compare_body(name), n)


def verify_jsd(target, framework: str = "numpy", max_examples: Optional[int] = None, seed: int = 0,
               features=None, *, shrink_budget: int = 48, fail_fast: bool = False):
    """Verify a ``jsd_loss`` implementation alone; returns a :class:`~conformance.report.Report`."""
    import time

    import hardneg

    from .adapters import NumpyAdapter, get_adapter, resolve_target, target_path
    from .backends import DEFAULT_MAX_EXAMPLES
    from .report import FeatureResult, Report
    from .suite import _Ctx

    fn = resolve_target(target)
    adapter = get_adapter(framework)
    if max_examples is None:
        max_examples = DEFAULT_MAX_EXAMPLES[adapter.framework]
    path = target_path(fn)
    want_grad = adapter.has_autodiff or NumpyAdapter.twin(fn) is not None
    report = Report(target=path or repr(fn), framework=adapter.framework, framework_version=adapter.version(),
                    device=adapter.device(), spec_version=hardneg.SPEC_VERSION, seed=int(seed),
                    max_examples=int(max_examples), gradients="autodiff" if adapter.has_autodiff else "closed form")
    ctx = _Ctx(target=fn, adapter=adapter, path=path, want_grad=want_grad, supported={}, base="float64",
               seed=int(seed), shrink_budget=int(shrink_budget), progress=None)
    for name in (features or list(FEATURES)):
        fres = FeatureResult(name, FEATURES[name])
        report.features.append(fres)
        t0 = time.perf_counter()
        run_feature(ctx, fres, name, counts(max_examples).get(name, max_examples), fn, path)
        fres.notes.append(f"{time.perf_counter() - t0:.1f} s")
        if fail_fast and fres.status == "failed":
            break
    return report


def counts(max_examples: int) -> Dict[str, int]:
    """Examples per jsd feature for ``max_examples`` (the relation-like ones draw fewer)."""
    n = max(1, int(max_examples))
    return {"jsd_special": max(2, n // 2), "jsd_nonfinite": max(2, n // 3), "jsd_errors": 0}
