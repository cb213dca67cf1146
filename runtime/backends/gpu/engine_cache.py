"""TensorRT engine cache: keys, sidecars, verified lookup and atomic store (no TensorRT, no GPU needed).

A serialized TensorRT engine is only valid for the graph, TensorRT version, GPU (compute capability and
model) and build options it was made with; TensorRT itself does not always refuse a mismatched engine
cleanly. So every ``.engine`` file gets a sidecar ``.engine.json`` holding its full key and the engine's
SHA-256, written atomically after the engine: an engine whose sidecar is missing, unreadable, for another
key or for other bytes is rebuilt, never used. Building is ``trt_build``'s, loading ``trt_load``'s.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genorigin.runtime.backends.gpu.engine_io import ROLES
from genorigin.runtime.backends.gpu.profiles import BatchProfile
from genorigin.runtime.backends.gpu.trt_env import PRECISIONS

from genorigin.files import atomic_write_bytes, cache_dir, sha256_file

ENGINE_FORMAT = "genorigin-trt-engine-v1"
SIDECAR_SUFFIX = ".json"


# ---------------------------------------------------------------------------------------------- keys


def graph_sha256(path: str | Path, external_files: Sequence[str | Path] = ()) -> str:
    """SHA-256 of an ONNX graph file and, in order, its external weight files (they change the engine too)."""
    h = hashlib.sha256()
    h.update(sha256_file(path).encode())
    for extra in external_files:
        h.update(b"\0")
        h.update(Path(extra).name.encode())
        h.update(sha256_file(extra).encode())
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
    """Engine cache folder: an explicit folder, else genorigin's cache folder ``engines``."""
    return Path(explicit) if explicit is not None else cache_dir("engines")


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
    if meta.get("engine_bytes") != size or meta.get("engine_sha256") != sha256_file(engine_path):
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
        self.root.mkdir(parents=True, exist_ok=True)
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
