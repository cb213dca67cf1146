"""The settings of an attribution, as plain data: what a loss depends on (``InversionSettings``), how the loop
is run (``Schedule``), the presets, and how an encoder is fitted (``FitSettings``).

Kept apart from the loop (runtime/loop/inversion.py) so that the command line can show every preset and default
in ``--help``, and calibrations can be read and checked, without importing torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from genorigin.kernels.reference import AdamConfig, loss_kinds

if TYPE_CHECKING:
    from genorigin.runtime.loop.optimizers import Optimizer

OPTIMIZERS = ("adam", "lbfgs")
# the robust modes by name (their transform families: runtime/robust/transforms.py ROBUST_FAMILIES, keyed by these)
ROBUST_MODES = ("none", "jpeg", "platform")


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
    optimizer: str = "adam"  # "adam" (the paper) or "lbfgs" (per-slot L-BFGS)
    lbfgs_memory: int = 10
    fresh_starts: int = 0  # adaptive restarts: fresh starts an image may get when its trajectory stalls
    stall_window: int = 50  # steps over which a stalled trajectory has not improved ...
    stall_factor: float = 1.5  # ... by this factor (see ``StallDetector``)
    robust: str = "none"  # calibrate on own samples through this transform family (runtime/robust/modes.py)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.restarts < 1:
            raise ValueError("steps and restarts must be ≥ 1")
        if any(h < 1 for h in self.halve_starts_at) or list(self.halve_starts_at) != sorted(set(self.halve_starts_at)):
            raise ValueError(f"halve_starts_at must be increasing steps ≥ 1, got {self.halve_starts_at}")
        if self.lr_halve_every < 0:
            raise ValueError("lr_halve_every must be ≥ 0")
        if not self.lr > 0:
            raise ValueError("lr must be > 0")
        if self.loss not in loss_kinds():
            raise ValueError(f"loss must be one of {', '.join(loss_kinds())}, got {self.loss!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.fresh_starts < 0 or self.stall_window < 1 or not self.stall_factor > 1.0:
            raise ValueError("fresh_starts must be ≥ 0, stall_window ≥ 1 and stall_factor > 1")
        if self.robust not in ROBUST_MODES:
            raise ValueError(f"robust must be one of {', '.join(ROBUST_MODES)}, got {self.robust!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-shaped (lists, not tuples), so it compares equal to what a calibration file stores.

        ``robust`` is written only when on: a plain-mode dict is the one calibrations made before the robust
        mode existed recorded, so they stay valid, and a robust calibration never equals a plain one.
        """
        d = asdict(self)
        d["halve_starts_at"] = list(self.halve_starts_at)
        if self.robust == "none":
            del d["robust"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InversionSettings:
        """The settings a calibration file records (the inverse of ``to_dict``; the arithmetic the file pins
        beside them, ``compute``, belongs to the backend and is checked against it)."""
        fields = {k: v for k, v in d.items() if k != "compute"}
        return cls(**{**fields, "halve_starts_at": tuple(d.get("halve_starts_at", ()))})

    @property
    def adam(self) -> AdamConfig:
        """The optimiser's part of the settings, as every backend's ``step`` takes it."""
        return AdamConfig(self.lr, self.beta1, self.beta2, self.eps, self.lr_halve_every)

    def make_optimizer(self) -> Optimizer:
        from genorigin.runtime.loop.optimizers import LBFGSConfig, make_optimizer  # torch: only the loop needs it

        return make_optimizer(self.optimizer, self.adam, LBFGSConfig(memory=self.lbfgs_memory))

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


# The paper's procedure (its code's README example, with 2 starts) and the fast default: an encoder's start,
# per-slot L-BFGS, a 200-step budget, one fresh start for a stalled trajectory (docs/accuracy.md measures both).
PAPER_SETTINGS = InversionSettings()
FAST_SETTINGS = InversionSettings(steps=200, restarts=1, init="encoder", optimizer="lbfgs", fresh_starts=1)


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
    exit_min_step: int = 100  # no non-belonging exit before this step (random starts dominate early scores)

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.check_every < 1 or self.exit_min_step < 0:
            raise ValueError("batch_size and check_every must be ≥ 1, exit_min_step ≥ 0")
        if self.exit_margin < 1.0 or self.exit_envelope_rank < 1:
            raise ValueError(f"exit margin must be ≥ 1 and envelope rank ≥ 1, got {self.exit_margin}, "
                             f"{self.exit_envelope_rank}")  # fmt: skip


PAPER_SCHEDULE = Schedule()
FAST_SCHEDULE = Schedule(check_every=10, exit_min_step=10)  # encoder starts: scores mean something from step 10


def default_schedule(settings: InversionSettings) -> Schedule:
    """The schedule that suits a procedure: checkpoints every 10 steps from step 10 where encoder starts make
    early scores meaningful, the paper's every 50 from step 100 for random starts."""
    return FAST_SCHEDULE if settings.init != "prior" and settings.optimizer == "lbfgs" else PAPER_SCHEDULE


PRESETS: dict[str, tuple[InversionSettings, Schedule]] = {
    "fast": (FAST_SETTINGS, FAST_SCHEDULE),
    "paper": (PAPER_SETTINGS, PAPER_SCHEDULE),
}

# LatentTracer (runtime/methods/latent_tracer.py): the autoencoder's encoding as the start, Adam with lr 0.05 halved
# every 50 steps, 100 steps; its calibrations record the method "inversion-encoder"
TRACER_METHOD = "inversion-encoder"
TRACER_SETTINGS = InversionSettings(steps=100, lr=0.05, lr_halve_every=50, init="encoder", restarts=2)


@dataclass(frozen=True)
class FitSettings:
    """How E is fitted; recorded beside the weights (and so in the hash a calibration pins)."""

    steps: int = 3000
    batch: int = 64
    lr: float = 1e-3
    recon_weight: float = 0.0  # > 0 adds ‖G(E(x)) − x‖² (MSE in [0, 1]; ~100 balances it with the latent term)
    recon_from: int = 0  # the step from which the reconstruction term is on (it costs a VJP per step)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch < 1 or not self.lr > 0 or self.recon_weight < 0:
            raise ValueError(f"bad encoder fit settings {self}")
