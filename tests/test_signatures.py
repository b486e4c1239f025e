"""Every backend exposes the reference's signatures (Keras 3 style: one test over (function, backend) pairs).

The reference (``hardneg``) is the stub: each public loss of the reference must exist in every backend with the
same parameters, kinds and defaults, in the same order, followed only by the backend's documented keyword-only
extras. New loss functions of the reference are picked up automatically (``FUNCTIONS``), so a backend that lacks
one fails here rather than silently. ``HCLLoss`` classes hold the function's hyper-parameters with its defaults.
"""

from __future__ import annotations

import importlib
import inspect

import pytest

import hardneg

BACKENDS = ["hardneg_torch", "hardneg_jax", "hardneg_tf"]
# Keyword-only extras a backend may add after the common arguments; their defaults change nothing.
ALLOWED_EXTRAS = {
    "hardneg_torch": {"memory_budget": None, "gather": False, "group": None},
    "hardneg_jax": {"memory_budget": None, "axis_name": None},
    "hardneg_tf": {"memory_budget": None, "gather": False},
    # the Keras 3 loss (a class only): extras it passes to the backend it dispatches to (gather: TF and torch)
    "hardneg_keras": {"memory_budget": None, "gather": False},
}
# The reference's loss functions, each with a ``<name>_and_grad`` twin; jsd_loss joined in spec 1.1.
FUNCTIONS = [name for name in ("hcl_loss", "jsd_loss") if hasattr(hardneg, name)]
# Arguments of hcl_loss that are data, not hyper-parameters held by a loss object.
DATA = {"z1", "z2", "negatives", "labels", "negative_labels"}


def _params(fn):
    return list(inspect.signature(fn).parameters.values())


def _backend(name):
    try:
        return importlib.import_module(name)
    except ImportError as exc:  # framework or backend not installed in this environment
        pytest.skip(f"{name} not importable: {exc}")


def test_the_reference_functions_are_listed():
    assert "hcl_loss" in FUNCTIONS
    public = {n for n in getattr(hardneg, "__all__", []) if n.endswith("_loss")}
    assert public <= set(FUNCTIONS), public - set(FUNCTIONS)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("function", FUNCTIONS)
def test_backend_signature_matches_reference(function, backend):
    mod = _backend(backend)
    assert hasattr(mod, function), f"{backend} has no {function} (the reference has one: spec {hardneg.SPEC_VERSION})"
    ref = _params(getattr(hardneg, function))
    got = _params(getattr(mod, function))
    common = got[: len(ref)]
    assert [(p.name, p.kind, p.default) for p in common] == [(p.name, p.kind, p.default) for p in ref]
    extras = {p.name: p.default for p in got[len(ref) :]}
    for p in got[len(ref) :]:
        assert p.kind is inspect.Parameter.KEYWORD_ONLY, p
    assert set(extras) <= set(ALLOWED_EXTRAS[backend]), extras
    assert all(extras[k] == ALLOWED_EXTRAS[backend][k] for k in extras), extras
    assert function in getattr(mod, "__all__", [function]), f"{function} missing from {backend}.__all__"


@pytest.mark.parametrize("function", FUNCTIONS)
def test_reference_and_grad_share_the_loss_signature(function):
    a = [(p.name, p.default) for p in _params(getattr(hardneg, function))]
    b = [(p.name, p.default) for p in _params(getattr(hardneg, f"{function}_and_grad"))]
    assert b[: len(a)] == a and [n for n, _ in b[len(a) :]] == ["cotangent"]


def test_layout_and_symmetric_follow_reduction_with_spec_1_0_defaults():
    # Spec 1.1 §1: the two new keywords come right after `reduction` and before any backend extra, and their
    # defaults reproduce spec 1.0; the backends' placement follows from test_backend_signature_matches_reference.
    params = _params(hardneg.hcl_loss)
    names = [p.name for p in params]
    assert names[-3:] == ["reduction", "layout", "symmetric"]
    assert [p.default for p in params[-2:]] == [None, True]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[2:])


CLASSES = [("hardneg_torch", "HCLLoss", "forward"), ("hardneg_tf", "HCLLoss", "call"),
           ("hardneg_keras", "HCLLoss", "call")]


@pytest.mark.parametrize("backend,cls,method", CLASSES, ids=[c[0] for c in CLASSES])
def test_loss_class_holds_the_function_hyperparameters(backend, cls, method):
    """Keras' class/function consistency: the constructor takes every hyper-parameter of hcl_loss, in order,
    with the function's defaults (then its own options)."""
    mod = _backend(backend)
    klass = getattr(mod, cls)
    hyper = [p for p in _params(hardneg.hcl_loss) if p.name not in DATA]
    init = {p.name: p for p in _params(klass.__init__) if p.name != "self"}
    missing = [p.name for p in hyper if p.name not in init]
    assert not missing, f"{backend}.{cls}() lacks {missing}"
    assert [(p.name, init[p.name].default) for p in hyper] == [(p.name, p.default) for p in hyper]
    order = [n for n in init if n in {p.name for p in hyper}]
    assert order == [p.name for p in hyper]
    for name, default in ALLOWED_EXTRAS[backend].items():
        if name in init:
            assert init[name].default == default, name
