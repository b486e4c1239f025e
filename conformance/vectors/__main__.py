"""Write conformance/vectors/*.json from the reference: ``python -m conformance.vectors [--check]``.

Inputs are multiples of 1/16 in [-3, 3] (at most 6 significant bits), optionally scaled by a power of two, so they
are exact in float64 and, unless a case says otherwise (``exact_in``), in float32, float16 and bfloat16: a port
in any precision reads exactly the inputs the reference saw. ``--check`` rewrites nothing and exits 1 when the
files differ from what the reference writes now.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any, Dict, List, Optional

import numpy as np

import hardneg
from conformance.cases import Case, round_to_dtype
from conformance.tolerances import bounds
from conformance.vectors import DIRECTORY, encode

DEFAULTS = dict(temperature=0.5, beta=1.0, tau_plus=0.1, estimator="hard", clamp=True, normalize=True,
                reduction="mean")


def _grid(rng: np.random.Generator, *shape) -> np.ndarray:
    return np.round(rng.uniform(-3, 3, size=shape) * 16) / 16


def _case(name: str, description: str, z1, z2, negatives=None, labels=None, negative_labels=None,
          cotangent: Any = 1.0, temperature_grad: bool = False, **params) -> Dict[str, Any]:
    """One vector; ``temperature_grad`` (spec 1.1) adds ``grad_temperature``, d loss / d t."""
    p = dict(DEFAULTS, **params)
    arrays = {"z1": z1, "z2": z2}
    if negatives is not None:
        arrays["negatives"] = negatives
    c = Case(z1=z1, z2=z2, negatives=negatives,
             labels=None if labels is None else np.asarray(labels, dtype=np.int64),
             negative_labels=None if negative_labels is None else np.asarray(negative_labels, dtype=np.int64),
             params=p, dtype="float64", cotangent=cotangent, temperature_grad=temperature_grad)
    value, grads = c.reference()
    tol = bounds(c, value, grads) if all(np.isfinite(a).all() for a in arrays.values()) else None
    exact = [dt for dt in ("float64", "float32", "float16", "bfloat16")
             if all(np.array_equal(round_to_dtype(a, dt), a, equal_nan=True) for a in arrays.values())]
    inputs = {k: v for k, v in arrays.items()}
    if labels is not None:
        inputs["labels"] = np.asarray(labels, dtype=np.int64)
    if negative_labels is not None:
        inputs["negative_labels"] = np.asarray(negative_labels, dtype=np.int64)
    expected = {"value": value, "grad_z1": grads.z1, "grad_z2": grads.z2}
    tolerance: Optional[Dict[str, Any]] = None
    if negatives is not None:
        expected["grad_negatives"] = grads.negatives
    if temperature_grad:
        expected["grad_temperature"] = grads.temperature
    if tol is not None:
        tolerance = {"value": tol.value, "grad_z1": tol.grads["z1"], "grad_z2": tol.grads["z2"]}
        if negatives is not None:
            tolerance["grad_negatives"] = tol.grads["negatives"]
        if temperature_grad:
            tolerance["grad_temperature"] = tol.grads["temperature"]
    return encode({
        "name": name, "description": description, "inputs": inputs, "parameters": p,
        "cotangent": cotangent, "exact_in": exact, "expected": expected, "tolerance": tolerance,
    })


def _tau_negative_ng(z1, z2) -> float:
    """The first tau+ of a grid for which some anchor has Ng < 0 while every denominator D stays > 0."""
    for tau in np.arange(1, 90) / 100:
        v = hardneg.hcl_loss(z1, z2, tau_plus=float(tau), clamp=False, reduction="none")
        neg = hardneg.hcl_loss(z1, z2, tau_plus=float(tau), clamp=False, reduction="none") < 0
        if np.all(np.isfinite(v)) and neg.any():
            return float(tau)
    raise RuntimeError("no tau+ gives Ng < 0 with D > 0 for these inputs")


def build() -> Dict[str, List[Dict[str, Any]]]:
    rng = np.random.default_rng(20210503)  # fixed: the files must not change unless the reference does
    B, d, K = 4, 3, 5
    z1, z2 = _grid(rng, B, d), _grid(rng, B, d)
    bank, bank3 = _grid(rng, K, d), _grid(rng, B, K, d)
    cot_none = np.array([1.0, -0.5, 2.0, 0.0, 0.25, 1.5, -1.0, 0.75])
    themes: Dict[str, List[Dict[str, Any]]] = {}

    themes["basic"] = [
        _case("defaults", "the released defaults: t=0.5, beta=1, tau+=0.1, hard, clamp, normalize, mean", z1, z2),
        _case("sum", "reduction='sum' with cotangent 0.5", z1, z2, reduction="sum", cotangent=0.5),
        _case("none", "reduction='none': 2B losses, z1's anchors then z2's; a cotangent vector", z1, z2,
              reduction="none", cotangent=cot_none),
        _case("cold", "t = 0.05 (logits up to 20)", z1, z2, temperature=0.05),
        _case("very_cold", "t = 0.01, beta = 10 (log-space needed even in float64 for the raw formula)", z1, z2,
              temperature=0.01, beta=10.0),
        _case("hot", "t = 5", z1, z2, temperature=5.0),
        _case("debiased", "beta = 0: the debiased loss (Chuang et al. 2020)", z1, z2, beta=0.0),
        _case("hard_beta6", "beta = 6", z1, z2, beta=6.0),
        _case("beta_inf", "beta = inf: R = M e^{max s}", z1, z2, beta=math.inf),
        _case("easy", "estimator 'easy': Ng = sum e^s (beta, tau+, clamp ignored)", z1, z2, estimator="easy"),
        _case("nt_xent", "beta = tau+ = 0, clamp=False: NT-Xent", z1, z2, beta=0.0, tau_plus=0.0, clamp=False),
    ]
    aligned2 = z1 + np.round(rng.uniform(-1, 1, size=(B, d))) / 16
    tau_neg = _tau_negative_ng(z1, aligned2)
    themes["clamp"] = [
        _case("binding", "near-identical positive pairs and tau+ = 0.9: the floor M e^{-1/t} binds", z1, aligned2,
              tau_plus=0.9),
        _case("identical_pairs", "z2 = z1, tau+ = 0.5", z1, z1.copy(), tau_plus=0.5, reduction="none",
              cotangent=cot_none),
        _case("unclamped_negative_ng", f"clamp=False, tau+ = {tau_neg}: Ng < 0 with D > 0 for some anchors", z1,
              aligned2, tau_plus=tau_neg, clamp=False, reduction="none", cotangent=cot_none),
        _case("undefined", "clamp=False, identical pairs, tau+ = 0.9, t = 0.1: D <= 0, NaN value and gradients",
              z1, z1.copy(), tau_plus=0.9, clamp=False, temperature=0.1),
    ]
    themes["bank"] = [
        _case("shared", "a (K, d) bank shared by the B anchors (z1's rows)", z1, z2, negatives=bank),
        _case("per_anchor", "a (B, K, d) bank, one per anchor, reduction='none'", z1, z2, negatives=bank3,
              reduction="none", cotangent=cot_none[:B]),
        _case("single_pair", "B = 1 with a bank", z1[:1], z2[:1], negatives=bank),
        _case("shared_labels", "labels with negative_labels: same-label bank rows removed", z1, z2, negatives=bank,
              labels=[0, 1, 0, 2], negative_labels=[0, 1, 1, 2, 3]),
        _case("per_anchor_labels", "per-anchor bank with (B, K) negative_labels", z1, z2, negatives=bank3,
              labels=[0, 1, 0, 2], negative_labels=[[0, 1, 1, 2, 3]] * B, beta=2.0),
    ]
    themes["labels"] = [
        _case("repeated_classes", "in-batch labels with repeated classes", z1, z2, labels=[0, 1, 0, 1],
              reduction="none", cotangent=cot_none),
        _case("anchor_without_negatives", "bank labels leave anchor 1 with no negatives: loss 0, gradient 0",
              z1, z2, negatives=bank, labels=[0, 1, 2, 3], negative_labels=[1] * K, reduction="none",
              cotangent=cot_none[:B]),
        _case("all_one_class", "in-batch, one class: no anchor has a negative, the loss is 0", z1, z2,
              labels=[5, 5, 5, 5]),
    ]
    zero = z1.copy()
    zero[1] = 0.0
    dup = z1.copy()
    dup[2] = dup[0]
    huge, tiny = z1 * 2.0**100, z2 * 2.0**-50
    nan = z1.copy()
    nan[0, 1] = math.nan
    themes["edge"] = [
        _case("zero_row", "a zero row: u = 0, its gradient through the 1e-12 branch", zero, z2),
        _case("duplicates", "an exact duplicate row among the samples", dup, z2, beta=math.inf),
        _case("unnormalized", "normalize=False", z1 / 4, z2 / 4, normalize=False),
        _case("huge_norms", "rows scaled by 2^100 (their squares overflow float32)", huge, z2),
        _case("float64_huge_norms", "rows scaled by 2^600 (their squares overflow float64)", z1 * 2.0**600, z2),
        _case("tiny_norms", "rows scaled by 2^-50: norms below the 1e-12 epsilon", z1, tiny),
        _case("nonfinite", "a NaN input element: every output element NaN", nan, z2),
    ]
    # spec 1.1 (new files; the themes above are unchanged): the cross layout and d loss / d temperature
    rng11 = np.random.default_rng(20261129)
    c1, c2 = _grid(rng11, B, d), _grid(rng11, B, d)
    cbank, cbank3 = _grid(rng11, K, d), _grid(rng11, B, K, d)
    cross = dict(layout="cross", temperature_grad=True)
    themes["cross"] = [
        _case("symmetric", "layout='cross': z1's anchors against z2's rows, then z2's against z1's (CLIP)", c1, c2,
              **cross),
        _case("one_way", "layout='cross', symmetric=False: z1's anchors only", c1, c2, symmetric=False, **cross),
        _case("none", "reduction='none': 2B losses, z1's anchors then z2's; a cotangent vector", c1, c2,
              reduction="none", cotangent=cot_none, **cross),
        _case("shared_bank", "a (K, d) bank after z2's rows for z1's anchors; the reverse direction ignores it",
              c1, c2, negatives=cbank, **cross),
        _case("shared_bank_one_way", "one way with a shared bank: MultipleNegativesRankingLoss's layout", c1, c2,
              negatives=cbank, symmetric=False, **cross),
        _case("per_anchor_bank", "a (B, K, d) bank: anchor i's own hard negatives, reduction='none'", c1, c2,
              negatives=cbank3, reduction="none", cotangent=cot_none, **cross),
        _case("labels", "labels remove same-label candidates of both directions", c1, c2, labels=[0, 1, 0, 2],
              **cross),
        _case("labels_bank", "labels with a shared bank and negative_labels", c1, c2, negatives=cbank,
              labels=[0, 1, 0, 2], negative_labels=[0, 1, 1, 2, 3], beta=2.0, **cross),
        _case("clip", "estimator 'easy': CLIP's loss at t = 0.0625", c1, c2, estimator="easy", temperature=0.0625,
              **cross),
        _case("mnrl", "estimator 'easy', one way, shared bank: MNRL with scale 20 (t = 0.05)", c1, c2,
              negatives=cbank, estimator="easy", temperature=0.05, symmetric=False, **cross),
        _case("single_pair_bank", "B = 1 with a bank: the reverse anchor has no negative (loss 0)", c1[:1], c2[:1],
              negatives=cbank, reduction="none", cotangent=cot_none[:2], **cross),
    ]
    caligned = c1 + np.round(rng11.uniform(-1, 1, size=(B, d))) / 16
    themes["temperature"] = [
        _case("in_batch", "d loss / d t, in-batch, off the floor", c1, c2, temperature_grad=True),
        _case("floor", "near-identical pairs, tau+ = 0.9: the floor binds, d/dt has the floor's own term", c1,
              caligned, tau_plus=0.9, temperature_grad=True),
        _case("identical_pairs", "z2 = z1, tau+ = 0.9: every anchor on the floor", c1, c1.copy(), tau_plus=0.9,
              reduction="none", cotangent=cot_none, temperature_grad=True),
        _case("cross_floor", "cross layout, near-identical pairs, tau+ = 0.9", c1, caligned, tau_plus=0.9,
              layout="cross", temperature_grad=True),
        _case("bank", "a shared bank, t = 0.1, beta = 3", c1, c2, negatives=cbank, temperature=0.1, beta=3.0,
              temperature_grad=True),
        _case("no_clamp", "clamp=False, tau+ = 0.05", c1, c2, clamp=False, tau_plus=0.05, temperature_grad=True),
        _case("explicit_in_batch", "layout='in_batch' named explicitly: the same as layout=None", c1, c2,
              layout="in_batch", temperature_grad=True),
    ]
    return themes


def render(theme: str, cases: List[Dict[str, Any]]) -> str:
    doc = {"spec_version": hardneg.SPEC_VERSION, "generator": "python -m conformance.vectors", "theme": theme,
           "cases": cases}
    return json.dumps(doc, indent=1) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m conformance.vectors", description=__doc__)
    ap.add_argument("--check", action="store_true", help="compare with the files instead of writing them")
    args = ap.parse_args(argv)
    stale = []
    from conformance.jsd_vectors import build_jsd, render_jsd  # the graph objective's vectors: jsd.json

    files = [(DIRECTORY / f"{theme}.json", render(theme, cases), len(cases)) for theme, cases in build().items()]
    jsd_cases = build_jsd()
    files.append((DIRECTORY / "jsd.json", render_jsd(jsd_cases), len(jsd_cases)))
    for path, text, n_cases in files:
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
            print(f"wrote {path} ({n_cases} cases)")
    if stale:
        print(f"out of date: {', '.join(stale)} (run python -m conformance.vectors)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
