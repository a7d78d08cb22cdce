"""Keep a training process's freed memory for its next step, instead of handing it back to the kernel.

A CPU training step allocates and frees the same large activations every step. glibc's ``malloc``
serves blocks above its mmap threshold (128 KiB, raised as blocks are freed, up to 32 MiB) with
fresh ``mmap`` pages and returns freed memory at the top of its heap to the kernel once more than
its trim threshold is free. Either way the next step takes the memory back one zero-filled 4 KiB
page fault at a time: resnet18 at width 1.0, batch 128, took 135,000-205,000 faults per SGD step
here, 10-25 % of the step (``benchmarks/bench_train_step.py``). :func:`keep_freed_memory` tells
glibc to serve every block from its heap and to keep what is freed there; the process then keeps its
peak memory (about 10 % more resident memory at width 1.0) and reuses it, as PyTorch's CUDA caching
allocator does on the GPU.

It changes the whole process, once, and only where that is ours to decide: under glibc, and only
when the user has not tuned ``malloc`` through its environment variables or ``GLIBC_TUNABLES``.
Another allocator (jemalloc, tcmalloc) preloaded with ``LD_PRELOAD`` keeps its own policy.
"""

from __future__ import annotations

import ctypes
import functools
import os

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_MAX = -4
KEEP_UP_TO = 2**31 - 1  # bytes free at the heap's top before glibc trims it: the most mallopt's int takes
USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_MMAP_MAX_", "MALLOC_TOP_PAD_")


@functools.cache
def keep_freed_memory() -> bool:
    """Make glibc keep freed memory in this process (see the module); True when it now does.
    Idempotent; does nothing off glibc or where the user's environment tunes ``malloc``."""
    if any(name in os.environ for name in USER_SETTINGS) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - present only under glibc, whose mallopt parameters these are
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # TypeError: Windows has no CDLL(None)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_UP_TO))
