"""Load TensorRT engines and read what they are: sidecar checks, deserialization, I/O tensors, profiles.

An engine given by path is checked before TensorRT sees its bytes (``engine_cache.engine_problem`` and
``foreign_reasons``): a missing or stale sidecar, other bytes, or another TensorRT version, compute capability
or GPU name raises ``ForeignEngineError``. ``tensorrt`` is imported when an engine is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genorigin.runtime.backends.gpu.engine_cache import engine_problem, foreign_reasons, read_sidecar
from genorigin.runtime.backends.gpu.engine_io import TensorSpec
from genorigin.runtime.backends.gpu.profiles import BatchProfile
from genorigin.runtime.backends.gpu.trt_env import EngineBuildError, TrtLogger, device_identity, import_tensorrt

_DTYPE_NAMES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT32": "int32", "INT64": "int64",
                "INT8": "int8", "BOOL": "bool", "UINT8": "uint8"}  # fmt: skip


class ForeignEngineError(RuntimeError):
    """An engine file without a valid sidecar, or built for another TensorRT version or GPU."""


@dataclass
class LoadedEngine:
    """A deserialized engine with the runtime and logger it needs to stay alive, and its recorded key."""

    engine: Any
    runtime: Any
    logger: Any
    path: Path
    meta: dict[str, Any]  # the sidecar: key, engine hash, graph_kind

    @property
    def key(self) -> dict[str, Any]:
        return self.meta["key"]


def load_engine(path: str | Path, device: int = 0) -> LoadedEngine:
    """Deserialize an engine after checking its sidecar against this machine: foreign engines are refused.

    TensorRT may load an engine from another minor version or a same-arch GPU and misbehave later, so the
    recorded TensorRT version, compute capability and GPU name must all match, and the bytes the SHA-256.
    """
    path = Path(path)
    problem = engine_problem(path)
    if problem is not None:
        raise ForeignEngineError(f"{path}: {problem}; rebuild it with build_engines / genorigin build-engine")
    trt = import_tensorrt()
    cc, name = device_identity(device)
    meta = read_sidecar(path)
    reasons = foreign_reasons(meta["key"], str(trt.__version__), cc, name)
    if reasons:
        raise ForeignEngineError(
            f"{path} was built elsewhere ({'; '.join(reasons)}); rebuild it on this machine with "
            "build_engines / genorigin build-engine"
        )
    logger = TrtLogger(trt)
    runtime = trt.Runtime(logger.impl)
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise EngineBuildError(f"TensorRT could not load {path}: " + "; ".join(logger.errors or ["no log"]))
    return LoadedEngine(engine, runtime, logger, path, meta)


def engine_tensors(engine: Any) -> list[TensorSpec]:
    """The engine's I/O tensors as TensorSpecs (-1 marks the dynamic batch dimension)."""
    trt = import_tensorrt()
    specs = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        dtype = engine.get_tensor_dtype(name)
        specs.append(
            TensorSpec(
                name=name,
                is_input=engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                shape=tuple(int(d) for d in engine.get_tensor_shape(name)),
                dtype=_DTYPE_NAMES.get(getattr(dtype, "name", str(dtype)).split(".")[-1], str(dtype)),
            )
        )
    return specs


def engine_profiles(engine: Any, input_name: str) -> list[BatchProfile]:
    """The batch range of each optimisation profile, read back from the engine."""
    out = []
    for i in range(engine.num_optimization_profiles):
        lo, opt, hi = engine.get_tensor_profile_shape(input_name, i)
        out.append(BatchProfile(int(lo[0]), int(opt[0]), int(hi[0])))
    return out
