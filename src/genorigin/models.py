"""Resolving a ``--model`` argument to a Generator and the place its calibration lives."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from genorigin.export.adapters import load_generator_file
from genorigin.export.bundled import BUNDLED_MODELS, load_bundled
from genorigin.export.generator import Generator


def cache_dir() -> Path:
    """User cache for calibrations of bundled models (the package folder may be read-only)."""
    base = os.environ.get("GENORIGIN_CACHE") or os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "genorigin"


@dataclass
class ResolvedModel:
    generator: Generator
    calibration_path: Path
    source: str


def resolve_model(spec: str) -> ResolvedModel:
    """A bundled model name, or a genorigin model file (.pt); calibration defaults to a file beside it."""
    if spec in BUNDLED_MODELS:
        gen = load_bundled(spec)
        path = cache_dir() / "calibrations" / f"{spec}-{gen.fingerprint()[:12]}.calibration.json"
        return ResolvedModel(gen, path, f"bundled:{spec}")
    p = Path(spec)
    if p.is_dir():
        raise ValueError(f"{p}: a folder is not a supported model here (expected a bundled name or a .pt file)")
    if not p.exists():
        raise FileNotFoundError(f"model {spec!r} is neither a bundled model ({', '.join(BUNDLED_MODELS)}) nor a file")
    gen = load_generator_file(p)
    return ResolvedModel(gen, p.with_name(p.name + ".calibration.json"), str(p))
