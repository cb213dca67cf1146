"""StyleGAN2 generators written from the paper (Karras et al., CVPR 2020), invertible in z, w or w+ space.

Mapping MLP z → w (pixel norm, equalised learning rate), synthesis from a learned constant through modulated,
demodulated 3×3 convolutions with skip-connected ToRGB outputs. Two sizes from one code path: the small
default (one width, bilinear upsampling, noise off) the tests use, and :func:`StyleGANConfig.config_f`, the
published config F (8-layer 512-wide mapping, channels min(32768 / resolution, 512), FIR [1, 3, 3, 1]
upsampling of features and of the RGB skips, per-layer noise inputs). Noise inputs are FIXED buffers, as in
the paper's StyleGAN case: the generator must be a deterministic function of its latent to be inverted.

This is written from the paper's description, not NVIDIA's code: official checkpoints do not load into it.
Weights come from ``stylegan_from_state_dict`` (a state dict of this module) or ``random_stylegan`` (seeded
random initialisation, for tests and benchmarks).

w space: the latent becomes u with w = w_avg + w_std ⊙ u, where w_avg and w_std are per-dimension statistics of
mapping(z) over 4096 seeded z (buffers, so in the fingerprint). Adam on u is Adam on w up to a fixed per-dimension
scale, and random starts u ~ N(0, I) are the Gaussian approximation of the w distribution. w+ space: one such u
per synthesis layer (``num_ws`` × w_dim), the usual space for inverting real images into StyleGAN2.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from genorigin.export.generator import Generator, LatentSpec, UnitRangeOutput
from torch import nn

Space = Literal["z", "w", "w+"]
FIR = (1.0, 3.0, 3.0, 1.0)  # the paper's upsampling filter (separable; normalised to gain 4 for ×2)
W_STATS_SAMPLES = 4096
W_STATS_SEED = 20_240_613
LRELU_GAIN = math.sqrt(2.0)


@dataclass(frozen=True)
class StyleGANConfig:
    """Shape of the generator: image_size must be a power of two ≥ 4."""

    z_dim: int = 64
    w_dim: int = 64
    mapping_layers: int = 4
    image_size: int = 32
    channels: int = 3
    width: int = 32
    use_noise: bool = False
    mapping_lr_mul: float = 0.01
    output_scale: float = 0.25  # keeps a randomly initialised generator's images mostly inside [-1, 1]
    channel_base: int = 0  # > 0: channels at resolution r are min(channel_base // r, channel_max), else width
    channel_max: int = 512
    fir: bool = False  # FIR [1, 3, 3, 1] upsampling (config F) instead of bilinear
    noise_strength: float = 0.0  # initial per-layer noise strength (learned in the paper, 0 at its start)

    def __post_init__(self) -> None:
        if self.image_size < 4 or self.image_size & (self.image_size - 1):
            raise ValueError(f"image_size must be a power of two ≥ 4, got {self.image_size}")

    @classmethod
    def config_f(cls, image_size: int = 256, **changes: Any) -> StyleGANConfig:
        """StyleGAN2 config F at ``image_size``: 512-d z and w, 8 mapping layers, channels 32768 / r capped at
        512, FIR upsampling, noise inputs on (fixed buffers; strength 0.1 here, since weights are random), output
        scale 0.1 (random weights: images inside [-1, 1], none clipped in a seeded check)."""
        base: dict[str, Any] = {"z_dim": 512, "w_dim": 512, "mapping_layers": 8, "image_size": image_size}
        base.update(channel_base=32768, channel_max=512, fir=True, use_noise=True, noise_strength=0.1, output_scale=0.1)
        return cls(**{**base, **changes})

    def channels_at(self, resolution: int) -> int:
        return min(self.channel_base // resolution, self.channel_max) if self.channel_base else self.width

    @property
    def num_ws(self) -> int:
        """Styles the synthesis reads: one per conv layer and per ToRGB, ToRGB sharing the next block's."""
        return 2 * int(math.log2(self.image_size)) - 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class EqualLinear(nn.Module):
    """Linear layer with the equalised learning rate: weights stored N(0, 1/lr_mul²), scaled at run time."""

    def __init__(self, n_in: int, n_out: int, bias_init: float = 0.0, lr_mul: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in) / lr_mul)
        self.bias = nn.Parameter(torch.full((n_out,), float(bias_init) / lr_mul))
        self.scale = lr_mul / math.sqrt(n_in)
        self.lr_mul = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class MappingNetwork(nn.Module):
    """z → w: pixel norm, then an MLP with leaky ReLU."""

    def __init__(self, config: StyleGANConfig) -> None:
        super().__init__()
        dims = [config.z_dim] + [config.w_dim] * config.mapping_layers
        self.layers = nn.ModuleList(
            EqualLinear(a, b, lr_mul=config.mapping_lr_mul) for a, b in itertools.pairwise(dims)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)
        for layer in self.layers:
            x = F.leaky_relu(layer(x), 0.2) * LRELU_GAIN
        return x


class Upsample2x(nn.Module):
    """×2 upsampling of ``channels`` channels: FIR [1, 3, 3, 1] after zero insertion (the paper; a depthwise
    transposed convolution, zero-padded at the borders) or bilinear."""

    def __init__(self, fir: bool, channels: int = 1) -> None:
        super().__init__()
        f = torch.tensor(FIR)
        kernel = (torch.outer(f, f) / f.sum() ** 2 * 4.0).expand(channels, 1, 4, 4).contiguous()
        self.register_buffer("kernel", kernel, persistent=False)  # static shape: exporters need it
        self.fir = fir

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fir:
            return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return F.conv_transpose2d(x, self.kernel, stride=2, padding=1, groups=self.kernel.shape[0])


class ModulatedConv2d(nn.Module):
    """Per-sample style modulation of the conv weights and weight demodulation (StyleGAN2)."""

    def __init__(self, n_in: int, n_out: int, kernel: int, w_dim: int, demodulate: bool = True) -> None:
        super().__init__()
        self.affine = EqualLinear(w_dim, n_in, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(n_out, n_in, kernel, kernel))
        self.scale = 1.0 / math.sqrt(n_in * kernel * kernel)
        self.demodulate = demodulate
        self.padding = kernel // 2

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Modulate the input, convolve, demodulate the output: StyleGAN2's non-fused form, equal to modulating
        the weights per sample but one ordinary batched convolution (grouped convolutions are slow on CPU)."""
        style = self.affine(w)  # N × in
        weight = self.scale * self.weight
        y = F.conv2d(x * style[:, :, None, None], weight, padding=self.padding)
        if self.demodulate:
            # Σ over in, k, k of (weight · style)² = style² @ Σ_k weight²ᵀ
            demod = torch.rsqrt(style.square() @ weight.square().sum(dim=(2, 3)).t() + 1e-8)  # N × out
            y = y * demod[:, :, None, None]
        return y


class StyleLayer(nn.Module):
    """Optional ×2 upsampling, modulated 3×3 conv, fixed noise (off by default), bias, leaky ReLU."""

    def __init__(
        self, n_in: int, n_out: int, w_dim: int, resolution: int, upsample: bool, seed: int, fir: bool = False
    ) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(n_in, n_out, 3, w_dim)
        self.upsample = Upsample2x(fir, n_in) if upsample else None
        self.bias = nn.Parameter(torch.zeros(n_out))
        self.noise_strength = nn.Parameter(torch.zeros(()))
        noise = torch.randn((1, 1, resolution, resolution), generator=torch.Generator().manual_seed(seed))
        self.register_buffer("noise", noise)
        self.use_noise = False

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.upsample is not None:
            x = self.upsample(x)
        x = self.conv(x, w)
        if self.use_noise:
            x = x + self.noise_strength * self.noise
        return F.leaky_relu(x + self.bias[None, :, None, None], 0.2) * LRELU_GAIN


class ToRGB(nn.Module):
    """Modulated 1×1 conv to image channels, without demodulation (StyleGAN2)."""

    def __init__(self, n_in: int, channels: int, w_dim: int) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(n_in, channels, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.conv(x, w) + self.bias[None, :, None, None]


class SynthesisNetwork(nn.Module):
    """w → image (nominally in [-1, 1]): constant 4×4 input, two style layers per resolution, skip ToRGBs.

    ``w`` is N × w_dim (every layer the same style) or N × num_ws × w_dim (w+: a style per layer, indexed as
    in the paper: conv layers in order, each ToRGB with the next block's first conv).
    """

    def __init__(self, config: StyleGANConfig) -> None:
        super().__init__()
        wd, ch = config.w_dim, config.channels_at
        self.output_scale = config.output_scale
        self.const = nn.Parameter(torch.randn(1, ch(4), 4, 4))
        self.layers = nn.ModuleList([StyleLayer(ch(4), ch(4), wd, 4, upsample=False, seed=0)])
        self.to_rgb = nn.ModuleList([ToRGB(ch(4), config.channels, wd)])
        self.upsample_rgb = Upsample2x(config.fir, config.channels)
        res, seed = 8, 1
        while res <= config.image_size:
            self.layers.append(StyleLayer(ch(res // 2), ch(res), wd, res, upsample=True, seed=seed, fir=config.fir))
            self.layers.append(StyleLayer(ch(res), ch(res), wd, res, upsample=False, seed=seed + 1))
            self.to_rgb.append(ToRGB(ch(res), config.channels, wd))
            res, seed = res * 2, seed + 2
        for layer in self.layers:
            layer.use_noise = config.use_noise
            layer.noise_strength.data.fill_(config.noise_strength)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        def style(i: int) -> torch.Tensor:
            return w[:, i] if w.dim() == 3 else w

        x = self.const.expand(w.shape[0], -1, -1, -1)
        x = self.layers[0](x, style(0))
        img = self.to_rgb[0](x, style(1))
        for i, rgb in enumerate(self.to_rgb[1:]):
            x = self.layers[1 + 2 * i](x, style(1 + 2 * i))
            x = self.layers[2 + 2 * i](x, style(2 + 2 * i))
            img = self.upsample_rgb(img) + rgb(x, style(3 + 2 * i))
        return img * self.output_scale


class StyleGANGenerator(nn.Module):
    """z → synthesis(mapping(z)): the z-space generator."""

    def __init__(self, config: StyleGANConfig = StyleGANConfig()) -> None:
        super().__init__()
        self.config = config
        self.mapping = MappingNetwork(config)
        self.synthesis = SynthesisNetwork(config)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.synthesis(self.mapping(z))


class WSpaceSynthesis(nn.Module):
    """u → synthesis(w_avg + w_std ⊙ u): inversion in w space (u: N × w_dim) or w+ space (u: N × num_ws ×
    w_dim, ``plus``), skipping the mapping."""

    def __init__(self, net: StyleGANGenerator, plus: bool = False) -> None:
        super().__init__()
        self.net = net
        self.plus = plus
        with torch.no_grad():
            rng = torch.Generator().manual_seed(W_STATS_SEED)
            w = net.mapping(torch.randn(W_STATS_SAMPLES, net.config.z_dim, generator=rng))
        self.register_buffer("w_avg", w.mean(dim=0))
        self.register_buffer("w_std", w.std(dim=0).clamp_min(1e-6))

    def to_u(self, z: torch.Tensor) -> torch.Tensor:
        """The u of mapping(z): how an image the full generator made is reached in w (or w+) space."""
        u = (self.net.mapping(z) - self.w_avg) / self.w_std
        return u[:, None].expand(-1, self.net.config.num_ws, -1).contiguous() if self.plus else u

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.net.synthesis(self.w_avg + self.w_std * u)


class StyleGANWGenerator(Generator):
    """A w-space Generator whose own samples are the model's real ones: synthesis(mapping(z)), not of u ~ N(0, I)."""

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0, batch_size: int = 256) -> np.ndarray:
        inner: WSpaceSynthesis = self.module.inner
        z = np.random.default_rng(seed).standard_normal((n, inner.net.config.z_dim), dtype=np.float32)
        out = [
            self.module(inner.to_u(torch.from_numpy(z[i : i + batch_size]))).clamp(0, 1).numpy()
            for i in range(0, n, batch_size)
        ]
        return np.concatenate(out).astype(np.float32)


def stylegan_generator(net: StyleGANGenerator, *, space: Space = "z", name: str = "stylegan") -> Generator:
    """Wrap a StyleGANGenerator: latent z (z_dim) by default, u (w_dim) for inversion in w space, or u
    (num_ws × w_dim) in w+ space."""
    cfg = net.config
    architecture = "stylegan2-config-f" if cfg.channel_base and cfg.fir else "stylegan-small"
    common = {
        "channels": cfg.channels,
        "image_size": (cfg.image_size, cfg.image_size),
        "config": {"architecture": architecture, "space": space, **cfg.to_dict()},
        "family": "gan",
        "name": name,
    }
    if space == "z":
        return Generator(module=UnitRangeOutput(net, (-1.0, 1.0)), latent=LatentSpec((cfg.z_dim,)), **common)
    if space in ("w", "w+"):
        module = UnitRangeOutput(WSpaceSynthesis(net, plus=space == "w+"), (-1.0, 1.0))
        shape = (cfg.num_ws, cfg.w_dim) if space == "w+" else (cfg.w_dim,)
        return StyleGANWGenerator(module=module, latent=LatentSpec(shape), **common)
    raise ValueError(f"space must be 'z', 'w' or 'w+', got {space!r}")


def stylegan_from_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    config: Mapping[str, Any] | None = None,
    *,
    space: Space = "z",
    name: str = "stylegan",
) -> Generator:
    """The small StyleGAN-style generator from a state dict of ``StyleGANGenerator``."""
    cfg = StyleGANConfig(**(config or {}))
    net = StyleGANGenerator(cfg)
    try:
        net.load_state_dict(dict(state_dict), strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ValueError(f"StyleGAN {name!r}: state dict does not match the architecture ({first})") from exc
    return stylegan_generator(net, space=space, name=name)


def random_stylegan(
    config: StyleGANConfig = StyleGANConfig(), *, seed: int = 0, space: Space = "z", name: str = "stylegan"
) -> Generator:
    """A seeded, randomly initialised generator (untrained: images are structured noise, not photos)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = StyleGANGenerator(config)
    return stylegan_generator(net, space=space, name=name)
