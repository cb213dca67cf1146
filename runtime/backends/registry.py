"""The one place a backend is chosen: name → factory building a ``Backend`` for a model.

Each entry says what it needs (a PyTorch module, or the model's exported package) and builds the backend
with imports deferred to the call, so choosing ``onnxruntime`` never loads TensorRT and listing the names
imports nothing. The GPU classes are found by module path, trying each known location in order, so the
registry works whether they live in ``runtime/backends/gpu/`` or at the top of ``runtime/``.

To add a backend: write its ``Backend`` subclass, then one ``register_backend(BackendKind(...))`` line below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from genorigin.export.generator import Generator
    from genorigin.export.package import AttributionPackage
    from genorigin.runtime.loop.backend import Backend


class BackendTarget(Protocol):
    """What a factory needs of a model: its Generator, and its exported package (made on demand)."""

    @property
    def generator(self) -> Generator: ...

    def package(self) -> AttributionPackage: ...


@dataclass(frozen=True)
class BackendKind:
    """One registered backend: ``build(target, loss, threads)``; ``needs_module``: PyTorch models only."""

    name: str
    build: Callable[[BackendTarget, str, int | None], Backend]
    needs_module: bool
    help: str


BACKENDS: dict[str, BackendKind] = {}


def register_backend(kind: BackendKind) -> BackendKind:
    """Add a backend; a name registered twice is a mistake, never a silent replacement."""
    if kind.name in BACKENDS:
        raise ValueError(f"backend {kind.name!r} is already registered")
    BACKENDS[kind.name] = kind
    return kind


def backend_names() -> tuple[str, ...]:
    return tuple(BACKENDS)


def default_backend(generator: Generator) -> str:
    """torch for a PyTorch module, ONNX Runtime for a model that exists only as exported graphs."""
    return "torch" if generator.module is not None else "onnxruntime"


def make_backend(
    target: BackendTarget, name: str | None = None, loss: str = "mse", threads: int | None = None
) -> Backend:
    """Build backend ``name`` (default: ``default_backend``) for ``target``; one-line ValueError otherwise."""
    name = name or default_backend(target.generator)
    kind = BACKENDS.get(name)
    if kind is None:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if kind.needs_module and target.generator.module is None:
        usable = ", ".join(k.name for k in BACKENDS.values() if not k.needs_module)
        raise ValueError(f"{target.generator.name!r} is an exported package (no PyTorch module): use {usable}")
    return kind.build(target, loss, threads)


class GeneratorOnly:
    """A BackendTarget for a bare Generator (the Python API): PyTorch backends only, no package."""

    def __init__(self, generator: Generator) -> None:
        self._generator = generator

    @property
    def generator(self) -> Generator:
        return self._generator

    def package(self) -> AttributionPackage:
        raise ValueError(
            f"{self._generator.name!r}: ONNX Runtime and TensorRT backends run on an exported package: "
            "genorigin.models.resolve_model(...) exports one, or pass the backend object itself"
        )


def _torch(device: str, compute: str = "float32") -> Callable[[BackendTarget, str, int | None], Backend]:
    def build(target: BackendTarget, loss: str, threads: int | None) -> Backend:
        from genorigin.runtime.backends.eager import TorchBackend

        return TorchBackend(target.generator, device, loss, threads, compute)

    return build


def _cuda_graph(target: BackendTarget, loss: str, threads: int | None) -> Backend:
    from genorigin.runtime.backends.gpu.torch_graph import CudaGraphTorchBackend

    return CudaGraphTorchBackend(target.generator, loss=loss)


def _ort(device: str) -> Callable[[BackendTarget, str, int | None], Backend]:
    def build(target: BackendTarget, loss: str, threads: int | None) -> Backend:
        from genorigin.runtime.backends.ort import OrtBackend

        return OrtBackend(target.package(), device=device, threads=threads, loss=loss)

    return build


def _tensorrt(target: BackendTarget, loss: str, threads: int | None) -> Backend:
    from genorigin.runtime.backends.gpu.tensorrt import TensorRTBackend

    return TensorRTBackend.from_graphs(target.package().root, loss=loss)


register_backend(BackendKind("torch", _torch("cpu"), True, "eager PyTorch on the CPU (PyTorch models)"))
register_backend(BackendKind("torch-cuda", _torch("cuda"), True, "eager PyTorch on a CUDA GPU"))
register_backend(BackendKind("torch-cuda-graph", _cuda_graph, True, "PyTorch, each step one replayed CUDA graph"))
register_backend(BackendKind("onnxruntime", _ort("cpu"), False, "ONNX Runtime on the CPU (any model, via a package)"))
register_backend(BackendKind("onnxruntime-cuda", _ort("cuda"), False, "ONNX Runtime's CUDA provider"))
register_backend(BackendKind("tensorrt", _tensorrt, False, "TensorRT engines built from the package (GPU)"))
register_backend(
    BackendKind(
        "torch-bf16",
        _torch("cpu", "bfloat16"),
        True,
        "eager PyTorch on the CPU in bfloat16 (loss, gradient and optimiser float32; calibrate with it too)",
    )
)
