"""Static slot buffers and bucket arithmetic: the shapes a captured CUDA graph or a TensorRT binding holds.

A captured graph or a bound engine has fixed shapes, but the shared loop changes its slot count at
checkpoints (images finish, starts are halved, the queue refills). So the slot count is padded up to a
bucket and each bucket keeps its own buffers. Padded rows get loss weight 0, zero latents and ``t = 0``:
their gradient is exactly 0, and since generators run per sample (eval-mode normalisation, no cross-batch
ops) they cannot change the real rows. After a step the loop's ``SlotState`` holds views of the first ``n``
rows, so the next step finds its inputs in place and copies nothing; arrays the loop replaced at a
checkpoint (compaction, refill) are copied in once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from genorigin.runtime.backends.gpu.profiles import BatchProfile
from genorigin.runtime.loop.backend import SlotState

FIELDS = ("z", "m", "v", "best_z", "best_loss", "x", "t")


def pow2_bucket(n: int) -> int:
    """Smallest power of two ≥ n: the CUDA-graph backend keeps one captured graph per such bucket."""
    if n < 1:
        raise ValueError(f"slot count must be ≥ 1, got {n}")
    return 1 << (n - 1).bit_length()


def bucket_sizes(profiles: Sequence[BatchProfile]) -> tuple[int, ...]:
    """Batch sizes the TensorRT backend pads to: the powers of two inside each profile, plus its min and max.

    Few sizes keep the number of bound shapes (and captured graphs) small; padding wastes < 2× work.
    """
    if not profiles:
        raise ValueError("at least one batch profile is needed")
    sizes: set[int] = set()
    for p in profiles:
        sizes.update((p.min, p.max))
        b = 1
        while b <= p.max:
            if b >= p.min:
                sizes.add(b)
            b <<= 1
    return tuple(sorted(sizes))


def choose_bucket(n: int, buckets: Iterable[int]) -> int:
    """The smallest bucket that holds ``n`` slots; an error names the largest when none does."""
    if n < 1:
        raise ValueError(f"slot count must be ≥ 1, got {n}")
    ordered = sorted(buckets)
    for b in ordered:
        if b >= n:
            return b
    largest = ordered[-1] if ordered else 0
    raise ValueError(
        f"{n} slots exceed the largest batch the engines were built for ({largest}); rebuild with a larger "
        "max batch (--batch min:opt:max) or run with a smaller batch size × restarts"
    )


def _same_view(src: Any, dst: torch.Tensor) -> bool:
    return (
        isinstance(src, torch.Tensor)
        and src.device == dst.device
        and src.dtype == dst.dtype
        and src.data_ptr() == dst.data_ptr()
        and src.shape == dst.shape
        and src.stride() == dst.stride()
    )


class SlotBuffers:
    """Fixed-size device arrays for one bucket; the loop's state is a view of their first ``n`` rows."""

    def __init__(
        self, bucket: int, latent_shape: Sequence[int], image_shape: Sequence[int], device: torch.device
    ) -> None:
        f32 = {"dtype": torch.float32, "device": device}
        self.bucket = bucket
        self.z = torch.zeros((bucket, *latent_shape), **f32)
        self.m = torch.zeros_like(self.z)
        self.v = torch.zeros_like(self.z)
        self.best_z = torch.zeros_like(self.z)
        self.best_loss = torch.full((bucket,), float("inf"), **f32)
        self.x = torch.zeros((bucket, *image_shape), **f32)
        self.t = torch.zeros((bucket,), **f32)
        self.weight = torch.zeros((bucket,), **f32)  # 1 for real slots, 0 for padding
        self.loss = torch.zeros((bucket,), **f32)  # this step's per-slot loss
        self.extra: dict[str, torch.Tensor] = {}  # an optimiser's own per-slot state (L-BFGS), dtype kept
        self._extra_fill: dict[str, torch.Tensor] = {}  # one fresh row of each, what padding rows hold
        self.n = 0

    def ensure_extra(self, fresh_row: dict[str, Any]) -> None:
        """Buffers for an optimiser's own state, from one fresh row of it (``Optimizer.fresh_slots``)."""
        for name, row in fresh_row.items():
            if name not in self.extra:
                fill = torch.as_tensor(row).to(self.z.device)
                self._extra_fill[name] = fill
                self.extra[name] = fill.expand(self.bucket, *fill.shape[1:]).clone()

    def _names(self) -> tuple[str, ...]:
        return (*FIELDS, *self.extra)

    def _buffer(self, name: str) -> torch.Tensor:
        return self.extra[name] if name in self.extra else getattr(self, name)

    def _own_storage(self, fields: Iterable[str] | None = None) -> set[int]:
        return {self._buffer(f).untyped_storage().data_ptr() for f in (self._names() if fields is None else fields)}

    def reset(self, start: int = 0) -> None:
        """Rows ``start:`` become padding: zero latent and moments, zero target, t = 0, weight 0, fresh
        optimiser state."""
        for a in (self.z, self.m, self.v, self.best_z, self.x, self.weight, self.loss):
            a[start:].zero_()
        self.best_loss[start:].fill_(float("inf"))
        self.t[start:].zero_()
        for name, fill in self._extra_fill.items():
            self.extra[name][start:] = fill
        if start == 0:
            self.n = 0

    def detach(self, state: SlotState) -> None:
        """Give the loop private copies of any array that lives in these buffers (before they are overwritten)."""
        own = self._own_storage()
        for f in self._names():
            a = _get(state, f)
            if isinstance(a, torch.Tensor) and a.untyped_storage().data_ptr() in own:
                _set(state, f, a.clone())

    def stage(self, state: SlotState) -> int:
        """Bring the loop's arrays into rows ``:n`` (a no-op for the views the last step handed out)."""
        n = self._check_rows(state.z)
        names = [f for f in self._names() if f in FIELDS or f in state.extra]
        stale = [f for f in names if not _same_view(_get(state, f), self._buffer(f)[:n])]
        if stale:
            own = self._own_storage()
            for f in stale:
                self._copy_in(f, _get(state, f), n, own)
        self._set_count(n)
        return n

    def stage_inputs(self, z: Any, x: Any) -> int:
        """Only z and x (for a plain loss-and-gradient call); the optimiser rows are left alone."""
        n = self._check_rows(z)
        own = self._own_storage(("z", "x"))
        self._copy_in("z", z, n, own)
        self._copy_in("x", x, n, own)
        self._set_count(n)
        return n

    def _check_rows(self, z: Any) -> int:
        n = int(z.shape[0])
        if not 1 <= n <= self.bucket:
            raise ValueError(f"{n} slots do not fit bucket {self.bucket}")
        return n

    def _copy_in(self, name: str, src: Any, n: int, own: set[int]) -> None:
        dst = self._buffer(name)[:n]
        src = torch.as_tensor(src)
        if src.shape[0] != n:
            raise ValueError(f"{name} has {src.shape[0]} rows, z has {n}")
        if src.device == dst.device and src.untyped_storage().data_ptr() in own:
            src = src.clone()  # an overlapping view of our own buffers: copy_ would race with itself
        dst.copy_(src.reshape(dst.shape))

    def _set_count(self, n: int) -> None:
        if n != self.n:
            self.reset(n)
            self.weight[:n] = 1.0
            self.n = n

    def publish(self, state: SlotState) -> None:
        """Point the loop's state at rows ``:n`` (the loop must treat them as read-only between steps)."""
        for f in FIELDS:
            setattr(state, f, getattr(self, f)[: self.n])
        for f in state.extra:
            if f in self.extra:
                state.extra[f] = self.extra[f][: self.n]


def _get(state: SlotState, name: str) -> Any:
    return getattr(state, name) if name in FIELDS else state.extra[name]


def _set(state: SlotState, name: str, value: Any) -> None:
    if name in FIELDS:
        setattr(state, name, value)
    else:
        state.extra[name] = value
