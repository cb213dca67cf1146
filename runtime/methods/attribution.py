"""Attribution API: calibrate a model on its own samples, then decide for each image whether it made it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from genorigin.export.generator import Generator
from genorigin.runtime.backends.registry import GeneratorOnly, make_backend
from genorigin.runtime.decide.calibration import (
    CALIBRATION_SAMPLE_SEED,
    Calibration,
    calibrated_score,
    canonical_method,
    quantize_8bit,
    scores_on_grid,
)
from genorigin.runtime.decide.complexity import complexity
from genorigin.runtime.decide.early_exit import TrajectoryStopRule
from genorigin.runtime.decide.reproducibility import PerturbedRounding, band_from, band_indices
from genorigin.runtime.decide.result import AttributionResult, DecisionRule, decide
from genorigin.runtime.loop.backend import Backend
from genorigin.runtime.loop.invariant import exact_rows
from genorigin.runtime.loop.inversion import InversionLoop
from genorigin.runtime.loop.outcome import InversionOutcome
from genorigin.runtime.loop.settings import FAST_SETTINGS, FitSettings, InversionSettings, Schedule, default_schedule
from genorigin.runtime.loop.starts import Initializer
from genorigin.runtime.loop.work import WorkItem, WorkSource
from genorigin.runtime.methods.encoder import Encoder, EncoderStarts, FittedEncoder, fit_generator_encoder
from genorigin.runtime.methods.encoder_files import prepare_encoder
from genorigin.runtime.methods.files import AttributesFiles
from genorigin.runtime.robust.modes import calibration_samples, quantization_floor


class Attributor(AttributesFiles):
    """Decides, per image, whether ``generator`` made it (the paper's method, batched and early-stopping)."""

    def __init__(
        self,
        generator: Generator,
        *,
        backend: str | Backend = "torch",
        settings: InversionSettings = FAST_SETTINGS,
        schedule: Schedule | None = None,
        calibration: Calibration | None = None,
        rule: DecisionRule = "grubbs",
        initializer: Initializer | None = None,
        encoder: Encoder | None = None,
        method: str = "inversion",
    ) -> None:
        if rule not in ("grubbs", "quantile"):
            raise ValueError(f"rule must be 'grubbs' or 'quantile', got {rule!r}")
        if encoder is not None and initializer is not None:
            raise ValueError("pass an encoder or an initializer, not both")
        self.generator = generator
        self.settings = settings
        self.schedule = schedule or default_schedule(settings)
        self.rule: DecisionRule = rule
        self.initializer = initializer
        self.encoder: Encoder | None = None
        self.method = canonical_method(method)
        self.backend = backend if isinstance(backend, Backend) else make_backend(GeneratorOnly(generator), backend,
                                                                                 settings.loss)  # fmt: skip
        if encoder is not None:
            self.use_encoder(encoder)
        self.calibration: Calibration | None = None
        if calibration is not None:
            self.use_calibration(calibration)

    @property
    def needs_encoder(self) -> bool:
        """Encoder starts asked for (settings.init='encoder') and no initializer supplied yet."""
        return self.settings.init == "encoder" and self.initializer is None

    def use_encoder(self, encoder: Encoder) -> None:
        """Start every inversion from this encoder's latent (settings.init must be 'encoder')."""
        if self.settings.init != "encoder":
            raise ValueError(f"an encoder needs settings.init='encoder', not {self.settings.init!r}")
        self.initializer = EncoderStarts.from_fitted(encoder, self.generator.latent)
        self.encoder = encoder

    def fit_encoder(
        self,
        settings: FitSettings = FitSettings(),
        *,
        seconds: float | None = None,
        on_step: Callable[[int, dict[str, float]], None] | None = None,
    ) -> FittedEncoder:
        """Fit the model's encoder on its own samples (once per model) and start inversions from it."""
        fitted = fit_generator_encoder(self.generator, settings, backend=self.backend, seconds=seconds,
                                       on_step=on_step)  # fmt: skip
        self.use_encoder(fitted)
        return fitted

    @property
    def encoder_digest(self) -> str | None:
        """The digest a calibration pins: the encoder behind the starts (None for prior starts)."""
        digest = getattr(self.initializer, "digest", None)
        return digest if self.settings.init == "encoder" else None

    def pinned_settings(self) -> dict[str, Any]:
        """What a calibration pins: the inversion settings and, when not float32, the generator's arithmetic.

        A bfloat16 inversion reconstructs own samples ~40× less closely (docs/large_models.md): a float32
        threshold would call every own image non-belonging there. float32 adds nothing, so older files match.
        """
        compute = self.backend.compute
        return self.settings.to_dict() | ({} if compute == "float32" else {"compute": compute})

    def use_calibration(self, calibration: Calibration) -> None:
        if calibration.model_fingerprint != self.generator.fingerprint():
            raise ValueError(f"calibration is for model {calibration.model_name!r}, not {self.generator.name!r}")
        if calibration.method != self.method:
            raise ValueError(f"calibration method is {calibration.method!r}, not {self.method!r}")
        made_in = calibration.settings.get("robust", "none")
        if made_in != self.settings.robust:
            raise ValueError(f"calibration was made in robust mode {made_in!r}, these settings are in "
                             f"{self.settings.robust!r}: calibrate in the mode you attribute in")  # fmt: skip
        computed_in = calibration.settings.get("compute", "float32")
        if computed_in != self.backend.compute:
            raise ValueError(f"calibration was made in {computed_in} arithmetic, this backend computes in "
                             f"{self.backend.compute}: calibrate with the backend you attribute with")  # fmt: skip
        if calibration.settings != self.pinned_settings():
            raise ValueError("calibration was made with other inversion settings")
        if calibration.encoder != self.encoder_digest:
            raise ValueError(
                f"calibration was made with encoder {str(calibration.encoder)[:12]}…, these starts come from "
                f"{str(self.encoder_digest)[:12]}…: recalibrate with this encoder"
            )
        self.calibration = calibration

    def calibrate(
        self,
        n: int = 100,
        *,
        alpha: float = 0.05,
        sample_seed: int = CALIBRATION_SAMPLE_SEED,
        on_done: Callable[[int], None] | None = None,
    ) -> Calibration:
        """Invert N of the model's own samples with the full budget and keep their score distributions.

        With encoder starts and no encoder yet, the encoder is fitted first (``fit_encoder``).
        """
        if self.needs_encoder:
            self.fit_encoder()
        with exact_rows():  # own samples the same bits whatever torch's threads
            clean = quantize_8bit(self.generator.sample(n, seed=sample_seed))
        samples, drawn, floor = calibration_samples(self.settings, clean, sample_seed)
        comp = complexity(samples)
        schedule = Schedule(
            batch_size=self.schedule.batch_size,
            check_every=self.schedule.check_every,
            seed=self.schedule.seed + 7,
            early_exit=False,
        )
        outcomes = self._invert(samples, comp, schedule, None, on_done, floor)
        replay = band_indices(len(samples))
        again = samples[replay] if isinstance(samples, np.ndarray) else [samples[i] for i in replay]
        replayed = self._invert(again, comp[replay], schedule, None, None, floor, PerturbedRounding)
        band = band_from([outcomes[i].best_loss for i in replay], [o.best_loss for o in replayed])
        scores = calibrated_score([o.best_loss for o in outcomes], comp)
        every = schedule.check_every
        steps = [*range(every, self.settings.steps, every), self.settings.steps]
        per_step = scores_on_grid(outcomes, steps)  # N × checkpoints
        cal = Calibration(
            model_name=self.generator.name,
            model_fingerprint=self.generator.fingerprint(),
            settings=self.pinned_settings(),
            scores=[float(s) for s in scores],
            alpha=alpha,
            checkpoint_steps=[int(s) for s in steps],
            checkpoint_scores=[[float(v) for v in col / comp] for col in per_step.T],
            sample_seed=sample_seed,
            method=self.method,
            encoder=self.encoder_digest,
            restarted=sum(o.fresh_starts > 0 for o in outcomes),
            transforms=drawn,
            stall_floor=floor,
            band=band,
            band_samples=len(replay),
        )
        self.calibration = cal
        return cal

    def load_or_calibrate(
        self,
        path: str | Path,
        n: int = 100,
        *,
        alpha: float = 0.05,
        encoder_path: str | Path | None = None,
        fit: FitSettings = FitSettings(),
        on_done: Callable[[int], None] | None = None,
    ) -> Calibration:
        """The calibration at ``path`` if it is there (checked against this model, method, settings and
        encoder), else a new one of ``n`` own samples, saved there.

        With encoder starts, ``encoder_path`` is where the model's encoder lives: loaded when present, else
        fitted with ``fit`` and saved there first (the calibration pins it).
        """
        if encoder_path is not None:
            prepare_encoder(self, Path(encoder_path), fit=fit)
        path = Path(path)
        if path.exists():
            cal = Calibration.load(path, fingerprint=self.generator.fingerprint(), method=self.method)
            self.use_calibration(cal)
            return cal
        if self.needs_encoder:
            self.fit_encoder(fit)
        cal = self.calibrate(n, alpha=alpha, on_done=on_done)
        cal.save(path)
        return cal

    def describe(self) -> dict[str, Any]:
        """What a report records about how the decisions were made."""
        return {
            "method": self.method,
            "backend": self.backend.describe(),
            "settings": self.settings.to_dict(),
            "schedule": asdict(self.schedule),
            "rule": self.rule,
            "encoder": self.encoder_digest,
        }

    def _invert(
        self,
        images: np.ndarray,
        comp: np.ndarray,
        schedule: Schedule,
        stop_rule: TrajectoryStopRule | None,
        on_done: Callable[[int], None] | None,
        stall_floor: float | None = None,
        wrap: Callable[[Backend], Backend] | None = None,
    ) -> list[InversionOutcome]:
        """The loop over ``images`` (a subclass may run several: the platform mode, one per image size);
        ``wrap`` puts the backend in another (``PerturbedRounding``: the calibration's reproducibility band)."""
        backend = None if wrap is None else wrap(self.backend)
        return self._loop(schedule, stop_rule, stall_floor, backend).invert(images, comp, on_done)

    def stall_floor(self) -> float:
        """The stall detector's floor: the calibration's (robust mode raises it), else the 8-bit one."""
        recorded = self.calibration.stall_floor if self.calibration is not None else None
        return quantization_floor(self.settings.loss, self.generator.channels) if recorded is None else recorded

    def _loop(
        self,
        schedule: Schedule,
        stop_rule: TrajectoryStopRule | None,
        stall_floor: float | None = None,
        backend: Backend | None = None,
    ) -> InversionLoop:
        if self.needs_encoder:
            raise RuntimeError("encoder starts need an encoder: fit_encoder() or pass encoder=… (CLI: genorigin "
                               "calibrate fits one)")  # fmt: skip
        return InversionLoop(
            self.backend if backend is None else backend,
            self.generator.latent,
            self.settings,
            schedule,
            stop_rule=stop_rule,
            initializer=self.initializer,
            stall_floor=self.stall_floor() if stall_floor is None else stall_floor,
        )

    def _require_calibration(self) -> Calibration:
        if self.calibration is None:
            raise RuntimeError("no calibration: call calibrate() or pass calibration=… (CLI: genorigin calibrate)")
        return self.calibration

    def accept_threshold(self) -> float:
        return self._require_calibration().threshold(self.rule)

    def stop_rule(self) -> TrajectoryStopRule:
        """The early-exit rule for this calibration, decision rule and schedule."""
        return TrajectoryStopRule(
            self._require_calibration(),
            self.rule,
            margin=self.schedule.exit_margin,
            min_step=self.schedule.exit_min_step,
            envelope_rank=self.schedule.exit_envelope_rank,
        )

    def attribute(
        self,
        images: np.ndarray,
        sources: Sequence[str] | None = None,
        *,
        keep_reconstructions: bool = False,
        on_done: Callable[[int], None] | None = None,
    ) -> list[AttributionResult]:
        """Decide for N prepared images (N×C×H×W float32 in [0, 1]); results in input order."""
        self._require_calibration()
        images = self._validate(images)
        sources = list(sources) if sources is not None else [f"image[{i}]" for i in range(len(images))]
        comp = complexity(images)
        outcomes = self._invert(images, comp, self.schedule, self.stop_rule(), on_done)
        recon = self._render(outcomes) if keep_reconstructions else None
        return [
            self.result(o, sources[i], float(comp[i]), None if recon is None else recon[i])
            for i, o in enumerate(outcomes)
        ]

    def _render(self, outcomes: Sequence[InversionOutcome]) -> Sequence[np.ndarray]:
        """Each outcome's reconstruction, as the input it is compared with."""
        return self.backend.render(np.stack([o.best_z for o in outcomes]))

    def work_item(self, key: Any, image: np.ndarray, cancelled: Callable[[], bool] | None = None) -> WorkItem:
        """One prepared image (C×H×W float32 in [0, 1]) as the loop takes it from a live queue (``stream``)."""
        image = self._validate(np.asarray(image)[None])[0]
        return WorkItem(key, image, float(complexity(image[None])[0]), cancelled)

    def stream(
        self,
        source: WorkSource,
        on_result: Callable[[WorkItem, AttributionResult], None],
        on_start: Callable[[InversionLoop], None] | None = None,
    ) -> None:
        """Attribute items from a live source (``work_item``), each result delivered the moment it is known.

        Items join the running batch at the next checkpoint and leave at their own early exit, and each
        result equals what ``attribute`` gives for that image (the loop's batch-independence). The service
        and the Ray workers run this; it returns when the source is finished and every item is answered.
        ``on_start`` sees the loop before it runs: the service reads its step counter and slot count.
        """
        self._require_calibration()
        loop = self._loop(self.schedule, self.stop_rule())
        if on_start is not None:
            on_start(loop)
        loop.run(source, lambda item, o: on_result(item, self.result(o, str(item.key), item.complexity)))

    def result(
        self, o: InversionOutcome, source: str, comp: float, reconstruction: np.ndarray | None = None
    ) -> AttributionResult:
        """The decision for one inversion outcome (``decide``) under this method's calibration and rule."""
        return decide(self._require_calibration(), self.rule, o, source, comp, reconstruction)

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
