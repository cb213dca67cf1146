"""The demo job on bundled models and images, no downloads: calibrate the inspected bundled model (fast preset,
starting from its shipped encoder, or one fitted now), write a mix of its own samples, the other bundled
models' samples and held-out real photos as PNG files, and attribute those files as any user's would be.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genorigin import workflow
from genorigin.export.bundled import BUNDLED_MODELS, load_bundled, real_images_dir
from genorigin.images import save_png
from genorigin.models import ResolvedModel
from genorigin.outputs import OutputError
from genorigin.progress import Progress
from genorigin.runtime.loop.settings import FitSettings
from genorigin.runtime.methods.files import FileAttribution

DEMO_SAMPLE_SEED = 2024


def write_mix(inspected: str, folder: Path, per_class: int) -> list[str]:
    """PNG files of four classes in one folder each; returns the class names in sorted-path order."""
    classes: dict[str, list[np.ndarray]] = {}
    classes[f"own-{inspected}"] = list(load_bundled(inspected).sample(per_class, seed=DEMO_SAMPLE_SEED))
    for other in BUNDLED_MODELS:
        if other != inspected:
            classes[f"other-{other}"] = list(load_bundled(other).sample(per_class, seed=DEMO_SAMPLE_SEED))
    reals = sorted(real_images_dir().glob("*.png"))[:per_class]
    for label, images in classes.items():
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(images):
            save_png(img, folder / label / f"{label}_{i:03d}.png")
    (folder / "real").mkdir(parents=True, exist_ok=True)
    for p in reals:
        shutil.copyfile(p, folder / "real" / p.name)
    return [*sorted(classes), "real"]


@dataclass
class DemoRun:
    """What the demo did: the model, the loaded method, its results, each image's class, and the timings."""

    model: ResolvedModel
    loaded: workflow.Loaded
    found: FileAttribution
    labels: list[str]
    classes: list[str]
    encoder_fitted: bool
    seconds: dict[str, float]

    def per_class(self) -> dict[str, dict[str, int]]:
        return {
            c: {
                "images": self.labels.count(c),
                "called_belonging": sum(r.belonging for r, lab in zip(self.found.results, self.labels) if lab == c),
            }
            for c in self.classes
        }

    def accuracy(self) -> float:
        truth = [lab.startswith("own-") for lab in self.labels]
        return float(np.mean([r.belonging == t for r, t in zip(self.found.results, truth)]))


def run_demo(
    name: str,
    out: Path,
    choice: workflow.MethodChoice,
    *,
    samples: int,
    per_class: int,
    alpha: float,
    fit: FitSettings,
    fit_seconds: float | None = None,
    quiet: bool = False,
) -> DemoRun:
    """Calibrate, write the mix under ``out/images``, attribute it; the calibration goes to ``out``."""
    seconds: dict[str, float] = {}
    model = workflow.resolve(name, threads=choice.threads)
    method = workflow.method_for_calibration(model, choice)
    enc_path = workflow.encoder_path(model, choice)
    t0 = time.perf_counter()
    fit_now = workflow.needs_fit(method, enc_path)
    with Progress(fit.steps, "fitting encoder", "steps", quiet=quiet or not fit_now) as bar:
        fitted = workflow.prepare_encoder(
            method, enc_path, fit=fit, seconds=fit_seconds, on_step=lambda step, _: bar.update()
        )
    seconds["encoder_fit"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with Progress(samples, f"calibrating {name}", "samples", quiet=quiet) as bar:
        cal = method.calibrate(samples, alpha=alpha, on_done=lambda _: bar.update())
    seconds["calibration"] = time.perf_counter() - t0
    try:
        cal.save(out / "calibration.json", overwrite=True)
    except OSError as exc:
        raise OutputError(f"cannot write {out / 'calibration.json'}: {exc.strerror or exc}") from exc
    classes = write_mix(name, out / "images", per_class)
    images = workflow.read(model, [str(out / "images" / c) for c in classes])
    loaded = workflow.method_for_attribution(model, choice, calibration=out / "calibration.json")
    t0 = time.perf_counter()
    with Progress(len(images.sources), "attributing", "images", quiet=quiet) as bar:
        found = workflow.run(loaded.method, images, keep_reconstructions=True, on_done=lambda _: bar.update())
    seconds["attribution"] = time.perf_counter() - t0
    labels = [Path(s).parent.name for s in images.sources]
    return DemoRun(model, loaded, found, labels, classes, fitted, seconds)
