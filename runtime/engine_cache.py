"""TensorRT engine cache and the pure batch arithmetic of the GPU runtime (no TensorRT, no GPU needed).

A serialized TensorRT engine is only valid for the graph, TensorRT version, GPU (compute capability and
model) and build options it was made with; TensorRT itself does not always refuse a mismatched engine
cleanly. So every ``.engine`` file gets a sidecar ``.engine.json`` holding its full key and the engine's
SHA-256, written atomically after the engine: an engine whose sidecar is missing, unreadable, for another
key or for other bytes is rebuilt, never used.

The batch helpers (profiles, buckets, buffer shapes, I/O naming) live here too so they are testable on CPU:
the GPU backends pad the loop's slot count up to a bucket and choose the optimisation profile from them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENGINE_FORMAT = "genorigin-trt-engine-v1"
PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
ROLES = ("forward", "vjp", "loss")
SIDECAR_SUFFIX = ".json"


# ---------------------------------------------------------------------------------------------- profiles


@dataclass(frozen=True, order=True)
class BatchProfile:
    """One TensorRT optimisation profile over the batch dimension: the engine accepts min ≤ N ≤ max."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"batch profile needs 1 ≤ min ≤ opt ≤ max, got {self.min}:{self.opt}:{self.max}")

    def contains(self, n: int) -> bool:
        return self.min <= n <= self.max

    def to_list(self) -> list[int]:
        return [self.min, self.opt, self.max]

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"


DEFAULT_PROFILES: tuple[BatchProfile, ...] = (BatchProfile(1, 32, 256),)


def parse_profile(spec: str) -> BatchProfile:
    """``"min:opt:max"`` (CLI form); ``"max"`` alone means ``1:max:max``."""
    parts = [p.strip() for p in str(spec).split(":")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"batch profile {spec!r} must be 'min:opt:max' or 'max' (integers)") from None
    if len(values) == 1:
        return BatchProfile(1, values[0], values[0])
    if len(values) != 3:
        raise ValueError(f"batch profile {spec!r} must be 'min:opt:max' or 'max'")
    return BatchProfile(*values)


def pow2_bucket(n: int) -> int:
    """Smallest power of two ≥ n: the CUDA-graph backend keeps one captured graph per such bucket."""
    if n < 1:
        raise ValueError(f"slot count must be ≥ 1, got {n}")
    return 1 << (n - 1).bit_length()


def bucket_sizes(profiles: Sequence[BatchProfile]) -> tuple[int, ...]:
    """Batch sizes the runtime pads to: the powers of two inside each profile, plus each profile's min and max.

    Few sizes keep the number of bound shapes (and captured graphs) small; padding wastes < 2× work.
    """
    if not profiles:
        raise ValueError("at least one batch profile is needed")
    sizes: set[int] = set()
    for p in profiles:
        sizes.update((p.min, p.max))
        b = 1
        while b <= p.max:
            if b >= p.min:
                sizes.add(b)
            b <<= 1
    return tuple(sorted(sizes))


def choose_bucket(n: int, buckets: Iterable[int]) -> int:
    """The smallest bucket that holds ``n`` slots; an error names the largest when none does."""
    if n < 1:
        raise ValueError(f"slot count must be ≥ 1, got {n}")
    ordered = sorted(buckets)
    for b in ordered:
        if b >= n:
            return b
    largest = ordered[-1] if ordered else 0
    raise ValueError(
        f"{n} slots exceed the largest batch the engines were built for ({largest}); rebuild with a larger "
        "max batch (--batch min:opt:max) or run with a smaller batch size × restarts"
    )


def choose_profile(batch: int, profiles: Sequence[BatchProfile]) -> int:
    """Index of the profile to run ``batch`` under: the tightest range that contains it, then the nearest opt."""
    candidates = [i for i, p in enumerate(profiles) if p.contains(batch)]
    if not candidates:
        ranges = ", ".join(str(p) for p in profiles) or "none"
        raise ValueError(f"batch {batch} is outside every optimisation profile ({ranges})")
    return min(candidates, key=lambda i: (profiles[i].max - profiles[i].min, abs(profiles[i].opt - batch), i))


# ---------------------------------------------------------------------------------------------- shapes

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


# ---------------------------------------------------------------------------------------------- keys


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def graph_sha256(path: str | Path, external_files: Sequence[str | Path] = ()) -> str:
    """SHA-256 of an ONNX graph file and, in order, its external weight files (they change the engine too)."""
    h = hashlib.sha256()
    h.update(file_sha256(path).encode())
    for extra in external_files:
        h.update(b"\0")
        h.update(Path(extra).name.encode())
        h.update(file_sha256(extra).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class EngineKey:
    """Everything a serialized engine depends on. Two engines with equal keys are interchangeable."""

    role: str
    graph_sha256: str
    tensorrt_version: str
    compute_capability: str  # "9.0"
    device_name: str
    precision: str
    profiles: tuple[BatchProfile, ...]
    builder: tuple[tuple[str, Any], ...] = field(default_factory=tuple)  # options that change tactics

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown engine role {self.role!r}; expected one of {ROLES}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; expected one of {PRECISIONS}")
        if not self.profiles:
            raise ValueError("an engine key needs at least one batch profile")

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": ENGINE_FORMAT,
            "role": self.role,
            "graph_sha256": self.graph_sha256,
            "tensorrt_version": self.tensorrt_version,
            "compute_capability": self.compute_capability,
            "device_name": self.device_name,
            "precision": self.precision,
            "profiles": [p.to_list() for p in self.profiles],
            "builder": {k: v for k, v in self.builder},
        }

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def file_name(self) -> str:
        return f"{self.role}-{self.precision}-{self.digest()[:24]}.engine"


def key_mismatches(expected: Mapping[str, Any], found: Mapping[str, Any]) -> list[str]:
    """The key components that differ, as readable 'name: found → expected' strings (empty: same key)."""
    out = []
    for name in sorted(set(expected) | set(found)):
        if expected.get(name) != found.get(name):
            out.append(f"{name}: {found.get(name)!r} → {expected.get(name)!r}")
    return out


RUNTIME_COMPONENTS = ("format", "tensorrt_version", "compute_capability", "device_name")


def foreign_reasons(
    found: Mapping[str, Any], tensorrt_version: str, compute_capability: str, device_name: str
) -> list[str]:
    """Why an engine's recorded key does not fit this machine (empty: it does); for engines given by path."""
    here = {
        "format": ENGINE_FORMAT,
        "tensorrt_version": tensorrt_version,
        "compute_capability": compute_capability,
        "device_name": device_name,
    }
    return key_mismatches(here, {k: found.get(k) for k in RUNTIME_COMPONENTS})


# ---------------------------------------------------------------------------------------------- files


def engine_cache_dir(explicit: str | Path | None = None) -> Path:
    """Engine cache folder: an explicit folder, else $GENORIGIN_CACHE/genorigin/engines, else XDG's cache.

    Same base as the calibration cache (genorigin.models.cache_dir): $GENORIGIN_CACHE, $XDG_CACHE_HOME or
    ~/.cache, then genorigin/engines.
    """
    if explicit is not None:
        return Path(explicit)
    base = os.environ.get("GENORIGIN_CACHE") or os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "genorigin" / "engines"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write via a temp file in the same folder, fsync, rename: readers see the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def sidecar_path(engine_path: str | Path) -> Path:
    p = Path(engine_path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def read_sidecar(engine_path: str | Path) -> dict[str, Any]:
    """The sidecar of an engine; ValueError when missing or unreadable."""
    side = sidecar_path(engine_path)
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"no sidecar {side.name}: engine of unknown origin") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"sidecar {side.name} unreadable ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("key"), dict):
        raise ValueError(f"sidecar {side.name} has no key")
    return meta


def engine_problem(engine_path: str | Path, key: EngineKey | None = None) -> str | None:
    """Why an engine file must not be used (None: it is intact and, when ``key`` is given, built for it)."""
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        return "no engine file"
    try:
        meta = read_sidecar(engine_path)
    except ValueError as e:
        return str(e)
    if meta["key"].get("format") != ENGINE_FORMAT:
        return f"engine format {meta['key'].get('format')!r} is not {ENGINE_FORMAT!r}"
    if key is not None:
        diff = key_mismatches(key.to_dict(), meta["key"])
        if diff:
            return "built for another key (" + "; ".join(diff) + ")"
    size = engine_path.stat().st_size
    if meta.get("engine_bytes") != size or meta.get("engine_sha256") != file_sha256(engine_path):
        return "engine bytes do not match the sidecar's SHA-256 (truncated, replaced or corrupted)"
    return None


class EngineCache:
    """A folder of ``<role>-<precision>-<key digest>.engine`` files, each with its verified sidecar."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = engine_cache_dir(root)

    def path_for(self, key: EngineKey) -> Path:
        return self.root / key.file_name()

    def lookup(self, key: EngineKey) -> tuple[Path | None, str | None]:
        """(path, None) for a usable cached engine; (None, reason) when it is absent, stale or foreign."""
        path = self.path_for(key)
        problem = engine_problem(path, key)
        return (path, None) if problem is None else (None, problem)

    def store(self, key: EngineKey, engine: bytes, extra: Mapping[str, Any] | None = None) -> Path:
        """Engine first, sidecar last: a crash in between leaves an engine without a valid sidecar (rebuilt)."""
        path = self.path_for(key)
        atomic_write_bytes(path, engine)
        meta = {
            "key": key.to_dict(),
            "key_sha256": key.digest(),
            "engine_sha256": hashlib.sha256(engine).hexdigest(),
            "engine_bytes": len(engine),
            "created_unix": time.time(),
            **dict(extra or {}),
        }
        atomic_write_bytes(sidecar_path(path), json.dumps(meta, indent=2, sort_keys=True).encode())
        return path

    def get_or_build(
        self,
        key: EngineKey,
        build: Callable[[], bytes],
        *,
        force: bool = False,
        extra: Mapping[str, Any] | None = None,
    ) -> tuple[Path, bool, str | None]:
        """(path, built, why) — the cached engine for ``key``, built (and stored) when missing, stale or forced."""
        if not force:
            path, problem = self.lookup(key)
            if path is not None:
                return path, False, None
        else:
            problem = "rebuild forced"
        return self.store(key, build(), extra), True, problem
