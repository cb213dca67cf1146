"""CPU threads: how many to use by default, and OpenMP's wait policy. Imports nothing heavy.

Default threads = the CPUs this process may run on (``os.sched_getaffinity``, which follows taskset,
cgroups' cpusets and container limits, unlike ``os.cpu_count``) divided by the number of genorigin processes
sharing them (``--workers`` or ``$GENORIGIN_WORKERS``; default 1). More threads than CPUs, or several
processes each using every CPU, make OpenMP barriers spin against each other: benchmarks/bench_threads.py
measures it.

OpenMP's default wait policy makes idle threads spin for a while before sleeping, which steals the CPU from
a neighbour process on a shared machine. ``passive_wait_policy`` sets ``OMP_WAIT_POLICY=PASSIVE`` (idle
threads sleep) unless the user chose a policy; it only takes effect if called before torch is imported,
which importing ``genorigin`` does.
"""

from __future__ import annotations

import os
import sys

WORKERS_ENV = "GENORIGIN_WORKERS"


def available_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def workers_hint(workers: int | None = None) -> int:
    """How many processes share these CPUs: ``workers`` if given, else ``$GENORIGIN_WORKERS``, else 1."""
    if workers is None:
        raw = os.environ.get(WORKERS_ENV, "").strip()
        try:
            workers = int(raw) if raw else 1
        except ValueError as exc:
            raise ValueError(f"${WORKERS_ENV} must be a whole number of processes, got {raw!r}") from exc
    if workers < 1:
        raise ValueError(f"workers must be ≥ 1, got {workers}")
    return workers


def default_threads(workers: int | None = None) -> int:
    """Threads per process: this process's CPUs shared among ``workers_hint(workers)`` processes."""
    return max(1, available_cpus() // workers_hint(workers))


def passive_wait_policy() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` where the user has not chosen; True if it is (now) passive and torch
    was not loaded yet (after that, OpenMP has already read its environment)."""
    if "torch" in sys.modules:
        return False
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return os.environ["OMP_WAIT_POLICY"].upper() == "PASSIVE"


def use_threads(threads: int | None = None, workers: int | None = None) -> int:
    """Set torch's intra-op threads (explicit ``threads``, else the default); returns the number, which the
    ONNX Runtime sessions are given too."""
    n = threads or default_threads(workers)
    if n < 1:
        raise ValueError(f"threads must be ≥ 1, got {n}")
    import torch

    torch.set_num_threads(n)
    return n
