"""A generator as genorigin sees it: a latent spec, a differentiable forward to [0, 1] images, a fingerprint.

Every model family (GAN, VAE decoder, diffusion sampler, user module) is wrapped into one ``Generator``; the
inversion runtime, the exporters and the calibration only ever talk to this interface.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from genorigin.facts import ImageFacts, centre_crop_box


@dataclass(frozen=True)
class LatentSpec:
    """Per-sample latent shape and its prior (the inversion starts from this prior, as the paper does)."""

    shape: tuple[int, ...]
    distribution: str = "normal"

    def __post_init__(self) -> None:
        if not self.shape or any(int(d) <= 0 for d in self.shape):
            raise ValueError(f"latent shape must be non-empty and positive, got {self.shape}")
        if self.distribution != "normal":
            raise ValueError(f"unsupported latent distribution {self.distribution!r} (only 'normal')")
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` latents as float32 N×shape."""
        return rng.standard_normal((n, *self.shape), dtype=np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "distribution": self.distribution}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LatentSpec:
        return cls(tuple(d["shape"]), d.get("distribution", "normal"))


class UnitRangeOutput(nn.Module):
    """Wraps a module so its output is an image in [0, 1], whatever range the model natively produces."""

    def __init__(self, module: nn.Module, output_range: tuple[float, float]) -> None:
        super().__init__()
        lo, hi = output_range
        if not hi > lo:
            raise ValueError(f"output_range must be (low, high) with high > low, got {output_range}")
        self.inner = module
        self.low = float(lo)
        self.span = float(hi - lo)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        y = self.inner(z)
        if self.low == 0.0 and self.span == 1.0:
            return y
        return (y - self.low) / self.span


@dataclass
class Generator:
    """A model M: z → image, as genorigin sees it.

    ``module`` maps N×latent to N×C×H×W float images in [0, 1] at the attribution resolution and is
    differentiable; it is what the inversion runs and what ``genorigin export`` writes to ONNX. A generator
    that exists only as an exported graph has no module: ``render`` (host z → host images) and a
    ``fingerprint`` recorded at export time stand in for it.
    """

    name: str
    module: nn.Module | None
    latent: LatentSpec
    channels: int
    image_size: tuple[int, int]
    config: dict[str, Any] = field(default_factory=dict)
    family: str = "custom"
    render: Callable[[np.ndarray], np.ndarray] | None = None
    recorded_fingerprint: str | None = None

    def __post_init__(self) -> None:
        if self.module is None and (self.render is None or self.recorded_fingerprint is None):
            raise ValueError("a generator without a torch module needs render and recorded_fingerprint")
        if self.module is not None:
            self.module.eval()
            for p in self.module.parameters():
                p.requires_grad_(False)
        self._fingerprint: str | None = self.recorded_fingerprint

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Differentiable z → image in [0, 1]."""
        if self.module is None:
            raise RuntimeError(f"generator {self.name!r} is an exported graph; use an ONNX Runtime backend")
        return self.module(z)

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0, batch_size: int = 256) -> np.ndarray:
        """``n`` images (N×C×H×W float32 in [0, 1]) from seeded latents: the model's own images."""
        rng = np.random.default_rng(seed)
        z = self.latent.sample(n, rng)
        out = [self._render(z[i : i + batch_size]) for i in range(0, n, batch_size)]
        return np.clip(np.concatenate(out), 0.0, 1.0).astype(np.float32)

    @torch.no_grad()
    def render_latents(self, z: np.ndarray) -> np.ndarray:
        """G(z) for host latents (N×latent float32) → N×C×H×W float32 images in [0, 1], unclipped."""
        return self._render(np.ascontiguousarray(z, dtype=np.float32))

    def _render(self, z: np.ndarray) -> np.ndarray:
        if self.module is None:
            assert self.render is not None
            return self.render(z)
        device = next(iter(self.module.parameters()), torch.empty(0)).device
        return self.module(torch.from_numpy(z).to(device)).cpu().numpy()

    def prepare_image(self, image: np.ndarray | str | Path) -> np.ndarray:
        """Bring an H×W×C uint8 (or float in [0, 1]) image, or an image file, to the attribution input: C×H×W
        float32 in [0, 1].

        Non-square images are centre-cropped to a square, then resized with Pillow's LANCZOS filter. A file is
        read as ``genorigin.images.read_image`` reads it (what is refused and why: docs/inputs.md).
        """
        if isinstance(image, str | Path):
            from genorigin.images import read_image

            return read_image(image, self)[0]
        if image.ndim != 3 or image.shape[2] != self.channels:
            raise ValueError(f"expected an H×W×{self.channels} image for model {self.name!r}, got shape {image.shape}")
        if image.dtype != np.uint8:
            arr = np.asarray(image, dtype=np.float64)
            if not np.isfinite(arr).all():
                raise ValueError("image contains NaN or infinite values")
            if arr.min() < 0.0 or arr.max() > 1.0:
                raise ValueError("float images must lie in [0, 1]")
            image = np.round(arr * 255.0).astype(np.uint8)
        h, w = image.shape[:2]
        target_h, target_w = self.image_size
        if (h, w) != (target_h, target_w):
            left, top, right, bottom = centre_crop_box(w, h)  # the crop ImageFacts.prepared reports
            crop = image[top:bottom, left:right]
            pil = Image.fromarray(crop.squeeze(-1) if self.channels == 1 else crop)
            image = np.asarray(pil.resize((target_w, target_h), Image.Resampling.LANCZOS))
            if image.ndim == 2:
                image = image[:, :, None]
        return (image.astype(np.float32) / 255.0).transpose(2, 0, 1).copy()

    def prepared_facts(self, facts: ImageFacts) -> ImageFacts:
        """``facts`` with the crop and resize ``prepare_image`` applied (what a read records)."""
        return facts.prepared(self.image_size)

    def fingerprint(self) -> str:
        """SHA-256 of the weights, buffers and configuration: identifies the model a calibration belongs to."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            meta = {
                "latent": self.latent.to_dict(),
                "channels": self.channels,
                "image_size": list(self.image_size),
                "config": self.config,
                "family": self.family,
            }
            h.update(json.dumps(meta, sort_keys=True).encode())
            assert self.module is not None
            for key, tensor in sorted(self.module.state_dict().items()):
                h.update(key.encode())
                h.update(str(tuple(tensor.shape)).encode())
                h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "latent": self.latent.to_dict(),
            "channels": self.channels,
            "image_size": list(self.image_size),
            "fingerprint": self.fingerprint(),
            "config": self.config,
        }


def describe_dataclass(obj: Any) -> dict[str, Any]:
    """asdict for config dataclasses, tolerant of plain dicts."""
    return dict(obj) if isinstance(obj, Mapping) else asdict(obj)
