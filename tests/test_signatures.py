"""Every backend exposes the reference's signature (Keras 3 style: one test over all backends)."""

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
}


def _params(fn):
    return list(inspect.signature(fn).parameters.values())


def _backend(name):
    try:
        return importlib.import_module(name)
    except ImportError as exc:  # framework or backend not installed in this environment
        pytest.skip(f"{name} not importable: {exc}")


@pytest.mark.parametrize("name", BACKENDS)
def test_backend_signature_matches_reference(name):
    mod = _backend(name)
    ref = _params(hardneg.hcl_loss)
    got = _params(mod.hcl_loss)
    common = got[: len(ref)]
    assert [(p.name, p.kind, p.default) for p in common] == [(p.name, p.kind, p.default) for p in ref]
    extras = {p.name: p.default for p in got[len(ref) :]}
    for p in got[len(ref) :]:
        assert p.kind is inspect.Parameter.KEYWORD_ONLY, p
    assert set(extras) <= set(ALLOWED_EXTRAS[name]), extras
    assert all(extras[k] == ALLOWED_EXTRAS[name][k] for k in extras), extras


def test_reference_and_grad_share_the_loss_signature():
    a = [(p.name, p.default) for p in _params(hardneg.hcl_loss)]
    b = [(p.name, p.default) for p in _params(hardneg.hcl_loss_and_grad)]
    assert b[: len(a)] == a and [n for n, _ in b[len(a) :]] == ["cotangent"]
