"""The inversion loop's slots: one row per (image, start), in the backend's arrays.

``SlotPool`` owns every per-slot array — the latent, Adam's moments, the best-so-far loss and latent, the
target, the step counter, and whatever the optimiser keeps (L-BFGS history) — plus two host arrays: the
image each slot works for and each slot's step count (kept in step with the device counter, so the loop
never has to read it back). Rows only ever change at checkpoints, in one ``rebuild``: the rows kept plus
the fresh rows admitted, in one gather and one concatenation per array.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from genorigin.runtime.loop.backend import Array, Backend, SlotState, concat, take, to_numpy

CORE_FIELDS = ("z", "m", "v", "best_z", "best_loss", "x", "t")


@dataclass
class FreshSlots:
    """Host arrays for newly admitted slots: their latents, targets, owners and optimiser state."""

    z: np.ndarray  # S×latent float32
    x: np.ndarray  # S×C×H×W float32
    image: np.ndarray  # S int64: the image each slot works for
    extra: dict[str, np.ndarray]

    @classmethod
    def concat(cls, parts: list[FreshSlots]) -> FreshSlots | None:
        if not parts:
            return None
        return cls(
            np.concatenate([p.z for p in parts]),
            np.concatenate([p.x for p in parts]),
            np.concatenate([p.image for p in parts]),
            {k: np.concatenate([p.extra[k] for p in parts]) for k in parts[0].extra},
        )


class SlotPool:
    """Per-slot arrays on the backend, and which image each slot serves."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.arrays: dict[str, Array] = {}
        self.image = np.zeros(0, dtype=np.int64)
        self.steps = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.image)

    def rebuild(self, keep: np.ndarray, fresh: FreshSlots | None) -> None:
        """Keep the rows ``keep`` (indices, in order) and append ``fresh`` rows; a no-op if nothing changes."""
        if fresh is None and len(keep) == len(self.image):
            return
        host_fresh: dict[str, np.ndarray] = {}
        if fresh is not None:
            n = len(fresh.z)
            host_fresh = {
                "z": fresh.z,
                "m": np.zeros_like(fresh.z),
                "v": np.zeros_like(fresh.z),
                "best_z": fresh.z.copy(),
                "best_loss": np.full(n, np.inf, dtype=np.float32),
                "x": fresh.x,
                "t": np.zeros(n, dtype=np.float32),
                **fresh.extra,
            }
        names = list(self.arrays) or list(host_fresh)
        merged = {}
        for name in names:
            parts = []
            if len(keep) and name in self.arrays:
                parts.append(take(self.arrays[name], keep))
            if name in host_fresh:
                parts.append(self._upload(name, host_fresh[name], fresh))
            merged[name] = concat(parts) if parts else None
        self.arrays = {k: v for k, v in merged.items() if v is not None}
        added = fresh.image if fresh is not None else np.zeros(0, dtype=np.int64)
        self.image = np.concatenate([self.image[keep], added])
        self.steps = np.concatenate([self.steps[keep], np.zeros(len(added), dtype=np.int64)])

    def _upload(self, name: str, host: np.ndarray, fresh: FreshSlots | None) -> Array:
        """Core fields in the backend's array type; the optimiser's own as torch tensors beside them, dtype
        kept (L-BFGS works in float64 on every backend)."""
        if fresh is not None and name in fresh.extra:
            return torch.from_numpy(np.ascontiguousarray(host)).to(self.backend.state_device)
        return self.backend.asarray(host)

    def state(self) -> SlotState:
        """The arrays as the optimiser steps them (core fields by name, the optimiser's own in ``extra``)."""
        a = self.arrays
        extra = {k: v for k, v in a.items() if k not in CORE_FIELDS}
        return SlotState(a["z"], a["m"], a["v"], a["best_z"], a["best_loss"], a["x"], a["t"], extra)

    def absorb(self, state: SlotState) -> None:
        """Take back what a step produced (backends may hand out new arrays or views of their buffers)."""
        for name in CORE_FIELDS:
            self.arrays[name] = getattr(state, name)
        self.arrays.update(state.extra)
        self.steps += 1

    def best_losses(self) -> np.ndarray:
        """Per-slot best-so-far losses on the host (the checkpoint's one device→host copy)."""
        return to_numpy(self.arrays["best_loss"]).astype(np.float64)

    def rows(self, image: int) -> np.ndarray:
        return np.flatnonzero(self.image == image)

    def best_latent(self, row: int) -> np.ndarray:
        return to_numpy(take(self.arrays["best_z"], np.array([row])))[0]
