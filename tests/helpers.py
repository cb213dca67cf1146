"""Small real generators for fast tests (no mocks: they are trained-free but genuine torch models)."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
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


class UnflattenDecoder(nn.Module):
    """z (N×8) → N×3×8×8 in [-1, 1] through ``nn.Unflatten``, which the legacy exporter writes as shape
    arithmetic on constants (a ``Mod``) that ONNX shape inference cannot see through."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(8, 3 * 4 * 4), nn.Unflatten(1, (3, 4, 4)), nn.ConvTranspose2d(3, 3, 4, 2, 1), nn.Tanh()
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def export_legacy_onnx(module: nn.Module, path: Path, latent_dim: int = 8) -> Path:
    """The way third parties often ship generators: TorchScript exporter, dynamic batch, their own I/O names."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation warning
        torch.onnx.export(
            module.eval(), (torch.zeros(2, latent_dim),), str(path), input_names=["latent"], output_names=["rgb"],
            dynamic_axes={"latent": {0: "n"}, "rgb": {0: "n"}}, dynamo=False,
        )  # fmt: skip
    return path


def tiny_generator(seed: int = 0, name: str = "tiny") -> Generator:
    torch.manual_seed(seed)
    return from_module(TinyDecoder(), (8,), output_range=(0.0, 1.0), name=name)


def assert_static_gradient_graph(model: onnx.ModelProto) -> None:
    """No data-dependent shapes: no NonZero, and every reduction's axes are constants (TensorRT, CUDA graphs)."""
    constants = {t.name for t in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    ops = {n.op_type for n in model.graph.node}
    assert "NonZero" not in ops
    for n in model.graph.node:
        if n.op_type.startswith("Reduce") and len(n.input) > 1 and n.input[1]:
            assert n.input[1] in constants, f"{n.name} reduces over run-time axes {n.input[1]!r}"
