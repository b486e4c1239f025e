"""Hypothesis strategies over the spec's whole input space, weighted towards where implementations go wrong.

:func:`cases` draws a :class:`~conformance.cases.Case` inside a :class:`Space` (the options a feature exercises and
the target supports). Hypothesis draws the *structure* — layout, sizes, geometry, magnitudes, quantisation, the
hyper-parameters, the regime of tau+ — and a seed from which NumPy fills the arrays, so that examples of 64 x 128
stay cheap to generate while shrinking still reaches small shapes, simple geometry, coarse values and default
hyper-parameters (each ``sampled_from`` lists its simplest choice first).

Regimes covered on purpose (spec sections 4-6, docs/conformance.md):

* the clamp binding and not binding: ``aligned`` geometry (near-identical positive pairs) with tau+ up to 0.9,
  tau+ placed exactly at an anchor's kink (``kink``) and just below the cancellation point Ng = 0 (``cancel``);
* beta = 0, small (< 0.05), moderate, large (10..100) and inf; temperatures 0.01..10 (both ends included);
* rows with huge and tiny norms (squares that overflow/underflow the compute dtype; norms below the 1e-12
  epsilon), zero rows, exact and near duplicates (``duplicates``, ``clustered``, coarse quantisation);
* B in {1 (with a bank), 2, 3, 4, 8, 16, 64}, d in {1, 2, 3, 8, 32, 128}, K in {1, 2, 5, 16, 64};
* shared and per-anchor banks, labels with 1, 2, 3 or B classes (an anchor may be left with no negatives),
  every reduction, cotangents other than 1 (a custom VJP that ignores its cotangent fails);
* spec 1.1: the layouts of :data:`hardneg.validation.LAYOUTS` (the cross layout one-way and symmetric, with no
  bank, a shared or a per-anchor bank), ``layout`` named explicitly or left to ``None``, and the temperature
  passed as a 0-d tensor whose gradient is compared (``Case.temperature_grad``).

The choices themselves (estimators, reductions, layouts) come from :mod:`hardneg.validation`, the one place that
lists them.

**Quick runs of a compiling framework** (``Space.programs == "few"``: JAX verified with fewer than
``conformance.suite.FEW_PROGRAMS_BELOW`` examples per feature). JAX compiles one program per combination of
shapes, dtypes and static options (layout, bank, labels, estimator, clamp, normalize, reduction, beta's mode —
finite, 0 or inf —, memory budget, a tensor temperature), about a second of CPU each, so drawing them freely
compiles a program for nearly every example. A quick run therefore draws each example's static options and
shapes from :func:`quick_combinations` of its space: at most :data:`QUICK_COMBINATIONS` fixed combinations, the
simplest one in the shape of the suite's probes (whose programs it reuses) and others that take different
choices in each feature (``Space.rotation``), so that over a quick run every choice of every option is drawn,
each with a shape of :data:`QUICK_SHAPES`. Everything else — the geometry, magnitudes, quantisation,
temperature, the value of beta, tau+ and its regime, labels' values, cotangents, seeds — is drawn exactly as in
a full run, so the examples of one combination differ in everything but their compiled program.
``programs="all"`` (every other run, among them ``--max-examples 50`` or more) draws every option and size
independently, as before.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
from hypothesis import strategies as st

from hardneg.validation import ESTIMATORS, LAYOUTS, REDUCTIONS

from .cases import HUGE, Case, quantize, round_to_dtype

__all__ = ["Space", "cases", "B_SIZES", "D_SIZES", "K_SIZES", "temperatures", "betas", "taus",
           "QUICK_SHAPES", "QUICK_COMBINATIONS", "quick_combinations"]

B_SIZES = (2, 3, 4, 8, 16, 64)
B_SIZES_BANK = (2, 1, 3, 4, 8, 16, 64)
D_SIZES = (2, 1, 3, 8, 32, 128)
K_SIZES = (2, 1, 5, 16, 64)
GEOMETRIES = ("gaussian", "aligned", "clustered", "duplicates", "integer", "zeros")
SCALES_NORMALIZED = ("unit", "mixed", "huge", "tiny")
#: log10 ranges of row magnitudes for "huge" / "tiny" rows per input dtype: squares overflow / underflow the
#: compute dtype while the norm itself stays representable (spec section 2).
MAGNITUDES = {
    "float64": {"huge": (160.0, 300.0), "tiny": (-300.0, -13.0)},
    "float32": {"huge": (20.0, 36.0), "tiny": (-30.0, -13.0)},
    "bfloat16": {"huge": (20.0, 36.0), "tiny": (-30.0, -13.0)},
    "float16": {"huge": (1.5, 3.3), "tiny": (-4.0, -2.0)},
}


#: Bank kinds, as ``hardneg.validation.Problem.bank`` names them.
BANKS = ("none", "shared", "per_anchor")


@dataclass(frozen=True)
class Space:
    """The options a strategy may draw (each tuple lists the simplest choice first).

    ``layouts`` are the public layouts of :data:`hardneg.validation.LAYOUTS`; ``banks`` the bank kinds
    ("none", "shared", "per_anchor", as ``Problem.bank``) that layouts with a bank may use: "bank" draws a
    non-empty one, "cross" any of them. ``explicit_layout`` also names "in_batch"/"bank" in the call instead of
    leaving ``layout=None`` (for targets that take the keyword); "cross" is always named.
    """

    dtype: str = "float64"
    layouts: Tuple[str, ...] = ("in_batch",)
    banks: Tuple[str, ...] = ("none",)
    symmetric: Tuple[bool, ...] = (True,)
    explicit_layout: bool = False
    labels: Tuple[bool, ...] = (False,)
    estimators: Tuple[str, ...] = ("hard",)
    clamps: Tuple[bool, ...] = (True,)
    normalizes: Tuple[bool, ...] = (True,)
    reductions: Tuple[str, ...] = ("mean",)
    betas: str = "finite"  # "finite", "inf" or "any"
    memory_budgets: Tuple[Optional[int], ...] = (None,)
    temperature_grad: Tuple[bool, ...] = (False,)
    geometries: Tuple[str, ...] = GEOMETRIES
    taus: str = "any"  # "any", or "high" (0.5..0.9: with aligned pairs the clamp floor binds for most anchors)
    scales: Tuple[str, ...] = SCALES_NORMALIZED  # row magnitudes (normalize=False draws "unit" and "mixed" only)
    programs: str = "all"  # "all": every option and size drawn freely; "few": quick_combinations (a quick run)
    rotation: int = 0  # "few": which of the space's combinations (features sharing a space use different ones)

    def __post_init__(self):
        assert set(self.layouts) <= set(LAYOUTS), self.layouts
        assert set(self.banks) <= set(BANKS), self.banks
        assert set(self.estimators) <= set(ESTIMATORS) and set(self.reductions) <= set(REDUCTIONS)
        if "bank" in self.layouts:
            assert set(self.banks) - {"none"}, "layout 'bank' needs a bank kind"


def space_with_banks(space: Space, banks: Tuple[str, ...]) -> Space:
    """``space`` drawing the 1.0 layouts of ``banks`` ("none" -> in-batch, a bank kind -> layout "bank")."""
    from dataclasses import replace

    layouts = tuple(dict.fromkeys("in_batch" if b == "none" else "bank" for b in banks))
    return replace(space, layouts=layouts, banks=tuple(banks))


def temperatures() -> st.SearchStrategy[float]:
    """0.01..10, the usual values first (0.5 is the released default)."""
    return st.one_of(
        st.sampled_from([0.5, 0.1, 1.0, 0.2, 0.07, 0.01, 0.05, 2.0, 10.0]),
        st.floats(min_value=0.01, max_value=10.0),
    )


def betas(kind: str = "finite") -> st.SearchStrategy[float]:
    """beta = 1 (default), 0 (debiased), small, moderate, large (10..100), and inf when allowed."""
    finite = st.one_of(
        st.sampled_from([1.0, 0.0, 0.5, 2.0, 6.0]),
        st.floats(min_value=0.0, max_value=0.05),
        st.floats(min_value=0.05, max_value=10.0),
        st.floats(min_value=10.0, max_value=100.0),
    )
    if kind == "inf":
        return st.just(math.inf)
    if kind == "any":
        return st.one_of(finite, st.just(math.inf))
    return finite


def taus(kind: str = "any") -> st.SearchStrategy[float]:
    """tau+ in [0, 0.9]: 0.1 (default), 0 (no debiasing), 0.5, 0.9, anything between; "high": 0.5..0.9."""
    if kind == "high":
        return st.one_of(st.sampled_from([0.9, 0.5]), st.floats(min_value=0.5, max_value=0.9))
    return st.one_of(st.sampled_from([0.1, 0.0, 0.5, 0.9]), st.floats(min_value=0.0, max_value=0.9))


#: (B, d, K) of a quick run's examples. The first is the shape of the suite's probes (``suite._probe_case``), so the
#: programs compiled to probe the target's options are reused by the features; the third, one anchor with a bank
#: (B = 1), is used by combinations with a bank.
QUICK_SHAPES = ((3, 4, 5), (8, 32, 16), (1, 4, 5))
#: At most this many combinations of static options per space in a quick run (see :func:`quick_combinations`).
QUICK_COMBINATIONS = 2


def _beta_modes(kind: str) -> Tuple[str, ...]:
    """The static modes of beta that a backend compiles separately: finite > 0, exactly 0, inf."""
    return {"finite": ("finite", "zero"), "inf": ("inf",), "any": ("finite", "inf", "zero")}[kind]


def _layout_choices(space: Space) -> Tuple[Tuple[str, str], ...]:
    """(public layout, bank kind) pairs of ``space``, the kinds of layout interleaved (in-batch, a bank, cross, ...)
    so that the first few combinations of a rich space already see each kind."""
    groups = []
    for public in space.layouts:
        if public == "in_batch":
            groups.append([("in_batch", "none")])
        elif public == "bank":
            groups.append([("bank", b) for b in space.banks if b != "none"])
        else:
            groups.append([("cross", b) for b in space.banks])
    out = []
    for i in range(max(len(g) for g in groups)):
        out += [g[i] for g in groups if i < len(g)]
    return tuple(out)


@functools.lru_cache(maxsize=None)
def quick_combinations(space: Space) -> Tuple[dict, ...]:
    """The combinations of static options and shapes a quick run draws from (``space.programs == "few"``).

    The options of ``space`` that change the compiled program — layout and bank, symmetric, labels, estimator,
    clamp, normalize, reduction, beta's mode, memory budget, a tensor temperature — and the shape. Combination 0
    is the simplest (every option's first choice) in the probes' shape ``QUICK_SHAPES[0]``, so it reuses the
    program compiled to probe the option; combination ``i >= 1`` takes choice ``(i - 1 + r) mod n`` of each
    option with ``n`` choices (``r = space.rotation``, different for each feature) and a larger shape, or one
    anchor with a bank. There are at most :data:`QUICK_COMBINATIONS`; over the features of a quick run every
    choice of every option is drawn somewhere.
    """
    layouts = _layout_choices(space)
    cross = any(p == "cross" for p, _ in layouts)
    options = {
        "layout": layouts,
        "symmetric": space.symmetric if cross else (True,),
        "labels": space.labels,
        "estimator": space.estimators,
        "clamp": space.clamps,
        "normalize": space.normalizes,
        "reduction": space.reductions,
        "beta": _beta_modes(space.betas),
        "memory_budget": space.memory_budgets,
        "temperature_grad": space.temperature_grad,
    }
    r = space.rotation
    combos = [dict({k: v[0] for k, v in options.items()}, shape=0)]
    for i in range(1, QUICK_COMBINATIONS):
        c = {k: v[(i - 1 + r) % len(v)] for k, v in options.items()}
        # a larger shape, or (with a bank) one anchor
        c["shape"] = 2 if c["layout"][1] != "none" and (i - 1 + r) % 2 else 1
        if c not in combos:
            combos.append(c)
    return tuple(combos)


def _rows(rng: np.random.Generator, geometry: str, noise: float, B: int, d: int, bank_shape):
    """z1, z2, negatives (float64, not yet scaled or rounded)."""
    n_bank = int(np.prod(bank_shape[:-1])) if bank_shape else 0
    if geometry == "integer":
        draw = lambda *s: rng.integers(-2, 3, size=s).astype(np.float64)  # noqa: E731
    else:
        draw = lambda *s: rng.standard_normal(s)  # noqa: E731
    if geometry == "clustered":
        centers = rng.standard_normal((int(rng.integers(1, 4)), d))
        cid = rng.integers(0, len(centers), size=B)
        z1 = centers[cid] + noise * rng.standard_normal((B, d))
        z2 = centers[cid] + noise * rng.standard_normal((B, d))
        bank = centers[rng.integers(0, len(centers), size=n_bank)] + noise * rng.standard_normal((n_bank, d))
    else:
        z1 = draw(B, d)
        z2 = z1 + noise * rng.standard_normal((B, d)) if geometry == "aligned" else draw(B, d)
        bank = draw(n_bank, d)
    pool = np.concatenate([z1, z2, bank])
    if geometry == "duplicates" and len(pool) > 1:
        k = max(1, len(pool) // 3)
        pool[rng.integers(0, len(pool), size=k)] = pool[rng.integers(0, len(pool), size=k)]
    if geometry == "zeros":
        pool[rng.integers(0, len(pool), size=max(1, len(pool) // 4))] = 0.0
    z1, z2, bank = pool[:B], pool[B : 2 * B], pool[2 * B :]
    return z1, z2, (bank.reshape(bank_shape) if bank_shape else None)


def _scale(rng, x, mode, dtype, normalize):
    """Multiply a random half of the rows by magnitudes of the given mode."""
    if x is None or mode == "unit":
        return x
    rows = x.reshape(-1, x.shape[-1])
    pick = rng.random(len(rows)) < 0.5
    if mode == "mixed":
        lo, hi = (-3.0, 3.0) if normalize else (-1.0, 1.0)
    else:
        lo, hi = MAGNITUDES[dtype][mode]
    exps = rng.uniform(lo, hi, size=len(rows))
    factors = np.where(pick, 10.0 ** exps, 1.0)
    return (rows * factors[:, None]).reshape(x.shape)


def _tau_at(case: Case, mode: str, rng: np.random.Generator, k: int) -> Optional[float]:
    """tau+ putting one anchor exactly on the clamp's kink ("kink") or just below Ng = 0 ("cancel")."""
    from .tolerances import anchor_quantities

    q = anchor_quantities(case)
    t = float(case.params["temperature"])
    cand = np.flatnonzero(q.has)
    if len(cand) == 0:
        return None
    i = int(cand[rng.integers(0, len(cand))])
    logM = math.log(int(q.M[i]))
    with np.errstate(all="ignore"):
        if mode == "kink":
            # (R - tau M e^a)/(1 - tau) = M e^{-1/t}  <=>  tau = (R - M e^{-1/t}) / (M e^a - M e^{-1/t})
            lf = logM - 1.0 / t
            top = max(q.lr[i], logM + q.a[i], lf)
            num = math.exp(q.lr[i] - top) - math.exp(lf - top)
            den = math.exp(logM + q.a[i] - top) - math.exp(lf - top)
            tau = num / den if den > 0 else None
        else:
            e = q.lr[i] - logM - q.a[i]
            tau = math.exp(e) * (1.0 - 10.0 ** (-k)) if e < 0 else None
    if tau is None or not math.isfinite(tau) or not (0.0 <= tau <= 0.9):
        return None
    return float(tau)


@st.composite
def cases(draw, space: Space) -> Case:
    """One case inside ``space`` (see the module docstring for what is covered)."""
    dtype = space.dtype
    if space.programs == "few":  # a quick run: the static options and the shape of one fixed combination
        combo = draw(st.sampled_from(quick_combinations(space)))
        public, layout = combo["layout"]
        B, d, K = QUICK_SHAPES[combo["shape"]]
        K = K if layout != "none" else 0
        fixed = lambda name, choices: combo[name]  # noqa: E731
    else:
        combo = None
        public = draw(st.sampled_from(space.layouts))
        if public == "in_batch":
            layout = "none"
        elif public == "bank":
            layout = draw(st.sampled_from(tuple(b for b in space.banks if b != "none")))
        else:
            layout = draw(st.sampled_from(space.banks))
        fixed = lambda name, choices: draw(st.sampled_from(choices))  # noqa: E731
    symmetric = fixed("symmetric", space.symmetric) if public == "cross" else True
    named = public == "cross" or (space.explicit_layout and draw(st.booleans()))
    labelled = fixed("labels", space.labels)
    if combo is None:
        B = draw(st.sampled_from(B_SIZES if layout == "none" else B_SIZES_BANK))
        d = draw(st.sampled_from(D_SIZES))
        K = draw(st.sampled_from(K_SIZES)) if layout != "none" else 0
    estimator = fixed("estimator", space.estimators)
    clamp = fixed("clamp", space.clamps)
    normalize = fixed("normalize", space.normalizes)
    reduction = fixed("reduction", space.reductions)
    geometry = draw(st.sampled_from(space.geometries))
    noise = draw(st.sampled_from([0.1, 1e-3, 0.0, 1.0]))
    scale = draw(st.sampled_from(tuple(s for s in space.scales if normalize or s in ("unit", "mixed"))))
    bits = draw(st.sampled_from([3, 8, None]))
    temperature = draw(temperatures())
    if combo is None:
        beta = draw(betas(space.betas))
    else:  # the combination's mode of beta; its value, when finite, drawn as in a full run
        beta = {"zero": 0.0, "inf": math.inf}.get(combo["beta"])
        if beta is None:
            beta = draw(betas("finite").filter(lambda b: b != 0.0))
    tau_mode = draw(st.sampled_from(["drawn", "kink", "cancel"])) if estimator == "hard" else "drawn"
    tau_plus = draw(taus(space.taus))
    cancel_digits = draw(st.sampled_from([2, 5, 10]))
    classes = draw(st.sampled_from([2, 1, 3, 0])) if labelled else None  # 0: B classes (all distinct)
    cot_mode = draw(st.sampled_from([1.0, 0.5, -2.0]))
    memory_budget = fixed("memory_budget", space.memory_budgets)
    temperature_grad = fixed("temperature_grad", space.temperature_grad)
    seed = draw(st.integers(min_value=0, max_value=2**32 - 1))

    rng = np.random.default_rng(seed)
    bank_shape = None if layout == "none" else ((K, d) if layout == "shared" else (B, K, d))
    z1, z2, neg = _rows(rng, geometry, noise, B, d, bank_shape)
    arrays = []
    for x in (z1, z2, neg):
        x = _scale(rng, x, scale, dtype, normalize)
        x = None if x is None else round_to_dtype(quantize(x, bits), dtype)
        arrays.append(x)
    z1, z2, neg = arrays
    # magnitudes were chosen inside the dtype's range; a Gaussian tail can still round to inf: not a valid case
    if not all(np.all(np.abs(x) <= HUGE[dtype]) for x in arrays if x is not None):
        from hypothesis import reject

        reject()

    labels = negative_labels = None
    if labelled:
        nc = classes or B
        labels = rng.integers(0, nc, size=B).astype(np.int64)
        if layout != "none":
            negative_labels = rng.integers(0, nc, size=bank_shape[:-1]).astype(np.int64)
    if temperature_grad:  # the temperature becomes a tensor of the dtype under test: exactly representable
        temperature = float(round_to_dtype(np.asarray(float(temperature)), dtype))
    params = dict(
        temperature=float(temperature), beta=float(beta), tau_plus=float(tau_plus), estimator=estimator,
        clamp=bool(clamp), normalize=bool(normalize), reduction=reduction,
    )
    if named:
        params["layout"] = public
        if public == "cross":
            params["symmetric"] = bool(symmetric)
    extras = {} if memory_budget is None else {"memory_budget": memory_budget}
    case = Case(z1=z1, z2=z2, negatives=neg, labels=labels, negative_labels=negative_labels, params=params,
                dtype=dtype, cotangent=1.0, extras=extras, temperature_grad=bool(temperature_grad),
                origin=dict(geometry=geometry, noise=noise, scale=scale, bits=bits, tau_mode=tau_mode, seed=seed))
    if reduction == "none":
        case.cotangent = np.asarray(rng.choice([-1.0, 0.0, 0.5, 1.0, 2.0], size=case.n_anchors), dtype=np.float64)
    else:
        case.cotangent = float(cot_mode)
    if tau_mode != "drawn" and (tau_mode == "cancel" or clamp):
        tau = _tau_at(case, tau_mode, rng, cancel_digits)
        if tau is not None:
            case.params["tau_plus"] = tau
    return case
