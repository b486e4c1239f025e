"""Gloo worker processes for the torch.distributed tests, started and ended without a race at exit.

Why workers end with :func:`finish` (the cause of a SIGABRT seen in about one run in four, issue 19):

* gloo runs collectives on its own threads (``pt_gloo_runloop``). The thread that executed a collective drops
  its reference to the finished ``AsyncWork`` a moment *after* the caller has the result. That object holds the
  caller's ``at::ThreadLocalState``, which under DistributedDataParallel contains a Python object, so its
  destructor takes the GIL.
* ``destroy_process_group()`` joins those threads only when it drops the last reference to the group. hardneg's
  own ``gather=True`` keeps none (asserted below by :func:`gloo_threads`), but a DistributedDataParallel
  module keeps the group alive after ``destroy_process_group()`` (measured with torch 2.13: the threads are
  still running after the DDP module has been deleted and collected).
* The spawned worker then returns and the interpreter finalises. A gloo thread that reaches the GIL during
  finalisation is ended by ``pthread_exit`` inside that noexcept destructor: ``std::terminate`` ("terminate
  called without an active exception"), SIGABRT, after every result was written. Seen in a core dump: thread 1
  in ``~AsyncWork -> ~ThreadLocalState -> decref -> take_gil -> PyThread_exit_thread``, the main thread in
  ``Py_FinalizeEx``. The same crash is described in pytorch/pytorch PR #179291.

So a worker never finalises the interpreter while gloo threads may run: after ``destroy_process_group()`` it
leaves with ``os._exit`` (what ``multiprocessing`` itself does at the end of a forked child). An exception still
propagates normally (``mp.spawn`` reports its traceback), since :func:`finish` is only reached on success.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import List, Optional


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init(rank: int, world: int, port: int) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.set_num_threads(1)


def gloo_threads() -> List[str]:
    """Names of this process's live gloo worker threads (Linux: /proc/self/task)."""
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except OSError:  # the thread ended while we listed
            continue
    return [n for n in names if n.startswith("pt_gloo")]


def finish(threads_file: Optional[str] = None) -> None:
    """Successful end of a worker: destroy the group, then exit without interpreter finalisation.

    ``threads_file``: where to write (one per line) the gloo threads still alive after the group was destroyed.
    """
    import torch.distributed as dist

    dist.barrier()  # no rank leaves while another still runs a collective
    dist.destroy_process_group()
    if threads_file is not None:
        with open(threads_file, "w") as f:
            f.write("\n".join(gloo_threads()))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def abort() -> None:
    """End of a worker that raised: release the group so the other ranks fail fast, then re-raise."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
