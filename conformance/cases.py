"""One conformance example: inputs, hyper-parameters, dtype and cotangent, as plain NumPy.

A :class:`Case` holds float64 arrays whose values are exactly representable in the dtype under test,
so converting them to any framework's tensor of that dtype is exact, and the float64 reference evaluated
on the same arrays sees precisely the target's inputs: input rounding is never part of the measured
error (docs/conformance.md, "Tolerances").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Union

import numpy as np

__all__ = ["Case", "round_to_dtype", "quantize", "UNIT_ROUNDOFF", "OUTPUT_ROUNDOFF", "TINY", "HUGE", "COMPUTE_DTYPE"]

#: Unit roundoff u = 2^-p of the dtype in which each input dtype is *computed* (spec: halves compute in float32).
UNIT_ROUNDOFF = {"float64": 2.0**-53, "float32": 2.0**-24, "float16": 2.0**-24, "bfloat16": 2.0**-24}
#: Unit roundoff of the dtype the results are *returned* in (the input dtype).
OUTPUT_ROUNDOFF = {"float64": 2.0**-53, "float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}
#: Smallest positive normal number of each dtype (below it a framework may flush to zero).
TINY = {"float64": 2.0**-1022, "float32": 2.0**-126, "float16": 2.0**-14, "bfloat16": 2.0**-126}
#: Largest finite number of each dtype.
HUGE = {
    "float64": float(np.finfo(np.float64).max),
    "float32": float(np.finfo(np.float32).max),
    "float16": 65504.0,
    "bfloat16": float.fromhex("0x1.fep127"),
}
COMPUTE_DTYPE = {"float64": "float64", "float32": "float32", "float16": "float32", "bfloat16": "float32"}


def _round_bfloat16(x: np.ndarray) -> np.ndarray:
    """Round to the nearest bfloat16 (ties to even) and return float64; NumPy alone, no ml_dtypes needed."""
    f = np.asarray(x, dtype=np.float32)
    bits = f.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    out = rounded.astype(np.uint32).view(np.float32).astype(np.float64)
    return np.where(np.isnan(f), np.nan, out)


def round_to_dtype(x: Optional[np.ndarray], dtype: str) -> Optional[np.ndarray]:
    """Values of ``x`` rounded to ``dtype`` and returned as float64 (exactly representable in ``dtype``)."""
    if x is None:
        return None
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore"):
        if dtype == "float64":
            return x.copy()
        if dtype == "bfloat16":
            return _round_bfloat16(x)
        return x.astype(dtype).astype(np.float64)


def quantize(x: np.ndarray, bits: Optional[int]) -> np.ndarray:
    """Round each element to ``bits`` significant bits (None: unchanged).

    Coarse values make short, readable failure snippets and produce exact ties and duplicates.
    """
    if bits is None:
        return x
    m, e = np.frexp(x)
    return np.ldexp(np.round(m * 2.0**bits) / 2.0**bits, e)


@dataclass
class Case:
    """A single call of ``hcl_loss`` to check.

    Attributes
    ----------
    z1, z2 : (B, d) float64, values representable in ``dtype``.
    negatives : (K, d) or (B, K, d) float64, or None.
    labels : (B,) int64 or None; negative_labels : (K,) or (B, K) int64 or None.
    params : dict with temperature, beta, tau_plus, estimator, clamp, normalize, reduction; and (spec 1.1) with
        ``layout`` and ``symmetric`` only when the case names a layout (a spec 1.0 call omits them).
    dtype : the dtype the target receives ("float64", "float32", "float16", "bfloat16").
    cotangent : float (mean/sum) or (n_anchors,) float64 array (none); representable in ``dtype``.
    extras : backend extra keyword arguments (e.g. ``memory_budget``).
    origin : how the case was drawn (geometry, scales, ...), for the report.
    temperature_grad : pass the temperature as a 0-d tensor of ``dtype`` (spec 1.1) and compare its gradient
        with ``Grads.temperature``; ``params["temperature"]`` is then representable in ``dtype``.
    """

    z1: np.ndarray
    z2: np.ndarray
    params: Dict[str, Any]
    dtype: str = "float64"
    negatives: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None
    negative_labels: Optional[np.ndarray] = None
    cotangent: Union[float, np.ndarray] = 1.0
    extras: Dict[str, Any] = field(default_factory=dict)
    origin: Dict[str, Any] = field(default_factory=dict)
    temperature_grad: bool = False

    @property
    def finite_inputs(self) -> bool:
        """Every input element finite, and a tensor temperature > 0 and finite (else every output is NaN)."""
        return all(np.isfinite(x).all() for x in self.arrays.values()) and self._temperature_ok()

    def _temperature_ok(self) -> bool:
        t = float(self.params["temperature"])
        return not self.temperature_grad or (math.isfinite(t) and t > 0 and math.isfinite(1.0 / t))

    @property
    def layout(self) -> str:
        """The resolved layout: "in_batch", "bank" or "cross" (``layout=None`` resolves as in spec 1.0)."""
        lay = self.params.get("layout")
        if lay is not None:
            return lay
        return "in_batch" if self.negatives is None else "bank"

    @property
    def symmetric(self) -> bool:
        return bool(self.params.get("symmetric", True))

    @property
    def arrays(self) -> Dict[str, np.ndarray]:
        """The differentiable inputs by name (``negatives`` only when given)."""
        out = {"z1": self.z1, "z2": self.z2}
        if self.negatives is not None:
            out["negatives"] = self.negatives
        return out

    @property
    def n_anchors(self) -> int:
        B = self.z1.shape[0]
        if self.layout == "cross":
            return 2 * B if self.symmetric else B
        return 2 * B if self.layout == "in_batch" else B

    def kwargs(self) -> Dict[str, Any]:
        """Keyword arguments of the call, arrays excluded (params and extras)."""
        return {**self.params, **self.extras}

    def reference(self, want_grad: bool = True):
        """The float64 reference at exactly these inputs: ``(value, Grads)`` (Grads None without want_grad)."""
        import hardneg

        kw = dict(
            negatives=self.negatives, labels=self.labels, negative_labels=self.negative_labels, **self.params
        )
        if not self._temperature_ok():
            # spec 1.1 sections 1.1 and 6: a tensor temperature <= 0 or not finite makes every output NaN
            kw["temperature"] = 1.0
            v, g = hardneg.hcl_loss_and_grad(self.z1, self.z2, cotangent=self.cotangent, **kw)
            nan = lambda x: None if x is None else np.full(np.shape(x), np.nan)  # noqa: E731
            v = np.full(np.shape(v), np.nan)
            return v, (hardneg.Grads(nan(g.z1), nan(g.z2), nan(g.negatives), np.float64(np.nan)) if want_grad
                       else None)
        with np.errstate(all="ignore"):
            if not want_grad:
                return np.asarray(hardneg.hcl_loss(self.z1, self.z2, **kw), dtype=np.float64), None
            v, g = hardneg.hcl_loss_and_grad(self.z1, self.z2, cotangent=self.cotangent, **kw)
        return np.asarray(v, dtype=np.float64), g

    def key(self) -> tuple:
        """A hashable identity (used to recognise a replayed example)."""
        def h(a):
            return None if a is None else (a.shape, a.tobytes())

        cot = self.cotangent if np.isscalar(self.cotangent) else h(np.asarray(self.cotangent))
        return (
            h(self.z1), h(self.z2), h(self.negatives), h(self.labels), h(self.negative_labels),
            tuple(sorted((k, repr(v)) for k, v in self.params.items())), self.dtype, repr(cot),
            tuple(sorted((k, repr(v)) for k, v in self.extras.items())), self.temperature_grad,
        )

    def summary(self) -> str:
        """One line: shapes, dtype and hyper-parameters."""
        p = self.params
        B, d = self.z1.shape
        lay = "in-batch" if self.negatives is None else f"bank {self.negatives.shape}"
        if self.layout == "cross":
            lay = "cross" + ("" if self.symmetric else " one-way") + (
                "" if self.negatives is None else f" + bank {self.negatives.shape}")
        elif "layout" in p:
            lay += f" (layout={p['layout']!r})"
        lab = "" if self.labels is None else f", labels ({len(np.unique(self.labels))} classes)"
        beta = "inf" if math.isinf(p["beta"]) else f"{p['beta']:g}"
        return (
            f"B={B} d={d} {lay}{lab} {self.dtype}, t={p['temperature']:g} beta={beta} tau+={p['tau_plus']:g} "
            f"{p['estimator']} clamp={p['clamp']} normalize={p['normalize']} reduction={p['reduction']}"
            + (", temperature as a tensor (its gradient checked)" if self.temperature_grad else "")
        )
