"""Resolving a ``--model`` argument to a Generator, its calibration file and a backend."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genorigin.export.adapters import load_generator_file
from genorigin.export.bundled import BUNDLED_MODELS, load_bundled
from genorigin.export.generator import Generator
from genorigin.runtime.attribution import make_backend
from genorigin.runtime.backend import Backend

BACKENDS = ("torch", "torch-cuda", "torch-cuda-graph", "onnxruntime", "onnxruntime-cuda", "tensorrt")


def cache_dir() -> Path:
    """User cache for calibrations and packages of bundled models (the package folder may be read-only)."""
    base = os.environ.get("GENORIGIN_CACHE") or os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "genorigin"


@dataclass
class ResolvedModel:
    generator: Generator
    calibration_path: Path
    source: str
    package_path: Path | None = None
    _package: object | None = field(default=None, repr=False)
    latent_model: Any | None = None  # LatentDiffusionModel for AutoencoderKL folders (encoder init, AEDR)

    def calibration_file(self, method: str = "inversion-random") -> Path:
        """Where this model's calibration for ``method`` lives (the random-start inversion keeps the plain name)."""
        if method == "inversion-random":
            return self.calibration_path
        return self.calibration_path.with_name(self.calibration_path.name.replace(".json", f".{method}.json"))

    def package(self):  # -> AttributionPackage
        """The model's attribution package; PyTorch models are exported once into the user cache."""
        from genorigin.export.package import AttributionPackage, export_generator

        if self._package is None:
            path = (
                self.package_path
                or cache_dir() / "packages" / f"{self.generator.name}-{self.generator.fingerprint()[:12]}"
            )
            if not (path / "manifest.json").exists():
                export_generator(self.generator, path, overwrite=True)
            self._package = AttributionPackage.load(path)
            if self._package.source_fingerprint != self.generator.fingerprint():
                raise ValueError(f"{path}: package was exported from another model")
        return self._package

    def backend(self, name: str, loss: str = "mse", threads: int | None = None) -> Backend:
        if name not in BACKENDS:
            raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
        if name.startswith("onnxruntime"):
            from genorigin.runtime.ort_backend import OrtBackend

            device = "cuda" if name.endswith("cuda") else "cpu"
            return OrtBackend(self.package(), device=device, threads=threads, loss=loss)
        if name == "tensorrt":
            from genorigin.runtime.gpu.tensorrt import TensorRTBackend

            return TensorRTBackend.from_graphs(self.package().root, loss=loss)
        if self.generator.module is None:
            raise ValueError(f"{self.source} is an exported package: use --backend onnxruntime or tensorrt")
        if name == "torch-cuda-graph":
            from genorigin.runtime.gpu.torch_graph import CudaGraphTorchBackend

            return CudaGraphTorchBackend(self.generator, loss=loss)
        return make_backend(self.generator, name, loss)


def _resolve_folder(path: Path, ddim_steps: int) -> ResolvedModel:
    """A diffusers pipeline or model folder (DDIM, consistency, AutoencoderKL), loaded from local files only."""
    from genorigin.export.model_folders import detect_kind, load_model_path

    kind = detect_kind(path)
    calibration = path / "genorigin.calibration.json"
    if kind == "autoencoder":
        from genorigin.export.latent_diffusion import load_latent_diffusion

        ldm = load_latent_diffusion(path)
        return ResolvedModel(ldm.generator, calibration, str(path), latent_model=ldm)
    gen = load_model_path(path, kind=kind, num_steps=ddim_steps)
    if kind == "ddim":
        calibration = path / f"genorigin.ddim{ddim_steps}.calibration.json"
    return ResolvedModel(gen, calibration, str(path))


def resolve_model(spec: str, ddim_steps: int = 50) -> ResolvedModel:
    """A bundled model name, a genorigin model file (.pt), an attribution package or a diffusers folder."""
    if spec in BUNDLED_MODELS:
        gen = load_bundled(spec)
        path = cache_dir() / "calibrations" / f"{spec}-{gen.fingerprint()[:12]}.calibration.json"
        return ResolvedModel(gen, path, f"bundled:{spec}")
    p = Path(spec)
    if p.is_dir() and (p / "manifest.json").exists():
        from genorigin.export.package import AttributionPackage
        from genorigin.runtime.ort_backend import package_generator

        pkg = AttributionPackage.load(p)
        return ResolvedModel(package_generator(pkg), pkg.calibration_path, str(p), p, pkg)
    if p.is_dir():
        return _resolve_folder(p, ddim_steps)
    if not p.exists():
        raise FileNotFoundError(f"model {spec!r} is neither a bundled model ({', '.join(BUNDLED_MODELS)}) nor a path")
    if p.suffix == ".onnx":
        raise ValueError(f"{p}: export ONNX generators first: genorigin export --onnx {p} --out PACKAGE_DIR")
    gen = load_generator_file(p)
    return ResolvedModel(gen, p.with_name(p.name + ".calibration.json"), str(p))
