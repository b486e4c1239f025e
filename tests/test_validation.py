"""The shared validation module: what backends rely on when values or dimensions are unknown at trace time."""

from __future__ import annotations

import pytest

from hardneg.validation import UNKNOWN, check_call


BASE = dict(z1_shape=(4, 3), z2_shape=(4, 3), z1_dtype="float32", z2_dtype="float32")


def test_problem_layouts():
    assert check_call(**BASE).n_anchors == 8
    p = check_call(**BASE, negatives_shape=(10, 3), negatives_dtype="float32")
    assert (p.bank, p.bank_size, p.n_anchors) == ("shared", 10, 4)
    p = check_call(**BASE, negatives_shape=(4, 6, 3), negatives_dtype="float32")
    assert (p.bank, p.bank_size, p.n_anchors) == ("per_anchor", 6, 4)


def test_unknown_dimensions_skip_only_what_is_unknown():
    p = check_call(z1_shape=(None, 3), z2_shape=(None, 3), z1_dtype="bfloat16", z2_dtype="bfloat16")
    assert p.batch is None and p.n_anchors is None and p.dim == 3
    with pytest.raises(ValueError, match="same shape"):
        check_call(z1_shape=(None, 3), z2_shape=(None, 4), z1_dtype="float32", z2_dtype="float32")
    # An unknown batch may still be 1 at run time; a known B = 1 without a bank is rejected.
    with pytest.raises(ValueError, match="one pair"):
        check_call(z1_shape=(1, 3), z2_shape=(None, 3), z1_dtype="float32", z2_dtype="float32")


def test_unknown_hyperparameters_are_not_checked_but_known_ones_are():
    check_call(**BASE, temperature=UNKNOWN, beta=UNKNOWN, tau_plus=UNKNOWN)
    with pytest.raises(ValueError, match="tau_plus"):
        check_call(**BASE, temperature=UNKNOWN, tau_plus=1.5)


def test_numpy_scalars_are_accepted():
    np = pytest.importorskip("numpy")
    check_call(**BASE, temperature=np.float32(0.1), beta=np.float64("inf"), tau_plus=np.float16(0.1), clamp=np.bool_(True))
