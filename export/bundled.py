"""The small generators and held-out real photos shipped inside the package (no downloads)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from genorigin.export.generator import Generator

BUNDLED_MODELS = ("dcgan_a", "dcgan_b", "vae")


def assets_dir() -> Path:
    return Path(str(resources.files("genorigin") / "assets"))


def bundled_model_path(name: str) -> Path:
    if name not in BUNDLED_MODELS:
        raise KeyError(f"unknown bundled model {name!r}; choose one of {', '.join(BUNDLED_MODELS)}")
    return assets_dir() / "models" / f"{name}.pt"


def load_bundled(name: str) -> Generator:
    """One of the bundled 32×32 generators by name."""
    from genorigin.export.adapters import load_generator_file  # torch: not for listing the names

    return load_generator_file(bundled_model_path(name))


def real_images_dir() -> Path:
    """Held-out real 32×32 photo crops, never used to train the bundled models."""
    return assets_dir() / "images" / "real"
