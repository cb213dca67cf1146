"""Build TensorRT (≥ 10) engines from the exported ONNX graphs, through the verified engine cache.

Thin on purpose: everything that can be decided without TensorRT (keys, profiles, shapes, I/O naming) is in
:mod:`genorigin.runtime.engine_cache` and tested on CPU; this module only parses, configures, builds and
deserializes. ``tensorrt`` (and torch's CUDA) are imported lazily, so this module imports anywhere.

Graphs are given as an attribution package (``genorigin export``: manifest.json with verified hashes,
forward.onnx, vjp.onnx, loss_mse.onnx), a folder of such files, a list of ONNX files (role read from the
``genorigin.autodiff`` metadata the autodiff exporter writes), or a ``{role: path}`` map.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genorigin.runtime.engine_cache import (
    DEFAULT_PROFILES,
    PRECISIONS,
    ROLES,
    BatchProfile,
    EngineCache,
    EngineKey,
    TensorSpec,
    atomic_write_bytes,
    graph_sha256,
    profile_shapes,
)

log = logging.getLogger(__name__)

AUTODIFF_KEY = "genorigin.autodiff"  # metadata written by genorigin.export.onnx_autodiff
PACKAGE_FILES: dict[str, tuple[str, ...]] = {
    "forward": ("forward.onnx", "model.onnx", "generator.onnx"),
    "vjp": ("vjp.onnx",),
    "loss": ("loss_mse.onnx", "loss.onnx", "loss-mse.onnx"),
}
GraphSource = str | Path | Sequence[str | Path] | Mapping[str, str | Path]


class TensorRTUnavailableError(RuntimeError):
    """tensorrt (≥ 10) or a CUDA GPU is missing: engines cannot be built or run here."""


class EngineBuildError(RuntimeError):
    """TensorRT rejected a graph or a build configuration; the message carries its log."""


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


# ---------------------------------------------------------------------------------------------- graphs


def graph_kind(path: str | Path) -> str:
    """The autodiff kind an ONNX file records ('vjp', 'loss-mse', 'loss-l1'), or 'forward' for a plain export."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    fields = dict(item.split("=", 1) for item in meta.get(AUTODIFF_KEY, "").split(",") if "=" in item)
    return fields.get("kind") or "forward"


def graph_role(path: str | Path) -> str:
    """'vjp' or 'loss' from the autodiff metadata of an ONNX file; 'forward' for a plain export."""
    kind = graph_kind(path)
    if kind == "vjp":
        return "vjp"
    return "loss" if kind.startswith("loss") else "forward"


def external_data_files(path: str | Path) -> list[Path]:
    """External weight files an ONNX file references (their bytes are part of the graph's identity)."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    names: set[str] = set()
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            names.update(e.value for e in tensor.external_data if e.key == "location")
    return [path.parent / n for n in sorted(names)]


def package_graphs(folder: str | Path) -> dict[str, Path]:
    """{role: path} of an attribution package (``genorigin export``), after its manifest hashes verify."""
    from genorigin.export.package import AttributionPackage

    package = AttributionPackage.load(folder)  # raises PackageError on a tampered or incomplete package
    roles = {"forward": "forward", "vjp": "vjp", "loss_mse": "loss"}
    return {roles[k]: package.graph_path(k) for k in package.manifest["graphs"] if k in roles}


def resolve_graphs(source: GraphSource, roles: Sequence[str] | None = None) -> dict[str, Path]:
    """{role: onnx path} from a package or export folder, a list of ONNX files or an explicit mapping."""
    found: dict[str, Path] = {}
    if isinstance(source, Mapping):
        found = {str(r): Path(p) for r, p in source.items()}
    elif isinstance(source, (str, Path)) and (Path(source) / "manifest.json").is_file():
        found = package_graphs(source)
    elif isinstance(source, (str, Path)) and Path(source).is_dir():
        folder = Path(source)
        for role, names in PACKAGE_FILES.items():
            hit = next((folder / n for n in names if (folder / n).is_file()), None)
            if hit is not None:
                found[role] = hit
    else:
        paths = [source] if isinstance(source, (str, Path)) else list(source)
        for p in map(Path, paths):
            if not p.is_file():
                raise FileNotFoundError(f"ONNX graph not found: {p}")
            role = graph_role(p)
            if role in found:
                raise ValueError(f"two {role} graphs given: {found[role]} and {p}")
            found[role] = p
    unknown = set(found) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown graph roles {sorted(unknown)}; expected {ROLES}")
    if roles is not None:
        missing = [r for r in roles if r not in found]
        if missing:
            raise ValueError(f"no ONNX graph for role(s) {missing} in {source}")
        found = {r: found[r] for r in roles}
    if not found:
        raise ValueError(f"no ONNX graphs found in {source} (expected {', '.join(sum(PACKAGE_FILES.values(), ()))})")
    for p in found.values():
        if not p.is_file():
            raise FileNotFoundError(f"ONNX graph not found: {p}")
    return found


def usable_role_sets(roles: Sequence[str]) -> list[tuple[str, ...]]:
    """Which step plans the given graphs allow: ('loss',) and/or ('forward', 'vjp')."""
    plans = []
    if "loss" in roles:
        plans.append(("loss",))
    if "forward" in roles and "vjp" in roles:
        plans.append(("forward", "vjp"))
    return plans


# ---------------------------------------------------------------------------------------------- TensorRT


def import_tensorrt() -> Any:
    """The tensorrt module (≥ 10), or TensorRTUnavailableError saying what is missing."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise TensorRTUnavailableError(
            f"TensorRT is not installed ({e}); pip install 'genorigin[gpu]' (tensorrt>=10) on a CUDA machine"
        ) from e
    except Exception as e:  # the wheel imports but cannot load libnvinfer (no driver / GPU)
        raise TensorRTUnavailableError(f"TensorRT could not be loaded ({type(e).__name__}: {e})") from e
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise TensorRTUnavailableError(f"TensorRT {trt.__version__} is too old; genorigin needs TensorRT ≥ 10")
    return trt


def tensorrt_available() -> tuple[bool, str]:
    """(True, version) when TensorRT and a CUDA GPU are usable here, else (False, why): tests skip on it."""
    try:
        trt = import_tensorrt()
        device_identity(0)
    except (TensorRTUnavailableError, RuntimeError) as e:
        return False, str(e)
    return True, str(trt.__version__)


def device_identity(device: int = 0) -> tuple[str, str]:
    """(compute capability 'major.minor', device name) of a CUDA device, via torch."""
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailableError("no CUDA GPU visible to torch; TensorRT engines need one")
    major, minor = torch.cuda.get_device_capability(device)
    return f"{major}.{minor}", torch.cuda.get_device_name(device)


class _Logger:
    """A TensorRT logger that keeps errors for the exception message and forwards the rest to logging."""

    def __init__(self, trt: Any) -> None:
        outer = self
        self.errors: list[str] = []

        class Impl(trt.ILogger):  # type: ignore[misc, name-defined]
            def __init__(self) -> None:
                trt.ILogger.__init__(self)

            def log(self, severity: Any, msg: str) -> None:
                if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                    outer.errors.append(msg)
                    log.error("TensorRT: %s", msg)
                elif severity == trt.ILogger.Severity.WARNING:
                    log.warning("TensorRT: %s", msg)
                else:
                    log.debug("TensorRT: %s", msg)

        self.impl = Impl()


def _set_precision(trt: Any, config: Any, precision: str) -> None:
    """fp32 clears TF32 (TensorRT enables it by default); fp16/bf16 need TensorRT 10's weak-typing flags."""
    flags = trt.BuilderFlag
    if precision == "fp32":
        if hasattr(flags, "TF32"):
            config.clear_flag(flags.TF32)
        return
    if precision == "tf32":
        if not hasattr(flags, "TF32"):
            raise EngineBuildError(f"TensorRT {trt.__version__} has no TF32 builder flag")
        config.set_flag(flags.TF32)
        return
    name = {"fp16": "FP16", "bf16": "BF16"}[precision]
    if not hasattr(flags, name):
        raise EngineBuildError(
            f"TensorRT {trt.__version__} removed BuilderFlag.{name} (strong typing only): export a {precision} "
            "ONNX graph (e.g. ModelOpt AutoCast) and build it with precision='fp32'"
        )
    config.set_flag(getattr(flags, name))


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
    logger = _Logger(trt)
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

    ``cache_dir`` defaults to $GENORIGIN_CACHE/genorigin/engines; pointing it at a folder makes an engine
    bundle to copy to a device with the same TensorRT version and GPU. ``timing_cache`` defaults to a file
    per GPU and TensorRT version in the cache folder.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    profiles = tuple(profiles) if profiles else DEFAULT_PROFILES
    graphs = resolve_graphs(package_or_onnx_paths, roles)
    trt = import_tensorrt()
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


# ---------------------------------------------------------------------------------------------- runtime

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
    from genorigin.runtime.engine_cache import engine_problem, foreign_reasons, read_sidecar

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
    logger = _Logger(trt)
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
