"""Small real generators for fast tests (no mocks: they are trained-free but genuine torch models)."""

from __future__ import annotations

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
