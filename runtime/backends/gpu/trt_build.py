"""Build TensorRT engines from the exported ONNX graphs (parse, precision, profiles, build), through the cache.

Thin on purpose: keys, sidecars and verification are ``engine_cache``'s, profiles and shapes ``profiles`` and
``engine_io``'s, all tested on CPU; this module parses, configures and builds. ``tensorrt`` (and torch's
CUDA) are imported when a build runs, so it imports anywhere.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genorigin.runtime.backends.gpu.engine_cache import EngineCache, EngineKey, graph_sha256
from genorigin.runtime.backends.gpu.engine_io import profile_shapes
from genorigin.runtime.backends.gpu.graphs import GraphSource, external_data_files, graph_kind, resolve_graphs
from genorigin.runtime.backends.gpu.profiles import DEFAULT_PROFILES, BatchProfile
from genorigin.runtime.backends.gpu.trt_env import (
    PRECISION_FLAGS,
    EngineBuildError,
    TensorRTUnavailableError,
    TrtLogger,
    check_precision,
    device_identity,
    import_tensorrt,
)

from genorigin.files import atomic_write_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltEngine:
    """One engine in the cache: where it is, what it was built for, and whether this call built it."""

    role: str
    path: Path
    key: EngineKey
    onnx_path: Path
    built: bool
    seconds: float
    reason: str | None = None  # why it was (re)built: missing, stale, foreign, forced


def _set_precision(trt: Any, config: Any, precision: str) -> None:
    """fp32 clears TF32 (TensorRT enables it by default); tf32/fp16/bf16 set their BuilderFlag."""
    check_precision(precision, str(trt.__version__))
    if precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)
    else:
        config.set_flag(getattr(trt.BuilderFlag, PRECISION_FLAGS[precision]))


def build_serialized_engine(
    onnx_path: str | Path,
    *,
    precision: str = "fp32",
    profiles: Sequence[BatchProfile] = DEFAULT_PROFILES,
    workspace_bytes: int | None = None,
    optimization_level: int | None = None,
    timing_cache: str | Path | None = None,
) -> bytes:
    """Parse one ONNX graph and build a serialized engine (no caching; see build_engines)."""
    trt = import_tensorrt()
    logger = TrtLogger(trt)
    builder = trt.Builder(logger.impl)
    network = builder.create_network(0)  # TensorRT ≥ 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger.impl)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(f"TensorRT could not parse {onnx_path}: " + "; ".join(errors or logger.errors))
    config = builder.create_builder_config()
    if workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if optimization_level is not None:
        config.builder_optimization_level = int(optimization_level)
    _set_precision(trt, config, precision)
    for p in profiles:
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            lo, opt, hi = profile_shapes(tuple(tensor.shape), p)
            profile.set_shape(tensor.name, lo, opt, hi)
        config.add_optimization_profile(profile)
    cache = None
    if timing_cache is not None:
        blob = Path(timing_cache).read_bytes() if Path(timing_cache).is_file() else b""
        cache = config.create_timing_cache(blob)
        if not config.set_timing_cache(cache, False):  # recorded on another device/version: start afresh
            log.warning("timing cache %s does not match this GPU/TensorRT; starting a new one", timing_cache)
            cache = config.create_timing_cache(b"")
            config.set_timing_cache(cache, False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT failed to build {onnx_path}: " + "; ".join(logger.errors or ["no log"]))
    if cache is not None:
        Path(timing_cache).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(serialized))


def engine_key(
    role: str,
    onnx_path: str | Path,
    *,
    precision: str,
    profiles: Sequence[BatchProfile],
    tensorrt_version: str,
    compute_capability: str,
    device_name: str,
    workspace_bytes: int | None = None,
    optimization_level: int | None = None,
) -> EngineKey:
    """The cache key of one graph's engine on this machine (pure apart from hashing the graph files)."""
    builder = (("optimization_level", optimization_level), ("workspace_bytes", workspace_bytes))
    return EngineKey(
        role=role,
        graph_sha256=graph_sha256(onnx_path, external_data_files(onnx_path)),
        tensorrt_version=tensorrt_version,
        compute_capability=compute_capability,
        device_name=device_name,
        precision=precision,
        profiles=tuple(profiles),
        builder=builder,
    )


def build_engines(
    package_or_onnx_paths: GraphSource,
    *,
    precision: str = "fp32",
    profiles: Sequence[BatchProfile] | None = None,
    cache_dir: str | Path | None = None,
    timing_cache: str | Path | None = None,
    workspace_bytes: int | None = None,
    optimization_level: int | None = None,
    roles: Sequence[str] | None = None,
    device: int = 0,
    force: bool = False,
) -> dict[str, BuiltEngine]:
    """Engines for every graph given (or ``roles``), from the cache when a verified one matches, else built.

    ``cache_dir`` defaults to genorigin's cache folder ``engines``; pointing it at a folder makes an engine
    bundle to copy to a device with the same TensorRT version and GPU. ``timing_cache`` defaults to a file
    per GPU and TensorRT version in the cache folder.
    """
    check_precision(precision)
    profiles = tuple(profiles) if profiles else DEFAULT_PROFILES
    graphs = resolve_graphs(package_or_onnx_paths, roles)
    trt = import_tensorrt()
    check_precision(precision, str(trt.__version__))  # before any build: TensorRT 11 has no fp16/bf16 flag
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailableError("no CUDA GPU visible to torch; TensorRT engines need one")
    torch.cuda.set_device(device)
    cc, name = device_identity(device)
    cache = EngineCache(cache_dir)
    if timing_cache is None:
        timing_cache = cache.root / f"timing-trt{trt.__version__}-sm{cc.replace('.', '')}.cache"
    out: dict[str, BuiltEngine] = {}
    for role, onnx_path in graphs.items():
        key = engine_key(
            role, onnx_path, precision=precision, profiles=profiles, tensorrt_version=str(trt.__version__),
            compute_capability=cc, device_name=name, workspace_bytes=workspace_bytes,
            optimization_level=optimization_level,
        )  # fmt: skip
        start = time.perf_counter()

        def build(path: Path = onnx_path) -> bytes:
            return build_serialized_engine(
                path, precision=precision, profiles=profiles, workspace_bytes=workspace_bytes,
                optimization_level=optimization_level, timing_cache=timing_cache,
            )  # fmt: skip

        extra = {"graph_kind": graph_kind(onnx_path), "onnx_file": onnx_path.name}
        path, built, why = cache.get_or_build(key, build, force=force, extra=extra)
        if built:
            log.info("built %s engine %s (%s)", role, path.name, why)
        out[role] = BuiltEngine(role, path, key, onnx_path, built, time.perf_counter() - start, why)
    return out
