"""``verify``: run the conformance suite against one implementation and return a :class:`~conformance.report.Report`.

The suite is organised in *features* (one option of the spec each, so that a target raising NotImplementedError
for an option gets that feature reported as "not supported" rather than failed). Numeric features compare values
and gradients with the reference on Hypothesis-drawn examples (:mod:`conformance.strategies`), within tolerances
derived per example (:mod:`conformance.tolerances`); the others check the error contract, special cases against
closed forms, invariances, non-finite inputs and determinism. A failing example is shrunk by Hypothesis and
reported with a runnable snippet (:mod:`conformance.snippets`).
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple

import numpy as np

from . import checks, snippets
from .adapters import Adapter, NumpyAdapter, get_adapter, resolve_target, target_path
from .backends import BACKENDS, DEFAULT_MAX_EXAMPLES, backend_target, installed_backends  # noqa: F401
from .cases import Case
from .report import FAILED, SKIPPED, UNSUPPORTED, Failure, FeatureResult, Report
from .reproduce import relation_closed_form, relation_permutation, relation_rescaling
from hardneg.validation import ESTIMATORS, REDUCTIONS

from .strategies import Space, cases, space_with_banks
from . import jsd_suite as _jsd

__all__ = ["verify", "BACKENDS", "FEATURES", "installed_backends", "backend_target", "DEFAULT_MAX_EXAMPLES"]

#: name -> description, in the order they run
FEATURES = {
    "hard": "in-batch hard estimator (clamp, normalisation), finite beta incl. 0, every supported reduction",
    "reductions": "reduction 'sum' and 'none' (a cotangent vector for 'none')",
    "clamp_off": "clamp=False, including Ng < 0 (NaN where the denominator is <= 0)",
    "easy": "estimator='easy' (NT-Xent's denominator)",
    "beta_inf": "beta = inf (worst-case limit; even split over tied maxima)",
    "unnormalized": "normalize=False",
    "bank_shared": "a (K, d) bank shared by all anchors",
    "bank_per_anchor": "a (B, K, d) bank per anchor",
    "labels": "labels removing same-class negatives (in-batch)",
    "labels_bank": "labels with a bank and negative_labels",
    "cross": "layout='cross', symmetric=False: anchors z1 against z2's rows (sentence-transformers' MNRL)",
    "cross_symmetric": "layout='cross', symmetric=True: both directions (CLIP)",
    "cross_bank_shared": "the cross layout with a (K, d) bank of hard negatives after z2's rows",
    "cross_bank_per_anchor": "the cross layout with a (B, K, d) bank: anchor i's own hard negatives",
    "cross_labels": "the cross layout with labels (negative_labels with a bank)",
    "temperature_grad": "the temperature as a 0-d tensor: d loss / d t against Grads.temperature, every layout",
    "combined": "every supported option drawn together",
    "float32": "float32 inputs (computed in float32)",
    "float16": "float16 inputs (computed in float32, returned in float16)",
    "bfloat16": "bfloat16 inputs (computed in float32, returned in bfloat16)",
    "special_cases": "debiased (beta = 0), NT-Xent and beta = inf against closed forms; exact ties for beta = inf",
    "invariances": "pair permutation; row rescaling under normalize=True",
    "nonfinite": "a NaN/inf input element (or a tensor temperature <= 0 or not finite) makes every output NaN",
    "errors": "every bad input raises the reference's exception type and message",
    "determinism": "two identical calls agree to the bit",
}

FEATURES.update(_jsd.FEATURES)  # the graph objective (jsd_loss, spec section 14): conformance/jsd_suite.py

#: A compiling framework (JAX compiles one program per combination of shapes, dtypes and static options, about a
#: second of CPU each) verified with fewer examples per feature than this runs a *quick* run: each feature draws
#: its static options and shapes from a few fixed combinations (:func:`conformance.strategies.quick_combinations`)
#: so that its examples reuse a handful of compiled programs; from this count on, every option and size is drawn
#: freely.
FEW_PROGRAMS_BELOW = 50
COMPILING = ("jax",)
#: Quick runs: each feature takes different combinations of the options its space offers (``Space.rotation``:
#: its position); the relation features take those of "combined", and so reuse its compiled programs.
_ROTATION = {f: i for i, f in enumerate(FEATURES)}
_ROTATION.update(special_cases=_ROTATION["combined"], invariances=_ROTATION["combined"],
                 nonfinite=_ROTATION["combined"], determinism=_ROTATION["combined"])

#: profile -> what it changes in every feature's :class:`~conformance.strategies.Space`. "practical": input rows
#: of realistic magnitudes only — a random half of the rows scaled by 10^-3..10^3 (normalize=True) or 10^-1..10
#: (normalize=False), no rows whose squares overflow or underflow the compute dtype and none below the
#: normalisation epsilon — and, by default, the error contract on exception types only.
PROFILES = {"strict": {}, "practical": {"scales": ("unit", "mixed")}}

def quick_or_all(framework: str, max_examples: int) -> str:
    """``"few"`` (a quick run, see :data:`FEW_PROGRAMS_BELOW`) for a compiling framework verified with fewer than
    ``FEW_PROGRAMS_BELOW`` examples per feature, else ``"all"`` (every option and size drawn freely)."""
    return "few" if framework in COMPILING and max_examples < FEW_PROGRAMS_BELOW else "all"


_OPTION_OF = {  # feature -> probe it needs
    "reductions": "sum_or_none", "clamp_off": "clamp_off", "easy": "easy", "beta_inf": "beta_inf",
    "unnormalized": "unnormalized", "bank_shared": "shared", "bank_per_anchor": "per_anchor", "labels": "labels",
    "labels_bank": "labels_bank", "float32": "float32", "float16": "float16", "bfloat16": "bfloat16",
    "cross": "cross_oneway", "cross_symmetric": "cross", "cross_bank_shared": "cross_bank_shared",
    "cross_bank_per_anchor": "cross_bank_per_anchor", "cross_labels": "cross_labels",
    "temperature_grad": "temperature_grad",
}


# ------------------------------------------------------------------------------------------------------------


class _Failed(Exception):
    """Raised inside a Hypothesis test to mark a failing example (shrunk, then reported)."""


@dataclass
class _Ctx:
    target: Callable
    adapter: Adapter
    path: Optional[str]
    want_grad: bool
    supported: Dict[str, bool]
    base: str
    seed: int
    shrink_budget: int
    progress: Optional[Callable]
    skipped: Dict[str, int] = field(default_factory=dict)
    errors: str = "exact"  # "exact": type and message of every error; "type": the exception type only
    profile: str = "strict"  # "practical": realistic input magnitudes (see PROFILES)
    programs: str = "all"  # "few" for a quick run of a compiling framework (see FEW_PROGRAMS_BELOW)


def _probe_case(dtype="float64", **over) -> Case:
    rng = np.random.default_rng(12345)
    B, d, K = 3, 4, 5
    r = lambda *s: np.round(rng.standard_normal(s) * 4) / 4  # noqa: E731 - exactly representable in every dtype
    params = dict(temperature=0.5, beta=1.0, tau_plus=0.1, estimator="hard", clamp=True, normalize=True,
                  reduction="mean")
    bank = over.pop("bank", None)
    labels = over.pop("labels", False)
    temperature_grad = over.pop("temperature_grad", False)
    params.update(over)
    neg = None if bank is None else (r(K, d) if bank == "shared" else r(B, K, d))
    lab = np.array([0, 1, 0]) if labels else None
    nlab = None if not (labels and bank) else (np.array([0, 1, 2, 0, 1]) if bank == "shared" else
                                               np.tile(np.array([0, 1, 2, 0, 1]), (B, 1)))
    case = Case(z1=r(B, d), z2=r(B, d), negatives=neg, labels=lab, negative_labels=nlab, params=params, dtype=dtype,
                cotangent=1.0, temperature_grad=temperature_grad)
    if params["reduction"] == "none":
        case.cotangent = np.linspace(-1, 1, case.n_anchors)
    return case


def _accepts(fn, name: str) -> bool:
    """Whether ``fn`` takes the keyword ``name`` (or any keyword); True when its signature is not available."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _probe(ctx_target, adapter: Adapter, want_grad: bool, dtypes: Sequence[str]) -> Dict[str, bool]:
    """Which options the target supports: a NotImplementedError on a small valid call means "not supported"."""

    def ok(case, refusals=(NotImplementedError,)) -> bool:
        try:
            adapter.call(ctx_target, case, want_grad=want_grad)
        except refusals:
            return False
        except Exception:  # noqa: BLE001 - any other error is a conformance failure, found by the feature itself
            return True
        return True

    sup: Dict[str, bool] = {}
    for dt in ("float64", "float32", "float16", "bfloat16"):
        avail = dt in adapter.dtypes and dt in dtypes
        if avail and adapter.framework == "numpy" and dt == "bfloat16":
            try:
                import ml_dtypes  # noqa: F401
            except ImportError:
                avail = False
        sup[dt] = avail and ok(_probe_case(dt))
    base = "float64" if sup["float64"] else "float32"
    sup["sum"] = ok(_probe_case(base, reduction="sum"))
    sup["none"] = ok(_probe_case(base, reduction="none"))
    sup["sum_or_none"] = sup["sum"] or sup["none"]
    sup["clamp_off"] = ok(_probe_case(base, clamp=False))
    sup["easy"] = ok(_probe_case(base, estimator="easy"))
    sup["beta_inf"] = ok(_probe_case(base, beta=math.inf))
    sup["unnormalized"] = ok(_probe_case(base, normalize=False))
    sup["shared"] = ok(_probe_case(base, bank="shared"))
    sup["per_anchor"] = ok(_probe_case(base, bank="per_anchor"))
    sup["labels"] = ok(_probe_case(base, labels=True))
    bank = "shared" if sup["shared"] else ("per_anchor" if sup["per_anchor"] else None)
    sup["labels_bank"] = bank is not None and ok(_probe_case(base, labels=True, bank=bank))
    # spec 1.1: a target without the `layout` keyword (a spec 1.0 implementation) supports none of the layouts
    has_layout = _accepts(ctx_target, "layout")
    sup["layout"] = has_layout and ok(_probe_case(base, layout="in_batch"))
    sup["cross"] = has_layout and ok(_probe_case(base, layout="cross"))
    sup["cross_oneway"] = sup["cross"] and ok(_probe_case(base, layout="cross", symmetric=False))
    for kind in ("shared", "per_anchor"):
        sup[f"cross_bank_{kind}"] = sup["cross"] and ok(_probe_case(base, layout="cross", bank=kind))
    sup["cross_labels"] = sup["cross"] and ok(_probe_case(base, layout="cross", labels=True))
    # a spec 1.0 implementation refuses a tensor temperature ("temperature must be a real number"): not supported
    sup["temperature_grad"] = want_grad and ok(_probe_case(base, temperature_grad=True),
                                               refusals=(NotImplementedError, TypeError, ValueError))
    sup["temperature_tensor"] = sup["temperature_grad"] and adapter.framework not in ("numpy", "command")
    return sup


def _space(ctx: _Ctx, feature: str) -> Space:
    s = ctx.supported
    # the choices come from hardneg.validation (the one list of them), the default first
    reds = ("mean",) + tuple(r for r in REDUCTIONS if r != "mean" and s[r])
    layouts = ("none",) + tuple(k for k in ("shared", "per_anchor") if s[k])
    banks = tuple(k for k in ("shared", "per_anchor") if s[k])
    labels = (False, True) if s["labels"] else (False,)
    est = ESTIMATORS if s["easy"] else ("hard",)
    clamps = (True, False) if s["clamp_off"] else (True,)
    norms = (True, False) if s["unnormalized"] else (True,)
    betas = "any" if s["beta_inf"] else "finite"
    mb = (None, 4096, 1) if "memory_budget" in _params(ctx.target) else (None,)
    base = Space(dtype=ctx.base, reductions=reds, memory_budgets=mb, explicit_layout=s["layout"])
    everything = replace(space_with_banks(base, layouts), labels=labels, estimators=est, clamps=clamps,
                         normalizes=norms, betas=betas)
    cross_banks = ("none",) + tuple(k for k in ("shared", "per_anchor") if s[f"cross_bank_{k}"])
    sym = (True, False) if s["cross_oneway"] else (True,)
    cross = replace(base, layouts=("cross",), symmetric=sym)
    if s["cross"]:
        everything = replace(everything, layouts=everything.layouts + ("cross",), symmetric=sym)
    if s["temperature_grad"]:
        everything = replace(everything, temperature_grad=(False, True))
    space = {
        "hard": base,
        "reductions": replace(base, reductions=tuple(r for r in REDUCTIONS if r != "mean" and s[r])),
        "clamp_off": replace(base, clamps=(False,)),
        "easy": replace(base, estimators=("easy",)),
        "beta_inf": replace(base, betas="inf"),
        "unnormalized": replace(base, normalizes=(False,)),
        "bank_shared": space_with_banks(base, ("shared",)),
        "bank_per_anchor": space_with_banks(base, ("per_anchor",)),
        "labels": replace(base, labels=(True,)),
        "labels_bank": replace(space_with_banks(base, banks or ("shared",)), labels=(True,)),
        "cross": replace(cross, symmetric=(False,)),
        "cross_symmetric": replace(cross, symmetric=(True,)),
        "cross_bank_shared": replace(cross, banks=("shared",)),
        "cross_bank_per_anchor": replace(cross, banks=("per_anchor",)),
        "cross_labels": replace(cross, banks=cross_banks, labels=(True,)),
        "temperature_grad": replace(everything, temperature_grad=(True,)),
        "combined": everything,
        "float32": replace(everything, dtype="float32"),
        "float16": replace(everything, dtype="float16"),
        "bfloat16": replace(everything, dtype="bfloat16"),
    }.get(feature, everything)
    return replace(space, programs=ctx.programs, rotation=_ROTATION.get(feature, 0), **PROFILES[ctx.profile])


def _params(fn) -> Tuple[str, ...]:
    try:
        return tuple(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return ()


def _title(feature: str, check: str, case: Optional[Case]) -> str:
    return f"feature '{feature}', {check}" + (f" ({case.summary()})" if case is not None else "")


# ------------------------------------------------------------------------------------------------------------
# The Hypothesis driver.


def _run_hypothesis(ctx: _Ctx, fres: FeatureResult, strategy, body, n: int) -> None:
    """Run ``body(example) -> (CheckResult, snippet_fn) | None`` on ``n`` drawn examples, shrinking a failure.

    ``None`` means the target raised NotImplementedError for this combination of options: the example is
    rejected. After the first failure at most ``shrink_budget`` further examples are run; Hypothesis then
    replays the smallest failure seen, which is the one reported.
    """
    from hypothesis import HealthCheck, Phase, given, reject, seed, settings
    from hypothesis import target as hyp_target
    from hypothesis.errors import Unsatisfiable

    st = {"failed": False, "after": 0, "last": None, "keys": set(), "rejected": 0, "skipped": 0}

    def key(ex):
        c = ex[0] if isinstance(ex, tuple) else ex
        rest = ex[1:] if isinstance(ex, tuple) else ()
        return (c.key(), repr(rest))

    def test(ex):
        k = key(ex)
        if st["failed"]:
            st["after"] += 1
            if st["after"] > ctx.shrink_budget and k not in st["keys"]:
                return  # shrinking budget spent: only the failures already seen keep failing
        out = body(ex)
        if out is None:
            st["rejected"] += 1
            reject()
        res, snip = out
        if not st["failed"]:
            fres.examples += 1
            if res.skipped:
                st["skipped"] += 1
            fres.record(res.value_frac, res.grad_frac)
            if ctx.progress:
                ctx.progress(fres.name, 1)
            if res.ok:
                if res.value_frac is not None and math.isfinite(res.value_frac):
                    hyp_target(float(res.value_frac), label="value error / tolerance")
                if res.grad_frac is not None and math.isfinite(res.grad_frac):
                    hyp_target(float(res.grad_frac), label="gradient error / tolerance")
        if not res.ok:
            st["failed"] = True
            st["keys"].add(k)
            st["last"] = (ex, res, snip)
            raise _Failed(res.message())

    runner = settings(
        max_examples=max(1, n), database=None, deadline=None, derandomize=False, print_blob=False,
        report_multiple_bugs=False, suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate, Phase.target, Phase.shrink],
    )(seed(ctx.seed)(given(strategy)(test)))
    try:
        runner()
    except _Failed:
        pass
    except Unsatisfiable:
        if fres.examples == 0:
            fres.status = UNSUPPORTED
            fres.notes.append("every drawn combination of options raised NotImplementedError")
    except Exception as e:  # noqa: BLE001 - Flaky and friends: keep the last recorded failure if any
        if st["last"] is None:
            fres.status = FAILED
            fres.failures.append(Failure(fres.name, "suite", f"the suite could not run: {type(e).__name__}: {e}",
                                         "", ""))
        else:
            fres.notes.append(f"shrinking ended with {type(e).__name__} (the target may be nondeterministic)")
    if st["last"] is not None:
        ex, res, snip = st["last"]
        case = ex[0] if isinstance(ex, tuple) else ex
        fres.status = FAILED
        fres.record(res.value_frac, res.grad_frac)
        fres.failures.append(Failure(fres.name, res.check, res.message(), snip(), case.summary(),
                                     size=_size(case)))
    if st["rejected"]:
        fres.notes.append(f"{st['rejected']} drawn combinations not supported")
    if st["skipped"]:
        fres.notes.append(f"{st['skipped']} ill-posed examples not compared")


def _size(case) -> int:
    """Input elements of a case (hcl_loss or jsd_loss): the report shows the smallest example of a cause."""
    return sum(int(np.size(x)) for x in (getattr(case, k, None) for k in ("z1", "z2", "negatives", "local", "graph"))
               if x is not None)


def _call(ctx: _Ctx, case: Case, want_grad: Optional[bool] = None):
    """``(Outcome, None)`` or ``(None, CheckResult describing the exception)``; NotImplementedError propagates."""
    try:
        return ctx.adapter.call(ctx.target, case, want_grad=ctx.want_grad if want_grad is None else want_grad), None
    except NotImplementedError:
        raise
    except Exception as e:  # noqa: BLE001 - an exception on a valid input is a failure to report
        return None, checks.CheckResult(check="call").fail(f"raised {type(e).__name__}: {e}")


def _compare_body(ctx: _Ctx, feature: str):
    def body(case: Case):
        try:
            out, err = _call(ctx, case)
        except NotImplementedError:
            return None
        if err is None:
            res = checks.compare(case, out.value, out.grads, value_dtype=out.value_dtype,
                                 grad_dtypes=out.grad_dtypes, check_dtypes=ctx.adapter.framework != "numpy")
        else:
            res = err
        return res, lambda: snippets.compare_snippet(_title(feature, res.check, case), ctx.adapter.framework,
                                                     ctx.path, case)
    return body


def _special_body(ctx: _Ctx):
    compare_body = _compare_body(ctx, "special_cases")
    ties = [c for c in checks.exact_tie_cases(ctx.base) if _tie_supported(ctx, c)]

    def body(ex):
        case, mode, k = ex
        if mode == "exact_ties":
            # beta = inf on maxima tied in exact arithmetic: the gradient must split evenly (no slack)
            case = ties[k % len(ties)]
        case = replace(case, params=dict(case.params))
        p = case.params
        if mode == "debiased":
            p.update(beta=0.0, estimator="hard")
        elif mode == "ntxent_easy":
            p.update(estimator="easy")
        elif mode == "ntxent_hard":
            p.update(beta=0.0, tau_plus=0.0, clamp=False, estimator="hard")
        elif mode == "beta_inf":
            p.update(beta=math.inf, estimator="hard")
        elif mode in ("clip", "mnrl"):  # the cross layout's identities (spec 1.1 section 4), easy estimator
            p.update(estimator="easy")
        out = compare_body(case)
        if out is None or not out[0].ok:
            if out is not None and mode == "exact_ties":
                out[0].check = "beta = inf, exact ties"
            return out
        try:
            o, err = _call(ctx, case, want_grad=False)
        except NotImplementedError:
            return None
        if err is not None:
            return err, out[1]
        res = relation_closed_form(case, o.value)
        res.value_frac = max(res.value_frac or 0.0, out[0].value_frac or 0.0)
        res.grad_frac = out[0].grad_frac
        return res, lambda: snippets.relation_snippet(_title("special_cases", res.check, case),
                                                      ctx.adapter.framework, ctx.path, "closed_form", case, case, {})
    return body, bool(ties)


def _tie_supported(ctx: _Ctx, case: Case) -> bool:
    s = ctx.supported
    if case.negatives is not None and not s["shared" if case.negatives.ndim == 2 else "per_anchor"]:
        return False
    return s["beta_inf"] and (case.params["reduction"] != "none" or s["none"])


def _invariance_body(ctx: _Ctx):
    def body(ex):
        case, kind, rseed = ex
        rng = np.random.default_rng(rseed)
        if kind == "rescaling":
            case = replace(case, params={**case.params, "normalize": True})
            case2, factors = checks.rescaled(case, rng)
            maps = {"factors": factors}
        else:
            case2, anchor, rows, bank = checks.permuted(case, rng)
            maps = {"anchor_perm": anchor, "row_perm": rows, "bank_perm": bank}
        try:
            o1, e1 = _call(ctx, case)
            o2, e2 = _call(ctx, case2)
        except NotImplementedError:
            return None
        if e1 or e2:
            res, c = (e1, case) if e1 else (e2, case2)
            return res, lambda: snippets.compare_snippet(_title("invariances", res.check, c), ctx.adapter.framework,
                                                         ctx.path, c)
        if kind == "rescaling":
            res = relation_rescaling(case, o1.value, o1.grads, case2, o2.value, o2.grads, factors)
        else:
            res = relation_permutation(case, o1.value, o1.grads, case2, o2.value, o2.grads, anchor, rows, bank)
        return res, lambda: snippets.relation_snippet(_title("invariances", res.check, case), ctx.adapter.framework,
                                                      ctx.path, kind, case, case2, maps)
    return body


def _nonfinite_body(ctx: _Ctx):
    compare_body = _compare_body(ctx, "nonfinite")

    def body(ex):
        case, kind, rseed = ex
        c2 = checks.with_nonfinite(case, np.random.default_rng(rseed), kind)
        out = compare_body(c2)
        if out is not None:
            out[0].check = "non-finite input"
        return out
    return body


def _determinism_body(ctx: _Ctx):
    def body(case: Case):
        try:
            o1, e1 = _call(ctx, case)
            o2, e2 = _call(ctx, case)
        except NotImplementedError:
            return None
        res = checks.CheckResult(check="determinism")
        if e1 or e2:
            res = e1 or e2
        else:
            pairs = [("value", o1.value, o2.value)] + [
                (f"gradient of {k}", o1.grads[k], o2.grads[k]) for k in (o1.grads or {})]
            for what, a, b in pairs:
                if a.shape != b.shape or not np.array_equal(a, b, equal_nan=True):
                    res.fail(f"{what} differs between two identical calls")
        return res, lambda: snippets.determinism_snippet(_title("determinism", res.check, case),
                                                         ctx.adapter.framework, ctx.path, case)
    return body


def _run_errors(ctx: _Ctx, fres: FeatureResult) -> None:
    s = ctx.supported
    for ec in checks.error_cases(ctx.base):
        if not all(s.get(n, True) for n in ec.needs):
            continue
        want = checks.expected_error(ec)
        if want is None:
            continue
        got = None
        try:
            ctx.adapter.call_raw(ctx.target, dict(ec.arrays), dict(ec.kwargs))
        except Exception as e:  # noqa: BLE001 - the exception is what is checked
            got = e
        res = checks.check_error(got, want, type_only=ctx.errors == "type")
        fres.examples += 1
        if ctx.progress:
            ctx.progress(fres.name, 1)
        if not res.ok:
            fres.status = FAILED
            fres.failures.append(Failure(
                fres.name, f"error contract ({ec.name})", res.message(),
                snippets.error_snippet(f"feature 'errors', {ec.name}", ctx.adapter.framework, ctx.path,
                                       dict(ec.arrays), dict(ec.kwargs), want, type_only=ctx.errors == "type"),
                ec.name))


def _counts(max_examples: int) -> Dict[str, int]:
    n = max(1, int(max_examples))
    return {
        "special_cases": max(3, n), "invariances": max(2, n // 2), "nonfinite": max(2, n // 3),
        "determinism": max(2, n // 4), "errors": 0,
    }


def planned_examples(max_examples: int, features: Optional[Iterable[str]] = None) -> int:
    """How many examples (approximately) a run will draw, for progress bars."""
    feats = list(features) if features is not None else list(FEATURES)
    c = _counts(max_examples)
    n_err = len(checks.error_cases())
    return sum(n_err if f == "errors" else c.get(f, max_examples) for f in feats)


def verify(target, framework: str = "numpy", max_examples: Optional[int] = None, seed: int = 0,
           dtypes: Optional[Sequence[str]] = None, features: Optional[Sequence[str]] = None, *,
           progress: Optional[Callable[[str, int], None]] = None, shrink_budget: int = 48,
           fail_fast: bool = False, errors: Optional[str] = None, profile: str = "strict") -> Report:
    """Verify an implementation of ``hcl_loss`` against the reference.

    Parameters
    ----------
    target : callable or str
        A function with the spec's signature (``"module:function"`` accepted).
    framework : {"numpy", "torch", "jax", "tensorflow", "command"}, default "numpy"
        How inputs are built and gradients taken (the framework's autodiff; a NumPy target's gradients come from
        its ``<name>_and_grad`` twin, or are not checked without one). "command": ``target`` is a
        :class:`conformance.command.Port` (a port in any language; see :func:`conformance.command.verify_command`).
    max_examples : int, optional
        Examples per numeric feature (the relation features draw fewer; the error contract runs all its cases).
        Default :data:`DEFAULT_MAX_EXAMPLES` of the framework (12 for every framework).
    seed : int, default 0
        Hypothesis seed: the same seed draws the same examples.
    dtypes : sequence of str, optional
        Restrict the dtypes exercised (default: every dtype the framework has).
    features : sequence of str, optional
        Run only these features (names of :data:`FEATURES`).
    progress : callable(feature, n_done), optional
        Called after each example.
    shrink_budget : int, default 48
        Examples Hypothesis may run to shrink a failure.
    fail_fast : bool, default False
        Stop after the first failing feature.
    errors : {"exact", "type"}, optional
        The error contract: the reference's exception type and message ("exact", the default of the strict
        profile), or its type only ("type", the default of the practical profile; for ports in other languages).
    profile : {"strict", "practical"}, default "strict"
        "practical" draws input rows of realistic magnitudes only (:data:`PROFILES`), so that a port's author sees
        first whether the math is right; "strict" covers the whole input space.

    Returns
    -------
    Report
        ``.ok``, ``.verdict``, per-feature results, failures with runnable snippets, ``.to_json()``.
    """
    from hypothesis import strategies as hst

    import hardneg

    fn = resolve_target(target)
    adapter = get_adapter(framework)
    if max_examples is None:
        max_examples = DEFAULT_MAX_EXAMPLES[adapter.framework]
    path = (getattr(fn, "command", None) if adapter.framework == "command" else None) or target_path(fn) or (
        target if isinstance(target, str) and ":" in target else None)
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {', '.join(PROFILES)}; got {profile!r}")
    errors = errors or ("type" if profile == "practical" else "exact")
    if errors not in ("exact", "type"):
        raise ValueError(f"errors must be 'exact' or 'type'; got {errors!r}")
    want_grad = adapter.has_autodiff or NumpyAdapter.twin(fn) is not None
    grads_mode = ("autodiff" if adapter.has_autodiff else
                  ("closed form (*_and_grad twin)" if want_grad else "not checked: no *_and_grad twin"))
    report = Report(target=path or repr(fn), framework=adapter.framework, framework_version=adapter.version(),
                    device=adapter.device(), spec_version=hardneg.SPEC_VERSION, seed=int(seed),
                    max_examples=int(max_examples), gradients=grads_mode, errors=errors, profile=profile)
    dts = tuple(dtypes) if dtypes is not None else ("float64", "float32", "float16", "bfloat16")
    names = list(features) if features is not None else list(FEATURES)
    unknown = [f for f in names if f not in FEATURES]
    if unknown:
        raise ValueError(f"unknown features {unknown}; choose from {list(FEATURES)}")
    if all(f in _jsd.FEATURES for f in names):  # the graph objective probes its own dtypes; skip hcl_loss's probes
        supported = {dt: True for dt in dts}
    else:
        with adapter.context():
            supported = _probe(fn, adapter, want_grad, dts)
    base = "float64" if supported.get("float64") else "float32"
    ctx = _Ctx(target=fn, adapter=adapter, path=path, want_grad=want_grad, supported=supported, base=base,
               seed=int(seed), shrink_budget=int(shrink_budget), progress=progress, errors=errors, profile=profile,
               programs=quick_or_all(adapter.framework, max_examples))
    if ctx.programs == "few":
        report.notes.append(f"quick run: static options and shapes drawn from a few fixed combinations per feature "
                            f"({adapter.framework} compiles a program for each; --max-examples "
                            f"{FEW_PROGRAMS_BELOW} or more draws every option and size freely)")
    if not supported.get("float64"):
        report.notes.append("float64 not supported: the numeric features run in float32")
    counts = _counts(max_examples)

    jsd_target = _jsd.find_target(fn)
    jsd_path = target_path(jsd_target) if jsd_target is not None else None
    if adapter.framework == "command":
        jsd_path = path  # the port's command
    for name in names:
        fres = FeatureResult(name, FEATURES[name])
        report.features.append(fres)
        if name in _jsd.FEATURES:  # the graph objective runs on the jsd_loss next to the target
            t0 = time.perf_counter()
            _jsd.run_feature(ctx, fres, name, _jsd.counts(max_examples).get(name, max_examples), jsd_target,
                             jsd_path)
            fres.notes.append(f"{time.perf_counter() - t0:.1f} s")
            if fail_fast and fres.status == FAILED:
                break
            continue
        opt = _OPTION_OF.get(name)
        if name in ("float16", "bfloat16", "float32") and name not in dts:
            fres.status, fres.notes = SKIPPED, ["dtype not requested"]
            continue
        if name == "float32" and base == "float32":
            fres.status, fres.notes = SKIPPED, ["covered by the other features (float64 not supported)"]
            continue
        if opt is not None and not supported.get(opt, False):
            fres.status = UNSUPPORTED
            continue
        n = counts.get(name, max_examples)
        t0 = time.perf_counter()
        space = _space(ctx, name)
        if name == "errors":
            _run_errors(ctx, fres)
        elif name == "special_cases":
            body, has_ties = _special_body(ctx)
            modes = ["debiased", "ntxent_easy" if supported["easy"] else "debiased"]
            modes += ["ntxent_hard"] if supported["clamp_off"] else []
            modes += ["beta_inf", "exact_ties"] if supported["beta_inf"] and has_ties else []
            sp = replace(space, normalizes=(True,), estimators=("hard",), clamps=(True,), betas="finite")
            cross_sp = replace(sp, layouts=("cross",), temperature_grad=(False,))
            spaces = {"clip": replace(cross_sp, banks=("none",), symmetric=(True,)),
                      "mnrl": replace(cross_sp, banks=("shared",) if supported["cross_bank_shared"] else ("none",),
                                      symmetric=(False,))}
            modes += ["clip"] if supported["cross"] and supported["easy"] else []
            modes += ["mnrl"] if supported["cross_oneway"] and supported["easy"] else []
            for mode in dict.fromkeys(modes):  # each special case gets its share of the examples
                _run_hypothesis(ctx, fres, hst.tuples(cases(spaces.get(mode, sp)), hst.just(mode),
                                                      hst.integers(0, 63)), body, max(1, n // len(set(modes))))
                if fres.status == FAILED:
                    break
        elif name == "invariances":
            _run_hypothesis(ctx, fres, hst.tuples(cases(space), hst.sampled_from(["permutation", "rescaling"]),
                                                  hst.integers(0, 2**31)), _invariance_body(ctx), n)
        elif name == "nonfinite":
            kinds = ["nan", "inf", "-inf"] + (list(checks.BAD_TEMPERATURES) if supported["temperature_tensor"] else [])
            _run_hypothesis(ctx, fres, hst.tuples(cases(space), hst.sampled_from(kinds),
                                                  hst.integers(0, 2**31)), _nonfinite_body(ctx), n)
        elif name == "determinism":
            _run_hypothesis(ctx, fres, cases(space), _determinism_body(ctx), n)
        elif name == "temperature_grad":
            # half the examples where the clamp floor M e^{-1/t} binds (aligned pairs, large tau+): its own term
            # of d loss / d t (spec 1.1 section 8) is then exercised, not only the logits' term
            floor = replace(space, geometries=("aligned",), taus="high", estimators=("hard",), clamps=(True,))
            _run_hypothesis(ctx, fres, cases(floor), _compare_body(ctx, name), max(1, n // 2))
            if fres.status != FAILED:
                _run_hypothesis(ctx, fres, cases(space), _compare_body(ctx, name), max(1, n - n // 2))
        else:
            _run_hypothesis(ctx, fres, cases(space), _compare_body(ctx, name), n)
        fres.notes.append(f"{time.perf_counter() - t0:.1f} s")
        if fail_fast and fres.status == FAILED:
            break
    return report
