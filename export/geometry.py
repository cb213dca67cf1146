"""T_θ ∘ M: a generator seen through a platform's crop and resample, with the geometry θ as extra latents.

A platform crops a window out of the model's frame and resamples it to its own pixel size (a thumbnail, a
feed width, an aspect ratio). ``viewed_generator(M, (h, w))`` is a ``Generator`` whose latent is (z, θ) and
whose output is the h×w image that window makes: the shared inversion loop, both optimisers and every backend
invert it unchanged, so searching over the geometry costs no new machinery.

θ (4 numbers, in ``GeometryUnits``) moves the window away from the one the received size implies (θ = 0:
centred, the largest window of the image's aspect ratio): its centre by (θ0, θ1), its size by the factor
exp(θ2) and its aspect by exp(±θ3/2) per side, each in ``GeometryUnits``. θ ~ N(0, 1), what the loop's fresh
starts draw, is a plausible departure from the implied window.

The resampling is Pillow's: a separable filter stretched by the downscale factor (antialiased, as
``Image.resize`` does), its taps renormalised inside the frame, for an arbitrary sub-pixel window (``box=``).
It is built from matrices (pointwise ops and MatMul), so the exporter's standard VJP rules differentiate it
(ONNX Resize takes no differentiable window and GridSample no antialiasing).
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from genorigin.export.generator import Generator, LatentSpec
from torch import nn

THETA_DIM = 4
FILTERS = ("bicubic", "bilinear")  # Pillow's BICUBIC (Keys, a = -0.5) and BILINEAR (triangle)
SUPPORT = {"bicubic": 2.0, "bilinear": 1.0}


@dataclass(frozen=True)
class GeometryUnits:
    """How many model pixels (offset) and log-units (scale, aspect) one latent unit of θ moves the window.

    Chosen so that the platform family's windows (runtime/robust/transforms.py) lie within a few units of θ = 0, as
    the latent's N(0, 1) draws do, and a unit step in θ changes the image about as much as one in z (L-BFGS
    steps are at most 2 long in latent space); recorded in the view's config, so in its fingerprint.
    """

    offset: float = 2.0
    log_scale: float = 0.1
    log_aspect: float = 0.1

    def scaled(self, theta: torch.Tensor) -> torch.Tensor:
        return theta * theta.new_tensor([self.offset, self.offset, self.log_scale, self.log_aspect])


def kernel(name: str, t: torch.Tensor) -> torch.Tensor:
    """The filter's weight at distance ``t`` (in source pixels after stretching): Pillow's definitions."""
    a = t.abs()
    if name == "bilinear":
        return (1.0 - a).clamp(min=0.0)
    if name == "bicubic":  # Keys' cubic convolution with a = -0.5, C¹ (its gradient has no jumps)
        c = -0.5
        near = ((c + 2.0) * a - (c + 3.0)) * a * a + 1.0
        far = ((a - 5.0) * a + 8.0) * a * c - 4.0 * c
        return torch.where(a < 1.0, near, torch.where(a < 2.0, far, torch.zeros_like(a)))
    raise ValueError(f"unknown resampling filter {name!r}; choose one of {', '.join(FILTERS)}")


def resample_matrix(start: torch.Tensor, length: torch.Tensor, out: int, size: int, filter: str) -> torch.Tensor:
    """N×out×size weights taking a size-pixel axis to ``out`` pixels sampled over [start, start + length).

    As Pillow's ``resize(box=…)``: output pixel j sits at start + (j + ½)·length/out, the filter is stretched
    by max(1, length/out) when shrinking, and weights are renormalised over the taps inside [0, size).
    ``start``/``length``: (N,) in source pixels, differentiable.
    """
    step = length / out
    centre = start[:, None] + (torch.arange(out, dtype=start.dtype, device=start.device) + 0.5) * step[:, None]
    spread = step.clamp(min=1.0)[:, None, None]
    taps = torch.arange(size, dtype=start.dtype, device=start.device) + 0.5
    w = kernel(filter, (taps[None, None, :] - centre[:, :, None]) / spread)
    total = w.sum(-1, keepdim=True)
    return w / torch.where(total.abs() > 1e-6, total, torch.ones_like(total))


def implied_window(out_size: tuple[int, int], frame: tuple[int, int]) -> tuple[float, float]:
    """(height, width) in model pixels of θ = 0's window: the largest of the received image's aspect ratio."""
    h, w = out_size
    fh, fw = frame
    fit = min(fh / h, fw / w)
    return h * fit, w * fit


class PlatformView(nn.Module):
    """(z, θ) → the h×w image a platform's crop-and-resample of M(z) gives: T_θ(M(z))."""

    def __init__(
        self,
        model: nn.Module,
        latent_shape: tuple[int, ...],
        frame: tuple[int, int],
        out_size: tuple[int, int],
        filter: str = "bicubic",
        units: GeometryUnits = GeometryUnits(),
    ) -> None:
        super().__init__()
        if filter not in FILTERS:
            raise ValueError(f"unknown resampling filter {filter!r}; choose one of {', '.join(FILTERS)}")
        if min(out_size) < 1:
            raise ValueError(f"output size must be positive, got {out_size}")
        self.model = model
        self.latent_shape = tuple(latent_shape)
        self.latent_dim = math.prod(self.latent_shape)
        self.frame = frame
        self.out_size = out_size
        self.filter = filter
        self.units = units
        self.base_h, self.base_w = implied_window(out_size, frame)

    def window(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(top, left, height, width) of each sample's window in model pixels, from θ (N×4 latent units)."""
        dy, dx, log_s, log_a = self.units.scaled(theta).unbind(1)
        height = self.base_h * torch.exp(log_s - 0.5 * log_a)
        width = self.base_w * torch.exp(log_s + 0.5 * log_a)
        top = self.frame[0] / 2 + dy - height / 2
        left = self.frame[1] / 2 + dx - width / 2
        return top, left, height, width

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        n = latent.shape[0]
        z = latent[:, : self.latent_dim].reshape(n, *self.latent_shape)
        top, left, height, width = self.window(latent[:, self.latent_dim :])
        image = self.model(z)
        rows = resample_matrix(top, height, self.out_size[0], self.frame[0], self.filter)
        cols = resample_matrix(left, width, self.out_size[1], self.frame[1], self.filter)
        return rows[:, None] @ image @ cols[:, None].transpose(-1, -2)


@dataclass(frozen=True)
class Geometry:
    """Where a received image sits in the model's frame: its window (model pixels) and its output size."""

    top: float
    left: float
    height: float
    width: float
    out_height: int
    out_width: int

    @property
    def scale(self) -> float:
        """Received pixels per model pixel (geometric mean of the two axes): < 1 a downscale, > 1 an upscale."""
        return math.sqrt(self.out_height / self.height * self.out_width / self.width)

    @property
    def aspect(self) -> float:
        """How much wider than tall the window is, relative to the model's frame (1: the frame's own aspect)."""
        return self.width / self.height

    def to_dict(self) -> dict[str, Any]:
        return {**{k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()},
                "scale": round(self.scale, 4), "aspect": round(self.aspect, 4)}  # fmt: skip


def viewed_generator(base: Generator, out_size: tuple[int, int], filter: str = "bicubic",
                     units: GeometryUnits = GeometryUnits()) -> Generator:  # fmt: skip
    """``base`` as a platform serves it at ``out_size`` (H, W): latent (z, θ) flattened, output H×W."""
    if base.module is None:
        raise ValueError(f"generator {base.name!r} is an exported graph: the platform view needs its torch module")
    view = PlatformView(base.module, base.latent.shape, base.image_size, out_size, filter, units)
    return Generator(
        name=f"{base.name}@{out_size[0]}x{out_size[1]}",
        module=view,
        latent=LatentSpec((view.latent_dim + THETA_DIM,)),
        channels=base.channels,
        image_size=tuple(out_size),
        config={"view_of": base.fingerprint(), "filter": filter, "units": asdict(units)},
        family=base.family,
    )


def geometry_of(view: PlatformView, theta: np.ndarray) -> Geometry:
    """The window θ (4 latent units) stands for, as plain numbers for a result."""
    with torch.no_grad():
        top, left, height, width = (float(v) for v in view.window(torch.as_tensor(theta, dtype=torch.float64)[None]))
    return Geometry(top, left, height, width, *view.out_size)


def to_frame(image: np.ndarray, frame: tuple[int, int]) -> np.ndarray:
    """A received C×H×W image drawn into the model's frame at the window its size implies (θ = 0), bilinear,
    borders extended: what the encoders see (they take model-size images)."""
    _, h, w = image.shape
    rows, cols, margin = _frame_samplers(h, w, frame)
    padded = np.pad(np.asarray(image, np.float64), ((0, 0), (margin, margin), (margin, margin)), mode="edge")
    out = rows @ padded @ cols.T
    return np.clip(out, 0.0, 1.0).astype(np.float32)


@functools.lru_cache(maxsize=4096)
def _frame_samplers(h: int, w: int, frame: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, int]:
    """``to_frame``'s two bilinear samplers for an H×W image (edge-padded by ``margin``), cached by size."""
    fit = min(frame[0] / h, frame[1] / w)  # model pixels per received pixel in the implied window
    margin = int(np.ceil(max(frame[0] / fit - h, frame[1] / fit - w) / 2)) + 2
    axes = []
    for side, received in zip(frame, (h, w)):
        length = side / fit  # the frame's extent in received pixels, centred on the image
        start = torch.tensor([margin + (received - length) / 2], dtype=torch.float64)
        matrix = resample_matrix(start, torch.tensor([length], dtype=torch.float64), side, received + 2 * margin,
                                 "bilinear")[0]  # fmt: skip
        axes.append(matrix.numpy())
    return axes[0], axes[1], margin


def theta_for(window: tuple[float, float, float, float], out_size: tuple[int, int], frame: tuple[int, int],
              units: GeometryUnits = GeometryUnits()) -> np.ndarray:  # fmt: skip
    """θ (latent units) of a (top, left, height, width) window served at ``out_size``: the inverse of
    ``PlatformView.window``, for a transform whose window is known (encoder training, tests)."""
    top, left, height, width = window
    base_h, base_w = implied_window(out_size, frame)
    log_s = 0.5 * math.log(height * width / (base_h * base_w))
    log_a = math.log(width / base_w) - math.log(height / base_h)
    dy, dx = top + height / 2 - frame[0] / 2, left + width / 2 - frame[1] / 2
    return np.array([dy / units.offset, dx / units.offset, log_s / units.log_scale, log_a / units.log_aspect],
                    dtype=np.float32)  # fmt: skip
