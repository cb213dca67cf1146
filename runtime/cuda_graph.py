"""One whole inversion iteration replayed as a CUDA graph: the PyTorch CUDA backend without launch overhead.

At 32×32 a step is ~100 tiny kernels, so eager PyTorch is bound by Python and launch latency, not by the GPU.
``CudaGraphTorchBackend.step`` instead replays a captured graph of the whole iteration — forward, per-sample
loss (CUDA kernel or torch ops), backward through autograd, Adam with best-so-far (CUDA kernel or the
reference formulas in torch ops) — on static buffers, with no host synchronisation.

Static buffers mean fixed shapes, but the shared loop changes the slot count at checkpoints. The slots are
therefore padded to a bucket (the next power of two) and one graph is kept per bucket. Padded rows get loss
weight 0, zero latents and ``t = 1``: their gradient is exactly 0, and since generators run per sample
(eval-mode normalisation, no cross-batch ops), they cannot change the real rows. After each step the loop's
``SlotState`` holds views of the first ``n`` rows, so the next step finds its inputs already in place and
copies nothing; arrays the loop replaced at a checkpoint (compaction, refill) are copied in once.

``SlotBuffers`` and the loss/Adam helpers are shared with the TensorRT backend, which captures the same way.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from genorigin.export.generator import Generator
from genorigin.kernels import reference
from genorigin.kernels.reference import AdamConfig
from genorigin.runtime.backend import SlotState, TorchBackend
from genorigin.runtime.engine_cache import pow2_bucket

log = logging.getLogger(__name__)

FIELDS = ("z", "m", "v", "best_z", "best_loss", "x", "t")


@contextlib.contextmanager
def fp32_math(tf32: bool) -> Iterator[None]:
    """Choose TF32 or IEEE fp32 for cuDNN convolutions and matmuls while kernels are picked, then restore.

    PyTorch lets cuDNN convolutions use TF32 by default (10 mantissa bits: ~1e-3 relative error), unlike the
    CPU reference; the flags are read when an op is launched, so setting them around capture fixes the
    captured kernels.
    """
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):  # torch ≥ 2.9: don't mix with the legacy flags
        targets = [(conv, "fp32_precision"), (torch.backends.cuda.matmul, "fp32_precision")]
        value: Any = "tf32" if tf32 else "ieee"
    else:
        targets = [(torch.backends.cudnn, "allow_tf32"), (torch.backends.cuda.matmul, "allow_tf32")]
        value = bool(tf32)
    old = [getattr(obj, attr) for obj, attr in targets]
    try:
        for obj, attr in targets:
            setattr(obj, attr, value)
        yield
    finally:
        for (obj, attr), prev in zip(targets, old):
            setattr(obj, attr, prev)


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
        self.n = 0

    def reset(self, start: int = 0) -> None:
        """Rows ``start:`` become padding: zero latent and moments, zero target, t = 0, weight 0."""
        for a in (self.z, self.m, self.v, self.best_z, self.x, self.weight, self.loss):
            a[start:].zero_()
        self.best_loss[start:].fill_(float("inf"))
        self.t[start:].zero_()
        if start == 0:
            self.n = 0

    def stage(self, state: SlotState) -> int:
        """Bring the loop's arrays into rows ``:n`` (a no-op for the views the last step handed out)."""
        n = int(state.z.shape[0])
        if not 1 <= n <= self.bucket:
            raise ValueError(f"{n} slots do not fit bucket {self.bucket}")
        stale = [f for f in FIELDS if not _same_view(getattr(state, f), getattr(self, f)[:n])]
        if stale:
            own = {getattr(self, f).untyped_storage().data_ptr() for f in FIELDS}
            for f in stale:
                self._copy_in(f, getattr(state, f), n, own)
        self._set_count(n)
        return n

    def stage_inputs(self, z: Any, x: Any) -> int:
        """Only z and x (for a plain loss-and-gradient call); the optimiser rows are left alone."""
        n = int(z.shape[0])
        if not 1 <= n <= self.bucket:
            raise ValueError(f"{n} slots do not fit bucket {self.bucket}")
        own = {self.z.untyped_storage().data_ptr(), self.x.untyped_storage().data_ptr()}
        self._copy_in("z", z, n, own)
        self._copy_in("x", x, n, own)
        self._set_count(n)
        return n

    def _copy_in(self, name: str, src: Any, n: int, own: set[int]) -> None:
        dst = getattr(self, name)[:n]
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


def resolve_kernels(choice: str, device: torch.device) -> Any | None:
    """The CUDA loss/Adam kernels for 'cuda', None for 'torch'; 'auto' uses them when they load here."""
    if choice not in ("auto", "cuda", "torch"):
        raise ValueError(f"kernels must be 'auto', 'cuda' or 'torch', got {choice!r}")
    if choice == "torch" or device.type != "cuda":
        if choice == "cuda":
            raise ValueError("kernels='cuda' needs a CUDA device")
        return None
    try:
        from genorigin.kernels.launch import get_kernels

        return get_kernels(device.index or 0)
    except Exception as e:  # launch.py missing, cuda-python/NVRTC absent, compile failure
        if choice == "cuda":
            raise
        log.warning("CUDA loss/Adam kernels unavailable (%s); using torch ops", e)
        return None


def loss_into(y: torch.Tensor, bufs: SlotBuffers, kind: str, kernels: Any | None) -> torch.Tensor:
    """Per-slot loss into ``bufs.loss`` and the weighted ∂loss/∂y (padding weight 0) returned."""
    if kernels is not None:
        from genorigin.kernels.launch import loss_and_grad_cuda

        loss, gy = loss_and_grad_cuda(y.contiguous(), bufs.x, kind, bufs.weight, kernels=kernels)
    else:
        loss, gy = reference.loss_and_grad(y, bufs.x, kind, bufs.weight)
    bufs.loss.copy_(loss)
    return gy


def adam_into(bufs: SlotBuffers, grad: torch.Tensor, adam: AdamConfig, kernels: Any | None) -> None:
    """t += 1, then Adam with best-so-far on the buffers in place (the fused kernel, or reference.adam_step).

    The step counter is incremented here, inside the captured iteration, so no step uploads it from the host.
    """
    bufs.t.add_(1.0)
    hyper = (float(adam.lr), float(adam.beta1), float(adam.beta2), float(adam.eps))
    grad = grad.reshape(bufs.z.shape)
    if grad.dtype != torch.float32:
        grad = grad.float()
    if kernels is not None:
        from genorigin.kernels.launch import adam_step_cuda_

        adam_step_cuda_(
            bufs.z, bufs.m, bufs.v, grad.contiguous(), bufs.t, bufs.loss, bufs.best_loss, bufs.best_z, *hyper,
            kernels=kernels,
        )  # fmt: skip
        return
    new = reference.adam_step(bufs.z, bufs.m, bufs.v, grad, bufs.t, bufs.loss, bufs.best_loss, bufs.best_z, *hyper)
    for dst, src in zip((bufs.z, bufs.m, bufs.v, bufs.best_loss, bufs.best_z), new):
        dst.copy_(src)


class _Bucket:
    def __init__(self, buffers: SlotBuffers) -> None:
        self.buffers = buffers
        self.graph: torch.cuda.CUDAGraph | None = None


class CudaGraphTorchBackend(TorchBackend):
    """PyTorch on CUDA with ``step()`` replaying one captured graph per bucket of slots.

    ``kernels``: 'auto' (the CUDA loss/Adam kernels when they load), 'cuda' or 'torch'. ``capture=False``
    runs the same static-buffer iteration eagerly (the only mode on CPU: it tests the padding logic).
    ``tf32=False`` keeps convolutions in IEEE fp32, matching the CPU reference.
    """

    name = "torch-cudagraph"

    def __init__(
        self,
        generator: Generator,
        device: str = "cuda",
        loss: str = "mse",
        *,
        kernels: str = "auto",
        capture: bool | None = None,
        max_bucket: int | None = None,
        tf32: bool = False,
        warmup: int = 2,
    ) -> None:
        if generator.module is None:
            raise ValueError(f"{generator.name!r} has no PyTorch module (an exported package): use TensorRT or ORT")
        super().__init__(generator, device, loss)
        on_cuda = self.device.type == "cuda"
        if capture and not on_cuda:
            raise ValueError("CUDA-graph capture needs a CUDA device; pass capture=False on CPU")
        self.capture = on_cuda if capture is None else capture
        self.kernels = resolve_kernels(kernels, self.device)
        self.max_bucket = max_bucket
        self.tf32 = tf32
        self.warmup = max(1, warmup)
        self.latent_shape = tuple(generator.latent.shape)
        self.image_shape = (generator.channels, *generator.image_size)
        self._buckets: dict[tuple[int, AdamConfig], _Bucket] = {}
        self.steps = 0  # step() calls, so callers can tell whether a loop used this path at all

    def bucket_for(self, n: int) -> int:
        bucket = pow2_bucket(n)
        if self.max_bucket is not None and bucket > self.max_bucket:
            if n > self.max_bucket:
                raise ValueError(f"{n} slots exceed max_bucket={self.max_bucket}")
            bucket = self.max_bucket
        return bucket

    def loss_and_grad(self, z: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with fp32_math(self.tf32):
            return super().loss_and_grad(z, x)

    def _iteration(self, bufs: SlotBuffers, adam: AdamConfig) -> None:
        z = bufs.z.detach().requires_grad_(True)
        with torch.enable_grad():
            y = self.generator.forward(z)
        gy = loss_into(y.detach(), bufs, self.loss, self.kernels)
        (gz,) = torch.autograd.grad(y, z, gy)
        adam_into(bufs, gz, adam, self.kernels)

    def _run_warmup(self, bufs: SlotBuffers, adam: AdamConfig) -> None:
        """Eager iterations on a side stream (cuDNN/cuBLAS/kernel initialisation must not happen in capture)."""
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self._iteration(bufs, adam)
        torch.cuda.current_stream(self.device).wait_stream(side)

    def _make_bucket(self, bucket: int, adam: AdamConfig) -> _Bucket:
        entry = _Bucket(SlotBuffers(bucket, self.latent_shape, self.image_shape, self.device))
        if not self.capture:
            return entry
        bufs = entry.buffers
        with fp32_math(self.tf32):
            try:
                self._run_warmup(bufs, adam)
            except Exception as e:
                if self.kernels is None:
                    raise
                log.warning("CUDA loss/Adam kernels failed in warm-up (%s); using torch ops", e)
                self.kernels = None
                self._run_warmup(bufs, adam)
            bufs.reset()
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):
                    self._iteration(bufs, adam)
            except Exception as e:  # an op that cannot be captured: stay correct, lose the speed-up
                log.warning("CUDA-graph capture failed (%s); stepping eagerly on static buffers", e)
                torch.cuda.synchronize(self.device)
                self.capture = False
                graph = None
        bufs.reset()
        entry.graph = graph
        return entry

    def step(self, state: SlotState, adam: AdamConfig) -> None:
        if adam.lr_halve_every:  # a captured graph bakes lr in; per-slot schedules run on the CPU backends
            raise NotImplementedError(f"{self.name}: learning-rate schedules (lr_halve_every) are not supported")
        n = int(state.z.shape[0])
        key = (self.bucket_for(n), adam)
        entry = self._buckets.get(key)
        if entry is None:
            entry = self._buckets[key] = self._make_bucket(key[0], adam)
        entry.buffers.stage(state)
        if entry.graph is not None:
            entry.graph.replay()
        else:
            with fp32_math(self.tf32):
                self._iteration(entry.buffers, adam)
        entry.buffers.publish(state)
        self.steps += 1

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "backend": self.name,
            "cuda_graph": self.capture,
            "kernels": "cuda" if self.kernels is not None else "torch",
            "tf32": self.tf32,
            "buckets": sorted({b for b, _ in self._buckets}),
        }
