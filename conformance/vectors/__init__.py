"""Golden vectors: inputs, parameters, values and gradients of the reference, as JSON, for ports in any language.

``python -m conformance.vectors`` (re)writes ``conformance/vectors/*.json`` from :mod:`hardneg.reference`;
:func:`load` reads them back; tests/test_conformance_vectors.py checks that the reference still reproduces them.

File format (one file per theme; docs/conformance.md has the full description)::

    {"spec_version": "1.0", "generator": "python -m conformance.vectors", "theme": "...",
     "cases": [{"name": ..., "description": ...,
                "inputs": {"z1": [[...]], "z2": [[...]], "negatives"?: ..., "labels"?: ..., "negative_labels"?: ...},
                "parameters": {"temperature": ..., "beta": ..., "tau_plus": ..., "estimator": ..., "clamp": ...,
                               "normalize": ..., "reduction": ..., "layout"?: ..., "symmetric"?: ...},
                "cotangent": number or [numbers],
                "exact_in": ["float64", "float32", ...],
                "expected": {"value": ..., "grad_z1": [[...]], "grad_z2": [[...]], "grad_negatives"?: ...,
                             "grad_temperature"?: ...},
                "tolerance": {"value": ..., "grad_z1": [[...]], ...}}]}

``layout``/``symmetric`` (spec 1.1) appear only in cases that name a layout (themes "cross", "temperature"); a
missing ``layout`` means ``None``. ``grad_temperature`` is d loss / d temperature (spec 1.1 section 8).

Numbers are JSON numbers (float64, shortest round-trip form) except the non-finite ones, written as the strings
"NaN", "Infinity" and "-Infinity" (JSON has no literal for them); ``beta`` may be "Infinity". ``tolerance`` is the
elementwise tolerance the suite derives for a float64 implementation (docs/conformance.md, "Tolerances").
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, Iterator, List

import numpy as np

__all__ = ["DIRECTORY", "load", "load_all", "decode", "encode", "case_arrays"]

DIRECTORY = Path(__file__).resolve().parent


def encode(x: Any) -> Any:
    """NumPy arrays/scalars to JSON-ready lists and numbers; non-finite floats to strings."""
    if isinstance(x, np.ndarray):
        return [encode(v) for v in x.tolist()] if x.ndim else encode(x.item())
    if isinstance(x, list):
        return [encode(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        if math.isnan(x):
            return "NaN"
        if math.isinf(x):
            return "Infinity" if x > 0 else "-Infinity"
        return x
    if isinstance(x, dict):
        return {k: encode(v) for k, v in x.items()}
    return x


def decode(x: Any) -> Any:
    """Inverse of :func:`encode` for numbers and nested lists (strings "NaN", "Infinity", "-Infinity")."""
    if isinstance(x, list):
        return [decode(v) for v in x]
    if x == "NaN":
        return math.nan
    if x == "Infinity":
        return math.inf
    if x == "-Infinity":
        return -math.inf
    return x


def load(name: str) -> Dict[str, Any]:
    """One vector file by theme name (e.g. "basic")."""
    with open(DIRECTORY / f"{name}.json") as fh:
        return json.load(fh)


def load_all(objective: str = "hcl_loss") -> Iterator[Dict[str, Any]]:
    """Every case of every file of ``objective``, each with its file's theme added as ``"theme"``.

    A file names its objective in ``"objective"`` (absent: "hcl_loss"); jsd.json holds ``jsd_loss``'s vectors
    (conformance/jsd_vectors.py).
    """
    for path in sorted(DIRECTORY.glob("*.json")):
        with open(path) as fh:
            doc = json.load(fh)
        if doc.get("objective", "hcl_loss") != objective:
            continue
        for case in doc["cases"]:
            yield {**case, "theme": doc["theme"]}


def case_arrays(case: Dict[str, Any]) -> Dict[str, Any]:
    """The call of a vector case as NumPy: ``dict(z1=..., z2=..., <parameters>, negatives=..., labels=...)``."""
    out: Dict[str, Any] = {}
    for k, v in case["inputs"].items():
        dt = np.int64 if "labels" in k else np.float64
        out[k] = np.asarray(decode(v), dtype=dt)
    out.update({k: decode(v) for k, v in case["parameters"].items()})
    return out


def names() -> List[str]:
    return sorted(p.stem for p in DIRECTORY.glob("*.json"))
