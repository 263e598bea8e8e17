"""Keep freed heap memory inside the process on a glibc CPU host (``PPOConfig.cpu_keep_freed_memory``).

glibc serves any block above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and returns it to the kernel
when it is freed, and trims the top of the heap back to the kernel once more than the trim threshold lies free there.
A PPO update on a CPU allocates and frees the same buffers every step: activations, weight gradients, the
``[vocabulary, hidden]`` embedding and LM-head gradients (113 MB for a 49k vocabulary). Each one comes back from the
kernel as untouched pages, zero-filled one 4 KiB page fault at a time: 385,000-590,000 faults per fp32 update
of SmolLM2-135M (docs/benchmarks.md). With mmap off and the trim threshold at its maximum, freed blocks stay in the heap
and the next allocation of that size reuses them without a fault.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

logger = logging.getLogger(__name__)

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_THRESHOLD_MAX = 2**31 - 1  # mallopt takes an int

_applied = False


def glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (the only allocator whose thresholds are set here), else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


def keep_freed_memory_in_process() -> bool:
    """Serve every allocation from the heap and never give freed heap memory back to the kernel. Process-wide and
    not undone: later allocations of any code in the process reuse freed blocks. The resident size then stays at
    its peak instead of shrinking between steps; the peak itself barely moves (at most +2 % measured on SmolLM2
    PPO). Returns whether it was applied (False on other C libraries, where nothing changes)."""
    global _applied
    if _applied:
        return True
    libc = glibc()
    if libc is None:
        logger.info("cpu_keep_freed_memory: not a glibc process (%s); the allocator is left as it is",
                    platform.libc_ver()[0] or platform.system())
        return False
    ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_MAX) == 1
    _applied = ok
    if not ok:
        logger.warning("cpu_keep_freed_memory: glibc's mallopt refused the settings; the allocator is unchanged")
    return ok
