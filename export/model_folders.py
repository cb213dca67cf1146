"""A user's diffusers model folder → the right Generator, with a message naming what is missing otherwise.

Dispatch (offline: only local files are read):

* ``model_index.json`` (a saved pipeline): DDPMPipeline / DDIMPipeline → DDIM through K steps;
  ConsistencyModelPipeline → one-step consistency model; any other pipeline with an AutoencoderKL ``vae``
  component (Stable Diffusion, LDM, …) → the latent-diffusion decoder.
* ``config.json`` (a single model): AutoencoderKL → the decoder; UNet2DModel → the one-step consistency model
  only when asked for (``kind="consistency"``): a bare UNet has no sampler to choose otherwise.
* no model_index.json or config.json but ``unet/`` and ``scheduler/`` → DDIM.

ONNX generator files are handled elsewhere (the lead's ONNX path), not here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from genorigin.export.diffusion import DDIM_SCHEDULERS, load_consistency_folder, load_ddim_folder, read_json
from genorigin.export.generator import Generator
from genorigin.export.latent_diffusion import load_latent_diffusion

Kind = Literal["auto", "ddim", "consistency", "autoencoder"]
DDIM_PIPELINES = ("DDPMPipeline", "DDIMPipeline")
CONSISTENCY_PIPELINES = ("ConsistencyModelPipeline",)


def _component_class(index: dict[str, Any], component: str) -> str | None:
    """The class name of a pipeline component: model_index.json stores ["library", "ClassName"]."""
    entry = index.get(component)
    if isinstance(entry, list | tuple) and len(entry) == 2:
        return entry[1]
    return None


def detect_kind(path: Path) -> Kind:
    """Which adapter a folder needs; raises ValueError naming what is missing or unsupported."""
    if not path.is_dir():
        raise ValueError(f"{path}: not a folder (expected a diffusers pipeline or model folder)")
    index_file, config_file = path / "model_index.json", path / "config.json"
    if index_file.is_file():
        index = read_json(index_file)
        cls = index.get("_class_name")
        if cls in DDIM_PIPELINES:
            return "ddim"
        if cls in CONSISTENCY_PIPELINES:
            return "consistency"
        if _component_class(index, "vae") == "AutoencoderKL":
            return "autoencoder"
        raise ValueError(
            f"{index_file}: unsupported _class_name {cls!r} (supported: {', '.join(DDIM_PIPELINES)}, "
            f"{', '.join(CONSISTENCY_PIPELINES)}, or any pipeline with an AutoencoderKL vae)"
        )
    if config_file.is_file():
        cls = read_json(config_file).get("_class_name")
        if cls == "AutoencoderKL":
            return "autoencoder"
        if cls == "UNet2DModel":
            raise ValueError(
                f"{path}: a bare UNet2DModel has no scheduler: pass kind='consistency' for a one-step consistency "
                "model, or give a folder with unet/ and scheduler/ (DDIM/DDPM) for DDIM"
            )
        raise ValueError(f"{config_file}: unsupported _class_name {cls!r} (expected AutoencoderKL or UNet2DModel)")
    if (path / "unet").is_dir() and (path / "scheduler").is_dir():
        return "ddim"
    raise ValueError(f"{path}: no model_index.json or config.json (not a diffusers pipeline or model folder)")


def load_model_path(
    path: str | Path,
    *,
    kind: Kind = "auto",
    num_steps: int = 50,
    use_checkpoint: bool = True,
    class_label: int | None = None,
    name: str | None = None,
) -> Generator:
    """Load a local diffusers folder as a Generator (DDIM, consistency or AutoencoderKL decoder).

    For the AutoencoderKL's encoder-init and AEDR methods, use ``latent_diffusion.load_latent_diffusion``, which
    also returns the encoder.
    """
    path = Path(path)
    kind = detect_kind(path) if kind == "auto" else kind
    if kind == "ddim":
        if (path / "scheduler").is_dir() and not (path / "scheduler" / "scheduler_config.json").is_file():
            raise ValueError(f"{path}: scheduler/ has no scheduler_config.json (expected one of {DDIM_SCHEDULERS})")
        if (path / "unet").is_dir() and not (path / "unet" / "config.json").is_file():
            raise ValueError(f"{path}: unet/ has no config.json")
        return load_ddim_folder(path, num_steps=num_steps, use_checkpoint=use_checkpoint, name=name)
    if kind == "consistency":
        if (path / "unet").is_dir() and not (path / "unet" / "config.json").is_file():
            raise ValueError(f"{path}: unet/ has no config.json")
        return load_consistency_folder(path, class_label=class_label, name=name)
    if kind == "autoencoder":
        return load_latent_diffusion(path, name=name).generator
    raise ValueError(f"unknown kind {kind!r} (auto, ddim, consistency or autoencoder)")
