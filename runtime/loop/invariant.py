"""Batch-invariant arithmetic: each slot's numbers are the same bits alone, in any batch, at any position.

An appeal re-runs one image and must get the verdict it got inside a batch of 64. Two things made a slot's
result depend on its neighbours (measured, docs/accuracy.md "Reproducibility"):

- **Reductions whose order follows the batch shape.** ``tensor.sum(1)`` picks its vectorisation and split by
  the whole tensor's shape. ``row_sum`` adds in one fixed pairwise tree of elementwise additions instead:
  IEEE additions are correctly rounded whatever the SIMD width, so the result is the same for any batch,
  any CPU instruction set, and on a GPU, and it captures into a CUDA graph (fixed shapes, no host reads).
  The per-slot L-BFGS does all its dot products and norms with it.
- **Kernels that change algorithm with the batch.** Eager PyTorch on the CPU gives a row different bits
  when (a) a dense layer sees a single row (GEMV instead of GEMM: the bundled VAE's first layer) or
  (b) intra-op threads split a batch differently by its size (the DCGANs from batch 3 with 2 threads).
  ``RowParallel`` evaluates a model at one intra-op thread, the rows split into contiguous groups run side by
  side on the backend's own threads, and ``PadLoneRows`` gives a dense layer that sees one row a zero row
  beside it. Measured on every bundled model, at every batch size 1-40 and every row position: identical
  bits (tests/test_batch_invariance.py keeps that true). ONNX Runtime's CPU kernels needed no change.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import torch
from torch.overrides import TorchFunctionMode


def row_sum(a: torch.Tensor) -> torch.Tensor:
    """Sum over the last axis in a fixed pairwise order: a function of the row alone, on any device."""
    width = a.shape[-1]
    padded = 1 << max(width - 1, 0).bit_length()
    if padded != width:
        a = torch.nn.functional.pad(a, (0, padded - width))
    while a.shape[-1] > 1:
        half = a.shape[-1] // 2
        a = a[..., :half] + a[..., half:]
    return a[..., 0]


def row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """⟨a, b⟩ per row (last axis), in ``row_sum``'s fixed order."""
    return row_sum(a * b)


def row_norm(a: torch.Tensor) -> torch.Tensor:
    """‖a‖₂ per row (last axis), in ``row_sum``'s fixed order."""
    return row_sum(a * a).sqrt()


_DENSE = {torch.nn.functional.linear, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.mm,
          torch.Tensor.mm}  # fmt: skip


def _one_row(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.dim() >= 2 and t.numel() == t.shape[-1]


class PadLoneRows(TorchFunctionMode):
    """A dense product whose left operand is a single row runs as two rows (the second zero) and keeps the
    first: the CPU's matrix-vector path rounds differently from the matrix-matrix path every other batch
    takes. Autograd sees the padding, so the backward product is padded the same way."""

    def __torch_function__(self, func: Callable, types: Sequence[type], args: tuple = (), kwargs: Any = None):
        kwargs = kwargs or {}
        if func in _DENSE and args and _one_row(args[0]):
            row = args[0]
            flat = row.reshape(1, row.shape[-1])
            pair = torch.cat([flat, torch.zeros_like(flat)])
            out = func(pair, *args[1:], **kwargs)
            return out[:1].reshape(*row.shape[:-1], out.shape[-1])
        return func(*args, **kwargs)


def split_rows(n: int, groups: int) -> list[tuple[int, int]]:
    """``groups`` contiguous, near-equal row ranges covering 0..n (fewer when n is smaller)."""
    groups = max(1, min(groups, n))
    bounds = [n * g // groups for g in range(groups + 1)]
    return [(a, b) for a, b in itertools.pairwise(bounds) if b > a]


class RowParallel:
    """Run a row-wise function over row groups on ``threads`` threads, each at one intra-op thread."""

    def __init__(self, threads: int) -> None:
        if threads < 1:
            raise ValueError(f"threads must be ≥ 1, got {threads}")
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def map(self, fn: Callable[..., tuple[torch.Tensor, ...]], *arrays: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``fn`` on each row group of ``arrays``; outputs concatenated along the rows."""
        ranges = split_rows(len(arrays[0]), self.threads)
        with exact_rows():
            if len(ranges) == 1:
                return fn(*arrays)
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="genorigin-rows")
            futures = [self._pool.submit(_in_worker, fn, *(a[lo:hi] for a in arrays)) for lo, hi in ranges]
            parts = [f.result() for f in futures]
        return tuple(torch.cat([p[k] for p in parts]) for k in range(len(parts[0])))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


@contextmanager
def exact_rows() -> Iterator[None]:
    """Run torch at one intra-op thread (threads split work by shape) with lone rows padded, then restore.

    torch's thread count is process-wide: forward-only work (AEDR, rendering) keeps the caller's threads.
    Denormals are flushed in every thread that evaluates rows: the flag is per thread (a thread without it
    computed other bits late in an inversion, where gradients reach the denormal range — measured).
    """
    torch.set_flush_denormal(True)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with PadLoneRows():
            yield
    finally:
        torch.set_num_threads(before)


def _in_worker(fn: Callable[..., tuple[torch.Tensor, ...]], *arrays: torch.Tensor) -> tuple[torch.Tensor, ...]:
    # per thread, like the mode: OpenMP keeps a thread count per thread (a pool thread ran convolutions on 2
    # threads although torch reported 1 — measured), and denormal flushing is a per-thread CPU flag
    torch.set_flush_denormal(True)
    torch.set_num_threads(1)
    with PadLoneRows():
        return fn(*arrays)


__all__ = ["PadLoneRows", "RowParallel", "exact_rows", "row_dot", "row_norm", "row_sum", "split_rows"]
