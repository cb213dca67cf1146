"""Shared fixtures. Tests never reach a model hub."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest
import torch

# One thread: tests run beside other work, and OpenMP barriers under contention cost up to 20× (measured).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Calibrations of bundled models go to a per-session temp cache, never the user's; and a command run
    without --threads (in process or not) takes one thread, as the tests do: as many workers as CPUs."""
    monkeypatch.setenv("GENORIGIN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("GENORIGIN_WORKERS", str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                                else os.cpu_count() or 1))  # fmt: skip


@pytest.fixture(scope="session")
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
