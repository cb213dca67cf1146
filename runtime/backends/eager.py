"""The eager PyTorch backend: forward, reference loss, autograd VJP — the reference every other backend matches."""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import numpy as np
import torch
from genorigin.export.generator import Generator
from genorigin.kernels import reference
from genorigin.runtime.loop.backend import Backend
from genorigin.runtime.loop.invariant import RowParallel

from genorigin.threads import default_threads


def configure_torch_cpu() -> None:
    """Flush denormals: on x86 CPUs they make eager PyTorch inversion up to ~20× slower late in the run."""
    torch.set_flush_denormal(True)


class TorchBackend(Backend):
    """Eager PyTorch: forward, reference loss, autograd VJP. The reference every other backend matches.

    On the CPU a row's loss and gradient are the same bits in any batch and for any ``threads``
    (``runtime/loop/invariant.py``): the rows are split over ``threads`` threads of this backend's own, each at one
    intra-op thread (torch's thread count is 1 while it evaluates, and restored after).

    ``compute="bfloat16"`` runs the generator on a bfloat16 copy of its weights (activations bfloat16 too, so
    convolutions use AVX-512 BF16/AMX where the CPU has them); the latent, the image handed to the loss, the
    loss, the gradient and the optimiser state stay float32. A calibration made this way belongs to this
    mode (measured accuracy and speed: docs/large_models.md).
    """

    name = "torch"
    COMPUTE: ClassVar[dict[str, torch.dtype]] = {"float32": torch.float32, "bfloat16": torch.bfloat16}

    def __init__(self, generator: Generator, device: str = "cpu", loss: str = "mse", threads: int | None = None,
                 compute: str = "float32") -> None:  # fmt: skip
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA GPU")
        if compute not in self.COMPUTE:
            raise ValueError(f"compute must be one of {', '.join(self.COMPUTE)}, got {compute!r}")
        configure_torch_cpu()
        self.generator = generator
        self.device = torch.device(device)
        self.loss = loss
        self.threads = threads or default_threads()
        self.rows = RowParallel(self.threads) if self.device.type == "cpu" else None
        self.compute = compute
        generator.module.to(self.device)
        self.module = generator.module
        if compute != "float32":  # channels-last: oneDNN's AMX convolutions want it (1.7× at 256 px, measured)
            self.module = (
                copy.deepcopy(generator.module).to(self.COMPUTE[compute]).to(memory_format=torch.channels_last)
            )

    def asarray(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    @property
    def state_device(self) -> torch.device:
        return self.device

    def _forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.compute == "float32":
            return self.generator.forward(z)
        z = z.to(self.COMPUTE[self.compute])
        return self.module(z.contiguous(memory_format=torch.channels_last) if z.dim() == 4 else z).float()

    def loss_and_grad(self, z: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.rows is not None:
            loss, grad = self.rows.map(self._loss_and_grad, z, x)
            return loss, grad
        return self._loss_and_grad(z, x)

    def _loss_and_grad(self, z: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            y = self._forward(z)
        loss, gy = reference.loss_and_grad(y.detach(), x, self.loss)
        # the VJP gyᵀ·∂y/∂z as the gradient of the scalar Σ y⊙gy: the same bits (its backward hands gy·1 to y),
        # and torch.autograd.grad with a tensor grad_outputs imports sympy on first use (0.4 s of CPU at start-up)
        (gz,) = torch.autograd.grad((y * gy).sum(), z)
        return loss, gz

    @torch.no_grad()
    def render(self, z: np.ndarray) -> np.ndarray:
        return self._forward(self.asarray(z)).clamp(0, 1).cpu().numpy()

    def describe(self) -> dict[str, Any]:
        out = {"backend": self.name, "device": str(self.device), "threads": self.threads}
        return out if self.compute == "float32" else {**out, "compute": self.compute}

    def close(self) -> None:
        if self.rows is not None:
            self.rows.close()
