"""gather=True in spec 1.1 (gloo, 2 and 4 CPU processes): the cross layout, a tensor temperature, empty shards
and ranks that disagree.

As in tests/test_torch_distributed.py, each rank runs a shared linear encoder on its shard, computes
``hcl_loss(..., gather=True)`` and backpropagates; the replica-averaged loss, encoder-weight gradient and
temperature gradient (what DistributedDataParallel applies) must equal those of one process on the
concatenated batch. Everything is float64: the comparison is at rounding level (1e-10 relative). Shards may be
empty (B_r = 0, issue 19): such a rank contributes no anchors but still takes part in every collective.
Ranks that disagree on the gathered dtype, the labels' dtype or the layout must all raise the same
ValueError (issue 19) instead of crashing inside gloo.
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

from hardneg_torch import HCLLoss, hcl_loss  # noqa: E402

D_IN, D, K = 6, 5, 3
RTOL = 1e-10

# (name, shard sizes per world size, hcl_loss keyword arguments)
CASES = [
    ("cross", {2: [4, 4], 4: [3, 2, 3, 2]}, dict(layout="cross")),
    ("cross+bank+labels", {2: [3, 5], 4: [2, 1, 4, 3]},
     dict(layout="cross", bank=True, labels=True, beta=2.0, tensor_t=True)),
    ("cross-shared-bank-sum", {2: [4, 3], 4: [2, 2, 1, 2]}, dict(layout="cross", shared_bank=True, reduction="sum")),
    # one-way, "none": the local anchors' losses, averaged (exact for equal shards; recomputing backward)
    ("cross-one-way-none", {2: [4, 4], 4: [2, 2, 2, 2]},
     dict(layout="cross", symmetric=False, reduction="none", beta=0.5)),
    ("tensor-t-in-batch", {2: [3, 4], 4: [2, 2, 1, 2]}, dict(tensor_t=True, tau_plus=0.2, temperature=0.2)),
    # empty shards (issue 19): in every layout
    ("empty-in-batch", {2: [0, 5], 4: [3, 0, 2, 0]}, dict(labels=True)),
    ("empty-cross", {2: [5, 0], 4: [0, 3, 0, 2]}, dict(layout="cross", tensor_t=True)),
    ("empty-bank", {2: [0, 4], 4: [2, 0, 3, 1]}, dict(bank=True, beta=0.5)),
]


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(n, D_IN, generator=g, dtype=torch.float64)
    x2 = x1 + 0.3 * torch.randn(n, D_IN, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (n,), generator=g)
    bank = torch.randn(n, K, D, generator=g, dtype=torch.float64)
    bank_labels = torch.randint(0, 3, (n, K), generator=g)
    shared = torch.randn(K, D, generator=g, dtype=torch.float64)  # the same on every rank (a replicated queue)
    return x1, x2, labels, bank, bank_labels, shared


def _encoder():
    torch.manual_seed(1234)
    return torch.nn.Linear(D_IN, D).double()


def _loss(model, log_t, x1, x2, labels, bank, bank_labels, shared, kw, gather):
    kw = dict(kw)
    extra = {}
    with_labels = kw.pop("labels", False)
    if with_labels:
        extra["labels"] = labels
    if kw.pop("bank", False):
        extra["negatives"] = bank
        if with_labels:
            extra["negative_labels"] = bank_labels
    if kw.pop("shared_bank", False):
        extra["negatives"] = shared
    if kw.pop("tensor_t", False):
        extra["temperature"] = torch.exp(-log_t)
        kw.pop("temperature", None)
    out = hcl_loss(model(x1), model(x2), gather=gather, **extra, **kw)
    return out.mean() if kw.get("reduction") == "none" else out


def _log_t(kw):
    return torch.tensor(-np.log(kw.get("temperature", 0.5)), dtype=torch.float64, requires_grad=True)


class _Model(torch.nn.Module):
    """The encoder and an HCLLoss that learns the temperature, wrapped together in DDP (as the docs advise)."""

    def __init__(self, gather):
        super().__init__()
        self.encoder = _encoder()
        self.criterion = HCLLoss(temperature=0.3, layout="cross", gather=gather, learn_temperature=True).double()

    def forward(self, x):
        return self.encoder(x)


LEARNED_SIZES = [3, 5]  # world 2, DDP


def _run_learned(rank, out_dir):
    x1, x2, *_ = _data(sum(LEARNED_SIZES), seed=99)
    lo, hi = sum(LEARNED_SIZES[:rank]), sum(LEARNED_SIZES[: rank + 1])
    model = _Model(gather=True)
    net = torch.nn.parallel.DistributedDataParallel(model)
    loss = model.criterion(net(x1[lo:hi]), net(x2[lo:hi]))
    loss.backward()
    np.save(os.path.join(out_dir, f"learned-{rank}.npy"),
            np.concatenate([[loss.item(), model.criterion.logit_scale.grad.item()],
                            model.encoder.weight.grad.numpy().ravel()]))


def _worker(rank, world, port, out_dir, use_ddp):
    # started and ended as in tests/test_torch_distributed.py (tests/torch_workers.py: no race at exit)
    torch_workers.init(rank, world, port)
    try:
        _run_cases(rank, world, out_dir, use_ddp)
        if use_ddp:
            _run_learned(rank, out_dir)
    except BaseException:
        torch_workers.abort()
        raise
    torch_workers.finish()


def _run_cases(rank, world, out_dir, use_ddp):
    for ci, (name, shards, kw) in enumerate(CASES):
        sizes = shards[world]
        data = _data(sum(sizes), seed=ci)
        lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
        model = _encoder()
        net = torch.nn.parallel.DistributedDataParallel(model) if use_ddp else model
        log_t = _log_t(kw)
        x1, x2, labels, bank, bank_labels, shared = data
        loss = _loss(net, log_t, x1[lo:hi], x2[lo:hi], labels[lo:hi], bank[lo:hi], bank_labels[lo:hi], shared,
                     kw, gather=True)
        loss.backward()
        grad = model.weight.grad.clone()  # with DDP: already averaged; without: this rank's raw gradient
        gt = 0.0 if log_t.grad is None else log_t.grad.item()  # this rank's own (DDP does not see log_t)
        np.save(os.path.join(out_dir, f"{name}-{rank}.npy"),
                np.concatenate([[loss.item(), gt], grad.numpy().ravel()]))


@pytest.mark.parametrize("world,use_ddp", [(2, True), (4, False)])
def test_cross_layout_and_empty_shards_equal_single_process_training(world, use_ddp):
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_worker, args=(world, torch_workers.free_port(), out_dir, use_ddp), nprocs=world, join=True)
        for ci, (name, shards, kw) in enumerate(CASES):
            x1, x2, labels, bank, bank_labels, shared = _data(sum(shards[world]), seed=ci)
            model = _encoder()
            log_t = _log_t(kw)
            single = _loss(model, log_t, x1, x2, labels, bank, bank_labels, shared, kw, gather=False)
            single.backward()
            g_single = model.weight.grad.numpy()
            per_rank = [np.load(os.path.join(out_dir, f"{name}-{r}.npy")) for r in range(world)]
            losses = np.array([p[0] for p in per_rank])
            gts = np.array([p[1] for p in per_rank])
            grads = np.stack([p[2:].reshape(g_single.shape) for p in per_rank])
            np.testing.assert_allclose(losses.mean(), single.item(), rtol=RTOL, err_msg=name)
            g_avg = grads.mean(axis=0)
            if use_ddp:
                for g in grads:
                    np.testing.assert_allclose(g, g_avg, rtol=1e-12, atol=0, err_msg=name)
            np.testing.assert_allclose(g_avg, g_single, rtol=RTOL, atol=RTOL * np.abs(g_single).max(), err_msg=name)
            scale = np.vdot(g_avg, g_single) / np.vdot(g_single, g_single)
            assert abs(scale - 1.0) < 1e-9, (name, scale)
            if kw.get("tensor_t"):
                # d loss / d log t, averaged over the ranks as DDP would for a replicated parameter
                assert log_t.grad is not None and log_t.grad.item() != 0.0
                np.testing.assert_allclose(gts.mean(), log_t.grad.item(), rtol=RTOL, err_msg=name)
        if use_ddp:
            # HCLLoss(learn_temperature=True) inside the DDP-wrapped model: DDP averages logit_scale's gradient too,
            # and every replica holds the single-process gradient of the encoder and of the logit scale.
            x1, x2, *_ = _data(sum(LEARNED_SIZES), seed=99)
            model = _Model(gather=False)
            single = model.criterion(model(x1), model(x2))
            single.backward()
            want = np.concatenate([[model.criterion.logit_scale.grad.item()],
                                   model.encoder.weight.grad.numpy().ravel()])
            per_rank = [np.load(os.path.join(out_dir, f"learned-{r}.npy")) for r in range(world)]
            np.testing.assert_allclose(np.mean([p[0] for p in per_rank]), single.item(), rtol=RTOL)
            for p in per_rank:
                np.testing.assert_allclose(p[1:], want, rtol=RTOL, atol=RTOL * np.abs(want).max())


# --- ranks that disagree ----------------------------------------------------------------------------------------

MISMATCHES = {
    # name: (keyword arguments of rank 0, of rank 1, expected message of the rank(s) that did not err locally)
    "dtype": (dict(), dict(dtype=torch.float32), r"gather=True: z1 and z2 must have the same dtype on every rank"),
    "labels-dtype": (dict(labels=torch.int64), dict(labels=torch.int32),
                     r"gather=True: labels must have the same dtype on every rank"),
    "layout": (dict(layout="cross"), dict(), r"gather=True: every rank must use the same layout"),
    "symmetric": (dict(layout="cross"), dict(layout="cross", symmetric=False),
                  r"gather=True: every rank must use the same layout"),
    "labels-missing": (dict(labels=torch.int64), dict(), r"gather=True: labels must be given on every rank or on none"),
    "d": (dict(), dict(d=D + 1), r"gather=True: z1 and z2 must have the same feature dimension d on every rank"),
}


def _mismatch_worker(rank, port, out_dir):
    torch_workers.init(rank, 2, port)
    try:
        _run_mismatches(rank, out_dir)
    except BaseException:
        torch_workers.abort()
        raise
    torch_workers.finish()


def _run_mismatches(rank, out_dir):
    for name, per_rank in MISMATCHES.items():
        kw = dict(per_rank[rank])
        dtype, d = kw.pop("dtype", torch.float64), kw.pop("d", D)
        label_dtype = kw.pop("labels", None)
        z1 = torch.randn(3, d, dtype=dtype, requires_grad=True)
        z2 = torch.randn(3, d, dtype=dtype)
        if label_dtype is not None:
            kw["labels"] = torch.arange(3, dtype=label_dtype)
        try:
            hcl_loss(z1, z2, gather=True, **kw).backward()
            msg = "no error"
        except ValueError as exc:
            msg = f"ValueError: {exc}"
        with open(os.path.join(out_dir, f"{name}-{rank}.txt"), "w") as f:
            f.write(msg)
    # a rank whose own arguments are invalid raises its own error; the other learns it and raises too
    try:
        hcl_loss(torch.randn(3, D), torch.randn(3, D), gather=True, tau_plus=1.0 if rank == 1 else 0.1)
        msg = "no error"
    except ValueError as exc:
        msg = f"ValueError: {exc}"
    with open(os.path.join(out_dir, f"invalid-{rank}.txt"), "w") as f:
        f.write(msg)
    # and the group still works afterwards
    out = hcl_loss(torch.randn(3, D), torch.randn(3, D), gather=True)
    with open(os.path.join(out_dir, f"after-{rank}.txt"), "w") as f:
        f.write(str(bool(torch.isfinite(out))))


def test_ranks_that_disagree_all_get_the_same_value_error():
    import re

    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_mismatch_worker, args=(torch_workers.free_port(), out_dir), nprocs=2, join=True)
        read = lambda name, r: open(os.path.join(out_dir, f"{name}-{r}.txt")).read()  # noqa: E731
        for name, (_, _, pattern) in MISMATCHES.items():
            msgs = [read(name, r) for r in range(2)]
            assert msgs[0] == msgs[1], (name, msgs)
            assert re.match("ValueError: " + pattern, msgs[0]), (name, msgs[0])
        assert read("invalid", 1) == "ValueError: tau_plus must satisfy 0 <= tau_plus < 1; got 1.0"
        assert read("invalid", 0).startswith("ValueError: gather=True: the arguments on rank(s) [1] are invalid")
        assert [read("after", r) for r in range(2)] == ["True", "True"]


def test_the_dtype_message_names_each_ranks_dtype():
    # The message is built from the exchanged metadata: checked here without processes.
    from hardneg_torch.distributed import _META, _check_ranks_agree

    meta = torch.zeros((2, len(_META)), dtype=torch.int64)
    meta[:, _META.index("B")] = 3
    meta[:, _META.index("d")] = 5
    meta[:, _META.index("labels")] = -1
    meta[:, _META.index("labels_dtype")] = -1
    meta[0, _META.index("dtype")] = 3  # float64
    meta[1, _META.index("dtype")] = 2  # float32
    with pytest.raises(ValueError, match="got float64 on rank 0, float32 on rank 1"):
        _check_ranks_agree(meta, 2)
