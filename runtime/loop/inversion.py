"""The one inversion loop every backend shares.

Batched across images AND starts: the slots of one batch hold R starts for each of several images. Each step
the optimiser (Adam, the paper's; or per-slot L-BFGS) advances every slot by one loss-and-gradient
evaluation with best-so-far bookkeeping. Every ``check_every`` steps — the loop's only host synchronisation —
it reads the per-slot best losses, decides what it can (budget spent, or the early-exit rule), gives stuck
images fresh starts (adaptive restarts), and refills the freed slots from the work source.

Successive halving of starts (``InversionSettings.halve_starts_at``): at each listed step (the loop syncs
there even between checkpoints) an image keeps only the better half of its starts.

Results do not depend on batch composition or order: each slot follows its own gradient (sum, not mean, over
the batch), and each image's starts come from a generator seeded by (seed, the image's pixels), so the same
image gets the same result whatever else is in the batch — and whenever it joins a running batch (the
service feeds the loop from a live queue).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from genorigin.export.generator import LatentSpec
from genorigin.runtime.loop.backend import Backend
from genorigin.runtime.loop.outcome import CONTINUE, Decision, InversionOutcome, StopRule
from genorigin.runtime.loop.restarts import StallDetector, may_restart, stop_reason
from genorigin.runtime.loop.settings import InversionSettings, Schedule
from genorigin.runtime.loop.slots import FreshSlots, SlotPool
from genorigin.runtime.loop.starts import Initializer, image_rng
from genorigin.runtime.loop.work import ListSource, WorkItem, WorkSource


@dataclass
class _Image:
    item: WorkItem
    rng: np.random.Generator
    admitted: int  # loop step at admission
    best_loss: float = np.inf
    best_z: np.ndarray | None = None
    steps: int = 0
    evaluations: int = 0
    counted_to: int = 0  # loop step up to which evaluations are counted
    restart_steps: list[int] = field(default_factory=list)  # image steps at which fresh starts began
    started: float = 0.0
    trajectory: list[tuple[int, float]] = field(default_factory=list)


def images_in_flight(batch_size: int, slots_per_image: int, max_slots: int | None) -> int:
    """How many images may be in flight: ``batch_size``, fewer when the backend cannot hold their slots."""
    if max_slots is None:
        return batch_size
    if max_slots < slots_per_image:
        raise ValueError(
            f"one image may need {slots_per_image} slots (restarts × (1 + fresh starts)) but the backend holds "
            f"{max_slots}: rebuild the engines with a larger max batch, or lower --restarts / --fresh-starts"
        )
    return min(batch_size, max_slots // slots_per_image)


class InversionLoop:
    """The loop's machinery: a slot pool, an optimiser, a stop rule and the images in flight."""

    def __init__(
        self,
        backend: Backend,
        latent: LatentSpec,
        settings: InversionSettings,
        schedule: Schedule = Schedule(),
        *,
        stop_rule: StopRule | None = None,
        initializer: Initializer | None = None,
        stall_floor: float = 0.0,
    ) -> None:
        if (initializer is None) != (settings.init == "prior"):
            raise ValueError(
                f"settings.init={settings.init!r} needs {'no' if settings.init == 'prior' else 'an'} initializer"
            )
        self.backend = backend
        self.latent = latent
        self.settings = settings
        self.schedule = schedule
        self.rule = stop_rule if schedule.early_exit else None
        self.initializer = initializer
        self.optimizer = settings.make_optimizer()
        self.stall = StallDetector(settings.stall_window, settings.stall_factor, stall_floor)
        self.slots_per_image = settings.restarts * (1 + settings.fresh_starts)
        self.batch_size = images_in_flight(schedule.batch_size, self.slots_per_image, backend.max_slots)
        self.capacity = self.batch_size * self.slots_per_image
        self.pool = SlotPool(backend)
        self.images: dict[int, _Image] = {}
        self.step = 0
        self._next_id = 0
        self._due_cache: tuple[np.ndarray, int] | None = None

    # ------------------------------------------------------------------------------------------------ run
    def run(self, source: WorkSource, on_done: Callable[[WorkItem, InversionOutcome], None]) -> None:
        """Invert every item the source yields; ``on_done`` receives each outcome as soon as it is known."""
        none = np.zeros(0, dtype=np.int64)
        self.pool.rebuild(none, FreshSlots.concat(self._admit(source, [])))
        while len(self.pool) or not source.finished():
            if not len(self.pool):  # idle: wait for work, on the checkpoint grid
                self.step += -self.step % self.schedule.check_every
                self.pool.rebuild(none, FreshSlots.concat(self._admit(source, [], wait=True)))
                continue
            # 1. one optimiser step on every slot
            state = self.pool.state()
            self.optimizer.step(self.backend, state)
            self.pool.absorb(state)
            self.step += 1
            # 2. sync only at checkpoints, budget ends and halving steps
            on_grid = self.step % self.schedule.check_every == 0
            budget_end = not on_grid and self.step >= self._budget_due()
            halving = self._halving_rows()
            if not on_grid and not budget_end and not halving.size:
                continue
            host_loss = self.pool.best_losses()
            keep = np.ones(len(self.pool), dtype=bool)
            if not on_grid:  # between checkpoints only the images due there are touched: the others never see it
                self._between_checkpoints(halving, budget_end, host_loss, keep, on_done)
                self.pool.rebuild(np.flatnonzero(keep), None)
                continue
            # 3. checkpoint: record, halve, decide, restart the stalled, refill
            active = np.unique(self.pool.image)
            self._count_evaluations(active)
            self._record(active, host_loss)
            self._halve(active, host_loss, keep)
            self._finish(self._decide(active), keep, on_done)
            fresh = self._restart_stalled([i for i in active if i in self.images])
            fresh = self._admit(source, fresh)  # new images join on the checkpoint grid only: all see the same grid
            self.pool.rebuild(np.flatnonzero(keep), FreshSlots.concat(fresh))

    def _between_checkpoints(
        self, halving: np.ndarray, budget_end: bool, host_loss: np.ndarray, keep: np.ndarray,
        on_done: Callable[[WorkItem, InversionOutcome], None],
    ) -> None:  # fmt: skip
        """A halving step (drop the worse starts) or a budget end off the grid (``steps`` not a multiple of
        ``check_every``): only the images concerned are counted, recorded and decided, so an image's result
        never depends on another's budget falling between its checkpoints."""
        if halving.size:
            images = np.unique(self.pool.image[halving])
            self._count_evaluations(images)
            self._halve(images, host_loss, keep)
        if budget_end:
            due = np.array([i for i, img in self.images.items() if self.step - img.admitted >= self.settings.steps])
            self._count_evaluations(due)
            self._record(due, host_loss)
            self._finish(self._decide(due), keep, on_done)

    def _finish(self, finished: list[tuple[int, str]], keep: np.ndarray,
                on_done: Callable[[WorkItem, InversionOutcome], None]) -> None:  # fmt: skip
        for i, reason in finished:
            keep[self.pool.image == i] = False
            on_done(self.images[i].item, self._outcome(self.images.pop(i), reason))

    def invert(
        self, targets: np.ndarray, complexity: np.ndarray | None = None, on_done: Callable[[int], None] | None = None
    ) -> list[InversionOutcome]:
        """``run`` over a fixed array of images; outcomes in input order, ``on_done(index)`` as each finishes."""
        n = len(targets)
        comp = np.ones(n) if complexity is None else np.asarray(complexity, dtype=np.float64)
        outcomes: list[InversionOutcome | None] = [None] * n

        def done(item: WorkItem, outcome: InversionOutcome) -> None:
            outcomes[item.key] = outcome
            if on_done is not None:
                on_done(item.key)

        self.run(ListSource([WorkItem(i, targets[i], float(comp[i])) for i in range(n)]), done)
        missing = [i for i, o in enumerate(outcomes) if o is None]
        if missing:  # callers pair outcomes with their inputs by position: a gap would shift every later one
            raise RuntimeError(f"the inversion loop ended without an outcome for inputs {missing}")
        return [o for o in outcomes if o is not None]

    # ------------------------------------------------------------------------------------------------ phases
    def _budget_due(self) -> int:
        """The loop step at which the first image in flight spends its budget (cached between rebuilds)."""
        if self._due_cache is None or self._due_cache[0] is not self.pool.image:
            due = min((img.admitted for img in self.images.values()), default=self.step) + self.settings.steps
            self._due_cache = (self.pool.image, due)
        return self._due_cache[1]

    def _halving_rows(self) -> np.ndarray:
        if not self.settings.halve_starts_at:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(np.isin(self.pool.steps, self.settings.halve_starts_at))

    def _count_evaluations(self, images: np.ndarray) -> None:
        """Gradient evaluations since the last count: rows change only at sync points, so this is exact."""
        counts = np.bincount(self.pool.image, minlength=int(self.pool.image.max()) + 1)
        for i in images:
            img = self.images[int(i)]
            img.evaluations += int(counts[i]) * (self.step - img.counted_to)
            img.counted_to = self.step

    def _record(self, active: np.ndarray, host_loss: np.ndarray) -> None:
        for i in active:
            img = self.images[int(i)]
            rows = self.pool.rows(int(i))
            j = rows[np.argmin(host_loss[rows])]
            img.steps = self.step - img.admitted
            if host_loss[j] < img.best_loss:
                img.best_loss = float(host_loss[j])
                img.best_z = self.pool.best_latent(int(j))
            img.trajectory.append((img.steps, img.best_loss))

    def _halve(self, images: np.ndarray, host_loss: np.ndarray, keep: np.ndarray) -> None:
        """Keep each image's best ``starts_alive`` starts (by best loss so far; ties keep the earlier start),
        plus the fresh starts it was given (adaptive restarts add starts; halving does not take them back)."""
        for i in images:
            rows = self.pool.rows(int(i))
            fresh = self.settings.restarts * len(self.images[int(i)].restart_steps)
            alive = self.settings.starts_alive(int(self.pool.steps[rows].max())) + fresh
            keep[rows[np.argsort(host_loss[rows], kind="stable")[alive:]]] = False

    def _decide(self, active: np.ndarray) -> list[tuple[int, str]]:
        """Images that stop now, with the reason: the stop rule, the budget, or a cancelled request."""
        decisions = np.full(len(active), CONTINUE, dtype=np.int64)
        if self.rule is not None:
            losses = np.array([self.images[int(i)].best_loss for i in active])
            steps = np.array([self.images[int(i)].steps for i in active])
            comp = np.array([self.images[int(i)].item.complexity for i in active])
            for s in np.unique(steps):
                sel = steps == s
                decisions[sel] = self.rule.check(int(s), losses[sel], comp[sel])
        finished = []
        for i, decision in zip(active, decisions):
            img = self.images[int(i)]
            reason = stop_reason(Decision(int(decision)), img.steps, self.settings, self._may_restart(img))
            if reason is None and img.item.cancelled is not None and img.item.cancelled():
                reason = "cancelled"
            if reason is not None:
                finished.append((int(i), reason))
        return finished

    def _may_restart(self, img: _Image) -> bool:
        return may_restart(img.trajectory, img.restart_steps, self.settings, self.stall)

    def _restart_stalled(self, active: list[int]) -> list[FreshSlots]:
        """Give stalled images (with fresh starts left) new starts from their generator, beside their old ones.

        Added, not swapped: a slowly converging start keeps its progress (measured: swapping it for a random
        start left 15 of 100 own dcgan_b samples worse off at the budget), and the best of both counts.
        """
        fresh = []
        for i in active:
            img = self.images[i]
            if not self._may_restart(img):
                continue
            img.restart_steps.append(img.steps)
            starts = self.latent.sample(self.settings.restarts, img.rng)
            fresh.append(self._slots(i, starts))
        return fresh

    def _admit(self, source: WorkSource, fresh: list[FreshSlots], wait: bool = False) -> list[FreshSlots]:
        """``fresh`` (rows of restarted images) plus rows for as many new images as may join.

        Each image in flight holds room for its largest slot count (``slots_per_image``: its starts and every
        fresh start it may get), so an adaptive restart never waits for room (which would make its result
        depend on the batch) and the slots never exceed ``batch_size × slots_per_image`` — within what the
        backend can hold (``Backend.max_slots``; the engines' largest batch on TensorRT).
        """
        free_images = self.batch_size - len(self.images)
        if free_images > 0:
            fresh = fresh + [self._new_image(item) for item in source.take(free_images, wait=wait and not fresh)]
        return fresh

    def _new_image(self, item: WorkItem) -> FreshSlots:
        i = self._next_id
        self._next_id += 1
        image = np.asarray(item.image, dtype=np.float32)
        rng = image_rng(self.schedule.seed, image)
        img = _Image(item, rng, admitted=self.step, counted_to=self.step, started=time.perf_counter())
        self.images[i] = img
        R = self.settings.restarts
        if self.initializer is None:
            starts = self.latent.sample(R, rng)
        else:
            starts = np.asarray(self.initializer(image, R, rng), dtype=np.float32).reshape(R, *self.latent.shape)
        return self._slots(i, starts)

    def _slots(self, i: int, starts: np.ndarray) -> FreshSlots:
        image = np.asarray(self.images[i].item.image, dtype=np.float32)
        R = len(starts)
        return FreshSlots(
            z=starts.astype(np.float32),
            x=np.repeat(image[None], R, axis=0),
            image=np.full(R, i, dtype=np.int64),
            extra=self.optimizer.fresh_slots(starts),
        )

    def _outcome(self, img: _Image, reason: str) -> InversionOutcome:
        return InversionOutcome(
            best_loss=float(img.best_loss),
            best_z=img.best_z if img.best_z is not None else np.zeros(self.latent.shape, np.float32),
            steps=img.steps,
            stop_reason=reason,
            seconds=time.perf_counter() - img.started,
            trajectory=img.trajectory,
            evaluations=img.evaluations,
            restart_steps=img.restart_steps,
        )


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
    stall_floor: float = 0.0,
) -> list[InversionOutcome]:
    """Invert every target image (N×C×H×W float32 in [0, 1]); outcomes come back in input order.

    ``initializer`` replaces the random starts from the prior (an encoder's latent, LatentTracer); it must
    match ``settings.init``, which the calibration records.
    """
    loop = InversionLoop(backend, latent, settings, schedule, stop_rule=stop_rule, initializer=initializer,
                         stall_floor=stall_floor)  # fmt: skip
    return loop.invert(targets, complexity, on_done)
