"""The comparison of hardneg_torch with the float64 reference shared by the torch test files.

Tolerances. The reference is evaluated on the inputs converted exactly to float64, so the difference is the
backend's own rounding. A logit s = u.v/t carries an absolute error of about eps/t, and the exponents
(1 + beta) s amplify it, so values and gradients are compared with an error budget of
``C * eps * (2 + beta) / t`` relative to their magnitude (C = 64 covers the sums over n terms, which torch
evaluates pairwise); for float16/bfloat16 add the final rounding of the output to the input dtype (2 eps).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import hardneg
from hardneg_torch import hcl_loss, symmetric

EPS = {torch.float64: 2.0**-52, torch.float32: 2.0**-23, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}
B, D = 6, 5
LABELS = torch.tensor([0, 1, 0, 2, 1, 3])


def tol(dtype, kw) -> float:
    """The error budget above for ``hcl_loss(..., **kw)`` in ``dtype``."""
    t = kw.get("temperature", 0.5)
    t = float(t) if not isinstance(t, torch.Tensor) else float(t.detach())
    beta = kw.get("beta", 1.0)
    amp = (2.0 + (4.0 if math.isinf(beta) else beta)) / t
    internal = EPS[torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype]
    return 64 * internal * amp + (2 * EPS[dtype] if dtype in (torch.float16, torch.bfloat16) else 0.0)


def inputs(dtype, bank=None, seed=0, bank_rows=7):
    """(z1, z2, bank or None), B x D, z2 near z1; ``bank`` is None, "shared" or "per_anchor"."""
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(B, D, generator=g, dtype=torch.float64).to(dtype)
    z2 = (z1.double() + 0.5 * torch.randn(B, D, generator=g, dtype=torch.float64)).to(dtype)
    neg = None
    if bank == "shared":
        neg = torch.randn(bank_rows, D, generator=g, dtype=torch.float64).to(dtype)
    elif bank == "per_anchor":
        neg = torch.randn(B, bank_rows, D, generator=g, dtype=torch.float64).to(dtype)
    return z1, z2, neg


def to_np(x):
    return None if x is None else x.detach().double().numpy()


def check(dtype=torch.float64, bank=None, seed=0, tensor_t=False, t_dtype=None, bank_rows=7, cotangent_seed=None,
          **kw):
    """Compare the value and every gradient (z1, z2, the bank, and t when ``tensor_t``) of
    ``hardneg_torch.hcl_loss(..., **kw)`` with :func:`hardneg.hcl_loss_and_grad`; return (value, reference grads).
    ``reduction="none"`` is differentiated along a random cotangent."""
    z1, z2, neg = inputs(dtype, bank, seed, bank_rows)
    ins = [x.requires_grad_(True) for x in (z1, z2, neg) if x is not None]
    t_float = kw.pop("temperature", 0.5)
    t = torch.tensor(t_float, dtype=t_dtype or dtype, requires_grad=True) if tensor_t else t_float
    if tensor_t:
        t_float = float(t.detach().double())  # the value the backend sees (rounded to t's dtype)
    value = hcl_loss(z1, z2, negatives=neg, temperature=t, **kw)
    assert value.dtype == dtype and value.device == z1.device
    ref_kw = {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in kw.items() if k != "memory_budget"}
    cot = None
    if kw.get("reduction") == "none":
        cot = torch.randn(value.shape, generator=torch.Generator().manual_seed(cotangent_seed or 1), dtype=dtype)
        ref_kw["cotangent"] = to_np(cot)
    grads = torch.autograd.grad(value, ins + ([t] if tensor_t else []), cot)
    ref_value, ref = hardneg.hcl_loss_and_grad(to_np(z1), to_np(z2), negatives=to_np(neg), temperature=t_float,
                                               **ref_kw)
    budget = tol(dtype, dict(kw, temperature=t_float))
    np.testing.assert_allclose(to_np(value), ref_value, rtol=budget, atol=budget, equal_nan=True)
    refs = [ref.z1, ref.z2] + ([ref.negatives] if neg is not None else [])
    scale = max(np.nanmax(np.abs(r)) for r in refs) if not np.isnan(ref.z1).all() else 1.0
    for got, want in zip(grads, refs):
        assert got.dtype == dtype and got.shape == want.shape
        np.testing.assert_allclose(to_np(got), want, rtol=budget, atol=budget * scale, equal_nan=True)
    if tensor_t:
        gt = grads[-1]
        assert gt.shape == () and gt.dtype == t.dtype
        np.testing.assert_allclose(to_np(gt), ref.temperature, rtol=budget,
                                   atol=budget * abs(ref.temperature) + budget, equal_nan=True)
    return value, ref


# -- the tiled kernels' tests (test_torch_symmetric.py, test_torch_cross_tiles.py) ------------------------------
@pytest.fixture(params=["1", "0"], ids=["tiled", "row_blocks"])
def kernel(request, monkeypatch):
    """Each test twice: the tiled kernels forced on, then off (``HARDNEG_TORCH_SYMMETRIC``)."""
    monkeypatch.setenv(symmetric.ENV_VAR, request.param)
    return request.param


@pytest.fixture
def forced(monkeypatch):
    """The tiled kernels forced wherever they are supported."""
    monkeypatch.setenv(symmetric.ENV_VAR, "1")


def spy(monkeypatch, module, name: str) -> list:
    """Record (True) each call of ``module.name`` — a kernel — for as long as the test runs."""
    seen = []
    real = getattr(module, name)

    def wrapper(*args, **kw):
        seen.append(True)
        return real(*args, **kw)

    monkeypatch.setattr(module, name, wrapper)
    return seen
