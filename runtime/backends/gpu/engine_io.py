"""Engine I/O as the runtime sees it: tensor specs, concrete shapes per batch, and which tensor is which.

Pure (no TensorRT, no GPU) so it is tested on CPU; ``trt_load.engine_tensors`` reads the specs from an engine.
The logical names follow the exporter (``genorigin.export.onnx_autodiff``): forward z → image; vjp (z, g_image)
→ g_z; loss (z, target) → (loss, grad_z).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from genorigin.runtime.backends.gpu.profiles import BatchProfile

ROLES = ("forward", "vjp", "loss")
Dim = int | str | None


def is_dynamic(dim: Dim) -> bool:
    return dim is None or isinstance(dim, str) or int(dim) < 0


def concrete_shape(shape: Sequence[Dim], batch: int) -> tuple[int, ...]:
    """A graph/engine shape with its dynamic batch dimension (axis 0) set; other dims must be static."""
    if not shape:
        raise ValueError("tensor has rank 0; the runtime needs a leading batch dimension")
    rest = tuple(shape[1:])
    if any(is_dynamic(d) for d in rest):
        raise ValueError(f"shape {tuple(shape)} has a dynamic non-batch dimension; only the batch may vary")
    if not is_dynamic(shape[0]) and int(shape[0]) != batch:
        raise ValueError(f"shape {tuple(shape)} has a fixed batch of {shape[0]}, cannot run batch {batch}")
    return (int(batch), *(int(d) for d in rest))


def profile_shapes(shape: Sequence[Dim], profile: BatchProfile) -> tuple[tuple[int, ...], ...]:
    """(min, opt, max) input shapes of one profile, as ``IOptimizationProfile.set_shape`` takes them."""
    return tuple(concrete_shape(shape, b) for b in (profile.min, profile.opt, profile.max))


@dataclass(frozen=True)
class TensorSpec:
    """One engine I/O tensor as the runtime sees it (TensorRT-independent, so it can be tested on CPU)."""

    name: str
    is_input: bool
    shape: tuple[Dim, ...]
    dtype: str  # "float32", "float16", "bfloat16", "int64", ...


def buffer_shapes(specs: Iterable[TensorSpec], batch: int) -> dict[str, tuple[int, ...]]:
    """The device buffer shape of every I/O tensor at one batch size."""
    return {s.name: concrete_shape(s.shape, batch) for s in specs}


def assign_io(role: str, specs: Sequence[TensorSpec], wrt: str = "z") -> dict[str, str]:
    """Logical slot → tensor name for one engine, from the exporter's naming conventions.

    forward: z → image. vjp: (z, g_<output>) → g_z [, image]. loss: (z, target) → loss, grad_z [, image].
    """
    inputs = [s.name for s in specs if s.is_input]
    outputs = [s.name for s in specs if not s.is_input]
    if wrt not in inputs:
        raise ValueError(f"{role} engine has no input {wrt!r} (inputs: {inputs})")
    others = [n for n in inputs if n != wrt]
    io: dict[str, str] = {"z": wrt}
    if role == "forward":
        if others or len(outputs) != 1:
            raise ValueError(f"forward engine must map {wrt!r} to one image, got inputs {inputs} outputs {outputs}")
        io["image"] = outputs[0]
    elif role == "vjp":
        grad = f"g_{wrt}"
        if len(others) != 1 or grad not in outputs:
            raise ValueError(f"vjp engine must map ({wrt}, g_image) to {grad}, got inputs {inputs} outputs {outputs}")
        io["seed"] = others[0]
        io["grad"] = grad
    elif role == "loss":
        if len(others) != 1 or "loss" not in outputs or "grad_z" not in outputs:
            raise ValueError(f"loss engine must map ({wrt}, target) to (loss, grad_z), got {inputs} → {outputs}")
        io["target"] = others[0]
        io["loss"] = "loss"
        io["grad"] = "grad_z"
    else:
        raise ValueError(f"unknown engine role {role!r}; expected one of {ROLES}")
    return io
