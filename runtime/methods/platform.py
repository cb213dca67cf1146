"""The platform mode (issue 25): invert an image at its own size through the platform's geometry.

A platform crops, resizes and recompresses; the image arrives at another size than the model's, cut from
somewhere in its frame. The platform mode searches the latent *and* the window: it minimises
‖T_θ(M(z)) − x‖ with x as received (no pre-resize to the model's size), T_θ Pillow's crop-and-resample
(export/geometry.py). The shared loop runs it unchanged: T_θ ∘ M is a generator whose latent is (z, θ), one
per received size (``Views``), so images are inverted in groups of one size and each keeps the result it
would get alone.

Starts (``PlatformStarts``): the platform encoder's guess of (z, θ) from the received image, then the
model's own encoder at the window the size implies (θ = 0), then the prior. The platform encoder is fitted
once per model on own samples through the calibration's family (runtime/methods/platform_encoder.py): the model's
encoder alone cannot tell an 80 % crop from the whole frame (measured: the true window ranked first among
28 candidate windows by its start's loss for only about half of the own images).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from genorigin.export.generator import Generator
from genorigin.export.geometry import THETA_DIM, Geometry, PlatformView, geometry_of, to_frame, viewed_generator
from genorigin.runtime.backends.eager import TorchBackend
from genorigin.runtime.backends.registry import make_backend
from genorigin.runtime.decide.early_exit import TrajectoryStopRule
from genorigin.runtime.decide.result import AttributionResult
from genorigin.runtime.loop.backend import Backend
from genorigin.runtime.loop.inversion import InversionLoop
from genorigin.runtime.loop.outcome import InversionOutcome
from genorigin.runtime.loop.settings import FitSettings, Schedule
from genorigin.runtime.loop.starts import Initializer
from genorigin.runtime.loop.work import WorkItem
from genorigin.runtime.methods.attribution import Attributor
from genorigin.runtime.methods.encoder import Encoder, FittedEncoder
from genorigin.runtime.methods.platform_encoder import fit_platform_encoder
from genorigin.runtime.robust.transforms import ROBUST_FAMILIES, PlatformFamily
from PIL import Image

from genorigin.facts import ImageFacts
from genorigin.files import cache_dir

if TYPE_CHECKING:
    from genorigin.export.package import AttributionPackage

Size = tuple[int, int]


class ServedImages:
    """How the platform mode reads a file: the decoded image at its own size, 8-bit as stored; one larger
    than the platform family's largest side is first brought inside it (Pillow BICUBIC, aspect kept): detail
    beyond twice the model's resolution is none the model made."""

    def __init__(self, generator: Generator, family: PlatformFamily) -> None:
        self.channels = generator.channels
        self.image_size = generator.image_size
        self.largest = tuple(int(family.sides[1] * s) for s in generator.image_size)
        self.smallest = tuple(max(family.min_side, round(family.sides[0] * s)) for s in generator.image_size)

    def size_for(self, h: int, w: int) -> Size:
        fit = min(1.0, self.largest[0] / h, self.largest[1] / w)
        return max(1, round(h * fit)), max(1, round(w * fit))

    def prepare_image(self, image: np.ndarray) -> np.ndarray:
        """An H×W×C uint8 image → C×H'×W' float32 in [0, 1] at its own size (or brought inside the family)."""
        h, w = image.shape[:2]
        if h < self.smallest[0] or w < self.smallest[1]:
            raise ValueError(f"{w}×{h} is smaller than the platform mode inverts (at least {self.smallest[1]}×"
                             f"{self.smallest[0]} for this model)")  # fmt: skip
        size = self.size_for(h, w)
        if size != (h, w):
            pil = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
            image = np.asarray(pil.resize((size[1], size[0]), Image.Resampling.BICUBIC)).reshape(*size, -1)
        return (image.astype(np.float32) / 255.0).transpose(2, 0, 1).copy()

    def prepared_facts(self, facts: ImageFacts) -> ImageFacts:
        w, h = facts.decoded_size
        return facts.served(self.size_for(h, w))


class PlatformStarts:
    """The initializer of one view (one received size): R starts of (z, θ) for an image at that size — the
    platform encoder's guess, then its z at the window the size implies (θ = 0), then prior draws."""

    def __init__(self, view: PlatformView, encoder: Encoder) -> None:
        self.view = view
        self.encoder = encoder

    def __call__(self, image: np.ndarray, restarts: int, rng: np.random.Generator) -> np.ndarray:
        guess = np.asarray(self.encoder.encode(to_frame(image, self.view.frame)[None]), np.float32).reshape(1, -1)
        implied = guess.copy()
        implied[:, -THETA_DIM:] = 0.0
        prior = rng.standard_normal((max(restarts - 2, 0), guess.shape[1]), dtype=np.float32)
        return np.concatenate([guess, implied, prior])[:restarts]


@dataclass
class PlacedOutcome(InversionOutcome):
    """An inversion outcome with where the search placed the image in the model's frame."""

    geometry: Geometry | None = None


class Views:
    """T_θ ∘ M per received size, each with its backend and starts (built on first use, then kept)."""

    def __init__(self, base: Generator, make: Callable[[Generator], Backend], filter: str = "bicubic") -> None:
        self.base = base
        self.make = make
        self.filter = filter
        self._views: dict[Size, tuple[Generator, Backend]] = {}

    def get(self, size: Size) -> tuple[Generator, Backend]:
        if size not in self._views:
            view = viewed_generator(self.base, size, self.filter)
            self._views[size] = (view, self.make(view))
        return self._views[size]

    def render(self, size: Size, latents: np.ndarray) -> np.ndarray:
        return self.get(size)[1].render(latents)


class ViewTarget:
    """A view as a backend target: PyTorch backends run its module; ONNX Runtime and TensorRT its package,
    exported once per model and size into the user cache (its VJP graph checked against autograd there)."""

    def __init__(self, view: Generator) -> None:
        self.generator = view

    def package(self) -> AttributionPackage:
        from genorigin.export.package import exported_once

        return exported_once(self.generator, cache_dir("packages") / f"{self.generator.name}-"
                             f"{self.generator.fingerprint()[:12]}")  # fmt: skip


def backend_maker(backend: str | Backend, loss: str, threads: int | None) -> Callable[[Generator], Backend]:
    """How a view gets its backend: the same kind as the model's (a built backend names its kind; eager
    PyTorch on a GPU is ``torch-cuda``)."""
    name = backend if isinstance(backend, str) else backend.name
    if isinstance(backend, TorchBackend) and backend.device.type == "cuda":
        name = "torch-cuda"
    return lambda view: make_backend(ViewTarget(view), name, loss, threads)


def by_size(images: Sequence[np.ndarray]) -> dict[Size, list[int]]:
    """Indices of the images of each size, sizes in order of first appearance."""
    groups: dict[Size, list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault((int(image.shape[1]), int(image.shape[2])), []).append(i)
    return groups


def invert_by_size(
    views: Views,
    images: Sequence[np.ndarray],
    run: Callable[
        [Generator, Backend, Initializer, np.ndarray, np.ndarray, Callable[[int], None] | None], list[InversionOutcome]
    ],
    starts: Callable[[PlatformView], Initializer],
    complexity: np.ndarray,
    on_done: Callable[[int], None] | None = None,
) -> list[PlacedOutcome]:
    """Invert each size's images in one loop (``run``: the attributor's loop on a view's backend and starts);
    outcomes in input order, each with its window."""
    out: list[PlacedOutcome | None] = [None] * len(images)
    for size, index in by_size(images).items():
        view, backend = views.get(size)
        module = view.module
        assert isinstance(module, PlatformView)
        batch = np.stack([images[i] for i in index])
        done = None if on_done is None else (lambda k, index=index: on_done(index[k]))
        for i, o in zip(index, run(view, backend, starts(module), batch, complexity[index], done)):
            out[i] = PlacedOutcome(**vars(o), geometry=geometry_of(module, o.best_z[module.latent_dim :]))
    return [o for o in out if o is not None]


def geometry_record(outcome: Any) -> dict[str, Any] | None:
    """The recovered window of a platform outcome, JSON-ready (None for any other outcome)."""
    geometry = getattr(outcome, "geometry", None)
    return None if geometry is None else geometry.to_dict()


class PlatformAttributor(Attributor):
    """``Attributor`` in the platform mode (settings.robust == "platform"): images at their own sizes, each
    inverted through T_θ ∘ M at that size, started from the platform encoder; results carry the window found.

    The encoder is the platform encoder (latent (z, θ)), fitted by ``fit_encoder`` and pinned by the
    calibration like the model's encoder in the other modes.
    """

    def __init__(self, generator: Generator, *, threads: int | None = None, **options: Any) -> None:
        if generator.module is None:
            raise ValueError(f"{generator.name!r}: the platform mode resamples the model's output inside its "
                             "own graph and needs its PyTorch module (a bundled name or a .pt model, not a "
                             "package)")  # fmt: skip
        encoder, calibration = options.pop("encoder", None), options.pop("calibration", None)
        super().__init__(generator, **options)
        if self.settings.robust != "platform":
            raise ValueError(f"a PlatformAttributor needs settings in the platform mode, not {self.settings.robust!r}")
        if self.settings.init != "encoder" or self.initializer is not None:
            raise ValueError("the platform mode starts from its encoder: settings.init must be 'encoder' (the fast "
                             "preset), with no other initializer")  # fmt: skip
        self.views = Views(generator, backend_maker(self.backend, self.settings.loss, threads))
        if encoder is not None:
            self.use_encoder(encoder)
        if calibration is not None:
            self.use_calibration(calibration)

    @property
    def needs_encoder(self) -> bool:
        return self.encoder is None

    @property
    def reader(self) -> ServedImages:
        """Files are read at their own size (``ServedImages``)."""
        return ServedImages(self.generator, self.family)

    @property
    def family(self) -> PlatformFamily:
        fam = ROBUST_FAMILIES["platform"]
        assert isinstance(fam, PlatformFamily)
        return fam

    @property
    def encoder_digest(self) -> str | None:
        return None if self.encoder is None else self.encoder.digest()

    def use_encoder(self, encoder: Encoder) -> None:
        """Start every inversion from this platform encoder's (z, θ) (``fit_encoder`` makes one)."""
        want = (math.prod(self.generator.latent.shape) + THETA_DIM,)
        if tuple(encoder.latent_shape) != want:
            raise ValueError(f"the platform mode needs a platform encoder (latent {want}: z and θ), got one "
                             f"with latent {tuple(encoder.latent_shape)}: fit one (genorigin calibrate --robust "
                             "platform)")  # fmt: skip
        self.encoder = encoder

    def fit_encoder(self, settings: FitSettings = FitSettings(), *, seconds: float | None = None,
                    on_step: Callable[[int, dict[str, float]], None] | None = None) -> FittedEncoder:  # fmt: skip
        fitted = fit_platform_encoder(self.generator, None, settings, seconds=seconds, on_step=on_step)
        self.use_encoder(fitted)
        return fitted

    def _validate(self, images: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:  # type: ignore[override]
        """C×H×W images in [0, 1], any size within the platform family's (a list, or one N×C×H×W array)."""
        out = []
        frame, (lo, hi) = self.generator.image_size, self.family.sides
        for i, image in enumerate(images):
            image = np.asarray(image)
            if image.ndim != 3 or image.shape[0] != self.generator.channels:
                raise ValueError(f"image {i}: expected {self.generator.channels}×H×W, got {image.shape}")
            if not all(max(self.family.min_side, lo * f) <= s <= hi * f for s, f in zip(image.shape[1:], frame)):
                raise ValueError(f"image {i}: {image.shape[1]}×{image.shape[2]} is outside the sizes the platform "
                                 f"mode inverts ({lo:g}× to {hi:g}× the model's {frame[0]}×{frame[1]}, each side; "
                                 "files larger are brought inside when read)")  # fmt: skip
            if not np.isfinite(image).all() or image.min() < 0.0 or image.max() > 1.0:
                raise ValueError(f"image {i}: values must be finite and lie in [0, 1]")
            out.append(image.astype(np.float32, copy=False))
        return out

    def _invert(self, images: Sequence[np.ndarray], comp: np.ndarray, schedule: Schedule,  # type: ignore[override]
                stop_rule: TrajectoryStopRule | None, on_done: Callable[[int], None] | None,
                stall_floor: float | None = None,
                wrap: Callable[[Backend], Backend] | None = None) -> list[PlacedOutcome]:  # fmt: skip
        floor = self.stall_floor() if stall_floor is None else stall_floor
        assert self.encoder is not None, "fit_encoder() or use_encoder() first"
        encoder = self.encoder

        def run(view: Generator, backend: Backend, starts: Initializer, batch: np.ndarray, comp: np.ndarray,
                done: Callable[[int], None] | None) -> list[InversionOutcome]:  # fmt: skip
            loop = InversionLoop(backend if wrap is None else wrap(backend), view.latent, self.settings, schedule,
                                 stop_rule=stop_rule, initializer=starts, stall_floor=floor)  # fmt: skip
            return loop.invert(batch, comp, done)

        return invert_by_size(self.views, images, run, lambda view: PlatformStarts(view, encoder), comp, on_done)

    def _render(self, outcomes: Sequence[InversionOutcome]) -> list[np.ndarray]:
        """Each reconstruction as the platform served it: T_θ(M(z)) at the image's own size."""
        out = []
        for o in outcomes:
            g = getattr(o, "geometry", None)
            assert g is not None
            out.append(self.views.render((g.out_height, g.out_width), o.best_z[None])[0])
        return out

    def result(self, o: InversionOutcome, source: str, comp: float,
               reconstruction: np.ndarray | None = None) -> AttributionResult:  # fmt: skip
        r = super().result(o, source, comp, reconstruction)
        r.geometry = geometry_record(o)
        return r

    def work_item(self, key: Any, image: np.ndarray, cancelled: Callable[[], bool] | None = None) -> WorkItem:
        raise ValueError("the platform mode inverts each image size in its own loop: attribute() and "
                         "attribute_files() run it; the live queue (stream, the HTTP service) does not "
                         "yet")  # fmt: skip

    def stream(self, *args: Any, **kwargs: Any) -> None:
        self.work_item(None, np.zeros(0))
