"""Attribution API: calibrate a model on its own samples, then decide for each image whether it made it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from genorigin.export.generator import Generator
from genorigin.runtime.backend import Backend, TorchBackend
from genorigin.runtime.calibration import Calibration, calibrated_score
from genorigin.runtime.complexity import complexity
from genorigin.runtime.decision import TestOutcome, grubbs_test, quantile_test
from genorigin.runtime.early_exit import TrajectoryStopRule
from genorigin.runtime.inversion import Initializer, InversionSettings, Schedule, invert

DecisionRule = Literal["grubbs", "quantile"]
CALIBRATION_SAMPLE_SEED = 1_000_003  # calibration samples never coincide with evaluation samples


def quantize_8bit(images: np.ndarray) -> np.ndarray:
    """What saving as PNG does to a generated image; calibration sees what attribution will see."""
    return (np.round(np.clip(images, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


@dataclass
class AttributionResult:
    """The decision for one image, with everything needed to audit it."""

    source: str
    verdict: str  # "belonging" or "non-belonging"
    rule: str
    loss: float
    complexity: float
    calibrated_loss: float
    statistic: float
    critical_value: float
    p_value: float | None
    grubbs: dict[str, Any]
    quantile: dict[str, Any]
    steps: int
    stop_reason: str
    seconds: float
    trajectory: list[tuple[int, float]] = field(default_factory=list)
    reconstruction: np.ndarray | None = None

    @property
    def belonging(self) -> bool:
        return self.verdict == "belonging"

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "reconstruction"}
        d["trajectory"] = [[int(s), float(v)] for s, v in self.trajectory]
        return d


def outcome_dict(o: TestOutcome) -> dict[str, Any]:
    return {
        "belonging": o.belonging,
        "statistic": o.statistic,
        "critical_value": o.critical_value,
        "p_value": o.p_value,
    }


def make_backend(generator: Generator, backend: str | Backend, loss: str) -> Backend:
    """A backend by name ('torch', 'torch-cuda'); ONNX Runtime/TensorRT backends are built from packages."""
    if isinstance(backend, Backend):
        return backend
    if generator.module is None:
        raise ValueError(f"generator {generator.name!r} is an exported graph: pass an ONNX Runtime backend")
    if backend in ("torch", "torch-cpu"):
        return TorchBackend(generator, "cpu", loss)
    if backend == "torch-cuda":
        return TorchBackend(generator, "cuda", loss)
    raise ValueError(f"unknown backend {backend!r} for a PyTorch generator (choose 'torch' or 'torch-cuda')")


class Attributor:
    """Decides, per image, whether ``generator`` made it (the paper's method, batched and early-stopping)."""

    def __init__(
        self,
        generator: Generator,
        *,
        backend: str | Backend = "torch",
        settings: InversionSettings = InversionSettings(),
        schedule: Schedule = Schedule(),
        calibration: Calibration | None = None,
        rule: DecisionRule = "grubbs",
        initializer: Initializer | None = None,
        method: str = "inversion-random",
    ) -> None:
        if rule not in ("grubbs", "quantile"):
            raise ValueError(f"rule must be 'grubbs' or 'quantile', got {rule!r}")
        self.generator = generator
        self.settings = settings
        self.schedule = schedule
        self.rule: DecisionRule = rule
        self.initializer = initializer
        self.method = method
        self.backend = make_backend(generator, backend, settings.loss)
        self.calibration: Calibration | None = None
        if calibration is not None:
            self.use_calibration(calibration)

    def use_calibration(self, calibration: Calibration) -> None:
        if calibration.model_fingerprint != self.generator.fingerprint():
            raise ValueError(f"calibration is for model {calibration.model_name!r}, not {self.generator.name!r}")
        if calibration.method != self.method:
            raise ValueError(f"calibration method is {calibration.method!r}, not {self.method!r}")
        if calibration.settings != self.settings.to_dict():
            raise ValueError("calibration was made with other inversion settings")
        self.calibration = calibration

    def calibrate(
        self,
        n: int = 100,
        *,
        alpha: float = 0.05,
        sample_seed: int = CALIBRATION_SAMPLE_SEED,
        on_done: Callable[[int], None] | None = None,
    ) -> Calibration:
        """Invert N of the model's own samples with the full budget and keep their score distributions."""
        samples = quantize_8bit(self.generator.sample(n, seed=sample_seed))
        comp = complexity(samples)
        schedule = Schedule(
            batch_size=self.schedule.batch_size,
            check_every=self.schedule.check_every,
            seed=self.schedule.seed + 7,
            early_exit=False,
        )
        outcomes = invert(
            self.backend,
            samples,
            self.generator.latent,
            self.settings,
            schedule,
            complexity=comp,
            on_done=on_done,
            initializer=self.initializer,
        )
        scores = calibrated_score([o.best_loss for o in outcomes], comp)
        steps = [s for s, _ in outcomes[0].trajectory]
        per_step = np.array([[v for _, v in o.trajectory] for o in outcomes])  # N × checkpoints
        cal = Calibration(
            model_name=self.generator.name,
            model_fingerprint=self.generator.fingerprint(),
            settings=self.settings.to_dict(),
            scores=[float(s) for s in scores],
            alpha=alpha,
            checkpoint_steps=[int(s) for s in steps],
            checkpoint_scores=[[float(v) for v in col / comp] for col in per_step.T],
            sample_seed=sample_seed,
            method=self.method,
        )
        self.calibration = cal
        return cal

    def _require_calibration(self) -> Calibration:
        if self.calibration is None:
            raise RuntimeError("no calibration: call calibrate() or pass calibration=… (CLI: genorigin calibrate)")
        return self.calibration

    def accept_threshold(self) -> float:
        cal = self._require_calibration()
        return cal.grubbs_threshold if self.rule == "grubbs" else cal.quantile_threshold

    def attribute(
        self,
        images: np.ndarray,
        sources: Sequence[str] | None = None,
        *,
        keep_reconstructions: bool = False,
        on_done: Callable[[int], None] | None = None,
    ) -> list[AttributionResult]:
        """Decide for N prepared images (N×C×H×W float32 in [0, 1]); results in input order."""
        cal = self._require_calibration()
        images = self._validate(images)
        sources = list(sources) if sources is not None else [f"image[{i}]" for i in range(len(images))]
        comp = complexity(images)
        rule = TrajectoryStopRule(
            cal,
            self.accept_threshold(),
            margin=self.schedule.exit_margin,
            envelope_rank=self.schedule.exit_envelope_rank,
        )
        outcomes = invert(
            self.backend,
            images,
            self.generator.latent,
            self.settings,
            self.schedule,
            complexity=comp,
            stop_rule=rule,
            on_done=on_done,
            initializer=self.initializer,
        )
        recon = None
        if keep_reconstructions:
            recon = self.backend.render(np.stack([o.best_z for o in outcomes]))
        results = []
        scores = np.asarray(cal.scores)
        for i, o in enumerate(outcomes):
            score = float(calibrated_score(o.best_loss, comp[i]))
            g = grubbs_test(score, cal.mean, cal.std, cal.n, cal.alpha)
            q = quantile_test(score, cal.quantile_threshold, scores)
            primary = g if self.rule == "grubbs" else q
            results.append(
                AttributionResult(
                    source=sources[i],
                    verdict="belonging" if primary.belonging else "non-belonging",
                    rule=self.rule,
                    loss=o.best_loss,
                    complexity=float(comp[i]),
                    calibrated_loss=score,
                    statistic=primary.statistic,
                    critical_value=primary.critical_value,
                    p_value=primary.p_value,
                    grubbs=outcome_dict(g),
                    quantile=outcome_dict(q),
                    steps=o.steps,
                    stop_reason=o.stop_reason,
                    seconds=o.seconds,
                    trajectory=o.trajectory,
                    reconstruction=None if recon is None else recon[i],
                )
            )
        return results

    def _validate(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        expected = (self.generator.channels, *self.generator.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"expected N×{expected[0]}×{expected[1]}×{expected[2]} images, got {images.shape}")
        if not np.isfinite(images).all():
            raise ValueError("images contain NaN or infinite values")
        if images.min() < 0.0 or images.max() > 1.0:
            raise ValueError("images must lie in [0, 1] (use Generator.prepare_image)")
        return images.astype(np.float32, copy=False)
