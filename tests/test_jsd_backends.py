"""``jsd_loss`` in every backend (hardneg_torch, hardneg_jax, hardneg_tf) against the float64 reference.

Values and gradients in float64 (agreement to rounding) and float32 (the conformance suite's tolerances, derived
from each example's conditioning), half precision (finite, returned in the input dtype, computed in float32),
compilation (torch.compile with fullgraph, jax.jit, tf.function with and without XLA), the signature, and the
error contract (the same exception and message as the reference). A backend whose framework is not installed is
skipped.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import math

import numpy as np
import pytest

import hardneg
from conformance.adapters import get_adapter
from conformance.jsd_suite import JsdCase, call, compare, error_cases

BACKENDS = {"torch": ("hardneg_torch", "torch"), "jax": ("hardneg_jax", "jax"), "tf": ("hardneg_tf", "tensorflow")}


def _backend(name):
    module, framework = BACKENDS[name]
    for mod in (framework, module):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} is not installed")
    return importlib.import_module(module).jsd_loss, get_adapter(framework)


def _case(seed, dtype="float64", N=7, G=3, d=4, scale=1.0, **params):
    rng = np.random.default_rng(seed)
    from conformance.cases import round_to_dtype

    local = round_to_dtype(rng.standard_normal((N, d)) * scale, dtype)
    graph = round_to_dtype(rng.standard_normal((G, d)) * scale, dtype)
    batch = np.sort(rng.integers(0, G, N))
    p = dict(beta=1.0, tau_plus=0.5, convention="released", reduction="mean")
    p.update(params)
    cot = np.linspace(-1.0, 1.0, N) if p["reduction"] == "none" else 1.0
    return JsdCase(local, graph, batch, p, dtype, round_to_dtype(np.asarray(cot), dtype) if p["reduction"] == "none"
                   else cot)


GRID = [dict(convention=c, beta=b, tau_plus=t, reduction=r) for c in ("released", "corrected")
        for b in (0.0, 2.0) for t in (0.0, 0.5) for r in ("mean", "none")]


@pytest.mark.parametrize("name", list(BACKENDS))
def test_signature_is_the_references(name):
    fn, _ = _backend(name)
    ref = inspect.signature(hardneg.jsd_loss).parameters
    got = inspect.signature(fn).parameters
    assert [(k, p.kind, p.default) for k, p in got.items()] == [(k, p.kind, p.default) for k, p in ref.items()]


@pytest.mark.parametrize("name", list(BACKENDS))
@pytest.mark.parametrize("params", GRID, ids=lambda p: "-".join(str(v) for v in p.values()))
def test_float64_values_and_gradients_equal_the_reference(name, params):
    fn, adapter = _backend(name)
    case = _case(3, **params)
    v, g, vd, gd = call(adapter, fn, case)
    rv, rg = case.reference()
    # the same float64 formulas in another order: a few units of rounding of the terms' magnitudes (<= ~10)
    np.testing.assert_allclose(v, rv, rtol=0, atol=1e-13 * (1 + np.abs(rv).max()))
    for k in ("local", "graph"):
        want = getattr(rg, k)
        np.testing.assert_allclose(g[k], want, rtol=0, atol=1e-13 * (1 + np.abs(want).max()))
    assert vd == "float64" and gd == {"local": "float64", "graph": "float64"}


@pytest.mark.parametrize("name", list(BACKENDS))
@pytest.mark.parametrize("params", GRID[::2], ids=lambda p: "-".join(str(v) for v in p.values()))
def test_float32_within_the_derived_tolerance(name, params):
    fn, adapter = _backend(name)
    for seed in range(2):
        case = _case(seed, "float32", scale=1.5, **params)
        v, g, vd, gd = call(adapter, fn, case)
        res = compare(case, v, g, vd, gd)
        assert res.ok, res.message()
        assert res.skipped is None and res.grad_frac is not None


@pytest.mark.parametrize("name", list(BACKENDS))
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("convention", ["released", "corrected"])
def test_half_precision_is_computed_in_float32(name, dtype, convention):
    fn, adapter = _backend(name)
    case = _case(4, dtype, scale=2.0, convention=convention, beta=10.0, tau_plus=0.1, reduction="none")
    v, g, vd, gd = call(adapter, fn, case)
    assert vd == dtype and set(gd.values()) == {dtype}
    assert np.isfinite(v).all() and all(np.isfinite(x).all() for x in g.values())
    res = compare(case, v, g, vd, gd)  # float32 compute + rounding of the result to the half dtype
    assert res.ok, res.message()


@pytest.mark.parametrize("name", list(BACKENDS))
def test_nonfinite_input_gives_nan_everywhere(name):
    fn, adapter = _backend(name)
    for conv in ("released", "corrected"):
        case = _case(5, convention=conv, beta=0.0, reduction="none")
        case.local[2, 1] = math.inf
        v, g, _, _ = call(adapter, fn, case)
        assert np.isnan(v).all() and np.isnan(g["local"]).all() and np.isnan(g["graph"]).all()


@pytest.mark.parametrize("name", list(BACKENDS))
def test_every_bad_input_raises_the_references_error(name):
    fn, adapter = _backend(name)
    for ename, arrays, kwargs in error_cases():
        with pytest.raises(Exception) as want:
            hardneg.jsd_loss(arrays["local"], arrays["graph"], arrays["batch"], **kwargs)
        with adapter.context():
            conv = {k: adapter.tensor(np.asarray(v), np.asarray(v).dtype.name) for k, v in arrays.items()}
            with pytest.raises(Exception) as got:
                fn(conv["local"], conv["graph"], conv["batch"], **kwargs)
        assert type(got.value) is type(want.value) and str(got.value) == str(want.value), ename


def _torch_compiled_grads(fn, case):
    import torch

    compiled = torch.compile(functools.partial(fn, **case.params), backend="aot_eager", fullgraph=True)
    lo = torch.tensor(case.local, requires_grad=True)
    gr = torch.tensor(case.graph, requires_grad=True)
    v = compiled(lo, gr, torch.tensor(case.batch))
    v.backward()
    return v.detach().numpy(), lo.grad.numpy(), gr.grad.numpy()


def _jax_jitted_grads(fn, case):
    import jax

    with jax.enable_x64(True):
        f = jax.jit(functools.partial(fn, **case.params))
        v, grads = jax.value_and_grad(f, argnums=(0, 1))(case.local, case.graph, case.batch)
        return np.asarray(v), np.asarray(grads[0]), np.asarray(grads[1])


def _tf_function_grads(fn, case, jit_compile):
    import tensorflow as tf

    @tf.function(jit_compile=jit_compile)
    def step(lo, gr, b):
        with tf.GradientTape() as tape:
            tape.watch([lo, gr])
            v = fn(lo, gr, b, **case.params)
        return v, tape.gradient(v, [lo, gr])

    v, (gl, gg) = step(tf.constant(case.local), tf.constant(case.graph), tf.constant(case.batch))
    return v.numpy(), gl.numpy(), gg.numpy()


@pytest.mark.parametrize("name", ["torch", "jax", "tf", "tf-xla"])
@pytest.mark.parametrize("convention", ["released", "corrected"])
def test_compiled_equals_eager(name, convention):
    fn, _ = _backend("tf" if name == "tf-xla" else name)
    case = _case(6, convention=convention, beta=2.0, tau_plus=0.2)
    if name == "torch":
        got = _torch_compiled_grads(fn, case)
    elif name == "jax":
        got = _jax_jitted_grads(fn, case)
    else:
        got = _tf_function_grads(fn, case, jit_compile=name == "tf-xla")
    rv, rg = case.reference()
    for x, want in zip(got, (rv, rg.local, rg.graph)):
        np.testing.assert_allclose(x, want, rtol=0, atol=1e-13 * (1 + np.abs(want).max()))


def test_jax_jit_traces_the_batch_without_reading_it():
    """Under jit the batch is a tracer: its values are not checked (no host read), the shape checks still run."""
    fn, _ = _backend("jax")
    import jax
    import jax.numpy as jnp

    case = _case(7)
    f = jax.jit(fn)
    with jax.enable_x64(True):
        v = f(jnp.asarray(case.local), jnp.asarray(case.graph), jnp.asarray(case.batch))
        assert abs(float(v) - case.reference(want_grad=False)[0]) <= 1e-13 * (1 + abs(float(v)))
        with pytest.raises(ValueError, match="batch must be 1-D"):
            f(jnp.asarray(case.local), jnp.asarray(case.graph), jnp.asarray(case.batch[:-1]))


def test_torch_rejects_non_tensors():
    fn, _ = _backend("torch")
    with pytest.raises(TypeError, match="batch must be a torch.Tensor; got ndarray"):
        import torch

        fn(torch.zeros(2, 2), torch.ones(2, 2), np.array([0, 1]))


def test_tf_function_with_unknown_shapes():
    """An input_signature without static shapes (G unknown at trace time): the same values and gradients."""
    fn, _ = _backend("tf")
    import tensorflow as tf

    case = _case(8, convention="corrected", beta=2.0, tau_plus=0.1)
    for spec in ([None, None], None):
        sig = [tf.TensorSpec(spec, tf.float64), tf.TensorSpec(spec, tf.float64),
               tf.TensorSpec(None if spec is None else [None], tf.int64)]

        @tf.function(input_signature=sig)
        def step(lo, gr, b):
            with tf.GradientTape() as tape:
                tape.watch([lo, gr])
                v = fn(lo, gr, b, **case.params)
            return v, tape.gradient(v, [lo, gr])

        v, (gl, gg) = step(case.local, case.graph, case.batch)
        rv, rg = case.reference()
        for x, want in zip((v.numpy(), gl.numpy(), gg.numpy()), (rv, rg.local, rg.graph)):
            np.testing.assert_allclose(x, want, rtol=0, atol=1e-13 * (1 + np.abs(want).max()))
