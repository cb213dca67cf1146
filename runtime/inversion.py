"""The one inversion loop every backend shares.

Batched across images AND restarts: the slots of one tensor hold R random starts for each of several images.
Each step asks the backend for per-sample loss and gradient, then applies Adam with best-so-far bookkeeping
(the reference definition, or the backend's fused kernel). Every ``check_every`` steps the loop pulls the
per-slot best losses to the host, finishes images (budget spent, or an early-exit rule decided), and refills
the freed slots with the next images of the work queue.

Successive halving of starts (``InversionSettings.halve_starts_at``): at each listed step (the loop syncs
there even between checkpoints) an image keeps only the better half of its starts (by best loss so far), so
R starts cost about one start's steps after the first hundred, while the best of R still gets the long
budget. It is part of the inversion procedure (calibration runs it too) and so recorded in the settings.

Results do not depend on batch composition or order: each slot follows its own gradient (sum, not mean,
over the batch) and each image's starts come from a seed derived from (seed, the image's pixels), so the same
image gets the same verdict whatever else is in the batch.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
from genorigin.export.generator import LatentSpec
from genorigin.kernels.reference import AdamConfig
from genorigin.runtime.backend import Backend, SlotState, concat, take, to_numpy

CONTINUE, BELONGING, NON_BELONGING = 0, 1, 2


@dataclass(frozen=True)
class InversionSettings:
    """What a loss value depends on; recorded in (and checked against) the calibration file."""

    steps: int = 1500
    lr: float = 0.1
    restarts: int = 2  # the authors' code used 8; one start leaves ~1 in 30 own samples stuck (measured)
    halve_starts_at: tuple[int, ...] = ()  # successive halving: keep the better half of the starts at these steps
    loss: str = "mse"
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    lr_halve_every: int = 0  # 0: constant lr (the paper); k: halve every k steps (LatentTracer)
    init: str = "prior"  # where the starts come from: "prior" (the paper) or a named initializer

    def __post_init__(self) -> None:
        if self.steps < 1 or self.restarts < 1:
            raise ValueError("steps and restarts must be ≥ 1")
        if any(h < 1 for h in self.halve_starts_at) or list(self.halve_starts_at) != sorted(set(self.halve_starts_at)):
            raise ValueError(f"halve_starts_at must be increasing steps ≥ 1, got {self.halve_starts_at}")
        if self.lr_halve_every < 0:
            raise ValueError("lr_halve_every must be ≥ 0")
        if not self.lr > 0:
            raise ValueError("lr must be > 0")
        if self.loss not in ("mse", "l1"):
            raise ValueError(f"loss must be 'mse' or 'l1', got {self.loss!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-shaped (lists, not tuples), so it compares equal to what a calibration file stores."""
        d = asdict(self)
        d["halve_starts_at"] = list(self.halve_starts_at)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InversionSettings:
        """The settings a calibration file records (the inverse of ``to_dict``)."""
        return cls(**{**d, "halve_starts_at": tuple(d.get("halve_starts_at", ()))})

    def starts_alive(self, step: int) -> int:
        """How many of an image's starts are still optimised after ``step`` steps (successive halving)."""
        alive = self.restarts
        for h in self.halve_starts_at:
            if step >= h:
                alive = (alive + 1) // 2
        return alive

    def start_steps(self, steps: int) -> int:
        """Optimiser steps summed over an image's starts when it stops after ``steps`` (its gradient evaluations)."""
        total, done = 0, 0
        for h in [*(h for h in self.halve_starts_at if h < steps), steps]:  # constant between halving steps
            total += self.starts_alive(done) * (h - done)
            done = h
        return total

    @property
    def adam(self) -> AdamConfig:
        """The optimiser's part of the settings, as every backend's ``step`` takes it."""
        return AdamConfig(self.lr, self.beta1, self.beta2, self.eps, self.lr_halve_every)


Initializer = Callable[[np.ndarray, int], np.ndarray]  # (image C×H×W, restarts) → R×latent starts


@dataclass(frozen=True)
class Schedule:
    """How the loop is run; none of this changes a result except the early-exit switch and ``check_every``
    (the steps at which early exit may decide)."""

    batch_size: int = 32  # images in flight (each takes `restarts` slots)
    check_every: int = 50
    seed: int = 0
    early_exit: bool = True
    exit_margin: float = 2.0  # non-belonging exit: score > margin × the envelope of accepted own trajectories
    exit_envelope_rank: int = 1  # the envelope is the k-th largest accepted own score at each step

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.check_every < 1:
            raise ValueError("batch_size and check_every must be ≥ 1")
        if self.exit_margin < 1.0 or self.exit_envelope_rank < 1:
            raise ValueError(f"exit margin must be ≥ 1 and envelope rank ≥ 1, got {self.exit_margin}, "
                             f"{self.exit_envelope_rank}")  # fmt: skip


class StopRule(Protocol):
    """Early decision at a checkpoint: CONTINUE, BELONGING or NON_BELONGING per image."""

    def check(self, step: int, best_loss: np.ndarray, complexity: np.ndarray) -> np.ndarray: ...


@dataclass
class InversionOutcome:
    """What the loop learned about one image."""

    best_loss: float
    best_z: np.ndarray
    steps: int
    stop_reason: str  # "budget", "belonging", "non-belonging"
    seconds: float
    trajectory: list[tuple[int, float]] = field(default_factory=list)


def image_key(image: np.ndarray) -> int:
    """A 64-bit key of an image's pixels, to seed its random starts."""
    digest = hashlib.sha256(np.ascontiguousarray(image, dtype=np.float32).tobytes()).digest()
    return int.from_bytes(digest[:8], "little")


def initial_latents(latent: LatentSpec, seed: int, image: np.ndarray, restarts: int) -> np.ndarray:
    """The R random starts of one image: independent of batching and order, so any schedule reproduces them."""
    return latent.sample(restarts, np.random.default_rng((seed, image_key(image))))


@dataclass
class _Image:
    index: int
    best_loss: float = np.inf
    best_z: np.ndarray | None = None
    steps: int = 0
    started: float = 0.0
    trajectory: list[tuple[int, float]] = field(default_factory=list)


def _worse_starts(rows: np.ndarray, host_loss: np.ndarray, alive: int) -> np.ndarray:
    """The slots of one image beyond its ``alive`` best (by best loss so far; ties keep the earlier start)."""
    return rows[np.argsort(host_loss[rows], kind="stable")[alive:]]


def invert(
    backend: Backend,
    targets: np.ndarray,
    latent: LatentSpec,
    settings: InversionSettings,
    schedule: Schedule = Schedule(),
    *,
    complexity: np.ndarray | None = None,
    stop_rule: StopRule | None = None,
    on_done: Callable[[int], None] | None = None,
    initializer: Initializer | None = None,
) -> list[InversionOutcome]:
    """Invert every target image (N×C×H×W float32 in [0, 1]); outcomes come back in input order.

    ``initializer`` replaces the random starts from the prior (e.g. an encoder's latent, LatentTracer); it
    must match ``settings.init``, which the calibration records.
    """
    if (initializer is None) != (settings.init == "prior"):
        raise ValueError(
            f"settings.init={settings.init!r} needs {'no' if settings.init == 'prior' else 'an'} initializer"
        )
    n_images = len(targets)
    if n_images == 0:
        return []
    if complexity is None:
        complexity = np.ones(n_images)
    R = settings.restarts
    rule = stop_rule if schedule.early_exit else None
    capacity = schedule.batch_size * R
    adam = settings.adam
    queue = list(range(n_images))
    queue.reverse()  # pop() from the end yields images in input order
    images = [_Image(i) for i in range(n_images)]
    outcomes: list[InversionOutcome | None] = [None] * n_images

    # slot state: backend arrays z, m, v, best_z, best_loss, x, t; host arrays slot_image, slot_t (= t)
    z = m = v = best_z = best_loss = x = t = None
    slot_image = np.zeros(0, dtype=np.int64)
    slot_t = np.zeros(0, dtype=np.int64)

    def admit(keep: np.ndarray, refill: bool = True) -> None:
        nonlocal z, m, v, best_z, best_loss, x, t, slot_image, slot_t
        new_z, new_x, new_img = [], [], []
        while refill and queue and len(keep) + (len(new_img) + 1) * R <= capacity:
            i = queue.pop()
            images[i].started = time.perf_counter()
            starts = (
                initial_latents(latent, schedule.seed, targets[i], R)
                if initializer is None
                else np.asarray(initializer(targets[i], R), dtype=np.float32).reshape(R, *latent.shape)
            )
            new_z.append(starts)
            new_x.append(np.repeat(targets[i : i + 1], R, axis=0))
            new_img.append(i)
        parts_kept = z is not None and len(keep) > 0
        if not new_img and parts_kept and len(keep) == len(slot_image):
            return
        fresh_z = np.concatenate(new_z) if new_img else None
        fresh = {
            "z": fresh_z,
            "m": np.zeros_like(fresh_z) if new_img else None,
            "best_z": fresh_z.copy() if new_img else None,
            "best_loss": np.full(len(fresh_z), np.inf, dtype=np.float32) if new_img else None,
            "x": np.concatenate(new_x).astype(np.float32) if new_img else None,
            "t": np.zeros(len(fresh_z), dtype=np.float32) if new_img else None,
        }

        def merged(old: Any, new: np.ndarray | None) -> Any:
            parts = []
            if parts_kept:
                parts.append(take(old, keep))
            if new is not None:
                parts.append(backend.asarray(new))
            return concat(parts) if parts else None

        z = merged(z, fresh["z"])
        m = merged(m, fresh["m"])
        v = merged(v, fresh["m"])
        best_z = merged(best_z, fresh["best_z"])
        best_loss = merged(best_loss, fresh["best_loss"])
        x = merged(x, fresh["x"])
        t = merged(t, fresh["t"])
        added = np.repeat(np.array(new_img, dtype=np.int64), R)
        slot_image = np.concatenate([slot_image[keep], added])
        slot_t = np.concatenate([slot_t[keep], np.zeros(len(added), dtype=np.int64)])

    def finish(i: int, reason: str) -> None:
        img = images[i]
        outcomes[i] = InversionOutcome(
            best_loss=float(img.best_loss),
            best_z=img.best_z,
            steps=img.steps,
            stop_reason=reason,
            seconds=time.perf_counter() - img.started,
            trajectory=img.trajectory,
        )
        if on_done is not None:
            on_done(i)

    admit(np.zeros(0, dtype=np.int64))
    step = 0
    while len(slot_image):
        slot_t += 1
        step += 1
        state = SlotState(z, m, v, best_z, best_loss, x, t)
        backend.step(state, adam)  # increments state.t on the device, in step with slot_t on the host
        z, m, v, best_z, best_loss, t = state.z, state.m, state.v, state.best_z, state.best_loss, state.t
        at_budget = slot_t >= settings.steps
        regular = step % schedule.check_every == 0 or at_budget.any()
        halving = np.isin(slot_t, settings.halve_starts_at) if settings.halve_starts_at else None
        if not regular and (halving is None or not halving.any()):
            continue
        # checkpoint: host sync of per-slot best losses
        host_loss = to_numpy(best_loss).astype(np.float64)
        keep_mask = np.ones(len(slot_image), dtype=bool)
        if not regular:  # a halving step between checkpoints: drop the worse starts, decide nothing
            for i in np.unique(slot_image[halving]):
                rows = np.flatnonzero(slot_image == i)
                keep_mask[_worse_starts(rows, host_loss, settings.starts_alive(int(slot_t[rows].max())))] = False
            admit(np.flatnonzero(keep_mask), refill=False)
            continue
        active = np.unique(slot_image)
        for i in active:
            rows = np.flatnonzero(slot_image == i)
            j = rows[np.argmin(host_loss[rows])]
            img = images[i]
            img.steps = int(slot_t[rows].max())
            if host_loss[j] < img.best_loss:
                img.best_loss = float(host_loss[j])
                img.best_z = to_numpy(take(best_z, np.array([j])))[0]
            img.trajectory.append((img.steps, img.best_loss))
            keep_mask[_worse_starts(rows, host_loss, settings.starts_alive(img.steps))] = False
        decisions = np.zeros(len(active), dtype=np.int64)
        if rule is not None:
            losses = np.array([images[i].best_loss for i in active])
            steps_done = np.array([images[i].steps for i in active])
            for s in np.unique(steps_done):
                sel = steps_done == s
                decisions[sel] = rule.check(int(s), losses[sel], complexity[active[sel]])
        for i, decision in zip(active, decisions):
            done_budget = images[i].steps >= settings.steps
            if decision in (BELONGING, NON_BELONGING) or done_budget:
                reason = {BELONGING: "belonging", NON_BELONGING: "non-belonging"}.get(int(decision), "budget")
                finish(int(i), reason)
                keep_mask[slot_image == i] = False
        admit(np.flatnonzero(keep_mask))
    return [o for o in outcomes if o is not None]
