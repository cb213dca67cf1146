"""One weights file per package: every large initializer of the forward, VJP and loss graphs, stored once.

The three graphs share the forward's weights; saved self-contained, a package carried three copies of each
(569 MB for a 198 MB decoder) and could not pass protobuf's 2 GB limit. Here every initializer of at least
:data:`INLINE_LIMIT` bytes goes into ``weights.bin`` and the graphs point at it with ONNX external data
(``location``, ``offset``, ``length``), so any ONNX consumer (ONNX Runtime from a path, TensorRT's parser) reads
them, and genorigin's runtime reads the file once for all its sessions (:mod:`.sessions`).

Tensors are moved one at a time (read from where the exporter put them, written, dropped): export never holds
the weights twice. Identical tensors are stored once. ``storage="float16"|"bfloat16"`` stores float32 weights
rounded to half precision, each read back through a ``Cast`` node the graph gains, so the graphs stay plain
ONNX; the package is then the model with rounded weights (export validates against exactly that).
"""

from __future__ import annotations

import hashlib
import mmap
from collections.abc import Callable, Collection, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import onnx
from onnx import TensorProto, helper

WEIGHTS_FILE = "weights.bin"
INLINE_LIMIT = 1024  # bytes: smaller tensors (axes, shapes, scalars) stay inside each graph, where rules read them
CHUNK = 1 << 26  # bytes per copy step (a multiple of every element size): one tensor is never copied whole
ALIGNMENT = 64  # every tensor starts on a 64-byte boundary (SIMD loads, and numpy views of any dtype)
STORAGE_TYPES = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "bfloat16": TensorProto.BFLOAT16}
STORED_SUFFIX = "__stored"  # a weight kept in reduced precision is renamed; a Cast gives back the original name


@dataclass(frozen=True)
class WeightsInfo:
    """The manifest's ``weights`` entry."""

    file: str
    sha256: str
    bytes: int
    tensors: int
    storage: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ExternalRef:
    """Where an initializer's bytes lie in an external file."""

    location: str
    offset: int
    length: int


def external_ref(tensor: TensorProto) -> ExternalRef | None:
    """The external-data reference of an initializer, or None when its bytes are inside the graph."""
    if tensor.data_location != TensorProto.EXTERNAL:
        return None
    info = {e.key: e.value for e in tensor.external_data}
    length = int(info["length"]) if "length" in info else _nbytes(tensor)
    return ExternalRef(info["location"], int(info.get("offset", 0)), length)


def external_initializers(
    model: onnx.ModelProto, location: str = WEIGHTS_FILE
) -> Iterator[tuple[TensorProto, ExternalRef]]:
    """The graph's initializers stored in ``location``."""
    for tensor in model.graph.initializer:
        ref = external_ref(tensor)
        if ref is not None and ref.location == location:
            yield tensor, ref


class WeightsWriter:
    """Appends tensors to ``weights.bin`` (aligned, deduplicated) and points the graphs' initializers at them."""

    def __init__(self, folder: str | Path, storage: str = "float32") -> None:
        self.check_storage(storage)
        self.path = Path(folder) / WEIGHTS_FILE
        self.storage = storage
        self._file: BinaryIO = open(self.path, "wb")  # noqa: SIM115 - closed by close()
        self._hash = hashlib.sha256()
        self._stored: dict[tuple[int, str], tuple[int, int]] = {}  # (data type, content digest) → (offset, length)
        self._sources: dict[Path, _Source] = {}

    @staticmethod
    def check_storage(storage: str) -> None:
        if storage not in STORAGE_TYPES:
            raise ValueError(f"weight storage must be one of {', '.join(STORAGE_TYPES)}, got {storage!r}")

    def externalize(
        self, model: onnx.ModelProto, source_dir: str | Path | None = None, *, reduce: Collection[str] = ()
    ) -> onnx.ModelProto:
        """Move ``model``'s large initializers into the file, in place; returns ``model``.

        Initializers already external (in ``source_dir``, as an exporter wrote them) are copied from there;
        small external ones come back inline. Without ``source_dir``, external ones must already be in this
        file (a gradient graph built from an externalised forward). Float32 initializers named in ``reduce``
        (the model's own weights, not the gradient pass's constants) are stored in the writer's storage type
        behind a Cast node that gives the graph back their float32 values under their own names.
        """
        casts = []
        for tensor in model.graph.initializer:
            data = self._take_bytes(tensor, source_dir)
            if data is None:  # already in this file (a gradient graph built from an externalised forward)
                continue
            with data:
                if data.nbytes < INLINE_LIMIT:
                    _set_inline(tensor, data.tobytes())
                    continue
                convert = None
                if tensor.name in reduce and tensor.data_type == TensorProto.FLOAT and self.storage != "float32":
                    casts.append(_reduce(tensor, self.storage))
                    convert = self._convert
                offset, length = self._append(tensor.data_type, data, convert)
            _set_external(tensor, offset, length)
        if casts:
            nodes = list(model.graph.node)
            del model.graph.node[:]
            model.graph.node.extend([*casts, *nodes])
        return model

    def close(self) -> WeightsInfo:
        self._file.close()
        for source in self._sources.values():
            source.close()
        return WeightsInfo(
            WEIGHTS_FILE, self._hash.hexdigest(), self.path.stat().st_size, len(self._stored), self.storage
        )

    def _take_bytes(self, tensor: TensorProto, source_dir: str | Path | None) -> memoryview | None:
        ref = external_ref(tensor)
        if ref is None:
            return memoryview(_inline_bytes(tensor))
        if source_dir is None:
            if ref.location != WEIGHTS_FILE:
                raise WeightsError(
                    f"initializer {tensor.name!r} is external in {ref.location!r}, not in {WEIGHTS_FILE}"
                )
            return None
        path = Path(source_dir, ref.location).resolve()
        if path == self.path.resolve():
            return None
        if path not in self._sources:
            self._sources[path] = _Source(path)
        return self._sources[path].read(ref.offset, ref.length)

    def _append(
        self, data_type: int, data: memoryview, convert: Callable[[memoryview], bytes] | None
    ) -> tuple[int, int]:
        """Store ``data`` (converted chunk by chunk) unless identical bytes are stored already: one pass to
        hash, one to copy, never the whole tensor in memory at once."""
        digest = hashlib.sha256()
        for chunk in _chunks(data, convert):
            digest.update(chunk)
        key = (data_type, digest.hexdigest())
        if key not in self._stored:
            pad = -self._file.tell() % ALIGNMENT
            self._write(b"\0" * pad)
            start = self._file.tell()
            for chunk in _chunks(data, convert):
                self._write(chunk)
            self._stored[key] = (start, self._file.tell() - start)
        return self._stored[key]

    def _convert(self, chunk: memoryview) -> bytes:
        return _to_storage(np.frombuffer(chunk, dtype=np.float32), self.storage)

    def _write(self, data: bytes | memoryview) -> None:
        self._file.write(data)
        self._hash.update(data)


class _Source:
    """An exporter's external-data file, mapped read-only: tensors are copied out one at a time."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if path.stat().st_size else None

    def read(self, offset: int, length: int) -> memoryview:
        """A view of the bytes (release it before close)."""
        if self._map is None or offset + length > len(self._map):
            raise WeightsError(f"{self._file.name}: external data {offset}+{length} lies past the end of the file")
        return memoryview(self._map)[offset : offset + length]

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
        self._file.close()


def _chunks(data: memoryview, convert: Callable[[memoryview], bytes] | None) -> Iterator[bytes | memoryview]:
    for start in range(0, data.nbytes, CHUNK):
        part = data[start : start + CHUNK]
        yield part if convert is None else convert(part)


def _nbytes(tensor: TensorProto) -> int:
    count = int(np.prod(tensor.dims)) if tensor.dims else 1
    return count * np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize


def _inline_bytes(tensor: TensorProto) -> bytes:
    """The tensor's values as little-endian raw bytes, whichever field holds them."""
    if tensor.HasField("raw_data"):
        return tensor.raw_data
    return onnx.numpy_helper.to_array(tensor).tobytes()


def _set_inline(tensor: TensorProto, data: bytes) -> None:
    for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
        tensor.ClearField(field)
    del tensor.external_data[:]
    tensor.data_location = TensorProto.DEFAULT
    tensor.raw_data = data


def _set_external(tensor: TensorProto, offset: int, length: int) -> None:
    for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
        tensor.ClearField(field)
    del tensor.external_data[:]
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", WEIGHTS_FILE), ("offset", str(offset)), ("length", str(length))):
        tensor.external_data.add(key=key, value=value)


def _reduce(tensor: TensorProto, storage: str) -> onnx.NodeProto:
    """Rename the float32 initializer to its stored name and return the Cast that restores the original."""
    name = tensor.name
    tensor.name = f"{name}{STORED_SUFFIX}"
    tensor.data_type = STORAGE_TYPES[storage]
    return helper.make_node("Cast", [tensor.name], [name], to=TensorProto.FLOAT, name=f"{name}__cast")


def _to_storage(values: np.ndarray, storage: str) -> bytes:
    if storage == "float16":
        return values.astype(np.float16).tobytes()
    return float32_to_bfloat16_bits(values).tobytes()


def float32_to_bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) of float32 values, rounded to nearest even; NaN stays NaN."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(values), np.uint16(0x7FC0), rounded)


def bfloat16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def read_weights(path: str | Path, sha256: str, chunk: int = 1 << 24) -> np.ndarray:
    """The whole file as one uint8 array, hashed while it is read: the bytes used are the bytes verified."""
    path = Path(path)
    size = path.stat().st_size
    buffer = np.empty(size, dtype=np.uint8)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        view = memoryview(buffer)
        done = 0
        while done < size:
            n = f.readinto(view[done : done + chunk])
            if not n:
                break
            h.update(view[done : done + n])
            done += n
    if done != size or h.hexdigest() != sha256:
        raise WeightsError(f"{path}: SHA-256 does not match the manifest (file changed after export; re-export)")
    return buffer


def tensor_view(buffer: np.ndarray, tensor: TensorProto, ref: ExternalRef) -> np.ndarray:
    """The initializer's values as a read-only view into the weights buffer (no copy)."""
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
    if tensor.data_type == TensorProto.BFLOAT16:
        dtype = np.dtype(np.uint16)  # numpy has no bfloat16: keep the bits (ORT reads them as bfloat16)
    if ref.offset + ref.length > buffer.size or ref.length != _nbytes(tensor):
        raise WeightsError(f"initializer {tensor.name!r}: external data {ref.offset}+{ref.length} does not fit")
    view = buffer[ref.offset : ref.offset + ref.length].view(dtype).reshape(tuple(tensor.dims))
    view.flags.writeable = False
    return view


class WeightsError(ValueError):
    """The weights file is missing, changed, or does not hold what a graph expects."""
