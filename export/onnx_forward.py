"""Export a generator's forward pass z → image to ONNX.

The exported file is what every ONNX backend (ONNX Runtime CPU/CUDA, TensorRT) loads; the gradient graph is
derived from it by :mod:`genorigin.export.onnx_autodiff`, so this module only has to produce a clean forward.
``torch`` is imported lazily.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

TWO_GB = 2**31
EXPORTER_KEY = "genorigin.exporter"


def export_forward(
    module: torch.nn.Module,
    example_z: torch.Tensor,
    path: str | Path,
    *,
    input_name: str = "z",
    output_name: str = "image",
    opset: int | None = None,
    keep_external: bool = False,
) -> onnx.ModelProto:
    """Export ``module`` (eval mode) as z → image with a dynamic batch dimension and return the checked model.

    The dynamo exporter is tried first; the TorchScript exporter (``dynamic_axes``) is the fallback. Which one
    was used is recorded in the model's ``metadata_props`` under ``genorigin.exporter``. Models whose weights are
    below 2 GB are saved as one self-contained file; larger ones keep an external ``.data`` file and the
    returned proto then references it rather than holding the weights. ``keep_external`` always returns that
    header (weights left where the exporter wrote them, beside ``path``): the package writer moves them into
    its weights file one tensor at a time instead of holding them all in a proto.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = module.training
    module.eval()
    try:
        z = _example_with_batch_two(example_z)
        try:
            _export_dynamo(module, z, path, input_name, output_name, opset)
            exporter = "dynamo"
        except Exception as err:  # the dynamo exporter fails in many model-specific ways
            log.warning("dynamo ONNX export failed (%s); falling back to the TorchScript exporter", err)
            _export_torchscript(module, z, path, input_name, output_name, opset)
            exporter = "torchscript"
    finally:
        module.train(was_training)
    return _finalize(path, exporter, keep_external)


def _example_with_batch_two(example_z: torch.Tensor) -> torch.Tensor:
    """torch.export specialises size-1 dimensions, so a batch-1 example would freeze the batch size."""
    z = example_z.detach()
    if z.shape[0] == 1:
        z = z.expand(2, *z.shape[1:]).clone()
    return z


def _export_dynamo(
    module: torch.nn.Module, z: torch.Tensor, path: Path, input_name: str, output_name: str, opset: int | None
) -> None:
    import torch

    batch = torch.export.Dim("batch")
    with _quiet():
        program = torch.onnx.export(
            module,
            (z,),
            dynamo=True,
            verbose=False,
            input_names=[input_name],
            output_names=[output_name],
            opset_version=opset,
            dynamic_shapes=({0: batch},),
        )
        if program is None:
            raise RuntimeError("torch.onnx.export returned no program")
        program.save(str(path), external_data=True)


def _export_torchscript(
    module: torch.nn.Module, z: torch.Tensor, path: Path, input_name: str, output_name: str, opset: int | None
) -> None:
    import torch

    with _quiet():
        torch.onnx.export(
            module,
            (z,),
            str(path),
            dynamo=False,
            input_names=[input_name],
            output_names=[output_name],
            opset_version=opset,
            dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
        )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters warn loudly about things irrelevant here (torchvision ops, deprecations)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exporter_log = logging.getLogger("torch.onnx")
        level = exporter_log.level
        exporter_log.setLevel(logging.ERROR)
        try:
            yield
        finally:
            exporter_log.setLevel(level)


def _external_locations(model: onnx.ModelProto) -> set[str]:
    locations = set()
    for tensor in model.graph.initializer:
        if tensor.data_location == TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    locations.add(entry.value)
    return locations


def _finalize(path: Path, exporter: str, keep_external: bool = False) -> onnx.ModelProto:
    """Inline external weights when they fit in one protobuf (unless ``keep_external``), tag the exporter,
    check, and return the model."""
    header = onnx.load(str(path), load_external_data=False)
    locations = _external_locations(header)
    weight_bytes = sum(_tensor_bytes(t) for t in header.graph.initializer)
    inline = not keep_external and weight_bytes < TWO_GB - 64 * 2**20  # leave headroom for the graph itself
    model = onnx.load(str(path), load_external_data=True) if inline else header
    _set_metadata(model, EXPORTER_KEY, exporter)
    if inline:
        onnx.save(model, str(path))
        for location in locations:
            data_file = path.parent / location
            if data_file.resolve() != path.resolve():
                data_file.unlink(missing_ok=True)
        onnx.checker.check_model(model)
    else:
        onnx.save(model, str(path))  # header only: the weights stay where the exporter wrote them
        onnx.checker.check_model(str(path))
    return model


def _tensor_bytes(tensor: TensorProto) -> int:
    count = int(np.prod(tensor.dims)) if tensor.dims else 1
    return count * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize


def _set_metadata(model: onnx.ModelProto, key: str, value: str) -> None:
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    model.metadata_props.add(key=key, value=value)
