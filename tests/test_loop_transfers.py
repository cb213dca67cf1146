"""The loop moves data to the device only when it admits slots (issue 15.1), checked on the CPU.

A GPU step must not wait on a host-to-device copy: the per-slot step counter ``t`` lives on the device and
``Backend.step`` increments it there. A real ``invert`` run on the torch CPU backend records every
``asarray`` (the loop's only way to upload) and every array ``step`` receives: uploads may happen before the
first step and at checkpoints (refills), and between checkpoints each step must receive exactly the arrays the
previous step left, so nothing was replaced from the host.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from genorigin.kernels.reference import AdamConfig
from genorigin.runtime.backends.eager import TorchBackend
from genorigin.runtime.backends.gpu.slots import FIELDS
from genorigin.runtime.loop.backend import SlotState
from genorigin.runtime.loop.inversion import invert
from genorigin.runtime.loop.settings import InversionSettings, Schedule
from helpers import tiny_generator

CHECK_EVERY = 10


class RecordingBackend(TorchBackend):
    """The CPU reference backend, recording uploads and the identity of every array passed to ``step``."""

    def __init__(self) -> None:
        super().__init__(tiny_generator())
        self.calls = 0
        self.uploads: list[int] = []  # steps done when each upload happened
        self.handed_out: dict[str, int] = {}
        self.replaced: list[tuple[int, str]] = []  # (step, field) given anew although no checkpoint preceded

    def asarray(self, a: np.ndarray) -> Any:
        self.uploads.append(self.calls)
        return super().asarray(a)

    def step(self, state: SlotState, adam: AdamConfig) -> None:
        after_checkpoint = self.calls % CHECK_EVERY == 0
        if not after_checkpoint:
            self.replaced += [(self.calls, f) for f in FIELDS if id(getattr(state, f)) != self.handed_out[f]]
        super().step(state, adam)
        self.calls += 1
        self.handed_out = {f: id(getattr(state, f)) for f in FIELDS}


def test_uploads_only_at_admission_and_checkpoints() -> None:
    gen = tiny_generator()
    targets = np.concatenate([gen.sample(3, seed=1), np.random.default_rng(2).random((2, 3, 8, 8), np.float32)])
    settings = InversionSettings(steps=3 * CHECK_EVERY, lr=0.05, restarts=2)
    schedule = Schedule(batch_size=2, check_every=CHECK_EVERY, early_exit=False)  # 5 images, 2 at a time: refills
    backend = RecordingBackend()
    outcomes = invert(backend, targets, gen.latent, settings, schedule)
    assert len(outcomes) == 5 and all(o.steps == settings.steps for o in outcomes)
    assert backend.calls > 3 * CHECK_EVERY  # refills made the run longer than one budget
    per_step = np.bincount(backend.uploads, minlength=backend.calls + 1)
    off_checkpoint = {k: int(c) for k, c in enumerate(per_step) if c and k % CHECK_EVERY}
    assert not off_checkpoint, f"host-to-device uploads between checkpoints (step: count): {off_checkpoint}"
    assert per_step[CHECK_EVERY * 3] > 0, "the refill at a checkpoint should upload the new images"
    assert not backend.replaced, f"arrays replaced between checkpoints (step, field): {backend.replaced[:5]}"
