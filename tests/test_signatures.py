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

from hardneg.backends import BACKENDS as TABLE, FUNCTION_BACKENDS  # noqa: E402

BACKENDS = [b.package for b in FUNCTION_BACKENDS]
# Keyword-only extras a backend may add after the common arguments; their defaults change nothing.
ALLOWED_EXTRAS = {b.package: b.keywords for b in TABLE}
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


# -- the backends' extras and the loss classes' settings raise the shared messages (hardneg.validation) -------
BAD_BUDGETS = [
    (0, ValueError, "memory_budget must be None or a positive int (bytes); got 0"),
    (-5, ValueError, "memory_budget must be None or a positive int (bytes); got -5"),
    (1.5e6, TypeError, "memory_budget must be None or a positive int (bytes); got 1500000.0 of type float"),
    (True, TypeError, "memory_budget must be None or a positive int (bytes); got True of type bool"),
]


def _pair(backend: str):
    """A valid (z1, z2) of the backend's own tensor type."""
    import numpy as np

    z = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    if backend == "hardneg_torch":
        import torch

        return torch.from_numpy(z), torch.from_numpy(z[::-1].copy())
    if backend == "hardneg_jax":
        import jax.numpy as jnp

        return jnp.asarray(z), jnp.asarray(z[::-1])
    import tensorflow as tf

    return tf.constant(z), tf.constant(z[::-1])


@pytest.mark.parametrize("budget,exc,msg", BAD_BUDGETS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_memory_budget_raises_the_same_message_in_every_backend(backend, budget, exc, msg):
    mod = _backend(backend)
    z1, z2 = _pair(backend)
    with pytest.raises(exc) as info:
        mod.hcl_loss(z1, z2, memory_budget=budget)
    assert str(info.value) == msg


LOSS_CLASSES = [("hardneg_torch", "HCLLoss"), ("hardneg_keras", "HCLLoss")]
BAD_SETTINGS = [
    (dict(memory_budget=0), ValueError, "memory_budget must be None or a positive int (bytes); got 0"),
    (dict(gather=1), TypeError, "gather must be a bool (True or False); got 1 of type int"),
    (dict(learn_temperature=1), TypeError, "learn_temperature must be a bool (True or False); got 1 of type int"),
    (dict(min_temperature=0.01), ValueError,
     "min_temperature needs learn_temperature=True (a fixed temperature has no minimum to enforce); "
     "got min_temperature=0.01"),
    (dict(learn_temperature=True, min_temperature=0.0), ValueError,
     "min_temperature must be None or finite and > 0; got 0.0"),
    (dict(learn_temperature=True, min_temperature="0.1"), TypeError,
     "min_temperature must be None or a real number; got '0.1' of type str"),
    (dict(temperature=-1.0), ValueError, "temperature must be finite and > 0 (with 1/temperature finite); got -1.0"),
]


@pytest.mark.parametrize("kwargs,exc,msg", BAD_SETTINGS)
@pytest.mark.parametrize("module,cls", LOSS_CLASSES)
def test_loss_classes_reject_bad_settings_with_the_shared_messages(module, cls, kwargs, exc, msg):
    loss_cls = getattr(_backend(module), cls)
    with pytest.raises(exc) as info:
        loss_cls(**kwargs)
    assert str(info.value) == msg


@pytest.mark.parametrize("module,cls", LOSS_CLASSES)
def test_loss_classes_hold_their_settings_as_attributes(module, cls):
    loss = getattr(_backend(module), cls)(temperature=0.2, beta=2.0, layout="cross", symmetric=False,
                                          memory_budget=2**20)
    assert loss.call_kwargs() == dict(temperature=0.2, beta=2.0, tau_plus=0.1, estimator="hard", clamp=True,
                                      normalize=True, reduction="mean", layout="cross", symmetric=False,
                                      memory_budget=2**20, gather=False)


def test_the_backend_table_names_installable_packages_and_extras():
    # every row's package exists in this checkout and its pip extra is declared in pyproject.toml
    import pathlib
    import tomllib

    root = pathlib.Path(__file__).resolve().parents[1]
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for b in TABLE:
        assert (root / b.package / "__init__.py").exists(), b
        assert b.extra in extras, (b, sorted(extras))
    from conformance import BACKENDS as VERIFIED
    from hardneg.reproduce.experiment import BACKENDS as TRAINED

    assert list(VERIFIED) == list(TRAINED) == [b.name for b in FUNCTION_BACKENDS]
