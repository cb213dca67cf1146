"""Attribution packages: a generator as ONNX graphs that carry their own gradient, plus a manifest.

A package is a folder:

    manifest.json      latent spec, image size/range, opset, graph files + SHA-256 + I/O names, the weights
                       file, source model fingerprint (provenance), export validation errors, genorigin version
    weights.bin        every large initializer, stored once, shared by the three graphs (ONNX external data)
    forward.onnx       z → image in [0, 1]
    vjp.onnx           (z, g_image) → (image, g_z)      for GPU loops with a custom loss kernel
    loss_mse.onnx      (z, target) → (loss, grad_z)      for the CPU loop
    calibration.json   written by `genorigin calibrate` once the package is calibrated

Writing is :mod:`.package_write` (export without several copies of the weights, validated before anything is
written). Loading checks the folder (:mod:`.package_checks`: schema, hashes, graphs, external data, shapes)
and fails with one clear message on a tampered, incomplete or mismatched package. The package's identity
(what a calibration is bound to) is a fingerprint of the graph and weights files' bytes computed at load time,
never a value read from the manifest, so a rewritten graph with rewritten hashes cannot pass for the genuine
model. Packages of the earlier self-contained format (v1) still load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genorigin.export.generator import Generator, LatentSpec
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
    weights_file_name,
)
from genorigin.export.package_write import (
    CALIBRATION,
    EXPORT_STEPS,
    export_generator,
    export_onnx_file,
    export_steps,
    write_package,
)
from genorigin.export.weights import WEIGHTS_FILE

from genorigin.files import atomic_write_bytes, atomic_write_text, sha256_file

ENCODER_GRAPH = "encoder.onnx"  # the fast preset's encoder graph, an attachment (not part of the model's identity)

__all__ = [
    "CALIBRATION", "ENCODER_GRAPH", "EXPORT_STEPS", "GRAPH_FILES", "MANIFEST", "PACKAGE_FORMAT", "WEIGHTS_FILE",
    "AttributionPackage", "PackageError", "attach_file", "content_fingerprint", "export_generator",
    "export_onnx_file", "export_steps", "write_package",
]  # fmt: skip


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
