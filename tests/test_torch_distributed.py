"""gather=True with torch.distributed (gloo, 2 and 4 CPU processes) equals single-process training.

Each rank runs a shared linear encoder on its shard, computes ``hcl_loss(..., gather=True)`` and
backpropagates; the replica-averaged loss and the replica-averaged encoder-weight gradient (what
DistributedDataParallel applies) must equal the loss and gradient of one process on the concatenated
batch. Everything is float64, so the comparison is at rounding level (1e-10 relative leaves room for the
different summation order of the all-reduce and the blocks, ~1e-15 each).
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():  # pragma: no cover - depends on the build
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

import torch.multiprocessing as mp  # noqa: E402

import torch_workers  # noqa: E402

from hardneg_torch import hcl_loss  # noqa: E402

D_IN, D = 6, 5
RTOL = 1e-10

# (name, shard sizes per world size, hcl_loss keyword arguments)
CASES = [
    ("mean", {2: [4, 4], 4: [3, 3, 3, 3]}, dict()),
    ("uneven+labels", {2: [3, 5], 4: [2, 1, 4, 3]}, dict(labels=True, beta=2.0)),
    ("sum+easy", {2: [4, 2], 4: [2, 2, 3, 1]}, dict(reduction="sum", estimator="easy")),
    ("bank", {2: [3, 4], 4: [2, 3, 1, 2]}, dict(bank=True, beta=0.5)),
    # "none" returns the local anchors' losses; their mean is exact for equal shards (recomputing backward)
    ("none", {2: [4, 4], 4: [2, 2, 2, 2]}, dict(reduction="none", beta=3.0)),
]


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(n, D_IN, generator=g, dtype=torch.float64)
    x2 = x1 + 0.3 * torch.randn(n, D_IN, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (n,), generator=g)
    bank = torch.randn(n, 4, D, generator=g, dtype=torch.float64)
    return x1, x2, labels, bank


def _encoder():
    torch.manual_seed(1234)
    return torch.nn.Linear(D_IN, D).double()


def _loss(model, x1, x2, labels, bank, kw, gather):
    kw = dict(kw)
    extra = {}
    if kw.pop("labels", False):
        extra["labels"] = labels
    if kw.pop("bank", False):
        extra["negatives"] = bank
    out = hcl_loss(model(x1), model(x2), gather=gather, **extra, **kw)
    return out.mean() if kw.get("reduction") == "none" else out


def _run_cases(rank, world, out_dir, use_ddp):
    for ci, (name, shards, kw) in enumerate(CASES):
        sizes = shards[world]
        x1, x2, labels, bank = _data(sum(sizes), seed=ci)
        lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
        model = _encoder()
        net = torch.nn.parallel.DistributedDataParallel(model) if use_ddp else model
        loss = _loss(net, x1[lo:hi], x2[lo:hi], labels[lo:hi], bank[lo:hi], kw, gather=True)
        loss.backward()
        grad = model.weight.grad.clone()  # with DDP: already averaged; without: this rank's raw gradient
        np.save(os.path.join(out_dir, f"{name}-{rank}.npy"),
                np.concatenate([[loss.item()], grad.numpy().ravel()]))


def _worker(rank, world, port, out_dir, use_ddp):
    torch_workers.init(rank, world, port)
    try:
        _run_cases(rank, world, out_dir, use_ddp)  # every tensor, graph and module is gone when it returns
    except BaseException:
        torch_workers.abort()
        raise
    torch_workers.finish(threads_file=os.path.join(out_dir, f"threads-{rank}.txt"))


@pytest.mark.parametrize("world,use_ddp", [(2, True), (4, False)])
def test_gather_equals_single_process_training(world, use_ddp):
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_worker, args=(world, torch_workers.free_port(), out_dir, use_ddp), nprocs=world, join=True)
        for ci, (name, shards, kw) in enumerate(CASES):
            x1, x2, labels, bank = _data(sum(shards[world]), seed=ci)
            model = _encoder()
            single = _loss(model, x1, x2, labels, bank, kw, gather=False)
            single.backward()
            g_single = model.weight.grad.numpy()
            per_rank = [np.load(os.path.join(out_dir, f"{name}-{r}.npy")) for r in range(world)]
            losses = np.array([p[0] for p in per_rank])
            grads = np.stack([p[1:].reshape(g_single.shape) for p in per_rank])
            # The replica average of the losses is the single-process loss on the global batch.
            np.testing.assert_allclose(losses.mean(), single.item(), rtol=RTOL, err_msg=name)
            # DDP applies the replica average of the gradients (with DDP every rank already holds it).
            g_avg = grads.mean(axis=0)
            if use_ddp:
                for g in grads:
                    np.testing.assert_allclose(g, g_avg, rtol=1e-12, atol=0, err_msg=name)
            np.testing.assert_allclose(g_avg, g_single, rtol=RTOL, atol=RTOL * np.abs(g_single).max(), err_msg=name)
            # The scale explicitly: the averaged gradient is 1x the single-process one, not 1/W or W times it.
            scale = np.vdot(g_avg, g_single) / np.vdot(g_single, g_single)
            assert abs(scale - 1.0) < 1e-9, (name, scale)
        if not use_ddp:
            # hardneg's gather holds no reference to the group: destroying it ends gloo's worker threads, so
            # the library itself never leaves them running into interpreter shutdown (tests/torch_workers.py).
            for r in range(world):
                with open(os.path.join(out_dir, f"threads-{r}.txt")) as f:
                    assert f.read() == "", f"rank {r}: gloo threads alive after destroy_process_group"
