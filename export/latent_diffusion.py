"""Latent-diffusion decoders: an AutoencoderKL's decoder as the generator, with three attribution methods.

A latent diffusion model's images are D(z) for a latent z the diffusion part produced, so "did this model make
x?" reduces to "is x in the range of the decoder?" (the paper's latent-diffusion case). The latent here is the
diffusion model's latent z_s = (z − shift) · scaling_factor, which is ~N(0, I) for a trained pipeline, so random
starts from N(0, I) are sensible and D receives z_s / scaling_factor + shift, as the pipelines decode.

Methods (recorded in the calibration's ``method`` field):

* ``"inversion-random"``: the paper: Adam from random starts (``genorigin.runtime.attribution.Attributor``).
* ``"inversion-encoder"``: LatentTracer: start from the encoder's posterior mean of the image, Adam with
  lr 0.05 halved every 50 steps, 100 steps (``LatentTracer`` below; the reference for wiring it into the loop).
* ``"aedr"``: forward-only double reconstruction (``genorigin.runtime.aedr``), using ``roundtrip`` below.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from genorigin.export.diffusion import _jsonable, from_local_folder, read_json
from genorigin.export.generator import Generator, LatentSpec, UnitRangeOutput
from genorigin.runtime.inversion import InversionSettings, image_key
from torch import nn

Method = Literal["inversion-random", "inversion-encoder", "aedr"]
METHODS: tuple[str, ...] = ("inversion-random", "inversion-encoder", "aedr")


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


# --------------------------------------------------------------------------------------------- encoder init
class EncoderInit:
    """Initial latents from the encoder: the posterior mean for restart 0, seeded jitter around it for more.

    Plug-in for the inversion loop (see the report: ``initial_latents`` callback); call as
    ``EncoderInit(model)(image C×H×W, restarts) → restarts×latent``.
    """

    def __init__(self, model: LatentDiffusionModel, jitter: float = 0.1) -> None:
        self.model = model
        self.jitter = jitter

    def __call__(self, image: np.ndarray, restarts: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """``rng`` (the loop's per-image generator) is unused: the jitter has its own seed, as LatentTracer's."""
        mean = self.model.encode(image[None])[0]
        rng = np.random.default_rng(image_key(image))
        extra = rng.standard_normal((restarts - 1, *mean.shape), dtype=np.float32) * self.jitter
        return np.concatenate([mean[None], mean[None] + extra]).astype(np.float32)


TRACER_SETTINGS = InversionSettings(
    steps=100, lr=0.05, lr_halve_every=50, init="encoder", restarts=2, halve_starts_at=()
)


def latent_tracer(model: LatentDiffusionModel, settings: InversionSettings = TRACER_SETTINGS, **kwargs: Any) -> Any:
    """LatentTracer through the shared loop: encoder-mean starts, lr halved every 50 steps, 100 steps."""
    from genorigin.runtime.attribution import Attributor

    if settings.init != "encoder":
        raise ValueError("LatentTracer settings need init='encoder'")
    return Attributor(
        model.generator, settings=settings, initializer=EncoderInit(model), method="inversion-encoder", **kwargs
    )


def make_attributor(model: LatentDiffusionModel, method: Method = "inversion-random", **kwargs: Any) -> Any:
    """An object with calibrate(n, alpha=…) and attribute(images) for one of the three methods."""
    if method == "inversion-random":
        from genorigin.runtime.attribution import Attributor
        from genorigin.runtime.inversion import PAPER_SCHEDULE, PAPER_SETTINGS

        kwargs = {"settings": PAPER_SETTINGS, "schedule": PAPER_SCHEDULE, **kwargs}  # random starts: the paper's loop
        return Attributor(model.generator, **kwargs)
    if method == "inversion-encoder":
        return latent_tracer(model, **kwargs)
    if method == "aedr":
        from genorigin.runtime.aedr import AEDRAttributor

        return AEDRAttributor(model.generator, model.roundtrip, **kwargs)
    raise ValueError(f"unknown method {method!r} (choose from {', '.join(METHODS)})")
