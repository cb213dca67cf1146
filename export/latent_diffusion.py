"""Latent-diffusion decoders: an AutoencoderKL's decoder as the generator, with three attribution methods.

A latent diffusion model's images are D(z) for a latent z the diffusion part produced, so "did this model make
x?" reduces to "is x in the range of the decoder?" (the paper's latent-diffusion case). The latent here is the
diffusion model's latent z_s = (z − shift) · scaling_factor, which is ~N(0, I) for a trained pipeline, so random
starts from N(0, I) are sensible and D receives z_s / scaling_factor + shift, as the pipelines decode.

Methods (recorded in the calibration's ``method`` field; chosen and built in runtime/methods/registry.py, since
export never imports the runtime):

* ``"inversion"``: the paper's inversion on the shared loop (runtime/methods/attribution.py).
* ``"inversion-encoder"``: LatentTracer, started from ``encode`` below (runtime/methods/latent_tracer.py).
* ``"aedr"``: forward-only double reconstruction (runtime/methods/aedr.py), using ``roundtrip`` below.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from genorigin.export.diffusion import _jsonable, from_local_folder, read_json
from genorigin.export.generator import Generator, LatentSpec, UnitRangeOutput
from torch import nn


# --------------------------------------------------------------------------------------------- modules
class LatentDecoder(nn.Module):
    """z_s (N×c×h×w, the diffusion latent) → image in [-1, 1]: post_quant_conv and decoder of an AutoencoderKL."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.post_quant_conv = vae.post_quant_conv
        self.decoder = vae.decoder
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(vae.config.get("shift_factor") or 0.0)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z / self.scaling_factor + self.shift_factor
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)


class LatentEncoder(nn.Module):
    """Image in [0, 1] → posterior mean in the diffusion latent's units, (mean − shift) · scaling_factor."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.encoder = vae.encoder
        self.quant_conv = vae.quant_conv
        self.latent_channels = int(vae.config.latent_channels)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(vae.config.get("shift_factor") or 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x * 2.0 - 1.0)
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        mean = h[:, : self.latent_channels]
        return (mean - self.shift_factor) * self.scaling_factor


@dataclass
class LatentDiffusionModel:
    """The decoder as a Generator, plus the encoder the encoder-init and AEDR methods need."""

    generator: Generator
    encoder: LatentEncoder

    @torch.no_grad()
    def encode(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Posterior means (N×latent) of N×C×H×W images in [0, 1]."""
        parts = [self.encoder(torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size], dtype=np.float32)))
                 for i in range(0, len(images), batch_size)]  # fmt: skip
        return torch.cat(parts).numpy()

    @torch.no_grad()
    def roundtrip(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """D(E(x)) in [0, 1]: one autoencoder reconstruction, the building block of AEDR."""
        z = torch.from_numpy(self.encode(images, batch_size))
        return (
            torch.cat([self.generator.module(z[i : i + batch_size]) for i in range(0, len(z), batch_size)])
            .clamp(0, 1)
            .numpy()
        )

    def roundtrip_in(self, compute: str) -> Callable[[np.ndarray], np.ndarray]:
        """``roundtrip``, or the same on bfloat16 channels-last copies of encoder and decoder
        (``compute="bfloat16"``: AVX-512 BF16/AMX convolutions; images in and out float32). The copies are made
        once, on first use."""
        if compute == "float32":
            return self.roundtrip
        if compute != "bfloat16":
            raise ValueError(f"compute must be float32 or bfloat16, got {compute!r}")
        halves: list[nn.Module] = []

        @torch.no_grad()
        def roundtrip(images: np.ndarray, batch_size: int = 64) -> np.ndarray:
            if not halves:  # channels-last: oneDNN's AMX convolutions want it (2× at 512 px, measured)
                halves.extend(copy.deepcopy(m).to(torch.bfloat16).to(memory_format=torch.channels_last)
                              for m in (self.encoder, self.generator.module))  # fmt: skip
            encoder, decoder = halves
            parts = []
            for i in range(0, len(images), batch_size):
                x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size], dtype=np.float32))
                z = encoder(x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last))
                parts.append(decoder(z.contiguous(memory_format=torch.channels_last)).float().clamp(0, 1))
            return torch.cat(parts).numpy()

        return roundtrip


# --------------------------------------------------------------------------------------------- loading
def _sample_size(size: Any) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _digest(module: nn.Module) -> str:
    h = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def latent_diffusion_from_vae(vae: nn.Module, *, name: str = "autoencoder-kl") -> LatentDiffusionModel:
    """Wrap a diffusers AutoencoderKL: Generator over the scaled latent, and its encoder."""
    cfg = vae.config
    hw = _sample_size(cfg.sample_size)
    down = 2 ** (len(cfg.block_out_channels) - 1)
    if hw[0] % down or hw[1] % down:
        raise ValueError(f"sample_size {hw} is not divisible by the autoencoder's downsampling factor {down}")
    latent = (int(cfg.latent_channels), hw[0] // down, hw[1] // down)
    vae.eval()
    encoder = LatentEncoder(vae).eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    gen = Generator(
        name=name,
        module=UnitRangeOutput(LatentDecoder(vae), (-1.0, 1.0)),
        latent=LatentSpec(latent),
        channels=int(cfg.out_channels),
        image_size=hw,
        # the encoder drives two of the three methods: its weights enter the fingerprint through the config
        config={"architecture": "autoencoder-kl-decoder", "vae": _jsonable(cfg), "encoder_sha256": _digest(encoder)},
        family="latent-diffusion",
    )
    return LatentDiffusionModel(gen, encoder)


def autoencoder_folder(path: str | Path) -> Path:
    """The folder holding the AutoencoderKL config: ``path/vae`` (a pipeline) or ``path`` itself."""
    path = Path(path)
    for folder in (path / "vae", path):
        cfg = folder / "config.json"
        if cfg.is_file():
            cls = read_json(cfg).get("_class_name")
            if cls != "AutoencoderKL":
                raise ValueError(f"{cfg}: unsupported _class_name {cls!r} (expected 'AutoencoderKL')")
            return folder
    raise ValueError(f"{path}: no config.json in {path / 'vae'} or {path} (expected a diffusers AutoencoderKL)")


def load_latent_diffusion(path: str | Path, *, name: str | None = None) -> LatentDiffusionModel:
    """AutoencoderKL.from_pretrained on a local folder (a pipeline's vae/ or the autoencoder folder), offline,
    safetensors only."""
    from diffusers import AutoencoderKL

    folder = autoencoder_folder(path)
    vae = from_local_folder(AutoencoderKL, folder)
    return latent_diffusion_from_vae(vae, name=name or Path(path).name)
