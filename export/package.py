"""Attribution packages: a generator as ONNX graphs that carry their own gradient, plus a manifest.

A package is a folder:

    manifest.json      latent spec, image size/range, opset, graph files + SHA-256 + I/O names, the weights
                       file, source model fingerprint (provenance), export validation errors, genorigin version
    weights.bin        every large initializer, stored once, shared by the three graphs (ONNX external data)
    forward.onnx       z → image in [0, 1]
    vjp.onnx           (z, g_image) → (image, g_z)      for GPU loops with a custom loss kernel
    loss_mse.onnx      (z, target) → (loss, grad_z)      for the CPU loop
    calibration.json   written by `genorigin calibrate` once the package is calibrated

Export moves the exporter's weights into ``weights.bin`` one tensor at a time and derives the gradient graphs
from the weight-less forward header, so it never holds several copies of the weights (:mod:`.weights`). It
validates the gradient graphs numerically before anything is written (:mod:`.validate`). Loading checks the
folder (:mod:`.package_checks`: schema, hashes, graphs, external data, shapes) and fails with one clear message
on a tampered, incomplete or mismatched package. The package's identity (what a calibration is bound to) is a
fingerprint of the graph and weights files' bytes computed at load time, never a value read from the manifest,
so a rewritten graph with rewritten hashes cannot pass for the genuine model. Packages of the earlier
self-contained format (v1) still load.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch
from genorigin.export.generator import Generator, LatentSpec
from genorigin.export.memory import release_freed_memory
from genorigin.export.onnx_autodiff import build_loss_graph, build_vjp_graph
from genorigin.export.onnx_forward import export_forward
from genorigin.export.onnx_import import normalised_forward
from genorigin.export.package_checks import (
    GRAPH_FILES,
    MANIFEST,
    PACKAGE_FORMAT,
    WEIGHTS_ROLE,
    PackageError,
    check_file,
    check_graph,
    check_schema,
    check_shapes,
    content_fingerprint,
    io_names,
    probe_output_shape,
    weights_file_name,
)
from genorigin.export.sessions import SharedWeights
from genorigin.export.validate import Validator, validate_against_module, validate_by_finite_differences
from genorigin.export.weights import WEIGHTS_FILE, WeightsWriter, bfloat16_bits_to_float32, float32_to_bfloat16_bits

from genorigin import __version__
from genorigin.files import atomic_write_bytes, atomic_write_text, chmod_as_created, sha256_file

CALIBRATION = "calibration.json"
ENCODER_GRAPH = "encoder.onnx"  # the fast preset's encoder graph, an attachment (not part of the model's identity)
# What export reports, in order (the CLI's progress bar counts these): a model or a third-party file.
EXPORT_STEPS = {
    "module": ("exporting the forward graph", "storing the weights", "building the VJP graph",
               "building the loss graph", "writing the graphs", "validating the gradient graphs"),
    "onnx": ("reading the ONNX file", "storing the weights", "building the VJP graph",
             "building the loss graph", "writing the graphs", "validating the gradient graphs"),
}  # fmt: skip

__all__ = [
    "CALIBRATION", "ENCODER_GRAPH", "EXPORT_STEPS", "GRAPH_FILES", "MANIFEST", "PACKAGE_FORMAT", "WEIGHTS_FILE",
    "AttributionPackage", "PackageError", "attach_file", "content_fingerprint", "export_generator",
    "export_onnx_file", "write_package",
]  # fmt: skip


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
    forward_dir: str | Path | None = None,
    storage: str = "float32",
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
    validate: Validator | None = None,
) -> Path:
    """Derive the gradient graphs from ``forward`` and write the package folder atomically.

    ``forward`` may keep its weights as external data in ``forward_dir`` (as the exporter wrote them): they are
    moved into the package's weights file one tensor at a time (``storage``: float32, float16 or bfloat16),
    and the gradient graphs are built from the weight-less header. ``validate`` checks the staged graphs
    numerically; past its tolerance it raises and nothing is written.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (use --force to replace it)")
    say = progress or (lambda _msg: None)
    out.parent.mkdir(parents=True, exist_ok=True)  # staging beside the target: the final rename stays atomic
    staging = Path(tempfile.mkdtemp(prefix=".genorigin-pkg-", dir=out.parent))
    try:
        say("storing the weights")
        writer = WeightsWriter(staging, storage)
        try:
            writer.externalize(forward, forward_dir, reduce=True)
            say("building the VJP graph")
            graphs = {"forward": forward, "vjp": build_vjp_graph(forward, wrt="z", include_forward_output=True)}
            say("building the loss graph")
            graphs["loss_mse"] = build_loss_graph(forward, wrt="z", kind="mse")
            for key in ("vjp", "loss_mse"):  # constants the gradient pass made, if large, join the file too
                writer.externalize(graphs[key])
        finally:
            weights = writer.close()
        say("writing the graphs")
        manifest = {
            "format": PACKAGE_FORMAT,
            "genorigin_version": __version__,
            "name": name,
            "latent": latent.to_dict(),
            "image": {"channels": channels, "height": image_size[0], "width": image_size[1], "range": [0.0, 1.0]},
            "opset": _opset(forward),
            "graphs": _write_graphs(graphs, staging),
            WEIGHTS_ROLE: weights.to_dict(),
            "source": {"fingerprint": source_fingerprint, **source},
        }
        del graphs, forward
        release_freed_memory()
        if validate is not None:
            say("validating the gradient graphs")
            shared = SharedWeights(staging / weights.file, weights.sha256)
            report = validate({key: staging / GRAPH_FILES[key] for key in GRAPH_FILES}, shared)
            del shared
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


def _write_graphs(graphs: Mapping[str, onnx.ModelProto], folder: Path) -> dict:
    """Save and check each graph (weights external, so each file is small); returns the manifest's entries."""
    entries = {}
    for key, model in graphs.items():
        path = folder / GRAPH_FILES[key]
        onnx.save_model(model, path)
        onnx.checker.check_model(str(path))
        entries[key] = {"file": GRAPH_FILES[key], "sha256": sha256_file(path), **io_names(model)}
    return entries


def export_generator(
    generator: Generator,
    out: str | Path,
    *,
    storage: str = "float32",
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
    validation_tolerance: float | None = None,
) -> Path:
    """A PyTorch generator → attribution package (forward exported with a dynamic batch).

    The gradient graphs are checked against the module and torch.autograd before anything is written
    (tolerance :data:`genorigin.export.validate.MODULE_TOLERANCE` unless ``validation_tolerance`` is given).
    With half-precision ``storage`` the reference is a copy of the module with its weights rounded the same
    way, since that is the model the package holds.
    """
    if generator.module is None:
        raise ValueError(f"generator {generator.name!r} has no PyTorch module to export")
    say = progress or (lambda _msg: None)
    module = generator.module
    image_shape = (generator.channels, *generator.image_size)
    with tempfile.TemporaryDirectory() as tmp:
        say("exporting the forward graph")
        example = torch.zeros((2, *generator.latent.shape))
        forward = export_forward(module, example, Path(tmp) / "forward.onnx", keep_external=True)
        release_freed_memory()  # the exporter's working memory, before the weights move
        return write_package(
            forward,
            out,
            name=generator.name,
            latent=generator.latent,
            channels=generator.channels,
            image_size=generator.image_size,
            source_fingerprint=generator.fingerprint(),
            source={"kind": "torch", "family": generator.family, "config": generator.config},
            forward_dir=tmp,
            storage=storage,
            overwrite=overwrite,
            progress=progress,
            validate=lambda graphs, weights: validate_against_module(
                graphs,
                rounded_like_storage(module, storage),
                generator.latent,
                image_shape,
                tolerance=validation_tolerance,
                weights=weights,
            ),
        )


def rounded_like_storage(module: torch.nn.Module, storage: str) -> torch.nn.Module:
    """``module`` itself for float32 storage; else a copy whose float32 tensors went through the storage type."""
    if storage == "float32":
        return module
    rounded = copy.deepcopy(module)
    with torch.no_grad():
        for tensor in [*rounded.parameters(), *rounded.buffers()]:
            if tensor.dtype == torch.float32 and tensor.numel() * 4 >= 1024:  # weights.INLINE_LIMIT: the stored ones
                tensor.copy_(torch.from_numpy(_round_trip(tensor.detach().cpu().numpy(), storage)))
    return rounded


def _round_trip(values: Any, storage: str) -> Any:
    if storage == "float16":
        return values.astype("float16").astype("float32")
    return bfloat16_bits_to_float32(float32_to_bfloat16_bits(values)).reshape(values.shape)


def export_onnx_file(
    path: str | Path,
    out: str | Path,
    *,
    output_range: tuple[float, float] = (-1.0, 1.0),
    name: str | None = None,
    storage: str = "float32",
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
    validation_tolerance: float | None = None,
) -> Path:
    """A third-party ONNX generator (one latent input, one image output) → attribution package.

    The output is rescaled to [0, 1] inside the graph; the latent shape comes from the graph's input
    (its batch dimension may be symbolic; other dimensions must be static). Its weights, inline or external
    (any size), are read one tensor at a time. With no module to compare with, grad_z is checked against
    finite differences of the forward graph before anything is written (tolerance
    :data:`genorigin.export.validate.FINITE_DIFFERENCE_TOLERANCE` unless given).
    """
    path = Path(path)
    say = progress or (lambda _msg: None)
    say("reading the ONNX file")
    try:
        onnx.checker.check_model(str(path))
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ValueError(f"{path}: not a valid ONNX model ({type(exc).__name__}: {exc})") from exc
    io = io_names(model)
    if len(io["inputs"]) != 1 or len(io["outputs"]) != 1:
        raise ValueError(f"{path}: expected one latent input and one image output, got {io}")
    z_info = next(v for v in model.graph.input if v.name == io["inputs"][0])
    latent_dims = [d.dim_value for d in z_info.type.tensor_type.shape.dim][1:]
    if not latent_dims or min(latent_dims) <= 0:
        raise ValueError(f"{path}: latent input {z_info.name!r} needs static non-batch dimensions")
    image_dims = probe_output_shape(path, io["inputs"][0], latent_dims)
    if len(image_dims) != 3:
        raise ValueError(f"{path}: image output must be N×C×H×W, got a batch of shape {image_dims}")
    forward = normalised_forward(model, io["inputs"][0], io["outputs"][0], output_range)
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
        forward_dir=path.parent,
        storage=storage,
        overwrite=overwrite,
        progress=progress,
        validate=lambda graphs, weights: validate_by_finite_differences(
            graphs, latent, image_shape, tolerance=validation_tolerance, weights=weights
        ),
    )


@dataclass(frozen=True)
class AttributionPackage:
    """A validated package folder; ``fingerprint`` identifies the model by its graph and weights files' bytes."""

    root: Path
    manifest: dict[str, Any]
    fingerprint: str
    _loaded: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

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

    @property
    def weights_path(self) -> Path | None:
        """The shared weights file, or None for a self-contained (v1) package."""
        name = weights_file_name(self.manifest)
        return None if name is None else self.root / name

    def shared_weights(self) -> Any:
        """The weights file read once (hashed while read) for every ONNX Runtime session of this package, or
        None for a v1 package (each of its graphs carries its own weights)."""
        if self.weights_path is None:
            return None
        if "weights" not in self._loaded:
            from genorigin.export.sessions import SharedWeights

            self._loaded["weights"] = SharedWeights(self.weights_path, self.manifest[WEIGHTS_ROLE]["sha256"])
        return self._loaded["weights"]

    def session(self, key: str, device: str = "cpu", threads: int | None = None, **options: Any) -> Any:
        """An ONNX Runtime session of one of the package's graphs, on the package's shared weights."""
        from genorigin.export.sessions import open_session

        return open_session(self.graph_path(key), device, threads, weights=self.shared_weights(), **options)

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
        check_schema(manifest, manifest_path)
        weights_file = weights_file_name(manifest)
        digests = {key: check_graph(root, key, entry, weights_file) for key, entry in manifest["graphs"].items()}
        if weights_file is not None:
            digests[WEIGHTS_ROLE] = check_file(root, WEIGHTS_ROLE, manifest[WEIGHTS_ROLE], "weights")
        for role, entry in manifest.get("attachments", {}).items():
            check_file(root, role, entry)
        package = cls(root, manifest, content_fingerprint(digests))
        check_shapes(package.graph_path("forward"), package.latent, manifest["image"])
        return package


def attach_file(root: str | Path, role: str, data: bytes, file_name: str) -> AttributionPackage:
    """Write ``data`` into the package as ``file_name`` and record it (role, SHA-256) in the manifest.

    Attachments (an encoder graph) are not part of the model's identity: a package fingerprint, and so the
    calibrations bound to it, survive adding or replacing one.
    """
    package = AttributionPackage.load(root)
    reserved = {MANIFEST, CALIBRATION, WEIGHTS_FILE, *GRAPH_FILES.values()}
    if Path(file_name).name != file_name or file_name in reserved:
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
