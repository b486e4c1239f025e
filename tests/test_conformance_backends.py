"""Our own backends through the same conformance suite that any port runs (hardneg verify).

Parametrised over conformance.BACKENDS; a backend whose package or framework is not installed is skipped with
the reason. Example counts are modest (JAX compiles each new shape, ~1 s); `hardneg verify --max-examples 50`
is the thorough run.
"""

import importlib.util

import pytest

pytest.importorskip("hypothesis")

import conformance  # noqa: E402
from conformance import BACKENDS  # noqa: E402

EXAMPLES = {"torch": 8, "jax": 1, "tf": 3}  # JAX: ~1 s of compilation per example


@pytest.mark.parametrize("name", list(BACKENDS))
def test_backend_conforms(name):
    module, framework = BACKENDS[name]
    for mod in (framework, module):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} is not installed")
    fn, fw, why = conformance.backend_target(name)
    assert fn is not None, why  # installed but failing to import is an error, not a skip
    rep = conformance.verify(fn, framework=fw, max_examples=EXAMPLES[name], seed=0)
    assert rep.ok, rep.summary()
    assert rep.gradients == "autodiff"
    # every feature of the spec is exercised: a backend may not skip any (issues 4-6: "every feature")
    unsupported = [f.name for f in rep.features if f.status == "not supported"]
    assert not unsupported, f"{name} does not support {unsupported}"


@pytest.mark.parametrize("name", list(BACKENDS))
def test_backend_signature_matches_the_reference(name):
    """The common parameters are the reference's, with the same defaults, keyword-only after z1, z2."""
    import inspect

    import hardneg

    module, framework = BACKENDS[name]
    for mod in (framework, module):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} is not installed")
    fn, _, why = conformance.backend_target(name)
    assert fn is not None, why
    ref = inspect.signature(hardneg.hcl_loss).parameters
    got = inspect.signature(fn).parameters
    assert list(got)[: len(ref)] == list(ref)
    for k, p in ref.items():
        assert got[k].default == p.default and got[k].kind == p.kind, k
