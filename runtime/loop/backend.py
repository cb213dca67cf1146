"""The backend interface the single inversion loop drives (the implementations: ``runtime/backends/registry``).

A backend answers one question per step: for latents z and targets x, what is each sample's loss and its
gradient w.r.t. z? Everything else (Adam, best-so-far, restarts, early exit, refilling) is the shared loop's.
The Adam update defaults to the reference definition in ``genorigin.kernels.reference``; a GPU backend
may replace it with the fused CUDA kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from genorigin.kernels import reference
from genorigin.kernels.reference import AdamConfig

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
    compute: str = "float32"  # the generator's arithmetic ("bfloat16": TorchBackend's mode); calibrations pin it

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
