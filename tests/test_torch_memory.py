"""Memory of hardneg_torch is linear in the batch: no (2B x 2B) tensor, block buffers within the budget.

Every tensor produced by every ATen operation during forward and backward is observed with a
TorchDispatchMode (deterministic, unlike RSS), and the tensors autograd keeps between the passes are
observed with saved-tensor hooks. The sizes are compared with the n x n matrix the naive loss needs.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402

from hardneg_torch import hcl_loss  # noqa: E402


class _LargestTensor(TorchDispatchMode):
    """Records the bytes of the largest tensor storage any operation returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0
        self.op = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                nbytes = t.untyped_storage().nbytes()
                if nbytes > self.largest:
                    self.largest, self.op = nbytes, str(func)
        return out


def _run(B, d=16, budget=64 * 1024, **kw):
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(B, d, generator=g, requires_grad=True)
    z2 = torch.randn(B, d, generator=g, requires_grad=True)
    saved = {}

    def pack(t):  # bytes of each distinct storage (two views of one tensor count once)
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with _LargestTensor() as mode, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = hcl_loss(z1, z2, memory_budget=budget, **kw)
        (out.sum() if out.dim() else out).backward()
    return mode, sum(saved.values())


@pytest.mark.parametrize("kw", [dict(), dict(beta=0.5), dict(beta=math.inf), dict(reduction="none"),
                                dict(labels=True)], ids=["beta1", "beta0.5", "inf", "none", "labels"])
def test_no_square_matrix_and_block_within_budget(kw):
    B, d, budget = 256, 16, 32 * 1024
    if kw.pop("labels", False):
        kw["labels"] = torch.arange(B) % 7
    mode, saved = _run(B, d, budget, **kw)
    n = 2 * B
    square = n * n * 4  # one float32 (2B x 2B) matrix: 1 MiB here
    linear = 8 * n * d * 4  # a few (2B x d) float32 tensors
    assert mode.largest <= max(budget, linear), (mode.largest, mode.op)
    assert mode.largest < square / 16
    # kept between forward and backward: the inputs and (fused) their gradients, nothing quadratic
    assert saved <= 6 * B * d * 4, saved


def test_largest_tensor_grows_linearly_with_the_batch():
    # With a fixed budget the block shrinks as the batch grows: the largest tensor stays bounded by the
    # budget or by the (2B x d) tensors, while the naive (2B)^2 matrix would grow 16x from B to 4B.
    small, _ = _run(128, budget=16 * 1024)
    large, _ = _run(512, budget=16 * 1024)
    assert large.largest <= 4 * max(small.largest, 16 * 1024), (small.largest, large.largest)
    assert large.largest < (2 * 512) ** 2 * 4 / 16


def test_per_anchor_bank_stays_within_its_input_size():
    B, K, d = 64, 32, 16
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(B, d, generator=g), torch.randn(B, d, generator=g)
    bank = torch.randn(B, K, d, generator=g, requires_grad=True)
    with _LargestTensor() as mode:
        hcl_loss(z1, z2, negatives=bank, memory_budget=1024).backward()
    assert mode.largest <= bank.untyped_storage().nbytes()  # the bank's gradient, nothing larger


def _run_cross(B, d, budget, bank=None, K=8, tensor_t=False, **kw):
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(B, d, generator=g, requires_grad=True)
    z2 = torch.randn(B, d, generator=g, requires_grad=True)
    neg = None
    if bank == "shared":
        neg = torch.randn(K, d, generator=g, requires_grad=True)
    elif bank == "per_anchor":
        neg = torch.randn(B, K, d, generator=g, requires_grad=True)
    t = torch.tensor(0.3, requires_grad=True) if tensor_t else 0.3
    saved = {}

    def pack(x):
        saved[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
        return x

    with _LargestTensor() as mode, torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        out = hcl_loss(z1, z2, negatives=neg, temperature=t, layout="cross", memory_budget=budget, **kw)
        (out.sum() if out.dim() else out).backward()
    return mode, sum(saved.values())


@pytest.mark.parametrize("kw", [dict(tensor_t=True), dict(symmetric=False, beta=math.inf), dict(reduction="none"),
                                dict(bank="shared", labels=True, beta=0.5)],
                         ids=["sym-tensor-t", "one-way-inf", "none", "shared-bank-labels"])
def test_cross_layout_has_no_square_matrix(kw):
    # The cross layout's naive form holds (B x B) logits per direction; here no tensor reaches B^2 / 16 and the
    # blocks stay within the budget, forward and backward (also "none", whose backward recomputes).
    B, d, budget = 512, 16, 32 * 1024
    if kw.pop("labels", False):
        kw["labels"] = torch.arange(B) % 7
        if kw.get("bank"):
            kw["negative_labels"] = torch.arange(8) % 7
    mode, saved = _run_cross(B, d, budget, **kw)
    square = B * B * 4  # one float32 (B x B) matrix: 1 MiB here
    linear = 4 * (B + 8) * d * 4  # a few (B x d) float32 tensors
    assert mode.largest <= max(budget, linear), (mode.largest, mode.op)
    assert mode.largest < square / 16, (mode.largest, mode.op)
    assert saved <= 6 * (B + 8) * d * 4, saved


def test_cross_layout_largest_tensor_grows_linearly():
    small, _ = _run_cross(128, 16, 16 * 1024)
    large, _ = _run_cross(512, 16, 16 * 1024)
    assert large.largest <= 4 * max(small.largest, 16 * 1024), (small.largest, large.largest)
    assert large.largest < 512**2 * 4 / 16


def test_cross_layout_per_anchor_bank_stays_within_its_input_size():
    mode, _ = _run_cross(64, 16, 1024, bank="per_anchor", K=32)
    assert mode.largest <= 64 * 32 * 16 * 4  # the bank's gradient, nothing larger
