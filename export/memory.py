"""Give freed heap memory back to the operating system, during and between the phases of a large job.

glibc keeps freed blocks for reuse; after a phase that allocated gigabytes (an exporter, one validation run)
the process's resident size stays at that phase's peak, and the next phase stacks on top of it. Worse, glibc
raises its mmap threshold each time a large block is freed, so later tensors come from the heap, where freed
space cannot go back: one 128 px SD-decoder loss-graph run then grows the process by ~1 GB for ~0.5 GB of
live tensors. Export fixes the threshold (:func:`return_large_blocks`) and trims between phases
(:func:`release_freed_memory`), so its peak follows the live tensors of one phase (docs/large_models.md).
Both are no-ops where glibc is not the C library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
LARGE_BLOCK = 1 << 20  # blocks from 1 MiB up are mapped and unmapped on their own


@functools.cache
def _libc_function(name: str) -> object | None:
    library = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(library), name, None) if library else None
    except OSError:
        return None


def return_large_blocks() -> None:
    """Make glibc map each block of :data:`LARGE_BLOCK` or more on its own and unmap it when freed, for the
    rest of the process (setting the threshold stops glibc from raising it). Costs page faults on every large
    allocation, so long-running inversion loops do not call it; export does."""
    mallopt = _libc_function("mallopt")
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, LARGE_BLOCK)  # type: ignore[operator]


def release_freed_memory() -> None:
    """Collect garbage, then return the heap's free pages to the OS (glibc only)."""
    gc.collect()
    trim = _libc_function("malloc_trim")
    if trim is not None:
        trim(0)  # type: ignore[operator]


def resident_mib() -> float:
    """This process's resident set size now, in MiB (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
