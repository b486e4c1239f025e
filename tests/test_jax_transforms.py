"""hardneg_jax under JAX's transformations: jit, vmap, lax.scan training loops, traced hyper-parameters
(a beta schedule without recompilation, beta = inf included), gradients w.r.t. the hyper-parameters.

Float64 runs use ``jax.enable_x64(True)`` as a context so the global flag stays off.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from jax_util import RTOL64, assert_close, problem, reference

import hardneg

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

import hardneg_jax  # noqa: E402


def test_vmap_over_independent_problems_with_batched_beta_and_labels():
    P, B, d = 3, 5, 3
    rng = np.random.default_rng(0)
    z1, z2 = rng.standard_normal((P, B, d)), rng.standard_normal((P, B, d))
    labels = rng.integers(0, 3, (P, B))
    betas = np.array([0.5, 0.0, math.inf])  # traced under vmap: the finite and infinite paths per problem

    def one(a, b, beta, lab):
        return hardneg_jax.hcl_loss(a, b, beta=beta, labels=lab, memory_budget=600)

    with jax.enable_x64(True):
        v, (g1, g2) = jax.vmap(jax.value_and_grad(one, argnums=(0, 1)))(z1, z2, betas, labels)
    for p in range(P):
        want_v, want_g = reference(z1[p], z2[p], beta=float(betas[p]), labels=labels[p])
        assert_close(v[p], want_v, RTOL64, f"value {p}")
        assert_close(g1[p], want_g[0], RTOL64, f"dz1 {p}")
        assert_close(g2[p], want_g[1], RTOL64, f"dz2 {p}")


def test_traced_hyperparameters_compile_once_for_every_value():
    z1, z2, _ = problem(seed=1)
    traces = []

    @jax.jit
    def step(a, b, t, beta, tau):
        traces.append(None)  # runs once per trace, not per call
        loss = lambda x, y: hardneg_jax.hcl_loss(x, y, temperature=t, beta=beta, tau_plus=tau)  # noqa: E731
        return jax.value_and_grad(loss, argnums=(0, 1))(a, b)

    with jax.enable_x64(True):
        values = [(0.5, 1.0, 0.1), (0.2, 0.0, 0.0), (0.5, math.inf, 0.1), (1.0, 3.0, 0.3), (0.1, math.inf, 0.0)]
        for t, beta, tau in values:
            v, g = step(z1, z2, t, beta, tau)
            want_v, want_g = reference(z1, z2, temperature=t, beta=beta, tau_plus=tau)
            assert_close(v, want_v, RTOL64, f"value at {t, beta, tau}")
            assert_close(g[0], want_g[0], RTOL64, "dz1")
            assert all(np.isfinite(np.asarray(x)).all() for x in g)  # the inf path leaks no NaN into the finite one
    assert len(traces) == 1


def test_beta_schedule_inside_a_lax_scan_training_loop():
    # A linear encoder trained by SGD for a few steps with beta annealed (as the released code's "down"
    # schedule) and then set to inf, all inside one lax.scan; the same loop with the reference's gradients in
    # NumPy must give the same weights.
    rng = np.random.default_rng(2)
    B, h, d, lr = 6, 4, 3, 0.5
    x1, x2, W0 = rng.standard_normal((B, h)), rng.standard_normal((B, h)), rng.standard_normal((h, d))
    betas = np.array([2.0, 1.0, 0.0, math.inf])

    def loss(W, beta):
        return hardneg_jax.hcl_loss(x1 @ W, x2 @ W, beta=beta, memory_budget=800)

    def train(W, beta):
        v, g = jax.value_and_grad(loss)(W, beta)
        return W - lr * g, v

    with jax.enable_x64(True):
        W, losses = jax.jit(lambda W: lax.scan(train, W, betas))(W0)
    Wr = W0.copy()
    for k, beta in enumerate(betas):
        v, g = reference(x1 @ Wr, x2 @ Wr, beta=float(beta))
        assert_close(losses[k], v, RTOL64, f"loss at step {k}")
        Wr = Wr - lr * (x1.T @ g[0] + x2.T @ g[1])
    assert_close(W, Wr, 1e-8, "weights after the loop")  # four steps compound the 1e-9 per-step agreement


HYPER_CASES = [
    ("default", {}, None, "mean"),
    ("on_the_floor", dict(tau_plus=0.7), "floor", "none"),
    ("clamp_off", dict(clamp=False, tau_plus=0.3), None, "sum"),
    ("beta_inf", dict(beta=math.inf), None, "mean"),
    ("easy", dict(estimator="easy"), None, "mean"),
    ("sharp_shared_labels", dict(temperature=0.1, beta=3.0), "shared", "mean"),
]


@pytest.mark.parametrize("name,kw,layout,reduction", HYPER_CASES, ids=[c[0] for c in HYPER_CASES])
def test_hyperparameter_gradients_match_finite_differences(name, kw, layout, reduction):
    z1, z2, extra = problem(seed=3, bank="shared" if layout == "shared" else None, labels=layout == "shared")
    if layout == "floor":
        z2[:2] = z1[:2]  # two pairs on the clamp's floor: the floor log M - 1/t contributes to d/dt
    hp = dict(temperature=0.5, beta=1.0, tau_plus=0.1)
    hp.update({k: kw[k] for k in hp if k in kw})
    static = {k: v for k, v in kw.items() if k not in hp}
    ct = None if reduction != "none" else np.random.default_rng(4).standard_normal(2 * z1.shape[0])

    def ref(**over):
        v = hardneg.hcl_loss(z1, z2, reduction=reduction, **static, **extra, **{**hp, **over})
        return float(np.dot(v, ct)) if ct is not None else float(v)

    def f(t, beta, tau):
        v = hardneg_jax.hcl_loss(z1, z2, temperature=t, beta=beta, tau_plus=tau, reduction=reduction, **static,
                                 **extra)
        return jnp.dot(v, ct) if ct is not None else v

    with jax.enable_x64(True):
        got = jax.grad(f, argnums=(0, 1, 2))(hp["temperature"], hp["beta"], hp["tau_plus"])
    for name_, g in zip(hp, got):
        x = hp[name_]
        if math.isinf(x) or (kw.get("estimator") == "easy" and name_ != "temperature"):
            assert float(g) == 0.0, name_  # the value does not depend on it
            continue
        h = 1e-6 * max(1.0, abs(x))
        fd = (ref(**{name_: x + h}) - ref(**{name_: x - h})) / (2 * h)
        # central differences: truncation ~h^2 |f'''| and rounding ~eps |f| / h, both below 1e-8 here
        np.testing.assert_allclose(float(g), fd, rtol=1e-6, atol=1e-8, err_msg=name_)


def test_gradients_w_r_t_z_do_not_depend_on_what_else_is_differentiated():
    z1, z2, _ = problem(seed=5)

    def f(a, b, t, beta):
        return hardneg_jax.hcl_loss(a, b, temperature=t, beta=beta)

    with jax.enable_x64(True):
        only_z = jax.grad(f, argnums=(0, 1))(z1, z2, 0.5, 1.0)
        everything = jax.grad(f, argnums=(0, 1, 2, 3))(z1, z2, 0.5, 1.0)
    np.testing.assert_array_equal(only_z[0], everything[0])
    np.testing.assert_array_equal(only_z[1], everything[1])


def test_checkpoint_and_jit_of_grad_agree_with_plain_grad():
    z1, z2, _ = problem(seed=6)
    z1, z2 = jnp.asarray(z1, jnp.float32), jnp.asarray(z2, jnp.float32)
    f = lambda a, b: hardneg_jax.hcl_loss(a, b, reduction="sum")  # noqa: E731
    plain = jax.grad(f, argnums=(0, 1))(z1, z2)
    remat = jax.jit(jax.grad(jax.checkpoint(f), argnums=(0, 1)))(z1, z2)
    for a, b in zip(plain, remat):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_forward_mode_is_refused_by_the_custom_vjp():
    z1 = jnp.asarray(problem(seed=7)[0], jnp.float32)
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(lambda a: hardneg_jax.hcl_loss(a, a[::-1]), (z1,), (z1,))
