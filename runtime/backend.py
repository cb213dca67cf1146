"""The backend interface the single inversion loop drives, and the PyTorch reference backend.

A backend answers one question per step: for latents z and targets x, what is each sample's loss and its
gradient w.r.t. z? Everything else (Adam, best-so-far, restarts, early exit, refilling) is the shared loop's.
The Adam update defaults to the reference definition in ``genorigin.kernels.reference``; a GPU backend
may replace it with the fused CUDA kernel.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from genorigin.export.generator import Generator
from genorigin.kernels import reference
from genorigin.kernels.reference import AdamConfig
from genorigin.runtime.invariant import RowParallel

from genorigin.threads import default_threads

Array = Any
_B = TypeVar("_B", bound="Backend")


@dataclass
class SlotState:
    """The loop's per-slot arrays, in the backend's array type.

    ``t`` is each slot's step count (float32, 0 for a fresh slot). It lives on the backend's device and
    ``Backend.step`` increments it there, so the loop uploads it only when slots are admitted: a step needs
    no host-to-device copy, and checkpoints are the loop's only host synchronisation.
    """

    z: Array
    m: Array
    v: Array
    best_z: Array
    best_loss: Array
    x: Array
    t: Array
    extra: dict[str, Array] = field(default_factory=dict)  # the optimiser's own per-slot arrays (L-BFGS)


class Backend:
    """Base class: a loss-and-gradient oracle for one generator on one device."""

    name: ClassVar[str] = "abstract"
    adam_step = staticmethod(reference.adam_step)
    max_slots: int | None = None  # the most slots one step may hold (None: no limit; TensorRT: the engines' max)

    def asarray(self, a: np.ndarray) -> Array:
        """Host array → backend array."""
        raise NotImplementedError

    @property
    def state_device(self) -> torch.device:
        """Where an optimiser keeps its own per-slot state (torch tensors, their dtype kept): beside z."""
        return torch.device("cpu")

    def loss_and_grad(self, z: Array, x: Array) -> tuple[Array, Array]:
        """Per-sample loss (N,) between G(z) and x, and d(Σ loss)/dz (same shape as z)."""
        raise NotImplementedError

    def render(self, z: np.ndarray) -> np.ndarray:
        """G(z) for host latents, as N×C×H×W float32 in [0, 1] on the host."""
        raise NotImplementedError

    def step(self, state: SlotState, adam: AdamConfig) -> None:
        """One inversion step on every slot, in place: t += 1, loss and gradient, then Adam with best-so-far.

        GPU backends override this to fuse or graph-capture the whole iteration.
        """
        state.t = state.t + 1
        loss, grad = self.loss_and_grad(state.z, state.x)
        state.z, state.m, state.v, state.best_loss, state.best_z = self.adam_step(
            state.z, state.m, state.v, grad, state.t, loss, state.best_loss, state.best_z,
            adam.lr_at(state.t), adam.beta1, adam.beta2, adam.eps,
        )  # fmt: skip

    def fuses(self, update: object) -> bool:
        """Whether ``step(state, update)`` runs this optimiser update inside the backend's own iteration
        (the graph-capturing GPU backends do, for Adam and L-BFGS); otherwise the optimiser steps eagerly
        over ``loss_and_grad``."""
        return False

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name}

    def close(self) -> None:
        """Release what the backend holds on its device (graphs, engines, streams); a no-op by default."""

    def __enter__(self: _B) -> _B:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def configure_torch_cpu() -> None:
    """Flush denormals: on x86 CPUs they make eager PyTorch inversion up to ~20× slower late in the run."""
    torch.set_flush_denormal(True)


class TorchBackend(Backend):
    """Eager PyTorch: forward, reference loss, autograd VJP. The reference every other backend matches.

    On the CPU a row's loss and gradient are the same bits in any batch and for any ``threads``
    (``runtime/invariant.py``): the rows are split over ``threads`` threads of this backend's own, each at one
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


def to_numpy(a: Array) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def take(a: Array, index: np.ndarray) -> Array:
    """Rows of a backend array (the loop compacts and refills its slots with this)."""
    if isinstance(a, torch.Tensor):
        return a[torch.as_tensor(index, dtype=torch.long, device=a.device)]
    return a[index]


def concat(parts: list[Array]) -> Array:
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts)
    return np.concatenate(parts)
