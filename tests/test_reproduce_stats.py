"""hardneg.reproduce.stats: the paired t-interval every reproduction table reports."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("scipy")

from hardneg.reproduce.stats import paired_t_interval, summarize  # noqa: E402

# Student's t quantiles t_{0.975, df} (independent of scipy), good to about 1e-11 relative.
T975 = {1: 12.706204736174707, 4: 2.7764451051977987, 9: 2.2621571627409915}


@pytest.mark.parametrize("diffs", [[1.0, 2.0, 3.0, 4.0, 5.0], [0.5, -0.25], [0.1 * k - 0.3 for k in range(10)]])
def test_interval_is_mean_plus_minus_t_times_standard_error(diffs):
    out = paired_t_interval(diffs)
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / (n - 1))
    half = T975[n - 1] * sd / math.sqrt(n)
    assert out["n"] == n and out["level"] == 0.95
    assert out["lo"] == pytest.approx(mean - half, rel=1e-9)
    assert out["hi"] == pytest.approx(mean + half, rel=1e-9)
    assert out["excludes_zero"] == (mean - half > 0 or mean + half < 0)
    assert out["zero_spread"] is False


def test_excludes_zero_on_either_side_only():
    assert paired_t_interval([1.0, 1.1, 0.9, 1.05, 0.95])["excludes_zero"]
    assert paired_t_interval([-1.0, -1.1, -0.9, -1.05, -0.95])["excludes_zero"]
    assert not paired_t_interval([1.0, -1.0, 0.5, -0.5, 0.1])["excludes_zero"]


def test_single_seed_has_no_interval_and_equal_seeds_are_flagged():
    one = paired_t_interval([0.7])
    assert math.isnan(one["lo"]) and math.isnan(one["hi"]) and not one["excludes_zero"]
    same = paired_t_interval([-1.88, -1.88])
    assert same["zero_spread"] and same["lo"] == same["hi"] == pytest.approx(-1.88)


def test_a_diverged_run_is_not_dropped():
    out = paired_t_interval([0.1, float("nan"), 0.2])
    assert out["n"] == 3 and math.isnan(out["mean"]) and not out["excludes_zero"]


def test_level_outside_the_unit_interval_is_an_error():
    with pytest.raises(ValueError, match=r"level must lie in \(0, 1\)"):
        paired_t_interval([1.0, 2.0], level=95)


def test_summarize_uses_the_sample_std():
    assert summarize([1.0, 3.0]) == dict(mean=2.0, std=math.sqrt(2.0), n=2, values=[1.0, 3.0])
    assert summarize([4.0])["std"] == 0.0
