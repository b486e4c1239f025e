"""The result of a verification: per-feature outcomes, worst errors, failures with their snippets, JSON, tables."""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = ["Failure", "FeatureResult", "Report", "format_table", "group_failures", "cause", "merge_reports"]

PASSED, FAILED, UNSUPPORTED, SKIPPED = "passed", "failed", "not supported", "skipped"


@dataclass
class Failure:
    """One failing (shrunk) example."""

    feature: str
    check: str
    message: str
    snippet: str
    case: str = ""  # one-line summary of the example
    size: int = 0  # number of input elements of the (shrunk) example: the smallest of a cause is shown

    def __str__(self) -> str:
        return f"[{self.feature}] {self.check}: {self.message}\n  example: {self.case}"


@dataclass
class FeatureResult:
    """Outcome of one feature (a group of examples exercising one option of the spec)."""

    name: str
    description: str
    status: str = PASSED
    examples: int = 0
    worst_value: Optional[float] = None  # max |error| / tolerance over the examples
    worst_grad: Optional[float] = None
    failures: List[Failure] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    def record(self, value_frac: Optional[float], grad_frac: Optional[float]) -> None:
        if value_frac is not None and math.isfinite(value_frac):
            self.worst_value = max(self.worst_value or 0.0, value_frac)
        if grad_frac is not None and math.isfinite(grad_frac):
            self.worst_grad = max(self.worst_grad or 0.0, grad_frac)


@dataclass
class Report:
    """What :func:`conformance.verify` found.

    Attributes
    ----------
    target : str
        ``module:function`` of the target (or its repr).
    framework, framework_version, device : str
    spec_version : str
    seed, max_examples : int
    features : list of FeatureResult
    gradients : str
        How gradients were obtained ("autodiff", "closed form (*_and_grad twin)", or "not checked: ...").
    """

    target: str
    framework: str
    framework_version: str = ""
    device: str = "cpu"
    spec_version: str = ""
    seed: int = 0
    max_examples: int = 0
    gradients: str = "autodiff"
    errors: str = "exact"  # the error contract: "exact" (type and message) or "type" (type only)
    profile: str = "strict"  # the input space: "strict" (all of it) or "practical" (realistic magnitudes)
    features: List[FeatureResult] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    @property
    def failures(self) -> List[Failure]:
        return [f for r in self.features for f in r.failures]

    @property
    def ok(self) -> bool:
        """True when no feature failed (features the target does not support do not count against it)."""
        return not any(r.status == FAILED for r in self.features)

    @property
    def verdict(self) -> str:
        if not self.ok:
            return "FAIL"
        uns = sum(r.status == UNSUPPORTED for r in self.features)
        return "PASS" if not uns else f"PASS ({uns} not supported)"

    @property
    def examples(self) -> int:
        return sum(r.examples for r in self.features)

    def _worst(self, attr: str) -> Optional[float]:
        vals = [getattr(r, attr) for r in self.features if getattr(r, attr) is not None]
        return max(vals) if vals else None

    @property
    def worst_value(self) -> Optional[float]:
        """Worst value error over all examples, as a fraction of its tolerance (<= 1 conforms)."""
        return self._worst("worst_value")

    @property
    def worst_grad(self) -> Optional[float]:
        """Worst gradient error over all examples, as a fraction of its tolerance (<= 1 conforms)."""
        return self._worst("worst_grad")

    def features_verified(self) -> str:
        """Passed features out of those that ran ("not supported" and "skipped" ones excluded)."""
        n = sum(r.status == PASSED for r in self.features)
        ran = sum(r.status in (PASSED, FAILED) for r in self.features)
        return f"{n}/{ran}"

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d.update(ok=self.ok, verdict=self.verdict, examples=self.examples, worst_value=self.worst_value,
                 worst_grad=self.worst_grad, features_verified=self.features_verified())
        return d

    def to_json(self, indent: Optional[int] = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=_json_default)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Report":
        """The report back from :meth:`to_dict` (or its JSON); the derived fields are recomputed."""
        own = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in own and k != "features"}
        feats = [FeatureResult(**{**f, "failures": [Failure(**x) for x in f.get("failures", [])]})
                 for f in d.get("features", [])]
        return cls(**kw, features=feats)

    def summary(self) -> str:
        """A readable multi-line account: one line per feature, then the failures with their snippets."""
        lines = [f"{self.target} ({self.framework} {self.framework_version}, {self.device}): {self.verdict}; "
                 f"gradients: {self.gradients}"]
        width = max([16] + [len(r.name) for r in self.features])
        for r in self.features:
            lines.append(f"  {r.name:<{width}} {r.status:<14} {r.examples:>5} examples  value {_f(r.worst_value):>7}  "
                         f"grad {_f(r.worst_grad):>7}" + (f"  ({'; '.join(r.notes)})" if r.notes else ""))
        lines.append(f"  (profile {self.profile}; error contract: "
                     + ("exception type and message" if self.errors == "exact" else "exception type only") + ")")
        for f, feats in group_failures(self.failures):
            also = f"\n  the same failure in {len(feats)} features: {', '.join(feats)}" if len(feats) > 1 else ""
            lines += ["", str(f) + also, f.snippet]
        return "\n".join(lines)

    __str__ = summary


_NUM = re.compile(r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)|\b(?:nan|inf)\b")


def cause(failure) -> tuple:
    """What a failure is, independent of the example: its check and its message's first line with numbers and
    positions blanked ("value: 0.51 vs reference 0.5 ..." and "value: 2.0 vs reference 1.9 ..." are one cause)."""
    get = (lambda k: failure.get(k, "")) if isinstance(failure, dict) else (lambda k: getattr(failure, k))
    first = (get("message") or "").splitlines()[0] if get("message") else ""
    first = re.sub(r" at \([^)]*\)", "", first)
    check = re.sub(r" \(.*\)$", "", get("check") or "")  # "error contract (B = 0)" -> "error contract"
    return check, _NUM.sub("#", first)


def group_failures(failures: Sequence[Any]) -> List[Tuple[Any, List[str]]]:
    """One entry per :func:`cause`: ``(the failure with the smallest example, [features it affects])``, in order
    of first appearance. Works on :class:`Failure` objects and on their ``to_dict`` form."""
    get = lambda f, k: f.get(k) if isinstance(f, dict) else getattr(f, k)  # noqa: E731
    groups: Dict[tuple, List[Any]] = {}
    for f in failures:
        groups.setdefault(cause(f), []).append(f)
    out = []
    for fs in groups.values():
        best = min(fs, key=lambda f: (get(f, "size") or 0, len(get(f, "snippet") or "")))
        out.append((best, list(dict.fromkeys(get(f, "feature") for f in fs))))
    return out


def merge_reports(parts: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """One report (dict form) from the reports of one target's parts, verified by separate processes (each with a
    subset of the features): the features in the order of ``conformance.FEATURES``, the notes of every part."""
    from .suite import FEATURES

    reps = [Report.from_dict(d) for d in parts]
    out = reps[0]
    for r in reps[1:]:
        out.features += r.features
        out.notes += [n for n in r.notes if n not in out.notes]
    order = {f: i for i, f in enumerate(FEATURES)}
    out.features.sort(key=lambda f: order.get(f.name, len(order)))
    return out.to_dict()


def _json_default(o):
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
    except ImportError:  # pragma: no cover
        pass
    return str(o)


def _f(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.2g}"


def format_table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    """A plain-text table (columns padded to their widest cell)."""
    cols = list(zip(*([header] + [list(r) for r in rows])))
    widths = [max(len(str(c)) for c in col) for col in cols]
    fmt = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    out = [fmt(header), fmt(["-" * w for w in widths])]
    out += [fmt(r) for r in rows]
    return "\n".join(out)
