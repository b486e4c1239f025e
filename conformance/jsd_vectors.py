"""Golden vectors of the graph objective, ``conformance/vectors/jsd.json`` (``python -m conformance.vectors``).

Same conventions as the other vector files (conformance/vectors/__init__.py), with a top-level
``"objective": "jsd_loss"`` and, per case::

    "inputs": {"local": [[...]], "graph": [[...]], "batch": [...]},
    "parameters": {"beta": ..., "tau_plus": ..., "convention": ..., "reduction": ...},
    "cotangent": number or [numbers], "exact_in": [...],
    "expected": {"value": ..., "grad_local": [[...]], "grad_graph": [[...]]},
    "tolerance": {"value": ..., "grad_local": [[...]], "grad_graph": [[...]]}     (absent for non-finite inputs)

Inputs are multiples of 1/16 in [-3, 3]: exact in float64, float32, float16 and bfloat16 unless ``exact_in`` says
otherwise.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List

import numpy as np

__all__ = ["build_jsd", "render_jsd", "jsd_case_arrays"]

DEFAULTS = dict(beta=1.0, tau_plus=0.5, convention="released", reduction="mean")


def _grid(rng, *shape):
    return np.round(rng.uniform(-3, 3, size=shape) * 16) / 16


def _case(name: str, description: str, local, graph, batch, cotangent: Any = 1.0, **params) -> Dict[str, Any]:
    import hardneg
    from conformance.cases import round_to_dtype
    from conformance.jsd_suite import JsdCase, tolerances
    from conformance.vectors import encode

    p = dict(DEFAULTS, **params)
    local, graph = np.asarray(local, dtype=np.float64), np.asarray(graph, dtype=np.float64)
    batch = np.asarray(batch, dtype=np.int64)
    cot = np.asarray(cotangent, dtype=np.float64) if np.ndim(cotangent) else float(cotangent)
    value, grads = hardneg.jsd_loss_and_grad(local, graph, batch, cotangent=cot, **p)
    out = {"name": name, "description": description,
           "inputs": {"local": encode(local), "graph": encode(graph), "batch": encode(batch)},
           "parameters": encode(p), "cotangent": encode(cot),
           "exact_in": [dt for dt in ("float64", "float32", "float16", "bfloat16")
                        if all(np.array_equal(round_to_dtype(a, dt), a, equal_nan=True) for a in (local, graph))],
           "expected": {"value": encode(np.asarray(value)), "grad_local": encode(grads.local),
                        "grad_graph": encode(grads.graph)}}
    if np.isfinite(local).all() and np.isfinite(graph).all():
        tv, tg, _ = tolerances(JsdCase(local, graph, batch, p, "float64", cot), np.asarray(value), grads, True)
        out["tolerance"] = {"value": encode(np.asarray(tv)), "grad_local": encode(tg["local"]),
                            "grad_graph": encode(tg["graph"])}
    return out


def build_jsd() -> List[Dict[str, Any]]:
    rng = np.random.default_rng(2024)
    lo, gr = _grid(rng, 7, 3), _grid(rng, 3, 3)
    b = np.array([0, 0, 0, 1, 1, 2, 2])
    lo2, gr2 = _grid(rng, 6, 2), _grid(rng, 4, 2)
    b2 = np.array([0, 0, 1, 1, 3, 3])  # graph 2 has no node
    nan_lo = lo.copy()
    nan_lo[2, 1] = np.nan
    return [
        _case("defaults", "the released code as run: beta=1, tau_plus=0.5 (never passed), convention='released'",
              lo, gr, b),
        _case("released_beta0", "'JSD_hard' at beta = 0: the negative part divided by 1 - tau_plus", lo, gr, b,
              beta=0.0),
        _case("released_beta10", "the largest beta of the released loop", lo, gr, b, beta=10.0),
        _case("released_none", "per-node terms with a cotangent vector", lo, gr, b, beta=2.0, reduction="none",
              cotangent=np.array([1.0, -0.5, 0.25, 2.0, 0.0, -1.0, 0.5])),
        _case("infograph_released", "beta = 0, tau_plus = 0: upstream InfoGraph's JSD loss", lo, gr, b, beta=0.0,
              tau_plus=0.0),
        _case("infograph_corrected", "beta = 0, tau_plus = 0 in the corrected convention: the same value", lo, gr, b,
              beta=0.0, tau_plus=0.0, convention="corrected"),
        _case("corrected", "weights towards hard negatives, debiased with tau_plus = 0.1", lo, gr, b, beta=1.0,
              tau_plus=0.1, convention="corrected"),
        _case("corrected_sum", "corrected, beta = 2, reduction='sum'", lo, gr, b, beta=2.0, tau_plus=0.3,
              convention="corrected", reduction="sum", cotangent=-0.5),
        _case("corrected_floor", "tau_plus = 0.9 and large positive scores: some estimates floored at 0",
              lo * 2, gr * 2, b, beta=1.0, tau_plus=0.9, convention="corrected", reduction="none",
              cotangent=np.ones(7)),
        _case("empty_graph", "a graph without nodes is still every node's negative", lo2, gr2, b2, beta=2.0),
        _case("empty_graph_corrected", "the same, corrected", lo2, gr2, b2, beta=2.0, tau_plus=0.2,
              convention="corrected"),
        _case("scale_tie", "max q = |min q| exactly: c's subgradient takes the max branch",
              [[3.0, -1.0], [-1.0, 1.0], [0.0, -2.0]], [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [0, 1, 2], beta=1.0),
        _case("zero_scale_released", "every negative score 0: c = 0, the released code's 0/0 is NaN",
              [[1.0, 0.0], [1.0, 0.0]], [[2.0, 0.0], [0.0, 1.0]], [0, 0], beta=1.0),
        _case("zero_scale_corrected", "every negative score 0: uniform weights in the corrected convention",
              [[1.0, 0.0], [1.0, 0.0]], [[2.0, 0.0], [0.0, 1.0]], [0, 0], beta=1.0, convention="corrected",
              tau_plus=0.2),
        _case("nonfinite", "a NaN in local: every output element NaN", nan_lo, gr, b),
    ]


def render_jsd(cases: List[Dict[str, Any]]) -> str:
    import hardneg

    doc = {"spec_version": hardneg.SPEC_VERSION, "generator": "python -m conformance.vectors", "theme": "jsd",
           "objective": "jsd_loss", "cases": cases}
    return json.dumps(doc, indent=1) + "\n"


def jsd_case_arrays(case: Dict[str, Any]) -> Dict[str, Any]:
    """The call of a jsd vector case as NumPy: ``dict(local=..., graph=..., batch=..., <parameters>)``."""
    from conformance.vectors import decode

    inp = case["inputs"]
    out: Dict[str, Any] = {"local": np.asarray(decode(inp["local"]), dtype=np.float64),
                           "graph": np.asarray(decode(inp["graph"]), dtype=np.float64),
                           "batch": np.asarray(inp["batch"], dtype=np.int64)}
    out.update({k: decode(v) for k, v in case["parameters"].items()})
    return out
