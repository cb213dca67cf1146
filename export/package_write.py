"""Writing attribution packages (:mod:`.package`): a PyTorch generator or a third-party ONNX file → a folder
of three graphs over one weights file, validated before anything is written.

Export never holds several copies of the weights: the exporter writes its weights to disk, they move into
``weights.bin`` one tensor at a time (:mod:`.weights`), the gradient graphs are derived from the weight-less
forward header, and validation's ONNX Runtime sessions read the one file once (:mod:`.sessions`). Freed heap
goes back to the system between phases (:mod:`.memory`), so the peak is one phase's.

Half-precision storage (``storage="float16"|"bfloat16"``) is a last, mechanical step: the float32 package is
validated as usual, then its model weights are rewritten in the storage type behind Cast nodes, and how far
that moves loss and gradient is measured and recorded (``validation.storage``).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import onnx
import torch
from genorigin.export.activation_memory import EXPORT_MEMORY_FRACTION, OVERHEAD, available_memory, peak_activation
from genorigin.export.generator import Generator, LatentSpec
from genorigin.export.memory import release_freed_memory, return_large_blocks
from genorigin.export.onnx_autodiff import build_loss_graph, build_vjp_graph
from genorigin.export.onnx_forward import export_forward
from genorigin.export.onnx_import import normalised_forward
from genorigin.export.package_checks import (
    GRAPH_FILES,
    MANIFEST,
    PACKAGE_FORMAT,
    WEIGHTS_ROLE,
    io_names,
    probe_output_shape,
)
from genorigin.export.remat import rematerialise_to_fit
from genorigin.export.sessions import SharedWeights
from genorigin.export.validate import (
    Validator,
    storage_effect,
    validate_against_module,
    validate_by_finite_differences,
)
from genorigin.export.weights import WeightsInfo, WeightsWriter, external_initializers

from genorigin import __version__
from genorigin.files import atomic_write_text, chmod_as_created, sha256_file

CALIBRATION = "calibration.json"
# What export reports, in order (the CLI's progress bar counts these): a model or a third-party file.
_COMMON_STEPS = ("storing the weights", "building the VJP graph", "building the loss graph", "writing the graphs",
                 "validating the gradient graphs")  # fmt: skip
EXPORT_STEPS = {
    "module": ("exporting the forward graph", *_COMMON_STEPS),
    "onnx": ("reading the ONNX file", *_COMMON_STEPS),
}
REDUCED_STEP = "storing the weights in half precision"  # one more step with --weights float16/bfloat16


def export_steps(source: str, storage: str = "float32") -> tuple[str, ...]:
    """The progress messages an export makes, in order (``source``: 'module' or 'onnx')."""
    return EXPORT_STEPS[source] + (() if storage == "float32" else (REDUCED_STEP,))


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
    activation_budget: int | None = None,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
    validate: Validator | None = None,
) -> Path:
    """Derive the gradient graphs from ``forward`` and write the package folder atomically.

    ``forward`` may keep its weights as external data in ``forward_dir`` (as the exporter wrote them): they are
    moved into the package's weights file one tensor at a time, and the gradient graphs are built from the
    weight-less header. ``validate`` checks the staged graphs numerically; past its tolerance it raises and
    nothing is written. ``storage`` float16/bfloat16 then stores the model's weights at half precision.
    The gradient graphs are rematerialised where a batch of 2 would not fit ``activation_budget`` bytes
    (default: a share of the memory available now), and their estimated activations are recorded.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (use --force to replace it)")
    if storage != "float32":
        WeightsWriter.check_storage(storage)
    say = progress or (lambda _msg: None)
    return_large_blocks()  # validation's activations go back to the system when freed (memory.py)
    out.parent.mkdir(parents=True, exist_ok=True)  # staging beside the target: the final rename stays atomic
    staging = Path(tempfile.mkdtemp(prefix=".genorigin-pkg-", dir=out.parent))
    try:
        graphs, weights = _stage_graphs(forward, forward_dir, staging, say)
        activations = _fit_activations(graphs, activation_budget)
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
            "activations": activations,
            "source": {"fingerprint": source_fingerprint, **source},
        }
        release_freed_memory()
        if validate is not None:
            say("validating the gradient graphs")
            report = validate({key: staging / GRAPH_FILES[key] for key in GRAPH_FILES}, _shared(staging, weights))
            manifest["validation"] = report.check(name).to_dict()
        if storage != "float32":
            say(REDUCED_STEP)
            _store_reduced(graphs, staging, storage, manifest, latent, (channels, *image_size))
        atomic_write_text(staging / MANIFEST, json.dumps(manifest, indent=1))
        chmod_as_created(staging, directory=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return out


def _stage_graphs(
    forward: onnx.ModelProto, forward_dir: str | Path | None, staging: Path, say: Callable[[str], None]
) -> tuple[dict[str, onnx.ModelProto], WeightsInfo]:
    """The forward's weights into ``staging``'s weights file, then the gradient graphs from its header."""
    say("storing the weights")
    writer = WeightsWriter(staging)
    try:
        writer.externalize(forward, forward_dir)
        say("building the VJP graph")
        graphs = {"forward": forward, "vjp": build_vjp_graph(forward, wrt="z", include_forward_output=True)}
        say("building the loss graph")
        graphs["loss_mse"] = build_loss_graph(forward, wrt="z", kind="mse")
        for key in ("vjp", "loss_mse"):  # constants the gradient pass made, if large, join the file too
            writer.externalize(graphs[key])
    finally:
        weights = writer.close()
    return graphs, weights


def _fit_activations(graphs: dict[str, onnx.ModelProto], budget: int | None) -> dict[str, Any]:
    """Rematerialise the gradient graphs (in place in ``graphs``) where a batch of 2, which validation runs,
    would not fit ``budget``; returns the manifest's ``activations`` entry (estimates per image, bytes)."""
    budget = budget or int(EXPORT_MEMORY_FRACTION * available_memory())
    entry: dict[str, Any] = {"budget_bytes": budget, "overhead": OVERHEAD}
    entry.update(per_image_bytes={}, plain_per_image_bytes={}, segments={})
    for key in ("vjp", "loss_mse"):
        plain = graphs[key]
        entry["plain_per_image_bytes"][key] = peak_activation(plain, 1).peak_bytes
        try:
            graphs[key], segments = rematerialise_to_fit(plain, int(budget / OVERHEAD), batch=2)
        except ValueError as exc:
            raise ValueError(f"{exc}: export on a machine with more free memory, or pass a larger budget") from exc
        entry["segments"][key] = segments
        entry["per_image_bytes"][key] = peak_activation(graphs[key], 1).peak_bytes
    return entry


def _store_reduced(
    graphs: dict[str, onnx.ModelProto],
    staging: Path,
    storage: str,
    manifest: dict[str, Any],
    latent: LatentSpec,
    image_shape: tuple[int, int, int],
) -> None:
    """Rewrite the validated float32 package with the model's weights in ``storage`` (Cast nodes restore
    float32), measure what that does to loss and gradient, and record both in ``manifest``."""
    reduced = staging / ".reduced"
    reduced.mkdir()
    model_weights = {tensor.name for tensor, _ in external_initializers(graphs["forward"])}
    writer = WeightsWriter(reduced, storage)
    try:
        for model in graphs.values():
            writer.externalize(model, staging, reduce=model_weights)
    finally:
        weights = writer.close()
    entries = _write_graphs(graphs, reduced)
    effect = storage_effect(
        (staging / GRAPH_FILES["loss_mse"], _shared(staging, manifest[WEIGHTS_ROLE])),
        (reduced / GRAPH_FILES["loss_mse"], _shared(reduced, weights)),
        latent,
        image_shape,
    )
    for path in reduced.iterdir():
        path.replace(staging / path.name)
    reduced.rmdir()
    manifest.update({"graphs": entries, WEIGHTS_ROLE: weights.to_dict()})
    manifest.setdefault("validation", {})["storage"] = {"type": storage, **effect}


def _shared(folder: Path, weights: WeightsInfo | Mapping[str, Any]) -> SharedWeights:
    info = weights.to_dict() if isinstance(weights, WeightsInfo) else weights
    return SharedWeights(folder / info["file"], info["sha256"])


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


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
    activation_budget: int | None = None,
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
            activation_budget=activation_budget,
            overwrite=overwrite,
            progress=progress,
            validate=lambda graphs, weights: validate_against_module(
                graphs, module, generator.latent, image_shape, tolerance=validation_tolerance, weights=weights
            ),
        )


def export_onnx_file(
    path: str | Path,
    out: str | Path,
    *,
    output_range: tuple[float, float] = (-1.0, 1.0),
    name: str | None = None,
    storage: str = "float32",
    activation_budget: int | None = None,
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
        activation_budget=activation_budget,
        overwrite=overwrite,
        progress=progress,
        validate=lambda graphs, weights: validate_by_finite_differences(
            graphs, latent, image_shape, tolerance=validation_tolerance, weights=weights
        ),
    )
