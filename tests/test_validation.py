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


# --- spec 1.1: layout, symmetric, tensor temperatures ---------------------------------------------------------

BANK = dict(negatives_shape=(10, 3), negatives_dtype="float32")


def test_layout_none_resolves_as_in_spec_1_0_and_explicit_names_agree():
    from hardneg.validation import LAYOUTS

    assert LAYOUTS == ("in_batch", "bank", "cross")
    for extra, layout, n in ((dict(), "in_batch", 8), (BANK, "bank", 4)):
        p = check_call(**BASE, **extra)
        assert (p.layout, p.symmetric, p.n_anchors) == (layout, True, n)
        assert check_call(**BASE, **extra, layout=layout) == p


@pytest.mark.parametrize("extra", [dict(), BANK, dict(negatives_shape=(4, 6, 3), negatives_dtype="float32")])
def test_cross_layout_problem(extra):
    p = check_call(**BASE, **extra, layout="cross")
    assert (p.layout, p.symmetric, p.n_anchors, p.bank) == ("cross", True, 8, p.bank)
    q = check_call(**BASE, **extra, layout="cross", symmetric=False)
    assert (q.layout, q.symmetric, q.n_anchors, q.bank) == ("cross", False, 4, p.bank)
    assert p.bank == {0: "none", 2: "shared", 3: "per_anchor"}[len(extra.get("negatives_shape", ()))]


@pytest.mark.parametrize("layout", ["CROSS", "clip", "", 3])
def test_unknown_layout(layout):
    with pytest.raises(ValueError, match=r"^layout must be one of None, 'in_batch', 'bank', 'cross'; got "):
        check_call(**BASE, layout=layout)


def test_layout_contradicting_negatives():
    msg = r"^layout='in_batch' takes no negatives bank .* got negatives of shape \(10, 3\)"
    with pytest.raises(ValueError, match=msg):
        check_call(**BASE, **BANK, layout="in_batch")
    with pytest.raises(ValueError, match=r"^layout='bank' needs a negatives bank .*; got negatives=None$"):
        check_call(**BASE, layout="bank")


@pytest.mark.parametrize("value", [1, 0, None, "False", 1.0])
def test_symmetric_must_be_a_bool(value):
    with pytest.raises(TypeError, match=r"^symmetric must be a bool \(True or False\); got "):
        check_call(**BASE, layout="cross", symmetric=value)


@pytest.mark.parametrize("layout,extra", [(None, {}), ("in_batch", {}), (None, BANK), ("bank", BANK)])
def test_symmetric_false_outside_cross(layout, extra):
    msg = rf"^symmetric=False is only meaningful with layout='cross'; got layout={layout!r}"
    with pytest.raises(ValueError, match=msg):
        check_call(**BASE, **extra, layout=layout, symmetric=False)


def test_cross_one_pair_rule():
    one = dict(z1_shape=(1, 3), z2_shape=(1, 3), z1_dtype="float64", z2_dtype="float64")
    for symmetric in (True, False):
        with pytest.raises(ValueError, match=r"^one pair \(B = 1\) and no negatives"):
            check_call(**one, layout="cross", symmetric=symmetric)
        p = check_call(**one, layout="cross", symmetric=symmetric, negatives_shape=(2, 3), negatives_dtype="float64")
        assert p.n_anchors == (2 if symmetric else 1)


def test_cross_labels_follow_the_bank_rules_of_spec_1_0():
    check_call(**BASE, layout="cross", labels_shape=(4,), labels_dtype="int64")
    with pytest.raises(ValueError, match="require negative_labels"):
        check_call(**BASE, **BANK, layout="cross", labels_shape=(4,), labels_dtype="int64")
    check_call(**BASE, **BANK, layout="cross", labels_shape=(4,), labels_dtype="int64",
               negative_labels_shape=(10,), negative_labels_dtype="int32")


def test_cross_with_unknown_symmetric_or_batch():
    assert check_call(**BASE, layout="cross", symmetric=UNKNOWN).n_anchors is None
    p = check_call(z1_shape=(None, 3), z2_shape=(None, 3), z1_dtype="float32", z2_dtype="float32", layout="cross")
    assert p.n_anchors is None and p.layout == "cross"


def test_temperature_tensor_checks():
    from hardneg.validation import check_temperature_tensor

    for dtype in ("float16", "bfloat16", "float32", "float64", None):
        check_temperature_tensor((), dtype)
    with pytest.raises(TypeError) as e:
        check_temperature_tensor((), "int32")
    assert str(e.value) == (
        "temperature tensor must have a floating dtype (float16, bfloat16, float32 or float64); got int32"
    )
    for shape, text in (((3,), "(3,)"), ((1, 1), "(1, 1)"), ((None,), "(None,)")):
        with pytest.raises(ValueError) as e:
            check_temperature_tensor(shape, "float32")
        assert str(e.value) == f"temperature tensor must be 0-d (a scalar); got shape {text}"


def test_cross_labels_with_a_bank_message_does_not_claim_in_batch_samples_are_not_negatives():
    with pytest.raises(ValueError) as e:
        check_call(**BASE, **BANK, layout="cross", labels_shape=(4,), labels_dtype="int64")
    assert str(e.value) == "labels with a negatives bank require negative_labels (the bank rows' labels)"
    with pytest.raises(ValueError, match="in-batch samples are not negatives when a bank is given"):
        check_call(**BASE, **BANK, labels_shape=(4,), labels_dtype="int64")
