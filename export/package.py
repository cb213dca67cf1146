"""Attribution packages: a generator as ONNX graphs that carry their own gradient, plus a manifest.

A package is a folder:

    manifest.json      latent spec, image size/range, opset, graph files + SHA-256 + I/O names,
                       source model fingerprint (provenance), export validation errors, genorigin version
    forward.onnx       z → image in [0, 1]
    vjp.onnx           (z, g_image) → (image, g_z)      for GPU loops with a custom loss kernel
    loss_mse.onnx      (z, target) → (loss, grad_z)      for the CPU loop
    calibration.json   written by `genorigin calibrate` once the package is calibrated

Export validates the gradient graphs numerically before anything is written (:mod:`.validate`). Loading
validates the manifest schema, every hash and every graph (onnx.checker), refuses graph files that are
symlinks or lie outside the folder, checks the latent and image shapes against the forward graph, and fails
with one clear message on a tampered, incomplete or mismatched package. The package's identity (what a
calibration is bound to) is a fingerprint of the graph files' bytes computed at load time, never a value
read from the manifest, so a rewritten graph with rewritten hashes cannot pass for the genuine model.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from genorigin.export.generator import Generator, LatentSpec
from genorigin.export.onnx_autodiff import build_loss_graph, build_vjp_graph
from genorigin.export.onnx_forward import export_forward
from genorigin.export.static_shapes import infer_static_shapes
from genorigin.export.validate import Validator, validate_against_module, validate_by_finite_differences
from onnx import helper

from genorigin import __version__
from genorigin.files import atomic_write_bytes, atomic_write_text, chmod_as_created, sha256_file

PACKAGE_FORMAT = "genorigin-package-v1"
MANIFEST = "manifest.json"
CALIBRATION = "calibration.json"
ENCODER_GRAPH = "encoder.onnx"  # the fast preset's encoder graph, an attachment (not part of the model's identity)
GRAPH_FILES = {"forward": "forward.onnx", "vjp": "vjp.onnx", "loss_mse": "loss_mse.onnx"}


class PackageError(ValueError):
    """The folder is not a valid, untampered attribution package."""


def _io_names(model: onnx.ModelProto) -> dict[str, list[str]]:
    init = {t.name for t in model.graph.initializer}
    return {
        "inputs": [v.name for v in model.graph.input if v.name not in init],
        "outputs": [v.name for v in model.graph.output],
    }


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def write_package(
    forward: onnx.ModelProto,
    out: str | Path,
    *,
    name: str,
    latent: LatentSpec,
    channels: int,
    image_size: tuple[int, int],
    source_fingerprint: str,
    source: dict[str, Any],
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
    validate: Validator | None = None,
) -> Path:
    """Derive the gradient graphs from ``forward`` and write the package folder atomically.

    ``validate`` checks the staged graphs numerically; past its tolerance it raises and nothing is written.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (use --force to replace it)")
    say = progress or (lambda _msg: None)
    say("building the VJP graph")
    graphs = {"forward": forward, "vjp": build_vjp_graph(forward, wrt="z", include_forward_output=True)}
    say("building the loss graph")
    graphs["loss_mse"] = build_loss_graph(forward, wrt="z", kind="mse")
    out.parent.mkdir(parents=True, exist_ok=True)  # staging beside the target: the final rename stays atomic
    staging = Path(tempfile.mkdtemp(prefix=".genorigin-pkg-", dir=out.parent))
    try:
        manifest = {
            "format": PACKAGE_FORMAT,
            "genorigin_version": __version__,
            "name": name,
            "latent": latent.to_dict(),
            "image": {"channels": channels, "height": image_size[0], "width": image_size[1], "range": [0.0, 1.0]},
            "opset": _opset(forward),
            "graphs": _write_graphs(graphs, staging, say),
            "source": {"fingerprint": source_fingerprint, **source},
        }
        if validate is not None:
            say("validating the gradient graphs")
            report = validate({key: staging / GRAPH_FILES[key] for key in graphs})
            manifest["validation"] = report.check(name).to_dict()
        atomic_write_text(staging / MANIFEST, json.dumps(manifest, indent=1))
        chmod_as_created(staging, directory=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return out


def _write_graphs(graphs: Mapping[str, onnx.ModelProto], folder: Path, say: Callable[[str], None]) -> dict:
    """Save and check each graph; returns the manifest's ``graphs`` entries."""
    entries = {}
    for key, model in graphs.items():
        say(f"writing {GRAPH_FILES[key]}")
        path = folder / GRAPH_FILES[key]
        onnx.save_model(model, path)
        onnx.checker.check_model(str(path))
        entries[key] = {"file": GRAPH_FILES[key], "sha256": sha256_file(path), **_io_names(model)}
    return entries


def export_generator(
    generator: Generator,
    out: str | Path,
    *,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
    validation_tolerance: float | None = None,
) -> Path:
    """A PyTorch generator → attribution package (forward exported with a dynamic batch).

    The gradient graphs are checked against the module and torch.autograd before anything is written
    (tolerance :data:`genorigin.export.validate.MODULE_TOLERANCE` unless ``validation_tolerance`` is given).
    """
    if generator.module is None:
        raise ValueError(f"generator {generator.name!r} has no PyTorch module to export")
    say = progress or (lambda _msg: None)
    module = generator.module
    image_shape = (generator.channels, *generator.image_size)
    with tempfile.TemporaryDirectory() as tmp:
        say("exporting the forward graph")
        example = torch.zeros((2, *generator.latent.shape))
        forward = export_forward(generator.module, example, Path(tmp) / "forward.onnx")
    return write_package(
        forward,
        out,
        name=generator.name,
        latent=generator.latent,
        channels=generator.channels,
        image_size=generator.image_size,
        source_fingerprint=generator.fingerprint(),
        source={"kind": "torch", "family": generator.family, "config": generator.config},
        overwrite=overwrite,
        progress=progress,
        validate=lambda graphs: validate_against_module(
            graphs, module, generator.latent, image_shape, tolerance=validation_tolerance
        ),
    )


def export_onnx_file(
    path: str | Path,
    out: str | Path,
    *,
    output_range: tuple[float, float] = (-1.0, 1.0),
    name: str | None = None,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
    validation_tolerance: float | None = None,
) -> Path:
    """A third-party ONNX generator (one latent input, one image output) → attribution package.

    The output is rescaled to [0, 1] inside the graph; the latent shape comes from the graph's input
    (its batch dimension may be symbolic; other dimensions must be static). With no module to compare with,
    grad_z is checked against finite differences of the forward graph before anything is written
    (tolerance :data:`genorigin.export.validate.FINITE_DIFFERENCE_TOLERANCE` unless given).
    """
    path = Path(path)
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ValueError(f"{path}: not a valid ONNX model ({type(exc).__name__}: {exc})") from exc
    io = _io_names(model)
    if len(io["inputs"]) != 1 or len(io["outputs"]) != 1:
        raise ValueError(f"{path}: expected one latent input and one image output, got {io}")
    z_info = next(v for v in model.graph.input if v.name == io["inputs"][0])
    latent_dims = [d.dim_value for d in z_info.type.tensor_type.shape.dim][1:]
    if not latent_dims or min(latent_dims) <= 0:
        raise ValueError(f"{path}: latent input {z_info.name!r} needs static non-batch dimensions")
    image_dims = _probe_output_shape(path, io["inputs"][0], latent_dims)
    if len(image_dims) != 3:
        raise ValueError(f"{path}: image output must be N×C×H×W, got a batch of shape {image_dims}")
    forward = _normalised_forward(model, io["inputs"][0], io["outputs"][0], output_range)
    latent = LatentSpec(tuple(latent_dims))
    image_shape = (image_dims[0], image_dims[1], image_dims[2])
    return write_package(
        forward,
        out,
        name=name or path.stem,
        latent=latent,
        channels=image_dims[0],
        image_size=(image_dims[1], image_dims[2]),
        source_fingerprint=sha256_file(path),
        source={"kind": "onnx", "file": path.name, "output_range": list(output_range)},
        overwrite=overwrite,
        progress=progress,
        validate=lambda graphs: validate_by_finite_differences(
            graphs, latent, image_shape, tolerance=validation_tolerance
        ),
    )


def _probe_output_shape(path: Path, z_name: str, latent_dims: list[int]) -> list[int]:
    """Run the graph once on a zero latent: declared output shapes are often missing or symbolic."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {z_name: np.zeros((1, *latent_dims), dtype=np.float32)})
    return list(y.shape[1:])


def _normalised_forward(
    model: onnx.ModelProto, z_name: str, y_name: str, output_range: tuple[float, float]
) -> onnx.ModelProto:
    """Rename the I/O to (z, image) and append (y − low) / span so the image lies in [0, 1]."""
    lo, hi = output_range
    if not hi > lo:
        raise ValueError(f"output range must have high > low, got {output_range}")
    graph = model.graph
    for node in graph.node:
        node.input[:] = ["z" if i == z_name else i for i in node.input]
    for v in graph.input:
        if v.name == z_name:
            v.name = "z"
    raw = "raw_image__genorigin"
    for node in graph.node:
        node.output[:] = [raw if o == y_name else o for o in node.output]
        node.input[:] = [raw if i == y_name else i for i in node.input]
    graph.initializer.extend(
        [
            onnx.numpy_helper.from_array(np.array(lo, dtype=np.float32), "range_low__genorigin"),
            onnx.numpy_helper.from_array(np.array(hi - lo, dtype=np.float32), "range_span__genorigin"),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("Sub", [raw, "range_low__genorigin"], ["shifted__genorigin"], name="genorigin_shift"),
            helper.make_node("Div", ["shifted__genorigin", "range_span__genorigin"], ["image"], name="genorigin_scale"),
        ]
    )
    graph.output[0].name = "image"
    onnx.checker.check_model(model)
    return model


@dataclass(frozen=True)
class AttributionPackage:
    """A validated package folder; ``fingerprint`` identifies the model by the graph files' bytes."""

    root: Path
    manifest: dict[str, Any]
    fingerprint: str

    def graph_path(self, key: str) -> Path:
        return self.root / self.manifest["graphs"][key]["file"]

    @property
    def calibration_path(self) -> Path:
        return self.root / CALIBRATION

    @property
    def source_fingerprint(self) -> str:
        """The exported model's fingerprint as recorded at export: provenance, not identity (the manifest is
        not authenticated)."""
        return str(self.manifest["source"]["fingerprint"])

    @property
    def latent(self) -> LatentSpec:
        return LatentSpec.from_dict(self.manifest["latent"])

    def attachment(self, role: str) -> Path | None:
        """A checked file that travels with the package but is not the model (the encoder), or None."""
        entry = self.manifest.get("attachments", {}).get(role)
        return None if entry is None else self.root / entry["file"]

    @classmethod
    def load(cls, root: str | Path) -> AttributionPackage:
        root = Path(root)
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            raise PackageError(f"{root}: no {MANIFEST} (not an attribution package; create one with genorigin export)")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PackageError(f"{manifest_path}: not valid JSON ({exc})") from exc
        _check_schema(manifest, manifest_path)
        digests = {key: _check_graph(root, key, entry) for key, entry in manifest["graphs"].items()}
        for role, entry in manifest.get("attachments", {}).items():
            _check_file(root, role, entry)
        package = cls(root, manifest, content_fingerprint(digests))
        _check_shapes(package)
        return package


def exported_once(generator: Generator, path: str | Path) -> AttributionPackage:
    """The package of a PyTorch ``generator`` at ``path``, exported there first if it is not (the user cache
    keeps one per model), and checked to be this model's."""
    path = Path(path)
    if not (path / MANIFEST).exists():
        export_generator(generator, path, overwrite=True)
    package = AttributionPackage.load(path)
    if package.source_fingerprint != generator.fingerprint():
        raise ValueError(f"{path}: package was exported from another model")
    return package


def attach_file(root: str | Path, role: str, data: bytes, file_name: str) -> AttributionPackage:
    """Write ``data`` into the package as ``file_name`` and record it (role, SHA-256) in the manifest.

    Attachments (an encoder graph) are not part of the model's identity: a package fingerprint, and so the
    calibrations bound to it, survive adding or replacing one.
    """
    package = AttributionPackage.load(root)
    if Path(file_name).name != file_name or file_name in {MANIFEST, CALIBRATION, *GRAPH_FILES.values()}:
        raise PackageError(f"{file_name!r}: an attachment needs a plain file name of its own")
    path = package.root / file_name
    atomic_write_bytes(path, data)
    manifest = dict(package.manifest)
    manifest["attachments"] = {
        **manifest.get("attachments", {}),
        role: {"file": file_name, "sha256": sha256_file(path)},
    }
    atomic_write_text(package.root / MANIFEST, json.dumps(manifest, indent=1))
    return AttributionPackage.load(package.root)


def content_fingerprint(digests: Mapping[str, str]) -> str:
    """The model identity of a package: SHA-256 over its graph files' own SHA-256 digests, by role."""
    h = hashlib.sha256(PACKAGE_FORMAT.encode())
    for key in sorted(digests):
        h.update(f"\n{key}={digests[key]}".encode())
    return h.hexdigest()


def _check_file(root: Path, key: str, entry: Mapping[str, Any], kind: str = "attachment") -> str:
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


def _check_graph(root: Path, key: str, entry: Mapping[str, Any]) -> str:
    """One graph file: checked as a package file, then its I/O names as recorded and valid ONNX.

    Returns the SHA-256 of its bytes (computed here, not read from the manifest).
    """
    digest = _check_file(root, key, entry, "graph")
    path = root / entry["file"]
    try:
        onnx.checker.check_model(str(path))
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise PackageError(f"{path}: invalid ONNX graph ({type(exc).__name__}: {exc})") from exc
    names = _io_names(model)
    if names["inputs"] != entry["inputs"] or names["outputs"] != entry["outputs"]:
        raise PackageError(f"{path}: inputs/outputs {names} differ from the manifest")
    return digest


def _check_shapes(package: AttributionPackage) -> None:
    """The manifest's latent and image shapes must be the forward graph's (a wrong manifest would make every
    image fail preparation, or silently compare images at the wrong size)."""
    path = package.graph_path("forward")
    forward = onnx.load(str(path), load_external_data=False)
    z_info = next(v for v in forward.graph.input if v.name == "z")
    declared = [d.dim_value if d.HasField("dim_value") else None for d in z_info.type.tensor_type.shape.dim][1:]
    latent = list(package.latent.shape)
    if len(declared) != len(latent) or any(d is not None and d != s for d, s in zip(declared, latent)):
        raise PackageError(f"{path}: the graph's latent is {declared}, the manifest says {latent}")
    image = package.manifest["image"]
    expected = [image["channels"], image["height"], image["width"]]
    dims = infer_static_shapes(forward, 1).get("image", (0, None))[1]
    made = list(dims[1:]) if dims is not None and None not in dims else _probe_output_shape(path, "z", latent)
    if made != expected:
        raise PackageError(f"{path}: the graph makes {made} (C, H, W) images, the manifest says {expected}")


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


def _check_schema(manifest: Any, where: Path) -> None:
    if not isinstance(manifest, dict):
        raise PackageError(f"{where}: manifest must be a JSON object")
    if manifest.get("format") != PACKAGE_FORMAT:
        raise PackageError(f"{where}: unknown package format {manifest.get('format')!r} (expected {PACKAGE_FORMAT})")
    for key, typ in _SCHEMA.items():
        if not isinstance(manifest.get(key), typ):
            raise PackageError(f"{where}: field {key!r} is missing or not a {getattr(typ, '__name__', typ)}")
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
