"""The default ``memory_budget`` of the blocked backends, per device: one rule for torch, JAX and TensorFlow.

Each backend walks the (2B x C) similarity matrix in row blocks whose transient buffers fit ``memory_budget``
bytes. Its CPU default (hardneg_torch 32 MiB, hardneg_jax 16 MiB / 8 MiB per cross direction, hardneg_tf
64 MiB / 16 MiB cross) keeps a block in the CPU's caches. On an accelerator that default is far too small:
at B = 65,536 pairs (C = 2B = 131,072 candidates, float32) 32 MiB holds 32 rows of hardneg_torch's two
(rows x C) buffers, i.e. 4,096 blocks per pass, each a handful of kernels (a product, a max, exponentials,
sums, the gradient product; about 10-20 launches). At ~5-10 us per launch that is 0.2-0.8 s of launch
overhead per step, as much as the arithmetic itself (3 (2B)^2 d = 6.6 T multiply-adds at d = 128, ~0.3 s
at ~50 TFLOP/s, plus ~10 passes over (2B)^2 floats, ~0.2 s at ~3 TB/s).

The rule (:func:`default_memory_budget`):

    CPU (and any platform not listed in ACCELERATOR_PLATFORMS):  the backend's CPU default, unchanged
    accelerator with total memory M known:   max(cpu_default, min(ACCELERATOR_BUDGET_CAP, M / 16))
    accelerator with M unknown:              max(cpu_default, ACCELERATOR_BUDGET_UNKNOWN_MEMORY)

With M >= 32 GiB this is 2 GiB: at B = 65,536 float32 that is 2,048 rows per block for hardneg_torch (32
blocks per pass), ~960 for hardneg_jax (4 live (rows x C) arrays + a mask; 137 blocks) and ~680 for
hardneg_tf (6 live buffers; ~190 blocks): at most ~200 blocks x ~20 launches x ~10 us = 40 ms, under a
tenth of the step. A sixteenth of the device's memory leaves the rest to the model (an 8 GiB card gets
512 MiB, a 16 GiB card 1 GiB). Total memory, not free memory, is used so that the block size -- which
JAX and TensorFlow bake into the compiled program -- does not depend on what the allocator happens to hold.

At small batches the GPU default means one block holds the whole matrix (B = 4096: 2B = 8192 rows x 8192
columns x 8 bytes = 512 MiB for hardneg_torch), so the memory advantage over the naive code shrinks there
(the naive code keeps several (2B)^2 buffers for autodiff); pass ``memory_budget`` explicitly to get the
CPU-sized blocks on a GPU.
"""

from __future__ import annotations

import numbers
from typing import Optional

__all__ = ["ACCELERATOR_PLATFORMS", "ACCELERATOR_BUDGET_CAP", "ACCELERATOR_MEMORY_FRACTION",
           "ACCELERATOR_BUDGET_UNKNOWN_MEMORY", "is_accelerator", "default_memory_budget"]

#: Platform names (lower case) the frameworks give accelerators: torch's device.type "cuda" (also ROCm
#: builds), JAX's device.platform "gpu"/"cuda"/"rocm"/"tpu", TensorFlow's device type "GPU"/"TPU".
ACCELERATOR_PLATFORMS = frozenset({"cuda", "gpu", "rocm", "tpu"})
#: Largest default budget on an accelerator, in bytes (see the module docstring for why 2 GiB).
ACCELERATOR_BUDGET_CAP = 2 * 2**30
#: Fraction of the accelerator's total memory the default may take.
ACCELERATOR_MEMORY_FRACTION = 1 / 16
#: Default on an accelerator whose memory size the framework does not report (TensorFlow).
ACCELERATOR_BUDGET_UNKNOWN_MEMORY = 2**30


def is_accelerator(platform: str) -> bool:
    """Whether ``platform`` (e.g. "cpu", "cuda", "gpu", "GPU", "tpu") is an accelerator the rule enlarges."""
    if not isinstance(platform, str):
        raise TypeError(f"platform must be a str such as 'cpu' or 'cuda'; got {platform!r}")
    return platform.lower() in ACCELERATOR_PLATFORMS


def default_memory_budget(platform: str, cpu_default: int, total_memory: Optional[int] = None) -> int:
    """The ``memory_budget`` a backend uses when the caller passes None, on a device of ``platform``.

    Parameters
    ----------
    platform : the device's platform as the framework names it ("cpu", "cuda", "gpu", "tpu", "GPU", ...).
    cpu_default : the backend's default on CPU, in bytes; returned unchanged for non-accelerators, and the
        smallest value the rule returns on an accelerator.
    total_memory : the accelerator's total memory in bytes (None or 0 when the framework does not say).

    Returns
    -------
    int, bytes: ``cpu_default`` on CPU; ``max(cpu_default, min(ACCELERATOR_BUDGET_CAP, total_memory / 16))``
    on an accelerator (``ACCELERATOR_BUDGET_UNKNOWN_MEMORY`` in place of the min when the size is unknown).

    Raises
    ------
    TypeError, ValueError : a non-integer or non-positive ``cpu_default``, a negative ``total_memory``.
    """
    if isinstance(cpu_default, bool) or not isinstance(cpu_default, numbers.Integral) or cpu_default < 1:
        raise ValueError(f"cpu_default must be a positive integer number of bytes; got {cpu_default!r}")
    if total_memory is not None and (isinstance(total_memory, bool) or not isinstance(total_memory, numbers.Integral)
                                     or total_memory < 0):
        raise ValueError(f"total_memory must be None or a non-negative integer number of bytes; got {total_memory!r}")
    if not is_accelerator(platform):
        return int(cpu_default)
    if not total_memory:
        budget = ACCELERATOR_BUDGET_UNKNOWN_MEMORY
    else:
        budget = min(ACCELERATOR_BUDGET_CAP, int(total_memory * ACCELERATOR_MEMORY_FRACTION))
    return max(int(cpu_default), budget)
