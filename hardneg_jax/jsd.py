"""``hardneg_jax.jsd_loss``: the graph objective of docs/spec.md section 14 in JAX.

The (N, G) score matrix is formed once (G, the number of graphs in the batch, is ``graph.shape[0]`` and static
under ``jit``); gradients are JAX's autodiff of the stable formulas (``jnp.max``/``jnp.min`` split evenly over
tied entries and ``abs`` has derivative 0 at 0: the spec's subgradient of c). Half precision is computed in
float32 and returned in the input dtype. ``beta``, ``tau_plus``, ``convention`` and ``reduction`` are Python
values (``beta`` and ``tau_plus`` enter the compiled function as arguments, so changing them does not
recompile); ``batch``'s values are checked only when they are concrete (not under ``jit``).
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from hardneg.validation import check_jsd_batch_values, check_jsd_call

__all__ = ["jsd_loss"]

LOG2 = math.log(2.0)


def _dtype_name(x) -> Optional[str]:
    dt = getattr(x, "dtype", None)
    return jnp.dtype(dt).name if dt is not None else np.asarray(x).dtype.name


def _terms(local, graph, batch, beta, tau, convention: str, beta_zero: bool):
    """Per-node terms; ``beta`` and ``tau`` may be traced (one compilation serves every value), ``beta_zero``
    and ``convention`` are static (beta = 0 is a different formula in the released convention)."""
    G = graph.shape[0]
    M = G - 1
    S = local @ graph.T
    ok = jnp.all(jnp.isfinite(local)) & jnp.all(jnp.isfinite(graph))
    S = S + jnp.where(ok, 0.0, jnp.nan).astype(S.dtype)  # spec 14.6: any non-finite input poisons everything
    pos = batch[:, None] == jnp.arange(G, dtype=batch.dtype)[None, :]
    neg = ~pos
    sp = jax.nn.softplus
    q = jnp.where(neg, S, 0.0)
    a = jnp.sum(jnp.where(pos, S, 0.0), axis=1)
    if convention == "released":
        q = S * neg.astype(S.dtype)  # S o Q as the released code multiplies: a NaN gradient reaches every slot
        r = tau / (1.0 - tau)
        pos_row = LOG2 - sp(-a) - r * sp(a) - M * r * LOG2
        if beta_zero:
            neg_row = jnp.sum(jnp.where(neg, sp(q) - LOG2, 0.0), axis=1) / (M * (1.0 - tau))
        else:
            mx, amn = jnp.max(q), jnp.abs(jnp.min(q))
            c = jnp.where(mx >= amn, mx, amn)
            pi = jax.nn.softmax((-2.0 * beta) * q / c, axis=1)
            neg_row = (jnp.sum(G * pi * sp(q), axis=1) / (1.0 - tau) - G * LOG2) / M
        return neg_row - pos_row
    if beta_zero:
        pi = neg.astype(S.dtype) / M
    else:
        mx, amn = jnp.max(q), jnp.abs(jnp.min(q))
        c = jnp.where(mx >= amn, mx, amn)
        on = c > 0
        zeta = jnp.where(on, (2.0 * beta) * q / jnp.where(on, c, 1.0), 0.0)
        pi = jax.nn.softmax(jnp.where(neg, zeta, -jnp.inf), axis=1)
    fbar = jnp.sum(pi * jnp.where(neg, sp(q), 0.0), axis=1)
    est = (fbar - tau * sp(a)) / (1.0 - tau)
    return jnp.where(est < 0, 0.0, est) + sp(-a) - 2.0 * LOG2


_terms_jit = jax.jit(_terms, static_argnums=(5, 6))


def jsd_loss(local, graph, batch, *, beta: float = 1.0, tau_plus: float = 0.5, convention: str = "released",
             reduction: str = "mean"):
    r"""InfoGraph's local-global Jensen-Shannon objective with hard negatives, in JAX.

    Same arguments, defaults, values and errors as :func:`hardneg.jsd_loss` (docs/spec.md section 14);
    differentiable with ``jax.grad``/``jax.vjp`` with respect to ``local`` and ``graph``, and ``jax.jit``-able
    (G = ``graph.shape[0]`` is static; pass the hyper-parameters as Python values, e.g. with
    ``functools.partial``).

    Parameters
    ----------
    local : jax.Array, shape (N, d), floating
    graph : jax.Array, shape (G, d), same dtype
    batch : jax.Array, shape (N,), integer
        PyTorch Geometric-style batch vector, values in [0, G) (checked when concrete).
    beta, tau_plus, convention, reduction
        As :func:`hardneg.jsd_loss`.

    Returns
    -------
    jax.Array
        Shape () or (N,) for ``reduction="none"``, in the dtype of ``local`` (float16/bfloat16 are computed
        in float32).
    """
    problem = check_jsd_call(
        local_shape=tuple(np.shape(local)), graph_shape=tuple(np.shape(graph)), batch_shape=tuple(np.shape(batch)),
        local_dtype=_dtype_name(local), graph_dtype=_dtype_name(graph), batch_dtype=_dtype_name(batch),
        beta=beta, tau_plus=tau_plus, convention=convention, reduction=reduction,
    )
    if not isinstance(batch, jax.core.Tracer):
        b = np.asarray(batch)
        check_jsd_batch_values(b.min(), b.max(), problem.graphs)
    local, graph, batch = jnp.asarray(local), jnp.asarray(graph), jnp.asarray(batch)
    out_dtype = local.dtype
    cdt = jnp.float32 if out_dtype in (jnp.float16, jnp.bfloat16) else out_dtype
    terms = _terms_jit(local.astype(cdt), graph.astype(cdt), batch, jnp.asarray(float(beta), cdt),
                       jnp.asarray(float(tau_plus), cdt), convention, float(beta) == 0.0)
    if reduction == "mean":
        out = jnp.mean(terms)
    elif reduction == "sum":
        out = jnp.sum(terms)
    else:
        out = terms
    return out.astype(out_dtype)
