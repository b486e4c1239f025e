"""The two-pass symmetric kernels against the row-block kernels and the matrix-product floors, in ONE process.

Issue 17's targets are ratios to the three-product floor (fp32, forward + backward, temperature 0.5,
tau_plus 0.1). Separate processes (``hardneg bench``) see different machine load; here every implementation
runs in the same process, repetition by repetition, in an order rotated each repetition, so load drifts
reach all of them alike. Prints one JSON line: the median time of each implementation, its ratio to the
three-product floor (``x_floor3``) and to the two-product symmetric floor (``x_floor2``, in-batch only), and the
1-minute load average before and after (``os.getloadavg``).

Implementations (``--layout in-batch``):

* ``two_pass``: the backend with its two-pass symmetric kernel forced (the framework's ``*_SYMMETRIC=1``);
* ``row_blocks``: the same call with the one-pass row-block kernel forced (``*_SYMMETRIC=0``);
* ``floor3``: ``S = U U^T``, ``G U``, ``G^T U`` at (2B x d)(d x 2B) into preallocated outputs (no page faults);
* ``floor2``: ``S = U U^T``, ``(G + G^T) U`` (the symmetric floor; preallocated).

``--layout cross`` (the symmetric cross layout, spec 1.1): ``shared_tiles`` and ``row_blocks`` (forced as
above) and ``floor3``: its three B x B products ``S12 = z1 z2^T``, ``H z2``, ``H^T z1`` (preallocated).

Usage (on a shared machine, under the heavy-run lock)::

    flock /tmp/hardneg-heavy.lock python benchmarks/two_pass.py --framework torch --layout in-batch \\
        --batch 4096 --dim 128 --threads 2 --reps 5 --beta 1

Adding a framework or layout: write a builder ``(args) -> {name: step}`` (each step runs one synchronous
forward + backward, or the floor's products) and register it in :data:`BUILDERS` (see the comment there).
Builders import their framework themselves: the thread limit is applied before any import.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Callable, Dict

HYPER = dict(temperature=0.5, tau_plus=0.1)


# ---------------------------------------------------------------- torch
def _torch_inputs(args):
    import torch

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(args.batch, args.dim, generator=g).requires_grad_()
    z2 = torch.randn(args.batch, args.dim, generator=g).requires_grad_()
    return torch, g, z1, z2


def _torch_step(z1, z2, env: str, **kw) -> Callable[[], None]:
    import hardneg_torch
    from hardneg_torch import symmetric

    def step():
        os.environ[symmetric.ENV_VAR] = env  # read at each call (hardneg_torch.symmetric.choose)
        z1.grad = z2.grad = None
        hardneg_torch.hcl_loss(z1, z2, **HYPER, **kw).backward()

    return step


def torch_in_batch(args) -> Dict[str, Callable[[], None]]:
    torch, g, z1, z2 = _torch_inputs(args)
    from hardneg.bench import naive_torch

    n = 2 * args.batch
    u = torch.nn.functional.normalize(torch.randn(n, args.dim, generator=g), dim=1)
    out3 = (u.new_empty((n, n)), u.new_empty((n, args.dim)), u.new_empty((n, args.dim)))
    out2 = (u.new_empty((n, n)), u.new_empty((n, args.dim)))

    def floor3():
        with torch.no_grad():
            naive_torch.floor(u, out=out3)

    def floor2():
        with torch.no_grad():
            naive_torch.floor_symmetric(u, out=out2)

    return {"two_pass": _torch_step(z1, z2, "1", beta=args.beta), "row_blocks": _torch_step(z1, z2, "0", beta=args.beta),
            "floor3": floor3, "floor2": floor2}


def torch_cross(args) -> Dict[str, Callable[[], None]]:
    torch, g, z1, z2 = _torch_inputs(args)
    B, d = args.batch, args.dim
    u1 = torch.nn.functional.normalize(torch.randn(B, d, generator=g), dim=1)
    u2 = torch.nn.functional.normalize(torch.randn(B, d, generator=g), dim=1)
    s12, dz1, dz2 = u1.new_empty((B, B)), u1.new_empty((B, d)), u1.new_empty((B, d))

    def floor3():  # hardneg.bench.naive_torch.floor_cross with preallocated outputs; S12 stands in for H
        with torch.no_grad():
            torch.mm(u1, u2.T, out=s12)
            torch.mm(s12, u2, out=dz1)
            torch.mm(s12.T, u1, out=dz2)

    kw = dict(beta=args.beta, layout="cross")
    return {"shared_tiles": _torch_step(z1, z2, "1", **kw), "row_blocks": _torch_step(z1, z2, "0", **kw),
            "floor3": floor3}


# ---------------------------------------------------------------- tf (helper T)
def _tf_inputs(args, rows):
    import tensorflow as tf

    g = tf.random.Generator.from_seed(0)
    return tf, g.normal([rows, args.dim]), g.normal([rows, args.dim])


def _tf_step(z1, z2, env: str, **kw) -> Callable[[], None]:
    """One XLA-compiled forward + backward with HARDNEG_TF_SYMMETRIC=env at trace time (the choice is made when
    the graph is traced, so each setting gets its own compiled function, traced here)."""
    import tensorflow as tf

    import hardneg_tf
    from hardneg_tf import symmetric

    @tf.function(jit_compile=True)
    def vg(a, b):
        with tf.GradientTape() as tape:
            tape.watch([a, b])
            v = hardneg_tf.hcl_loss(a, b, **HYPER, **kw)
        return v, tape.gradient(v, [a, b])

    old = os.environ.get(symmetric.ENV_VAR)
    os.environ[symmetric.ENV_VAR] = env
    try:
        vg.get_concrete_function(z1, z2)
    finally:
        if old is None:
            os.environ.pop(symmetric.ENV_VAR)
        else:
            os.environ[symmetric.ENV_VAR] = old
    return lambda: vg(z1, z2)[1][1].numpy()


def tf_in_batch(args) -> Dict[str, Callable[[], None]]:
    from hardneg.bench import naive_tf

    tf, z1, z2 = _tf_inputs(args, args.batch)
    u = tf.math.l2_normalize(tf.concat([z1, z2], 0), axis=1)
    return {"two_pass": _tf_step(z1, z2, "1", beta=args.beta), "row_blocks": _tf_step(z1, z2, "0", beta=args.beta),
            "floor3": lambda: naive_tf.floor_xla(u)[1].numpy(),  # XLA: TF cannot write into preallocated outputs
            "floor2": lambda: naive_tf.floor_symmetric_xla(u).numpy(),
            "floor3_graph": lambda: naive_tf.floor_graph(u)[1].numpy()}  # hardneg bench's floor_tf


def tf_cross(args) -> Dict[str, Callable[[], None]]:
    tf, z1, z2 = _tf_inputs(args, args.batch)
    u1, u2 = tf.math.l2_normalize(z1, axis=1), tf.math.l2_normalize(z2, axis=1)

    @tf.function(jit_compile=True)
    def floor3(a, b):  # S12 = z1 z2^T (stands in for H), H z2, H^T z1
        s = tf.matmul(a, b, transpose_b=True)
        return tf.matmul(s, b), tf.matmul(s, a, transpose_a=True)

    kw = dict(beta=args.beta, layout="cross")
    return {"shared_tiles": _tf_step(z1, z2, "1", **kw), "row_blocks": _tf_step(z1, z2, "0", **kw),
            "floor3": lambda: floor3(u1, u2)[1].numpy()}


# ---------------------------------------------------------------- jax (helper J)
def _jax_inputs(args, rows):
    import jax

    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    return (jax.random.normal(k1, (rows, args.dim)), jax.random.normal(k2, (rows, args.dim)),
            jax.random.normal(k3, (2 * rows, args.dim)))


def _jax_step(z1, z2, env: str, **kw) -> Callable[[], None]:
    """One jitted forward + backward (``jax.value_and_grad``) with HARDNEG_JAX_SYMMETRIC=env at trace time (the
    kernel is chosen when tracing, so each setting gets its own compiled function, compiled here)."""
    import jax

    import hardneg_jax
    from hardneg_jax import symmetric

    vg = jax.jit(jax.value_and_grad(lambda a, b: hardneg_jax.hcl_loss(a, b, **HYPER, **kw), argnums=(0, 1)))
    old = os.environ.get(symmetric.ENV_VAR)
    os.environ[symmetric.ENV_VAR] = env
    try:
        compiled = vg.lower(z1, z2).compile()
    finally:
        if old is None:
            os.environ.pop(symmetric.ENV_VAR)
        else:
            os.environ[symmetric.ENV_VAR] = old
    return lambda: jax.block_until_ready(compiled(z1, z2))


def jax_in_batch(args) -> Dict[str, Callable[[], None]]:
    import jax
    import jax.numpy as jnp

    from hardneg.bench import naive_jax

    z1, z2, u = _jax_inputs(args, args.batch)
    u = u / jnp.linalg.norm(u, axis=1, keepdims=True)
    kw = dict(beta=args.beta)
    # XLA allocates its outputs itself (no preallocated buffers in JAX): naive_jax.floor / floor_symmetric, jitted
    return {"two_pass": _jax_step(z1, z2, "1", **kw), "row_blocks": _jax_step(z1, z2, "0", **kw),
            "floor3": lambda: jax.block_until_ready(naive_jax.floor(u)),
            "floor2": lambda: jax.block_until_ready(naive_jax.floor_symmetric(u))}


def jax_cross(args) -> Dict[str, Callable[[], None]]:
    import jax
    import jax.numpy as jnp

    z1, z2, _ = _jax_inputs(args, args.batch)
    u1 = z1 / jnp.linalg.norm(z1, axis=1, keepdims=True)
    u2 = z2 / jnp.linalg.norm(z2, axis=1, keepdims=True)

    @jax.jit
    def floor3(a, b):  # S12 = z1 z2^T (stands in for H), H z2, H^T z1
        s = a @ b.T
        return s @ b, s.T @ a

    kw = dict(beta=args.beta, layout="cross")
    return {"shared_tiles": _jax_step(z1, z2, "1", **kw), "row_blocks": _jax_step(z1, z2, "0", **kw),
            "floor3": lambda: jax.block_until_ready(floor3(u1, u2))}


# ---------------------------------------------------------------- registry
#: (framework, layout) -> builder. To add a framework (JAX: helper J, TF: helper T), write builders like
#: torch_in_batch / torch_cross above (names "two_pass" or "shared_tiles", "row_blocks", "floor3" and, in-batch,
#: "floor2"; each step must block until its result is ready) and add their entries here.
BUILDERS: Dict[tuple, Callable] = {
    ("torch", "in-batch"): torch_in_batch,
    ("torch", "cross"): torch_cross,
    ("tf", "in-batch"): tf_in_batch,
    ("tf", "cross"): tf_cross,
    ("jax", "in-batch"): jax_in_batch,
    ("jax", "cross"): jax_cross,
}


def limit_threads(n: int) -> None:
    """Run on ``n`` CPUs before any framework is imported (affinity mask plus the thread-count variables)."""
    from hardneg.bench.worker import limit_threads as limit

    limit(n)


def run(fns: Dict[str, Callable[[], None]], reps: int) -> Dict[str, float]:
    """Median seconds per call of each function; one warm-up call each, then ``reps`` rounds in rotated order."""
    for f in fns.values():
        f()
    names = list(fns)
    times = {k: [] for k in names}
    for r in range(reps):
        k0 = r % len(names)
        for k in names[k0:] + names[:k0]:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--framework", choices=sorted({f for f, _ in BUILDERS} | {"torch", "jax", "tf"}), default="torch")
    p.add_argument("--layout", choices=["in-batch", "cross"], default="in-batch")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--beta", type=float, default=1.0)
    args = p.parse_args(argv)
    builder = BUILDERS.get((args.framework, args.layout))
    if builder is None:
        p.error(f"no benchmark registered for --framework {args.framework} --layout {args.layout}")
    limit_threads(args.threads)
    load_before = os.getloadavg()[0]
    fns = builder(args)
    med = run(fns, args.reps)
    out = {"framework": args.framework, "layout": args.layout, "batch": args.batch, "dim": args.dim,
           "threads": args.threads, "beta": args.beta, "reps": args.reps,
           "median_ms": {k: round(v * 1e3, 4) for k, v in med.items()},
           "x_floor3": {k: round(v / med["floor3"], 3) for k, v in med.items() if k != "floor3"}}
    if "floor2" in med:
        out["x_floor2"] = {k: round(v / med["floor2"], 3) for k, v in med.items() if k != "floor2"}
    out["load1_before"], out["load1_after"] = round(load_before, 2), round(os.getloadavg()[0], 2)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
