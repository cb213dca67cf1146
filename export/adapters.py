"""Adapters: turn a model in some native form into a ``Generator``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from genorigin.export.architectures import DCGANConfig, DCGANGenerator, VAEConfig, VAEDecoder
from genorigin.export.generator import Generator, LatentSpec, UnitRangeOutput
from torch import nn

BUNDLED_FORMAT = "genorigin-bundled-v1"
Config = TypeVar("Config")


def _config(cls: type[Config], config: Mapping[str, Any] | None, where: str) -> Config:
    """``cls(**config)``, with an unknown key reported as one ValueError naming it, not a TypeError traceback."""
    known = sorted(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
    unknown = sorted(set(config or {}) - set(known))
    if unknown:
        keys = ", ".join(map(repr, unknown))
        raise ValueError(f"{where}: unknown config key {keys} for {cls.__name__} (known: {', '.join(known)})")
    return cls(**(config or {}))


def _load_state(module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    try:
        module.load_state_dict(dict(state_dict), strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ValueError(f"{what}: state dict does not match the architecture ({first})") from exc


def dcgan_from_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    config: Mapping[str, Any] | None = None,
    name: str = "dcgan",
    *,
    source: str | None = None,
) -> Generator:
    """DCGAN generator (tanh output in [-1, 1]) from its state dict; ``source`` (a file) prefixes errors."""
    cfg = _config(DCGANConfig, config, source or f"DCGAN {name!r}")
    net = DCGANGenerator(cfg)
    _load_state(net, state_dict, f"DCGAN {name!r}")
    return Generator(
        name=name,
        module=UnitRangeOutput(net, (-1.0, 1.0)),
        latent=LatentSpec((cfg.latent_dim, 1, 1)),
        channels=cfg.channels,
        image_size=(cfg.image_size, cfg.image_size),
        config={"architecture": "dcgan", **cfg.to_dict()},
        family="gan",
    )


def vae_decoder_from_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    config: Mapping[str, Any] | None = None,
    name: str = "vae",
    *,
    source: str | None = None,
) -> Generator:
    """VAE decoder (sigmoid output in [0, 1]) from its state dict; the latent is the VAE's Gaussian latent."""
    cfg = _config(VAEConfig, config, source or f"VAE decoder {name!r}")
    net = VAEDecoder(cfg)
    _load_state(net, state_dict, f"VAE decoder {name!r}")
    return Generator(
        name=name,
        module=UnitRangeOutput(net, (0.0, 1.0)),
        latent=LatentSpec((cfg.latent_dim,)),
        channels=cfg.channels,
        image_size=(cfg.image_size, cfg.image_size),
        config={"architecture": "vae_decoder", **cfg.to_dict()},
        family="vae",
    )


def from_module(
    module: nn.Module,
    latent_shape: Sequence[int],
    *,
    output_range: tuple[float, float] = (-1.0, 1.0),
    name: str = "custom",
    config: Mapping[str, Any] | None = None,
) -> Generator:
    """Any user ``nn.Module`` z → image plus its latent spec (Python API).

    The module is run once on a zero latent to learn the image shape and to fail early on a bad spec.
    """
    latent = LatentSpec(tuple(latent_shape))
    wrapped = UnitRangeOutput(module, output_range).eval()
    with torch.no_grad():
        try:
            probe = wrapped(torch.zeros((1, *latent.shape)))
        except Exception as exc:
            raise ValueError(f"model {name!r} failed on a latent of shape {latent.shape}: {exc}") from exc
    if probe.ndim != 4:
        raise ValueError(f"model {name!r} must return N×C×H×W images, got shape {tuple(probe.shape)}")
    return Generator(
        name=name,
        module=wrapped,
        latent=latent,
        channels=int(probe.shape[1]),
        image_size=(int(probe.shape[2]), int(probe.shape[3])),
        config={"architecture": type(module).__name__, **dict(config or {})},
        family="custom",
    )


def load_generator_file(path: str | Path) -> Generator:
    """A genorigin model file (``.pt`` in the bundled format), loaded with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"{path}: not a loadable genorigin model file ({type(exc).__name__}: {first})") from exc
    if not isinstance(payload, dict) or payload.get("format") != BUNDLED_FORMAT:
        raise ValueError(f"{path}: not a genorigin model file (expected format {BUNDLED_FORMAT!r})")
    kind = payload.get("kind")
    name = str(payload.get("name", path.stem))
    if kind == "dcgan":
        return dcgan_from_state_dict(payload["state_dict"], payload.get("config"), name=name, source=str(path))
    if kind == "vae":
        return vae_decoder_from_state_dict(payload["state_dict"], payload.get("config"), name=name, source=str(path))
    raise ValueError(f"{path}: unknown model kind {kind!r} (expected 'dcgan' or 'vae')")
