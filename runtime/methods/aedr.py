"""AEDR: forward-only attribution to an autoencoder by double reconstruction (no inversion, no gradients).

An image the autoencoder's decoder made already lies on the decoder's manifold: reconstructing it,
x* = D(E(x)), changes it about as little as reconstructing the reconstruction, x** = D(E(x*)). A photo loses
detail in the first pass and far less in the second. The score is the ratio MSE(x*, x) / MSE(x**, x*),
multiplied by the image's GLCM homogeneity (32 grey levels, distance 1, angle 0) to calibrate for texture; low
scores mean "made by this model". The threshold is the (1 − α) quantile of a Gaussian KDE fitted on the
scores of the model's own samples.

The autoencoder enters only as a ``roundtrip`` callable (images in [0, 1] → D(E(images)) in [0, 1]), so this
module knows no model family; ``genorigin.export.latent_diffusion`` supplies it for an AutoencoderKL.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from genorigin.export.generator import Generator
from genorigin.runtime.decide.calibration import CALIBRATION_SAMPLE_SEED, Calibration, quantize_8bit
from genorigin.runtime.decide.complexity import to_grey8
from genorigin.runtime.decide.decision import grubbs_test, quantile_test
from genorigin.runtime.decide.result import AttributionResult, outcome_dict
from genorigin.runtime.loop.settings import FitSettings
from genorigin.runtime.methods.encoder import FittedEncoder
from genorigin.runtime.methods.files import AttributesFiles
from scipy import optimize, stats

Roundtrip = Callable[[np.ndarray], np.ndarray]
AEDR_METHOD = "aedr"
AEDR_SCORE = "mse(x*,x)/mse(x**,x*) * glcm-homogeneity"


# --------------------------------------------------------------------------------------------- GLCM
def quantize_grey(image: np.ndarray, levels: int = 32) -> np.ndarray:
    """C×H×W image in [0, 1] → H×W grey levels in [0, levels): 8-bit BT.601 grey, then uniform bins."""
    if not 2 <= levels <= 256:
        raise ValueError(f"levels must be in [2, 256], got {levels}")
    return (to_grey8(image).astype(np.int64) * levels) // 256


def glcm(grey: np.ndarray, levels: int, distance: int = 1, angle: float = 0.0) -> np.ndarray:
    """Grey-level co-occurrence counts P[i, j]: pixel (r, c) has level i and (r + dr, c + dc) has level j.

    (dr, dc) = (round(sin θ · d), round(cos θ · d)), skimage.feature.graycomatrix's convention (not symmetric,
    not normalised).
    """
    if grey.ndim != 2:
        raise ValueError(f"expected an H×W grey-level image, got shape {grey.shape}")
    if grey.min() < 0 or grey.max() >= levels:
        raise ValueError(f"grey levels must lie in [0, {levels})")
    dr, dc = round(math.sin(angle) * distance), round(math.cos(angle) * distance)
    h, w = grey.shape
    r0, r1 = max(0, -dr), min(h, h - dr)
    c0, c1 = max(0, -dc), min(w, w - dc)
    first = grey[r0:r1, c0:c1]
    second = grey[r0 + dr : r1 + dr, c0 + dc : c1 + dc]
    pairs = first.astype(np.int64).ravel() * levels + second.astype(np.int64).ravel()
    return np.bincount(pairs, minlength=levels * levels).reshape(levels, levels)


def homogeneity(counts: np.ndarray) -> float:
    """Σ P(i, j) / (1 + (i − j)²) over the normalised co-occurrence matrix (1 for a flat image)."""
    total = counts.sum()
    if total == 0:
        return 1.0
    i, j = np.indices(counts.shape)
    return float((counts / total / (1.0 + (i - j) ** 2)).sum())


def glcm_homogeneity(image: np.ndarray, levels: int = 32, distance: int = 1, angle: float = 0.0) -> float:
    """GLCM homogeneity of one C×H×W image in [0, 1]."""
    return homogeneity(glcm(quantize_grey(image, levels), levels, distance, angle))


# --------------------------------------------------------------------------------------------- scores
@dataclass(frozen=True)
class AEDRSettings:
    """What an AEDR score depends on; recorded in (and checked against) the calibration file."""

    levels: int = 32
    distance: int = 1
    angle: float = 0.0
    eps: float = 1e-12  # keeps the ratio finite when the second reconstruction is exact
    compute: str = "float32"  # the round trips' precision ("bfloat16": --backend torch-bf16)

    def to_dict(self) -> dict[str, Any]:
        out = {"method": AEDR_METHOD, **asdict(self)}
        if self.compute == "float32":  # calibrations made before the field existed stay valid
            del out["compute"]
        return out


@dataclass
class AEDRScores:
    """Per-image parts of the score: the reconstruction-error ratio, the homogeneity and their product."""

    ratio: np.ndarray
    homogeneity: np.ndarray
    score: np.ndarray
    seconds: float
    reconstruction: np.ndarray  # x* = D(E(x)), the first round trip


def _mse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(axis=1)


def aedr_scores(roundtrip: Roundtrip, images: np.ndarray, settings: AEDRSettings = AEDRSettings()) -> AEDRScores:
    """Scores of N×C×H×W images in [0, 1]: two forward round trips through the autoencoder, no gradients."""
    start = time.perf_counter()
    x1 = np.clip(roundtrip(images), 0.0, 1.0)
    x2 = np.clip(roundtrip(x1), 0.0, 1.0)
    ratio = _mse(x1, images) / (_mse(x2, x1) + settings.eps)
    homog = np.array([glcm_homogeneity(im, settings.levels, settings.distance, settings.angle) for im in images])
    return AEDRScores(ratio, homog, ratio * homog, time.perf_counter() - start, x1)


def kde_threshold(scores: Sequence[float] | np.ndarray, alpha: float) -> float:
    """The (1 − α) quantile of a Gaussian KDE (Scott's bandwidth) fitted on belonging scores."""
    s = np.asarray(scores, dtype=np.float64)
    if np.ptp(s) == 0.0:  # a KDE of identical scores is singular; every belonging score equals this one
        return float(s[0])
    kde = stats.gaussian_kde(s)
    bw = float(np.sqrt(kde.covariance[0, 0]))
    lo, hi = s.min() - 10 * bw, s.max() + 10 * bw
    return float(optimize.brentq(lambda t: kde.integrate_box_1d(-np.inf, t) - (1.0 - alpha), lo, hi, xtol=1e-12))


def kde_tail(scores: Sequence[float] | np.ndarray, value: float) -> float:
    """P(S ≥ value) under the belonging KDE: the p-value of the AEDR decision."""
    s = np.asarray(scores, dtype=np.float64)
    if np.ptp(s) == 0.0:
        return 1.0 if value <= s[0] else 0.0
    kde = stats.gaussian_kde(s)
    return float(min(1.0, max(0.0, 1.0 - kde.integrate_box_1d(-np.inf, value))))


# --------------------------------------------------------------------------------------------- API
class AEDRAttributor(AttributesFiles):
    """calibrate / attribute like ``Attributor``, for the forward-only AEDR method (calibration method "aedr").

    It follows the same ``AttributionMethod`` protocol: no inversion, so no schedule, no encoder starts and
    no early exit; ``on_done`` is called for each image once the forward passes are done.
    """

    method = AEDR_METHOD
    rule = "aedr-kde"
    schedule = None
    needs_encoder = False
    encoder_digest = None

    def __init__(
        self,
        generator: Generator,
        roundtrip: Roundtrip,
        *,
        settings: AEDRSettings = AEDRSettings(),
        calibration: Calibration | None = None,
    ) -> None:
        self.generator = generator
        self.roundtrip = roundtrip
        self.settings = settings
        self.calibration: Calibration | None = None
        if calibration is not None:
            self.use_calibration(calibration)

    def use_calibration(self, calibration: Calibration) -> None:
        if calibration.method != AEDR_METHOD:
            raise ValueError(f"calibration method is {calibration.method!r}, not {AEDR_METHOD!r}")
        if calibration.model_fingerprint != self.generator.fingerprint():
            raise ValueError(f"calibration is for model {calibration.model_name!r}, not {self.generator.name!r}")
        if calibration.settings != self.settings.to_dict():
            raise ValueError("calibration was made with other AEDR settings")
        self.calibration = calibration

    def use_encoder(self, encoder: FittedEncoder) -> None:
        raise ValueError("AEDR reconstructs with the autoencoder's own encoder: it takes no fitted encoder")

    def fit_encoder(self, settings: FitSettings = FitSettings(), *, seconds: float | None = None,
                    on_step: Callable[[int, dict[str, float]], None] | None = None) -> FittedEncoder:  # fmt: skip
        raise ValueError("AEDR reconstructs with the autoencoder's own encoder: it takes no fitted encoder")

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "backend": {"backend": "torch"}, "settings": self.settings.to_dict(),
                "schedule": None, "rule": self.rule, "encoder": None}  # fmt: skip

    def calibrate(
        self,
        n: int = 100,
        *,
        alpha: float = 0.05,
        sample_seed: int = CALIBRATION_SAMPLE_SEED,
        on_done: Callable[[int], None] | None = None,
    ) -> Calibration:
        """Score N of the model's own (8-bit quantised) samples; they are the belonging distribution."""
        samples = quantize_8bit(self.generator.sample(n, seed=sample_seed))
        scores = aedr_scores(self.roundtrip, samples, self.settings).score
        for i in range(n if on_done is not None else 0):
            on_done(i)
        self.calibration = Calibration(
            model_name=self.generator.name,
            model_fingerprint=self.generator.fingerprint(),
            settings=self.settings.to_dict(),
            scores=[float(s) for s in scores],
            alpha=alpha,
            method=AEDR_METHOD,
            score=AEDR_SCORE,
            sample_seed=sample_seed,
        )
        return self.calibration

    def threshold(self) -> float:
        cal = self._require_calibration()
        return kde_threshold(cal.scores, cal.alpha)

    def accept_threshold(self) -> float:
        """The largest score still called belonging (the KDE threshold), as ``Attributor.accept_threshold``."""
        return self.threshold()

    def _require_calibration(self) -> Calibration:
        if self.calibration is None:
            raise RuntimeError("no calibration: call calibrate() or pass calibration=…")
        return self.calibration

    def attribute(
        self,
        images: np.ndarray,
        sources: Sequence[str] | None = None,
        *,
        keep_reconstructions: bool = False,
        on_done: Callable[[int], None] | None = None,
    ) -> list[AttributionResult]:
        """Decide for N prepared images (N×C×H×W float32 in [0, 1]); belonging iff score ≤ KDE threshold.

        ``keep_reconstructions``: each result carries x* = D(E(x)), the first round trip."""
        cal = self._require_calibration()
        images = np.asarray(images, dtype=np.float32)
        expected = (self.generator.channels, *self.generator.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"expected N×{expected[0]}×{expected[1]}×{expected[2]} images, got {images.shape}")
        if not np.isfinite(images).all() or images.min() < 0.0 or images.max() > 1.0:
            raise ValueError("images must be finite and lie in [0, 1] (use Generator.prepare_image)")
        sources = list(sources) if sources is not None else [f"image[{i}]" for i in range(len(images))]
        parts = aedr_scores(self.roundtrip, images, self.settings)
        threshold = self.threshold()
        ref = np.asarray(cal.scores)
        results = []
        for i in range(len(images)):
            r = self._result(sources[i], float(parts.ratio[i]), float(parts.homogeneity[i]), float(parts.score[i]),
                             threshold, ref, parts.seconds / len(images))  # fmt: skip
            r.reconstruction = parts.reconstruction[i] if keep_reconstructions else None
            results.append(r)
            if on_done is not None:
                on_done(i)
        return results

    def _result(
        self, source: str, ratio: float, homog: float, score: float, threshold: float, ref: np.ndarray, secs: float
    ) -> AttributionResult:
        cal = self._require_calibration()
        g = grubbs_test(score, cal.mean, cal.std, cal.n, cal.alpha)
        q = quantile_test(score, cal.quantile_threshold, ref)
        belonging = score <= threshold
        return AttributionResult(
            source=source,
            verdict="belonging" if belonging else "non-belonging",
            rule="aedr-kde",
            loss=ratio,
            complexity=homog,
            calibrated_loss=score,
            statistic=score,
            critical_value=threshold,
            p_value=kde_tail(ref, score),
            grubbs=outcome_dict(g),
            quantile=outcome_dict(q),
            steps=0,
            stop_reason="forward-only",
            seconds=secs,
        )
