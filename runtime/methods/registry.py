"""The one place an attribution method is chosen, and the protocol every caller drives it through.

``AttributionMethod`` is what the command line, the HTTP service and the Ray workers hold: calibrate, take a
calibration, attribute arrays or files, describe itself. ``Attributor`` (the shared inversion loop, also
LatentTracer's) and ``AEDRAttributor`` (forward-only) both follow it, so no caller asks which one it has.

``METHODS`` maps a name to a ``MethodSpec``: how to build it for a model, whether it runs the inversion loop
(and so takes ``InversionSettings``, a ``Schedule`` and presets), whether it needs an autoencoder. To add a
method: a class following the protocol, a builder, one ``register_method(MethodSpec(...))`` line. The registry
itself is plain data (names, help, presets): each builder imports its implementation when it runs, so the
command line lists the methods without importing torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from genorigin.runtime.backends.registry import BackendTarget, GeneratorOnly, make_backend
from genorigin.runtime.loop.settings import (
    PAPER_SCHEDULE,
    PRESETS,
    TRACER_METHOD,
    TRACER_SETTINGS,
    FitSettings,
    InversionSettings,
    Schedule,
    default_schedule,
)
from genorigin.runtime.methods.files import Attributes

if TYPE_CHECKING:
    from genorigin.export.generator import Generator
    from genorigin.export.latent_diffusion import LatentDiffusionModel
    from genorigin.runtime.decide.calibration import Calibration
    from genorigin.runtime.decide.result import DecisionRule
    from genorigin.runtime.loop.backend import Backend
    from genorigin.runtime.methods.aedr import AEDRAttributor
    from genorigin.runtime.methods.attribution import Attributor
    from genorigin.runtime.methods.encoder import FittedEncoder
    from genorigin.runtime.methods.files import FileAttribution

    from genorigin.decode import Background


class SettingsRecord(Protocol):
    """What a calibration records of a method's settings."""

    def to_dict(self) -> dict[str, Any]: ...


class AttributionMethod(Attributes, Protocol):
    """Decides, per image, whether a model made it; the only interface callers use (``attribute`` and
    ``generator`` come from ``file_input.Attributes``)."""

    calibration: Calibration | None

    @property
    def method(self) -> str:
        """The name a calibration records (``inversion``, ``inversion-encoder``, ``aedr``)."""
        ...

    @property
    def rule(self) -> str: ...

    @property
    def settings(self) -> SettingsRecord: ...

    @property
    def schedule(self) -> Schedule | None:
        """How the inversion loop is run (None: the method does not invert)."""
        ...

    @property
    def needs_encoder(self) -> bool:
        """Starts come from a fitted encoder that is not there yet (``fit_encoder`` or ``use_encoder``)."""
        ...

    @property
    def encoder_digest(self) -> str | None:
        """The digest of the encoder behind the starts, as a calibration pins it (None: no fitted encoder)."""
        ...

    def use_encoder(self, encoder: FittedEncoder) -> None: ...

    def fit_encoder(
        self,
        settings: FitSettings = ...,
        *,
        seconds: float | None = None,
        on_step: Callable[[int, dict[str, float]], None] | None = None,
    ) -> FittedEncoder: ...

    def calibrate(
        self, n: int = 100, *, alpha: float = 0.05, on_done: Callable[[int], None] | None = None
    ) -> Calibration: ...

    def use_calibration(self, calibration: Calibration) -> None: ...

    def accept_threshold(self) -> float:
        """The largest calibrated score the decision rule still calls belonging."""
        ...

    def attribute_files(
        self,
        specs: Iterable[str],
        *,
        convert: Background | None = None,
        keep_reconstructions: bool = False,
        on_done: Callable[[int], None] | None = None,
    ) -> FileAttribution: ...

    def describe(self) -> dict[str, Any]:
        """method, backend, settings, schedule, rule, encoder: what a report records."""
        ...


class ModelHandle(BackendTarget, Protocol):
    """A resolved model as methods see it: its generator, package, and autoencoder if it has one."""

    @property
    def latent_model(self) -> LatentDiffusionModel | None: ...


class BareModel(GeneratorOnly):
    """A ModelHandle for a Generator (and autoencoder) held in Python, with no package on disk."""

    def __init__(self, generator: Generator, latent_model: LatentDiffusionModel | None = None) -> None:
        super().__init__(generator)
        self._latent_model = latent_model

    @property
    def latent_model(self) -> LatentDiffusionModel | None:
        return self._latent_model


@dataclass(frozen=True)
class MethodOptions:
    """How to build a method. ``settings``/``schedule`` None: the method's default preset."""

    settings: InversionSettings | None = None
    schedule: Schedule | None = None
    backend: str | Backend | None = None  # a registered name (runtime.backends.registry) or a built backend
    threads: int | None = None
    rule: DecisionRule = "grubbs"
    calibration: Calibration | None = None
    encoder: FittedEncoder | None = None


@dataclass(frozen=True)
class MethodSpec:
    """One registered method."""

    name: str
    build: Callable[[ModelHandle, MethodOptions], AttributionMethod]  # options with settings and schedule resolved
    help: str
    presets: Mapping[str, tuple[InversionSettings, Schedule]]  # empty: the method does not invert
    default_preset: str | None = None
    needs_autoencoder: bool = False

    @property
    def inverts(self) -> bool:
        return bool(self.presets)

    def preset(self, name: str | None) -> tuple[InversionSettings, Schedule]:
        name = name or self.default_preset
        if name not in self.presets:
            raise ValueError(f"method {self.name!r} has no preset {name!r} (presets: {', '.join(self.presets)})")
        return self.presets[name]


METHODS: dict[str, MethodSpec] = {}
# old names still accepted: name → (method, the preset it meant)
ALIASES: dict[str, tuple[str, str | None]] = {"inversion-random": ("inversion", "paper")}


def register_method(spec: MethodSpec) -> MethodSpec:
    if spec.name in METHODS or spec.name in ALIASES:
        raise ValueError(f"method {spec.name!r} is already registered")
    METHODS[spec.name] = spec
    return spec


def method_choices() -> tuple[str, ...]:
    """Every name ``--method`` accepts: the methods, then the old names."""
    return (*METHODS, *ALIASES)


def resolve_method(name: str) -> tuple[MethodSpec, str | None]:
    """The spec for a method name or an old alias, and the preset the alias implies (None: the default)."""
    canonical, preset = ALIASES.get(name, (name, None))
    spec = METHODS.get(canonical)
    if spec is None:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(method_choices())}")
    return spec, preset


def build_method(name: str, model: ModelHandle, options: MethodOptions = MethodOptions()) -> AttributionMethod:
    """Method ``name`` for ``model``; settings and schedule default to the method's (or the alias's) preset."""
    spec, preset = resolve_method(name)
    if spec.needs_autoencoder and model.latent_model is None:
        raise ValueError(f"method {spec.name!r} needs an AutoencoderKL (latent-diffusion) folder as the model")
    if not spec.inverts:
        if options.settings is not None or options.schedule is not None:
            raise ValueError(f"method {spec.name!r} does not invert: it takes no inversion settings or schedule")
        return spec.build(model, options)
    if options.settings is None:
        settings, schedule = spec.preset(preset)
    else:
        settings, schedule = options.settings, default_schedule(options.settings)
    return spec.build(model, replace(options, settings=settings, schedule=options.schedule or schedule))


def _loop(model: ModelHandle, o: MethodOptions, method: str, **starts: Any) -> Attributor:
    """An Attributor on the shared loop with the resolved settings (``starts``: encoder= or initializer=);
    in the platform mode, the one that inverts each image at its own size (runtime/methods/platform.py)."""
    from genorigin.runtime.loop.backend import Backend
    from genorigin.runtime.methods.attribution import Attributor

    assert o.settings is not None and o.schedule is not None  # build_method resolved them
    backend = o.backend if isinstance(o.backend, Backend) else make_backend(model, o.backend, o.settings.loss,
                                                                            o.threads)  # fmt: skip
    options = {"backend": backend, "settings": o.settings, "schedule": o.schedule, "calibration": o.calibration,
               "rule": o.rule, "method": method, **starts}  # fmt: skip
    if o.settings.robust == "platform":
        from genorigin.runtime.methods.platform import PlatformAttributor

        return PlatformAttributor(model.generator, threads=o.threads, **options)
    return Attributor(model.generator, **options)


def _inversion(model: ModelHandle, o: MethodOptions) -> Attributor:
    return _loop(model, o, "inversion", encoder=o.encoder)


def _tracer(model: ModelHandle, o: MethodOptions) -> Attributor:
    from genorigin.runtime.methods.latent_tracer import EncoderInit

    assert o.settings is not None and model.latent_model is not None  # build_method checked
    if o.settings.robust == "platform":
        raise ValueError("LatentTracer starts from the autoencoder's encoding: it has no platform mode")
    if o.settings.init != "encoder":
        raise ValueError("LatentTracer settings need init='encoder' (its starts are the autoencoder's encoding)")
    return _loop(model, o, TRACER_METHOD, initializer=EncoderInit(model.latent_model))


def _aedr(model: ModelHandle, o: MethodOptions) -> AEDRAttributor:
    from genorigin.runtime.methods.aedr import AEDRAttributor, AEDRSettings

    assert model.latent_model is not None  # build_method checked
    if o.encoder is not None:
        raise ValueError("AEDR reconstructs with the autoencoder's own encoder: it takes no fitted encoder")
    compute = "bfloat16" if o.backend == "torch-bf16" else "float32"  # forward passes only: the bf16 backend's mode
    return AEDRAttributor(
        model.generator,
        model.latent_model.roundtrip_in(compute),
        settings=AEDRSettings(compute=compute),
        calibration=o.calibration,
    )


register_method(
    MethodSpec(
        "inversion",
        _inversion,
        "the paper's inversion on the shared loop (presets: fast = encoder starts + L-BFGS, "
        "paper = Adam from random starts)",
        PRESETS,
        "fast",
    )
)
register_method(
    MethodSpec(
        TRACER_METHOD,
        _tracer,
        "LatentTracer: inversion started from the autoencoder's encoding (AutoencoderKL folders)",
        {"tracer": (TRACER_SETTINGS, PAPER_SCHEDULE)},
        "tracer",
        needs_autoencoder=True,
    )
)
register_method(
    MethodSpec(
        "aedr",
        _aedr,
        "AEDR: forward-only double reconstruction, no inversion (AutoencoderKL folders)",
        {},
        needs_autoencoder=True,
    )
)


def make_attributor(model: LatentDiffusionModel, method: str = "inversion", **options: Any) -> AttributionMethod:
    """A method for a latent-diffusion model held in Python (``options``: ``MethodOptions`` fields)."""
    return build_method(method, BareModel(model.generator, model), MethodOptions(**options))
