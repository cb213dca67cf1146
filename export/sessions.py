"""ONNX Runtime sessions over exported graphs, a package's weights read once and shared by all its sessions.

ONNX Runtime's way to share weights between sessions is ``SessionOptions.add_initializer(name, OrtValue)``: the
session uses the caller's buffer instead of reading the initializer from the model. genorigin reads
``weights.bin`` once (:class:`SharedWeights`, hashed while read) and hands every session views into that one
buffer. What each session still makes for itself is ONNX Runtime's own pre-processing (pre-packed GEMM and
convolution weights, layout changes at ``ORT_ENABLE_ALL``): the Python API has no shared pre-packed container.

Also the one place a session is made: the CPU or the CUDA provider, and a CUDA request that ONNX Runtime would
silently run on the CPU raises instead. ``onnxruntime`` is imported when a session is made.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto

from .weights import external_initializers, read_weights, tensor_view

EXTERNAL_FOLDER_KEY = "session.model_external_initializers_file_folder_path"
OPTIMIZATION_LEVELS = ("basic", "extended", "all")


def onnxruntime_module() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise RuntimeError(
            "onnxruntime is not installed: pip install 'genorigin[cpu]' (or '[gpu]' for onnxruntime-gpu)"
        ) from exc
    return onnxruntime


class SharedWeights:
    """A package's ``weights.bin`` in memory once, as the OrtValues every session of the package uses."""

    def __init__(self, path: str | Path, sha256: str) -> None:
        self.path = Path(path)
        self.buffer = read_weights(self.path, sha256)
        self._values: dict[tuple[int, int, int, tuple[int, ...]], Any] = {}

    @property
    def nbytes(self) -> int:
        return int(self.buffer.nbytes)

    def attach(self, options: Any, model: onnx.ModelProto) -> None:
        """Make ``options`` take every initializer ``model`` keeps in the weights file from this buffer."""
        ort = onnxruntime_module()
        for tensor, ref in external_initializers(model, self.path.name):
            key = (ref.offset, ref.length, tensor.data_type, tuple(tensor.dims))
            if key not in self._values:
                view = tensor_view(self.buffer, tensor, ref)
                if tensor.data_type == TensorProto.BFLOAT16:
                    self._values[key] = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(view, tensor.data_type)
                else:
                    self._values[key] = ort.OrtValue.ortvalue_from_numpy(view)
            options.add_initializer(tensor.name, self._values[key])
        # a graph given as bytes resolves its external-data paths against this folder (never read: all given)
        options.add_session_config_entry(EXTERNAL_FOLDER_KEY, str(self.path.parent))


def open_session(
    source: str | Path | bytes | onnx.ModelProto,
    device: str = "cpu",
    threads: int | None = None,
    *,
    weights: SharedWeights | None = None,
    optimization: str = "all",
    lean: bool = False,
    order: str = "default",
    quiet: bool = False,
) -> Any:
    """An InferenceSession on ``device`` ('cpu' or 'cuda'); with ``weights``, its initializers come from there.

    ``source`` is a file, serialized bytes or a model (a graph built in memory). ``lean`` trades speed for
    memory (a few runs, as export validation makes): no pre-packed weight copies, no memory arena or planned
    buffers kept between runs; ``order="priority"`` is ONNX Runtime's memory-first node order (lower peak
    activations for gradient graphs, measured in docs/large_models.md). Raises instead of falling back to the
    CPU when CUDA is asked for and cannot run.
    """
    ort = onnxruntime_module()
    if optimization not in OPTIMIZATION_LEVELS:
        raise ValueError(f"optimization must be one of {', '.join(OPTIMIZATION_LEVELS)}, got {optimization!r}")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if quiet:
        options.log_severity_level = 3
    if order not in ("default", "priority"):
        raise ValueError(f"order must be 'default' or 'priority', got {order!r}")
    if order == "priority":
        options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    if lean:
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
        options.add_session_config_entry("session.disable_prepacking", "1")
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{optimization.upper()}")
    if weights is not None:
        weights.attach(options, _header(source))
    model: str | bytes = str(source) if isinstance(source, str | Path) else _bytes(source)
    session = ort.InferenceSession(model, options, providers=_providers(ort, device))
    if device == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
        where = source if isinstance(source, str | Path) else "an in-memory graph"
        raise RuntimeError(f"onnxruntime fell back to {session.get_providers()} for {where}: CUDA is not usable")
    session.genorigin_weights = weights  # the shared buffer must outlive the session that reads it
    return session


def _providers(ort: Any, device: str) -> list[str]:
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError(
                "CUDA was asked for but this onnxruntime has no CUDAExecutionProvider "
                f"(available: {ort.get_available_providers()}); install onnxruntime-gpu instead of onnxruntime"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")


def _header(source: str | Path | bytes | onnx.ModelProto) -> onnx.ModelProto:
    if isinstance(source, onnx.ModelProto):
        return source
    if isinstance(source, bytes):
        return onnx.load_from_string(source)
    return onnx.load(str(source), load_external_data=False)


def _bytes(source: bytes | onnx.ModelProto) -> bytes:
    return source if isinstance(source, bytes) else source.SerializeToString()
