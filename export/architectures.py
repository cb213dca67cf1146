"""Small generator architectures of the bundled models (32×32 RGB), defined once for training and loading."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class DCGANConfig:
    """DCGAN generator shape: z (latent_dim×1×1) → 4 transposed convolutions → tanh image."""

    latent_dim: int = 100
    width: int = 48
    channels: int = 3
    image_size: int = 32

    def to_dict(self) -> dict:
        return asdict(self)


class DCGANGenerator(nn.Module):
    """The DCGAN generator of the paper's CIFAR-10 case, sized for 32×32 and a few MB of weights."""

    def __init__(self, config: DCGANConfig = DCGANConfig()) -> None:
        super().__init__()
        if config.image_size != 32:
            raise ValueError("DCGANGenerator supports image_size=32 only")
        w, c = config.width, config.channels
        self.config = config
        self.net = nn.Sequential(
            nn.ConvTranspose2d(config.latent_dim, w * 4, 4, 1, 0, bias=False),
            nn.BatchNorm2d(w * 4),
            nn.ReLU(True),
            nn.ConvTranspose2d(w * 4, w * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(w * 2),
            nn.ReLU(True),
            nn.ConvTranspose2d(w * 2, w, 4, 2, 1, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(True),
            nn.ConvTranspose2d(w, c, 4, 2, 1, bias=False),
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z: N×latent_dim×1×1 → N×C×32×32 in [-1, 1]."""
        return self.net(z)


class DCGANDiscriminator(nn.Module):
    """Training-only critic for DCGANGenerator."""

    def __init__(self, config: DCGANConfig = DCGANConfig()) -> None:
        super().__init__()
        w, c = config.width, config.channels
        self.net = nn.Sequential(
            nn.Conv2d(c, w, 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(w, w * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(w * 2),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(w * 2, w * 4, 4, 2, 1, bias=False),
            nn.BatchNorm2d(w * 4),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(w * 4, 1, 4, 1, 0, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)


@dataclass(frozen=True)
class VAEConfig:
    """Convolutional VAE for 32×32 RGB: latent_dim-dimensional Gaussian latent."""

    latent_dim: int = 32
    width: int = 32
    channels: int = 3
    image_size: int = 32

    def to_dict(self) -> dict:
        return asdict(self)


class VAEDecoder(nn.Module):
    """z (N×latent_dim) → image in [0, 1]; the part genorigin inverts."""

    def __init__(self, config: VAEConfig = VAEConfig()) -> None:
        super().__init__()
        w, c = config.width, config.channels
        self.config = config
        self.fc = nn.Linear(config.latent_dim, w * 4 * 4 * 4)
        self.net = nn.Sequential(
            nn.ReLU(True),
            nn.ConvTranspose2d(w * 4, w * 2, 4, 2, 1),
            nn.ReLU(True),
            nn.ConvTranspose2d(w * 2, w, 4, 2, 1),
            nn.ReLU(True),
            nn.ConvTranspose2d(w, c, 4, 2, 1),
            nn.Sigmoid(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        w = self.config.width
        return self.net(self.fc(z).view(z.shape[0], w * 4, 4, 4))


class VAEEncoder(nn.Module):
    """Training-only encoder: image in [0, 1] → (mean, log-variance)."""

    def __init__(self, config: VAEConfig = VAEConfig()) -> None:
        super().__init__()
        w, c = config.width, config.channels
        self.net = nn.Sequential(
            nn.Conv2d(c, w, 4, 2, 1),
            nn.ReLU(True),
            nn.Conv2d(w, w * 2, 4, 2, 1),
            nn.ReLU(True),
            nn.Conv2d(w * 2, w * 4, 4, 2, 1),
            nn.ReLU(True),
            nn.Flatten(),
        )
        self.mean = nn.Linear(w * 4 * 4 * 4, config.latent_dim)
        self.logvar = nn.Linear(w * 4 * 4 * 4, config.latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(x)
        return self.mean(h), self.logvar(h)
