"""One skeleton for backends whose ``step`` replays a captured CUDA graph of the whole inversion iteration.

``GraphedBackend.step`` does, for every subclass: refuse per-slot learning-rate schedules (a captured graph
bakes ``lr`` in), pick the slot bucket, stage the loop's arrays into the bucket's static buffers, capture the
iteration once per bucket (after eager warm-up), replay it, and publish views of the buffers back to the
loop. Subclasses supply two hooks, as Polygraphy's runners supply ``infer_impl`` to its base runner:
``_alloc`` (a bucket's buffers and whatever else they bind) and ``_iteration`` (forward, loss, VJP, Adam on
those buffers); ``_prepare`` and ``_warmup`` are optional.

Streams: the backend works on its own CUDA stream, created once. A step first makes that stream wait for the
caller's (torch's current stream, on which the loop wrote its arrays), then stages, captures, replays or
enqueues there, and finally makes the caller's stream wait for it, so the loop's next reads (checkpoint
``.cpu()``, compaction) see the results without a host synchronisation. TensorRT in particular must not
enqueue on the legacy default stream, which synchronises with every other stream.

``close()`` (or leaving a ``with`` block) waits for the stream and drops graphs, buffers and the stream;
subclasses release their engines and contexts in ``_release``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from genorigin.kernels.reference import AdamConfig
from genorigin.runtime.backends.gpu.ops import resolve_kernels
from genorigin.runtime.backends.gpu.slots import SlotBuffers
from genorigin.runtime.loop.backend import Backend, SlotState
from genorigin.runtime.loop.optimizers import LBFGS

log = logging.getLogger(__name__)

Update = AdamConfig | LBFGS  # the optimiser half of the iteration a graph bakes in
BucketKey = tuple[int, Update | None]  # (slot bucket, the update the graph bakes in; None: loss and gradient only)


@dataclass
class GraphBucket:
    """A bucket's static buffers and, once captured, its graph."""

    buffers: SlotBuffers
    graph: torch.cuda.CUDAGraph | None = None


class GraphedBackend(Backend):
    """Base class: stage → capture → replay → publish, on the backend's own stream."""

    device: torch.device
    loss: str

    def _setup_graphed(self, device: torch.device, *, kernels: str, capture: bool) -> None:
        """Common state; subclasses call it from ``__init__`` once ``self.device`` is known."""
        self.device = device
        self.capture = capture
        self.kernels, self.kernels_note = resolve_kernels(kernels, device)
        self.stream: Any = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._buckets: dict[BucketKey, GraphBucket] = {}
        self.steps = 0  # step() calls, so callers can tell whether a loop used this path at all
        self.closed = False

    # ------------------------------------------------------------------ hooks

    def bucket_for(self, n: int) -> int:
        """The bucket (padded slot count) that holds ``n`` slots."""
        raise NotImplementedError

    def _alloc(self, bucket: int) -> GraphBucket:
        """Static buffers (and what they bind) for one bucket."""
        raise NotImplementedError

    def _iteration(self, b: GraphBucket, update: Update) -> None:
        """One whole iteration on the bucket's buffers, enqueued on the current stream: forward, loss and
        gradient, then ``ops.update_into`` (Adam or L-BFGS)."""
        raise NotImplementedError

    def _prepare(self, b: GraphBucket) -> None:
        """Called before each use of a bucket (TensorRT binds its contexts here and may drop a stale graph)."""

    def _warmup(self, b: GraphBucket, update: Update) -> None:
        """Eager iteration(s) before capture: lazy initialisation must not happen inside a capture."""
        self._iteration(b, update)

    def _math(self) -> contextlib.AbstractContextManager[None]:
        """Numerics context around warm-up, capture and eager iterations (torch's TF32 flags)."""
        return contextlib.nullcontext()

    def _release(self) -> None:
        """Subclass resources for ``close()`` (engines, execution contexts)."""

    # ------------------------------------------------------------------ skeleton

    def fuses(self, update: object) -> bool:
        """This backend runs ``update`` inside its captured iteration (Adam and the per-slot L-BFGS)."""
        return isinstance(update, AdamConfig | LBFGS)

    def step(self, state: SlotState, update: Update) -> None:
        """One whole iteration (forward, loss, VJP and the optimiser's update) replayed on static buffers: the
        only host work is staging arrays the loop replaced at a checkpoint."""
        if isinstance(update, AdamConfig) and update.lr_halve_every:  # a graph bakes lr in
            raise NotImplementedError(f"{self.name}: learning-rate schedules (lr_halve_every) are not supported")
        with self.on_stream():
            b = self.bucket((self.bucket_for(int(state.z.shape[0])), update))
            if isinstance(update, LBFGS):
                b.buffers.ensure_extra(update.fresh_slots(np.zeros((1, *b.buffers.z.shape[1:]), np.float32)))
            if self.capture and b.graph is None:
                b.buffers.detach(state)  # warm-up overwrites the buffers the loop's arrays may still view
                self._capture(b, update)
            b.buffers.stage(state)
            if b.graph is not None:
                b.graph.replay()
            else:
                with self._math():
                    self._iteration(b, update)
            b.buffers.publish(state)
        self.steps += 1

    def bucket(self, key: BucketKey) -> GraphBucket:
        """The bucket for ``key``, allocated on first use and prepared for this use."""
        if self.closed:
            raise RuntimeError(f"{self.name} backend is closed")
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = self._alloc(key[0])
        self._prepare(b)
        return b

    def _capture(self, b: GraphBucket, adam: Update) -> None:
        """Warm up eagerly on padding, then capture one iteration on the backend's stream (or fall back)."""
        b.buffers.reset()
        graph: torch.cuda.CUDAGraph | None = torch.cuda.CUDAGraph()
        with self._math():
            self._warmup(b, adam)
            self.stream.synchronize()
            b.buffers.reset()
            try:
                with torch.cuda.graph(graph, stream=self.stream):
                    self._iteration(b, adam)
            except Exception as e:  # an op that cannot be captured: stay correct, lose the speed-up
                log.warning("%s: CUDA-graph capture failed (%s); running eagerly on static buffers", self.name, e)
                torch.cuda.synchronize(self.device)
                self.capture, graph = False, None
        b.buffers.reset()
        b.graph = graph

    @contextlib.contextmanager
    def on_stream(self) -> Iterator[None]:
        """Run the body on the backend's stream, ordered after the caller's stream and before its next work."""
        if self.stream is None:  # CPU
            yield
            return
        caller = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(caller)
        with torch.cuda.stream(self.stream):
            yield
        caller.wait_stream(self.stream)

    def hand_over(self, t: torch.Tensor) -> torch.Tensor:
        """A tensor made on the backend's stream, made safe for the caller's (the allocator must not reuse it
        on our stream while the caller still reads it)."""
        if self.stream is not None and t.device.type == "cuda":
            t.record_stream(torch.cuda.current_stream(self.device))
        return t

    # ------------------------------------------------------------------ Backend API

    def asarray(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    @property
    def state_device(self) -> torch.device:
        return self.device

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "device": str(self.device),
            "cuda_graph": self.capture,
            "kernels": "cuda" if self.kernels is not None else "torch",
            "kernels_note": self.kernels_note,
            "own_stream": self.stream is not None,
            "buckets": sorted({b for b, _ in self._buckets}),
        }

    def close(self) -> None:
        """Wait for the stream, then drop graphs, buffers, engines and the stream; idempotent."""
        if self.closed:
            return
        if self.stream is not None:
            self.stream.synchronize()
        self._buckets.clear()
        self._release()
        self.stream = None
        self.closed = True
