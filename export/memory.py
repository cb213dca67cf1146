"""Give freed heap memory back to the operating system between the phases of a large job.

glibc keeps freed blocks for reuse; after a phase that allocated gigabytes (an exporter, one validation run)
the process's resident size stays at that phase's peak, and the next phase stacks on top of it. Export of a
large model calls this between phases so its peak is one phase's, not the sum (measured in
docs/large_models.md). A no-op where glibc's ``malloc_trim`` is not available.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc


@functools.cache
def _malloc_trim() -> object | None:
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def release_freed_memory() -> None:
    """Collect garbage, then return the heap's free pages to the OS (glibc only)."""
    gc.collect()
    trim = _malloc_trim()
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
