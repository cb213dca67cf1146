"""Resolving a ``--model`` argument: the one place that decides what kind of model it names, and where that
model's calibration, encoder and exported package live.

Kinds (``MODEL_KINDS``, also the ``--model`` help): a bundled name, a genorigin ``.pt`` model file, an
attribution package folder (``genorigin export``), a local diffusers folder. Backends and methods are chosen
by name in ``runtime/backends/registry.py`` and ``runtime/methods/registry.py``; this module only says where things are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from genorigin.errors import CliError
from genorigin.export.bundled import BUNDLED_MODELS, assets_dir, load_bundled
from genorigin.files import cache_dir
from genorigin.runtime.decide.calibration import canonical_method

if TYPE_CHECKING:
    from genorigin.export.generator import Generator
    from genorigin.export.latent_diffusion import LatentDiffusionModel
    from genorigin.export.package import AttributionPackage
    from genorigin.runtime.loop.backend import Backend

MODEL_KINDS = {
    "bundled": f"a bundled model name ({', '.join(BUNDLED_MODELS)}; docs/models.md)",
    "file": "a genorigin .pt model file (loaded with weights_only=True)",
    "package": "an attribution package folder (made by genorigin export; runs on ONNX Runtime/TensorRT)",
    "diffusers": "a local diffusers folder: DDIM/DDPM or consistency pipeline, or AutoencoderKL (docs/families.md)",
}


@dataclass
class ResolvedModel:
    """A model and the places that belong to it."""

    generator: Generator
    calibration_path: Path  # the calibration of the default method ("inversion")
    source: str
    kind: str  # a MODEL_KINDS key
    encoder_path: Path  # where its fitted encoder (fast preset's starts) is read from and saved to
    package_path: Path | None = None
    _package: AttributionPackage | None = field(default=None, repr=False)
    latent_model: LatentDiffusionModel | None = None  # AutoencoderKL folders: the encoder init and AEDR need it

    def calibration_file(self, method: str = "inversion") -> Path:
        """Where this model's calibration for ``method`` lives (the shared inversion loop keeps the plain name)."""
        method = canonical_method(method)
        if method == "inversion":
            return self.calibration_path
        return self.calibration_path.with_name(self.calibration_path.name.replace(".json", f".{method}.json"))

    def package(self) -> AttributionPackage:
        """The model's attribution package; PyTorch models are exported once into the user cache."""
        from genorigin.export.package import exported_once

        if self._package is None:
            path = self.package_path or cache_dir("packages") / f"{self.generator.name}-{self._fp12()}"
            self._package = exported_once(self.generator, path)
        return self._package

    def backend(self, name: str | None = None, loss: str = "mse", threads: int | None = None) -> Backend:
        """``runtime.backends.registry.make_backend`` for this model (default: torch for PyTorch models, else ORT)."""
        from genorigin.runtime.backends.registry import make_backend

        return make_backend(self, name, loss, threads)

    def _fp12(self) -> str:
        return self.generator.fingerprint()[:12]


def _resolve_folder(path: Path, ddim_steps: int) -> ResolvedModel:
    """A diffusers pipeline or model folder (DDIM, consistency, AutoencoderKL), loaded from local files only."""
    from genorigin.export.model_folders import detect_kind, load_model_path

    kind = detect_kind(path)
    calibration, encoder = path / "genorigin.calibration.json", path / "genorigin.encoder.pt"
    if kind == "autoencoder":
        from genorigin.export.latent_diffusion import load_latent_diffusion

        ldm = load_latent_diffusion(path)
        return ResolvedModel(ldm.generator, calibration, str(path), "diffusers", encoder, latent_model=ldm)
    gen = load_model_path(path, kind=kind, num_steps=ddim_steps)
    if kind == "ddim":  # the generator is the sampler through K steps: another K is another model
        calibration = path / f"genorigin.ddim{ddim_steps}.calibration.json"
        encoder = path / f"genorigin.ddim{ddim_steps}.encoder.pt"
    return ResolvedModel(gen, calibration, str(path), "diffusers", encoder)


def bundled_encoder_path(name: str, generator: Generator) -> Path:
    """The encoder shipped beside a bundled model if the package has one, else its place in the user cache."""
    shipped = assets_dir() / "models" / f"{name}.encoder.pt"
    return shipped if shipped.exists() else cache_dir("encoders") / f"{name}-{generator.fingerprint()[:12]}.encoder.pt"


def model_name(spec: str) -> str:
    """The name a model goes by when several are used at once (``serve``, ``attribute --model A --model B``):
    the bundled name, or the file or folder name without its suffix."""
    if spec in BUNDLED_MODELS:
        return spec
    path = Path(spec.rstrip("/"))
    return path.stem if path.suffix == ".pt" else path.name


def portable_spec(spec: str) -> str:
    """``spec`` as another process resolves it whatever its working folder (a Ray actor or replica): a bundled
    name, or a spec naming no file, as it is; a path made absolute."""
    path = Path(spec).expanduser()
    return spec if spec in BUNDLED_MODELS or not path.exists() else str(path.resolve())


def resolve_model(spec: str, ddim_steps: int = 50, threads: int | None = None) -> ResolvedModel:
    """A bundled model name, a genorigin model file (.pt), an attribution package or a diffusers folder
    (``threads``: ONNX Runtime threads of a package's forward session)."""
    if spec in BUNDLED_MODELS:
        gen = load_bundled(spec)
        path = cache_dir("calibrations") / f"{spec}-{gen.fingerprint()[:12]}.calibration.json"
        return ResolvedModel(gen, path, f"bundled:{spec}", "bundled", bundled_encoder_path(spec, gen))
    p = Path(spec)
    if not p.exists():
        raise FileNotFoundError(f"{spec} does not exist (and is not a bundled model: {', '.join(BUNDLED_MODELS)})")
    if p.is_dir() and (p / "manifest.json").exists():
        from genorigin.export.package import ENCODER_GRAPH, AttributionPackage
        from genorigin.runtime.backends.ort import package_generator

        pkg = AttributionPackage.load(p)
        return ResolvedModel(
            package_generator(pkg, threads), pkg.calibration_path, str(p), "package", p / ENCODER_GRAPH, p, pkg
        )
    if p.is_dir():
        return _resolve_folder(p, ddim_steps)
    if p.suffix == ".onnx":
        raise ValueError(f"{p}: export ONNX generators first: genorigin export --onnx {p} --out PACKAGE_DIR")
    from genorigin.export.adapters import load_generator_file  # torch: only once a model file is loaded

    gen = load_generator_file(p)
    return ResolvedModel(
        gen, p.with_name(p.name + ".calibration.json"), str(p), "file", p.with_name(p.name + ".encoder.pt")
    )


NAMED = re.compile(r"^([A-Za-z0-9_.-]+)=(.+)$")  # NAME=SPEC, NAME=PATH


def named_specs(values: list[str]) -> list[tuple[str, str]]:
    """Repeated ``--model [NAME=]SPEC`` → (name, spec) pairs; a name defaults to ``models.model_name(spec)``
    (a path that exists is a spec even if it contains ``=``)."""
    pairs = []
    for v in values:
        m = NAMED.match(v)
        pairs.append((m.group(1), m.group(2)) if m and not Path(v).exists() else (model_name(v), v))
    names = [n for n, _ in pairs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise CliError(f"two models named {', '.join(twice)}: name them apart with --model NAME=SPEC")
    return pairs


def per_model(values: list[str], names: list[str], flag: str) -> dict[str, str]:
    """Repeated ``NAME=PATH`` values (``--calibration``, ``--encoder``) by model name; a bare PATH only with one
    model; one value per model."""
    out: dict[str, str] = {}
    for v in values:
        m = NAMED.match(v)
        if m and m.group(1) in names:
            name, path = m.group(1), m.group(2)
        elif len(names) == 1:
            name, path = names[0], v
        else:
            raise CliError(f"{flag} {v!r}: with several models write NAME=PATH (models: {', '.join(names)})")
        if name in out:
            raise CliError(f"{flag} given twice for model {name!r}")
        out[name] = path
    return out
