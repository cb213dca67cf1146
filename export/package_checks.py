"""What a valid attribution package folder is: its manifest schema, its files and hashes, its graphs' I/O
and external data, and its shapes. Every refusal is one :class:`PackageError` line naming the file.

Two formats load: ``genorigin-package-v2`` (the graphs share one ``weights.bin``) and the self-contained
``genorigin-package-v1`` of earlier releases (each graph carries its own weights; still loaded and run).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from genorigin.files import sha256_file

from .generator import LatentSpec
from .static_shapes import infer_static_shapes
from .weights import WEIGHTS_FILE, external_ref

PACKAGE_FORMAT = "genorigin-package-v2"
LEGACY_FORMAT = "genorigin-package-v1"
FORMATS = (PACKAGE_FORMAT, LEGACY_FORMAT)
MANIFEST = "manifest.json"
GRAPH_FILES = {"forward": "forward.onnx", "vjp": "vjp.onnx", "loss_mse": "loss_mse.onnx"}
WEIGHTS_ROLE = "weights"  # its digest joins the graphs' in the fingerprint


class PackageError(ValueError):
    """The folder is not a valid, untampered attribution package."""


def content_fingerprint(digests: Mapping[str, str]) -> str:
    """The model identity of a package: SHA-256 over its files' own SHA-256 digests, by role (the graphs, and
    the weights file of a v2 package). The prefix stays v1's, so a v1 package keeps its calibrations."""
    h = hashlib.sha256(LEGACY_FORMAT.encode())
    for key in sorted(digests):
        h.update(f"\n{key}={digests[key]}".encode())
    return h.hexdigest()


def check_file(root: Path, key: str, entry: Mapping[str, Any], kind: str = "attachment") -> str:
    """A package file: a plain name inside the folder, not a symlink, its SHA-256 as recorded (returned)."""
    if not isinstance(entry, Mapping) or not {"file", "sha256"} <= set(entry) or Path(entry["file"]).name != entry[
            "file"]:  # fmt: skip
        raise PackageError(f"{root}: manifest entry {key!r} needs a plain file name and its sha256")
    path = root / entry["file"]
    if path.is_symlink() or path.resolve().parent != root.resolve():
        raise PackageError(f"{path}: {kind} {key!r} is a symlink or lies outside the package (refused)")
    if not path.is_file():
        raise PackageError(f"{root}: {kind} {key!r} file {entry['file']} is missing")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise PackageError(f"{path}: SHA-256 does not match the manifest (file changed after export)")
    return digest


def check_graph(root: Path, key: str, entry: Mapping[str, Any], weights_file: str | None) -> str:
    """One graph file: checked as a package file, its I/O names as recorded, valid ONNX, and external data
    only in the package's weights file (an unhashed file would escape the fingerprint).

    Returns the SHA-256 of its bytes (computed here, not read from the manifest).
    """
    digest = check_file(root, key, entry, "graph")
    path = root / entry["file"]
    try:
        onnx.checker.check_model(str(path))
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise PackageError(f"{path}: invalid ONNX graph ({type(exc).__name__}: {exc})") from exc
    names = io_names(model)
    if names["inputs"] != entry["inputs"] or names["outputs"] != entry["outputs"]:
        raise PackageError(f"{path}: inputs/outputs {names} differ from the manifest")
    for tensor in model.graph.initializer:
        ref = external_ref(tensor)
        if ref is not None and ref.location != weights_file:
            raise PackageError(
                f"{path}: initializer {tensor.name!r} reads external data from {ref.location!r}, which the "
                f"manifest does not hash (only {weights_file or 'none'} is allowed)"
            )
    return digest


def check_shapes(forward_path: Path, latent: LatentSpec, image: Mapping[str, int]) -> None:
    """The manifest's latent and image shapes must be the forward graph's (a wrong manifest would make every
    image fail preparation, or silently compare images at the wrong size)."""
    forward = onnx.load(str(forward_path), load_external_data=False)
    z_info = next(v for v in forward.graph.input if v.name == "z")
    declared = [d.dim_value if d.HasField("dim_value") else None for d in z_info.type.tensor_type.shape.dim][1:]
    if len(declared) != len(latent.shape) or any(d is not None and d != s for d, s in zip(declared, latent.shape)):
        raise PackageError(f"{forward_path}: the graph's latent is {declared}, the manifest says {list(latent.shape)}")
    expected = [image["channels"], image["height"], image["width"]]
    dims = infer_static_shapes(forward, 1).get("image", (0, None))[1]
    made = (
        list(dims[1:]) if dims is not None and None not in dims else probe_output_shape(forward_path, "z", latent.shape)
    )
    if made != expected:
        raise PackageError(f"{forward_path}: the graph makes {made} (C, H, W) images, the manifest says {expected}")


def probe_output_shape(path: Path, z_name: str, latent_dims: tuple[int, ...] | list[int]) -> list[int]:
    """Run the graph once on a zero latent: declared output shapes are often missing or symbolic."""
    from .sessions import open_session

    session = open_session(path, "cpu", quiet=True)
    (y,) = session.run(None, {z_name: np.zeros((1, *latent_dims), dtype=np.float32)})
    return list(y.shape[1:])


def io_names(model: onnx.ModelProto) -> dict[str, list[str]]:
    init = {t.name for t in model.graph.initializer}
    return {
        "inputs": [v.name for v in model.graph.input if v.name not in init],
        "outputs": [v.name for v in model.graph.output],
    }


_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "genorigin_version": str,
    "name": str,
    "latent": dict,
    "image": dict,
    "opset": int,
    "graphs": dict,
    "source": dict,
}


def check_schema(manifest: Any, where: Path) -> None:
    if not isinstance(manifest, dict):
        raise PackageError(f"{where}: manifest must be a JSON object")
    if manifest.get("format") not in FORMATS:
        raise PackageError(
            f"{where}: unknown package format {manifest.get('format')!r} (this genorigin reads {', '.join(FORMATS)}; "
            "re-export the model with this version's genorigin export)"
        )
    for key, typ in _SCHEMA.items():
        if not isinstance(manifest.get(key), typ):
            raise PackageError(f"{where}: field {key!r} is missing or not a {getattr(typ, '__name__', typ)}")
    if manifest["format"] == PACKAGE_FORMAT and not isinstance(manifest.get(WEIGHTS_ROLE), dict):
        raise PackageError(f"{where}: field {WEIGHTS_ROLE!r} is missing or not a dict")
    missing = set(GRAPH_FILES) - set(manifest["graphs"])
    if missing:
        raise PackageError(f"{where}: graphs {sorted(missing)} missing from the manifest")
    for key, entry in manifest["graphs"].items():
        if not isinstance(entry, dict) or not {"file", "sha256", "inputs", "outputs"} <= set(entry):
            raise PackageError(f"{where}: graph entry {key!r} needs file, sha256, inputs, outputs")
        if Path(entry["file"]).name != entry["file"]:
            raise PackageError(f"{where}: graph file {entry['file']!r} must be a plain file name in the package")
    if "fingerprint" not in manifest["source"]:
        raise PackageError(f"{where}: source.fingerprint missing")
    img = manifest["image"]
    if not all(isinstance(img.get(k), int) and img[k] > 0 for k in ("channels", "height", "width")):
        raise PackageError(f"{where}: image needs positive integer channels, height, width")
    try:
        LatentSpec.from_dict(manifest["latent"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PackageError(f"{where}: bad latent spec ({exc})") from exc


def weights_file_name(manifest: Mapping[str, Any]) -> str | None:
    """The shared weights file of a v2 package (its plain name), or None for a self-contained v1 package."""
    entry = manifest.get(WEIGHTS_ROLE)
    return entry["file"] if isinstance(entry, Mapping) and manifest.get("format") == PACKAGE_FORMAT else None


__all__ = ["FORMATS", "GRAPH_FILES", "MANIFEST", "PACKAGE_FORMAT", "WEIGHTS_FILE", "PackageError"]
