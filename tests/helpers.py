"""Small real generators for fast tests (no mocks: they are trained-free but genuine torch models)."""

from __future__ import annotations

import torch
from genorigin.export.adapters import from_module
from genorigin.export.generator import Generator
from torch import nn


class TinyDecoder(nn.Module):
    """z (N×8) → N×3×8×8 in [0, 1]: a generator with a low-dimensional range, so real images are outside it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 3 * 4 * 4)
        self.up = nn.ConvTranspose2d(3, 3, 4, 2, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.up(torch.tanh(self.fc(z)).view(-1, 3, 4, 4)))


def tiny_generator(seed: int = 0, name: str = "tiny") -> Generator:
    torch.manual_seed(seed)
    return from_module(TinyDecoder(), (8,), output_range=(0.0, 1.0), name=name)
