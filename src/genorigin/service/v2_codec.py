"""Tensors of the Open Inference Protocol (KServe "v2", the HTTP/REST protocol Triton speaks) ↔ images and answers.

A request is JSON ``{"id"?, "parameters"?, "inputs": [{"name", "shape", "datatype", "parameters"?, "data"?}],
"outputs"?: [{"name", "parameters"?}]}``. With the binary-data extension (header
``Inference-Header-Content-Length: n``) the body is n bytes of that JSON followed by the tensors' bytes: an input
whose ``parameters.binary_data_size`` is set takes that many of them, in input order, so an image never travels
as JSON numbers. A ``BYTES`` element in binary is a 4-byte little-endian length and its bytes; in JSON it is a
string, which for an encoded image (PNG, JPEG and WebP are not UTF-8 text) must be base64.

genorigin's models take one input: ``image`` (``BYTES``, shape [N] or [N, 1]: encoded files) or ``pixels``
(``UINT8``, shape [N, H, W, 3]: decoded RGB). Outputs are written back as JSON data, or as binary when the
request's ``parameters.binary_data_output`` or the output's ``parameters.binary_data`` is true.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from genorigin.service.errors import ServiceError
from genorigin.service.uploads import Upload

HEADER_LENGTH = "Inference-Header-Content-Length"
IMAGE_INPUT, PIXELS_INPUT = "image", "pixels"
INPUT_TYPES = {IMAGE_INPUT: "BYTES", PIXELS_INPUT: "UINT8"}
NUMPY_TYPES = {"FP64": "<f8", "INT32": "<i4", "BOOL": "?", "UINT8": "u1"}


@dataclass(frozen=True)
class TensorSpec:
    """A tensor as model metadata lists it (-1: any size along that axis)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


INPUTS = (TensorSpec(IMAGE_INPUT, "BYTES", (-1,)), TensorSpec(PIXELS_INPUT, "UINT8", (-1, -1, -1, 3)))


@dataclass(frozen=True)
class Tensor:
    """An output: one value per image."""

    name: str
    datatype: str
    values: Sequence[Any]


@dataclass(frozen=True)
class InferRequest:
    """What a request asks: its images (named ``<input>[i]``), and which outputs come back how (binary or not)."""

    id: str | None
    images: list[Upload]
    outputs: dict[str, bool] | None  # requested output → binary; None: every output
    binary_default: bool


def bad(message: str) -> ServiceError:
    return ServiceError("bad_request", message)


def _json_part(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """The request's JSON object and its binary section (empty without the extension)."""
    if header_length is None:
        json_bytes, binary = body, b""
    else:
        if not header_length.isdigit() or not 0 < int(header_length) <= len(body):
            raise bad(f"{HEADER_LENGTH} must be the JSON's length in bytes (1 … {len(body)}), got {header_length!r}")
        json_bytes, binary = body[: int(header_length)], body[int(header_length) :]
    try:
        request = json.loads(json_bytes)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        hint = "" if header_length is not None else f" (binary tensor data needs the {HEADER_LENGTH} header)"
        raise bad(f"the inference request is not JSON: {exc}{hint}") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise bad('the inference request must be a JSON object with an "inputs" list')
    return request, binary


def _shape(tensor: dict[str, Any]) -> list[int]:
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):  # fmt: skip
        raise bad(f"input {tensor.get('name')!r}: shape must be a list of sizes ≥ 0, got {shape!r}")
    return shape


def _bytes_elements(raw: bytes, name: str) -> list[bytes]:
    """A binary BYTES tensor: each element a 4-byte little-endian length, then that many bytes."""
    out, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise bad(f"input {name!r}: binary BYTES data ends inside an element's 4-byte length")
        (size,) = struct.unpack_from("<I", raw, at)
        if at + 4 + size > len(raw):
            raise bad(f"input {name!r}: a binary BYTES element of {size} bytes runs past the tensor's data")
        out.append(raw[at + 4 : at + 4 + size])
        at += 4 + size
    return out


def _base64_elements(data: Any, name: str) -> list[bytes]:
    flat = np.asarray(data, dtype=object).reshape(-1).tolist() if isinstance(data, list) else None
    if flat is None or not all(isinstance(x, str) for x in flat):
        raise bad(f"input {name!r}: BYTES data in JSON must be a list of base64 strings")
    try:
        return [base64.b64decode(x, validate=True) for x in flat]
    except (binascii.Error, ValueError):
        raise bad(f"input {name!r}: BYTES data in JSON must be base64 (an encoded image is not text); or send it "
                  "as binary data (parameters.binary_data_size)") from None  # fmt: skip


def _pixels(data: Any, raw: bytes | None, shape: list[int], name: str) -> np.ndarray:
    count = math.prod(shape)
    if raw is not None:
        if len(raw) != count:
            raise bad(f"input {name!r}: {len(raw)} bytes of binary data for shape {shape} ({count} bytes)")
        return np.frombuffer(raw, dtype=np.uint8).reshape(shape)
    try:
        values = np.asarray(data)
    except ValueError:
        values = np.asarray([])
    in_range = values.size == 0 or (values.dtype.kind in "iu" and values.min() >= 0 and values.max() <= 255)
    if values.dtype.kind not in "iu" or values.size != count or not in_range:
        raise bad(f"input {name!r}: data must be {count} integers in 0 … 255 for shape {shape}")
    return values.astype(np.uint8).reshape(shape)


def _images(tensor: dict[str, Any], raw: bytes | None, max_images: int) -> list[Upload]:
    name, datatype, shape = tensor.get("name"), tensor.get("datatype"), _shape(tensor)
    if name not in INPUT_TYPES:
        raise bad(f"unknown input {name!r}: inputs are {IMAGE_INPUT!r} (BYTES, encoded images) or "
                  f"{PIXELS_INPUT!r} (UINT8 [N, H, W, 3])")  # fmt: skip
    if datatype != INPUT_TYPES[name]:
        raise bad(f"input {name!r} must be {INPUT_TYPES[name]}, got {datatype!r}")
    n = shape[0] if shape else 0
    shape_ok = shape in ([n], [n, 1]) if name == IMAGE_INPUT else len(shape) == 4 and shape[3] == 3
    if not shape_ok:
        want = "[N] or [N, 1]" if name == IMAGE_INPUT else "[N, H, W, 3]"
        raise bad(f"input {name!r}: shape must be {want}, got {shape}")
    if not 1 <= n <= max_images:
        raise bad(f"input {name!r}: 1 … {max_images} images per request, got {n}")
    if raw is None and "data" not in tensor:
        raise bad(f"input {name!r} has neither data nor parameters.binary_data_size")
    if name == PIXELS_INPUT:
        pixels = _pixels(tensor.get("data"), raw, shape, name)
        return [Upload(f"{name}[{i}]", pixels=pixels[i]) for i in range(n)]
    elements = _bytes_elements(raw, name) if raw is not None else _base64_elements(tensor["data"], name)
    if len(elements) != n:
        raise bad(f"input {name!r}: {len(elements)} elements for shape {shape}")
    return [Upload(f"{name}[{i}]", data) for i, data in enumerate(elements)]


def _flag(parameters: Any, key: str, where: str, default: bool = False) -> bool:
    value = parameters.get(key, default) if isinstance(parameters, dict) else default
    if not isinstance(value, bool):
        raise bad(f"{where} parameters.{key} must be true or false, got {value!r}")
    return value


def parse_request(body: bytes, header_length: str | None, max_images: int) -> InferRequest:
    """An inference request's images and requested outputs; ``400`` naming what is wrong otherwise."""
    request, binary = _json_part(body, header_length)
    inputs = request["inputs"]
    if len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise bad(f"exactly one input, {IMAGE_INPUT!r} or {PIXELS_INPUT!r}, got {len(inputs)}")
    tensor = inputs[0]
    params = tensor.get("parameters") if isinstance(tensor.get("parameters"), dict) else {}
    size = params.get("binary_data_size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise bad(f"input {tensor.get('name')!r}: parameters.binary_data_size must be a size in bytes, got {size!r}")
    if (size or 0) != len(binary):
        raise bad(f"the binary section holds {len(binary)} bytes, the inputs declare {size or 0}")
    images = _images(tensor, binary if size is not None else None, max_images)
    binary_default = _flag(request.get("parameters"), "binary_data_output", "the request's")
    outputs = None
    if request.get("outputs") is not None:
        if not isinstance(request["outputs"], list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                               for o in request["outputs"]):  # fmt: skip
            raise bad('"outputs" must be a list of {"name": …} objects')
        outputs = {o["name"]: _flag(o.get("parameters"), "binary_data", f"output {o['name']!r}", binary_default)
                   for o in request["outputs"]}  # fmt: skip
    request_id = request.get("id")
    return InferRequest(str(request_id) if request_id is not None else None, images, outputs, binary_default)


def _binary(t: Tensor) -> bytes:
    if t.datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v)) + v for v in (str(x).encode() for x in t.values))
    return np.asarray(t.values, dtype=NUMPY_TYPES[t.datatype]).tobytes()


def _json_data(t: Tensor) -> list[Any]:
    if t.datatype == "FP64":
        return [float(v) if v is not None and math.isfinite(v) else None for v in t.values]
    if t.datatype == "INT32":
        return [int(v) for v in t.values]
    if t.datatype == "BOOL":
        return [bool(v) for v in t.values]
    return [str(v) for v in t.values]


def encode_response(model: str, version: str, request: InferRequest, outputs: list[Tensor]
                    ) -> tuple[bytes, dict[str, str], str]:  # fmt: skip
    """The response body, its extra headers and media type: JSON, or JSON then the binary outputs."""
    wanted = request.outputs if request.outputs is not None else dict.fromkeys((t.name for t in outputs),
                                                                              request.binary_default)  # fmt: skip
    entries, binary = [], []
    for t in (t for t in outputs if t.name in wanted):
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": [len(t.values)]}
        if wanted[t.name]:
            binary.append(_binary(t))
            entry["parameters"] = {"binary_data_size": len(binary[-1])}
        else:
            entry["data"] = _json_data(t)
        entries.append(entry)
    head = {"model_name": model, "model_version": version, "outputs": entries}
    if request.id is not None:
        head["id"] = request.id
    json_bytes = json.dumps(head, allow_nan=False).encode()
    if not binary:
        return json_bytes, {}, "application/json"
    return json_bytes + b"".join(binary), {HEADER_LENGTH: str(len(json_bytes))}, "application/octet-stream"
