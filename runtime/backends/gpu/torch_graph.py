"""PyTorch on CUDA with the whole inversion iteration replayed as one CUDA graph per slot bucket.

At 32×32 a step is ~100 tiny kernels, so eager PyTorch is bound by Python and launch latency, not by the GPU.
Here ``step`` replays a captured graph of forward, per-sample loss (CUDA kernel or torch ops), backward
through autograd and Adam with best-so-far (CUDA kernel or the reference formulas in torch ops), on static
buffers, with no host synchronisation. Buckets are powers of two (``slots.pow2_bucket``); everything else
is ``GraphedBackend``'s.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
from genorigin.export.generator import Generator
from genorigin.runtime.backends.eager import TorchBackend
from genorigin.runtime.backends.gpu.graphed import GraphBucket, GraphedBackend, Update
from genorigin.runtime.backends.gpu.numerics import fp32_math
from genorigin.runtime.backends.gpu.ops import loss_into, require_gpu_loss, update_into, warn_fallback
from genorigin.runtime.backends.gpu.slots import SlotBuffers, pow2_bucket

log = logging.getLogger(__name__)


class CudaGraphTorchBackend(GraphedBackend, TorchBackend):
    """PyTorch on CUDA with ``step()`` replaying one captured graph per bucket of slots.

    ``kernels``: 'auto' (the CUDA loss/Adam kernels when they load, with a warning when not), 'cuda' or
    'torch'. ``capture=False`` runs the same static-buffer iteration eagerly (the only mode on CPU: it tests
    the padding logic). ``tf32=False`` keeps convolutions and matmuls in IEEE fp32, matching the CPU reference.
    """

    name = "torch-cuda-graph"

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
        require_gpu_loss(loss)
        TorchBackend.__init__(self, generator, device, loss)
        on_cuda = self.device.type == "cuda"
        if capture and not on_cuda:
            raise ValueError("CUDA-graph capture needs a CUDA device; pass capture=False on CPU")
        self._setup_graphed(self.device, kernels=kernels, capture=on_cuda if capture is None else capture)
        self.max_bucket = max_bucket
        self.tf32 = tf32
        self.warmup = max(1, warmup)
        self.latent_shape = tuple(generator.latent.shape)
        self.image_shape = (generator.channels, *generator.image_size)

    def bucket_for(self, n: int) -> int:
        bucket = pow2_bucket(n)
        if self.max_bucket is not None and bucket > self.max_bucket:
            if n > self.max_bucket:
                raise ValueError(f"{n} slots exceed max_bucket={self.max_bucket}")
            bucket = self.max_bucket
        return bucket

    def _alloc(self, bucket: int) -> GraphBucket:
        return GraphBucket(SlotBuffers(bucket, self.latent_shape, self.image_shape, self.device))

    def _iteration(self, b: GraphBucket, update: Update) -> None:
        bufs = b.buffers
        z = bufs.z.detach().requires_grad_(True)
        with torch.enable_grad():
            y = self.generator.forward(z)
        gy = loss_into(y.detach(), bufs, self.loss, self.kernels)
        (gz,) = torch.autograd.grad(y, z, gy)
        update_into(bufs, gz, update, self.kernels)

    def _warmup(self, b: GraphBucket, adam: Update) -> None:
        """``warmup`` eager iterations (cuDNN/cuBLAS/NVRTC initialise here, not in capture); kernels that fail
        here are dropped for torch ops, loudly."""
        try:
            for _ in range(self.warmup):
                self._iteration(b, adam)
        except Exception as e:
            if self.kernels is None:
                raise
            self.kernels, self.kernels_note = None, f"failed in warm-up: {type(e).__name__}: {e}"
            warn_fallback(self.kernels_note)
            for _ in range(self.warmup):
                self._iteration(b, adam)

    def _math(self) -> contextlib.AbstractContextManager[None]:
        return fp32_math(self.tf32)

    def loss_and_grad(self, z: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with fp32_math(self.tf32):
            return super().loss_and_grad(z, x)

    def describe(self) -> dict[str, Any]:
        return {**TorchBackend.describe(self), **GraphedBackend.describe(self), "tf32": self.tf32}
