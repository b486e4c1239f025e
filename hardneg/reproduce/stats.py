"""Statistics shared by every ``hardneg reproduce`` task: per-seed summaries and paired t-intervals.

Within a seed every method starts from the same weights and sees the same data, so the difference of two
methods on the same seed cancels what they share; the interval is Student's t on those paired differences
(seeds are 0 … N−1, never a selection, so they are an honest sample of seeds).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Sequence

import numpy as np

__all__ = ["summarize", "paired_t_interval", "format_interval"]


def summarize(values: Sequence[float]) -> Dict[str, Any]:
    """mean, sample std (ddof=1; 0 for a single value) and n of a list of per-seed values."""
    a = np.asarray(values, dtype=np.float64)
    n = int(a.size)
    return dict(
        mean=float(a.mean()) if n else float("nan"),
        std=float(a.std(ddof=1)) if n > 1 else 0.0,
        n=n,
        values=[float(x) for x in a],
    )


def paired_t_interval(diffs: Sequence[float], level: float = 0.95) -> Dict[str, Any]:
    """Two-sided Student-t confidence interval for the mean of paired per-seed differences.

    Returns ``summarize(diffs)`` plus ``lo``, ``hi`` (the interval; NaN for fewer than two seeds, where no
    interval exists), ``level`` and ``excludes_zero`` (True when the whole interval lies on one side of 0,
    the pre-registered criterion for "a difference"), and ``zero_spread``: True when n >= 2 differences are
    all equal (accuracies move in steps of one test sample, so with few seeds this happens); the interval is
    then the single point [mean, mean], which the reports annotate "(same on every seed)" rather than hide.
    A NaN difference (a diverged run) makes every field NaN and ``excludes_zero`` False rather than dropping
    the seed.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1); got {level!r}")
    out = summarize(diffs)
    n, mean, std = out["n"], out["mean"], out["std"]
    lo = hi = float("nan")
    if n >= 2 and math.isfinite(mean) and math.isfinite(std):
        from scipy.stats import t  # scipy comes with scikit-learn (the `reproduce` extra)

        half = float(t.ppf(0.5 + level / 2.0, df=n - 1)) * std / math.sqrt(n)
        lo, hi = mean - half, mean + half
    out.update(lo=lo, hi=hi, level=level, excludes_zero=bool(math.isfinite(lo) and (lo > 0.0 or hi < 0.0)),
               zero_spread=bool(n >= 2 and std == 0.0))
    return out


def format_interval(stat: Dict[str, Any], scale: float = 100.0, digits: int = 2) -> str:
    """A :func:`paired_t_interval` result as the tables print it: ``+mean [lo, hi]``, ✱ when it excludes 0.

    ``scale`` converts fractions to the table's unit (100: percentage points). One seed has no interval
    (the mean alone, said so); equal differences on every seed are annotated, because their zero-width
    interval records "no spread observed", not certainty.
    """
    mean = stat["mean"]
    if mean is None or not math.isfinite(mean):
        return "diverged"
    lo, hi = stat.get("lo"), stat.get("hi")
    if lo is None or not math.isfinite(lo):
        return f"{scale * mean:+.{digits}f} (one seed: no interval)"
    txt = f"{scale * mean:+.{digits}f} [{scale * lo:+.{digits}f}, {scale * hi:+.{digits}f}]"
    if stat.get("zero_spread", stat.get("n", 0) >= 2 and stat.get("std") == 0.0):
        txt += " (same on every seed)"
    return f"{txt} ✱" if stat.get("excludes_zero") else txt
