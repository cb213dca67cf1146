"""Export a generator's forward pass z → image to ONNX, and infer the static shapes the autodiff rules need.

The exported file is what every ONNX backend (ONNX Runtime CPU/CUDA, TensorRT) loads; the gradient graph is
derived from it by :mod:`genorigin.export.onnx_autodiff`, so this module only has to produce a clean forward.
``torch`` is imported lazily: shape inference must work where only ``onnx`` is installed.
"""

from __future__ import annotations

import contextlib
import copy
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
# Initializers above this many elements are dropped before shape inference: only their shapes matter there.
_SMALL_INITIALIZER = 4096

Dim = int | None
# Default-domain ops whose output 0 has the input's shape but that onnx.shape_inference leaves unshaped.
_SAME_SHAPE_NO_INFERENCE = frozenset({"GroupNormalization", "MeanVarianceNormalization"})
ShapeMap = dict[str, tuple[int, tuple[Dim, ...] | None]]


def export_forward(
    module: torch.nn.Module,
    example_z: torch.Tensor,
    path: str | Path,
    *,
    input_name: str = "z",
    output_name: str = "image",
    opset: int | None = None,
) -> onnx.ModelProto:
    """Export ``module`` (eval mode) as z → image with a dynamic batch dimension and return the checked model.

    The dynamo exporter is tried first; the TorchScript exporter (``dynamic_axes``) is the fallback. Which one
    was used is recorded in the model's ``metadata_props`` under ``genorigin.exporter``. Models whose weights are
    below 2 GB are saved as one self-contained file; larger ones keep an external ``.data`` file and the
    returned proto then references it rather than holding the weights.
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
    return _finalize(path, exporter)


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


def _finalize(path: Path, exporter: str) -> onnx.ModelProto:
    """Inline external weights when they fit in one protobuf, tag the exporter, check, and return the model."""
    header = onnx.load(str(path), load_external_data=False)
    locations = _external_locations(header)
    weight_bytes = sum(_tensor_bytes(t) for t in header.graph.initializer)
    inline = weight_bytes < TWO_GB - 64 * 2**20  # leave headroom for the graph itself
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


# ---------------------------------------------------------------------------------------------------------
# Static shapes
# ---------------------------------------------------------------------------------------------------------


def infer_static_shapes(model: onnx.ModelProto, batch: int) -> ShapeMap:
    """Element type and shape of every tensor with the batch dimension of the graph inputs fixed to ``batch``.

    Returns ``{name: (elem_type, dims)}``; ``dims`` is ``None`` when even the rank is unknown and a dim is
    ``None`` when ONNX shape inference could not determine it. Large initializers are replaced by typed graph
    inputs first, so this is cheap even for big models and never touches external data.
    """
    light = _shape_skeleton(model, batch)
    try:
        inferred = onnx.shape_inference.infer_shapes(light, check_type=False, strict_mode=False, data_prop=True)
    except onnx.shape_inference.InferenceError:  # data propagation is the fragile part; shapes still help
        inferred = onnx.shape_inference.infer_shapes(light, check_type=False, strict_mode=False)
    out: ShapeMap = {}
    graph = inferred.graph
    for info in [*graph.input, *graph.value_info, *graph.output]:
        parsed = _parse_value_info(info)
        if parsed is not None:
            out[info.name] = parsed
    for tensor in model.graph.initializer:
        out[tensor.name] = (tensor.data_type, tuple(int(d) for d in tensor.dims))
    return out


def _shape_skeleton(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """A copy of ``model`` without big weights and with the leading dim of each real input set to ``batch``."""
    graph = model.graph
    init_names = {t.name for t in graph.initializer}
    light = onnx.GraphProto(name=graph.name)
    light.node.extend(_shape_stand_in(node) for node in graph.node)
    for value in graph.output:  # declared output shapes may be symbolic: let inference recompute them
        light.output.append(onnx.helper.make_tensor_value_info(value.name, value.type.tensor_type.elem_type, None))
    for value in graph.input:
        if value.name in init_names:
            continue
        fixed = copy.deepcopy(value)
        dims = fixed.type.tensor_type.shape.dim
        if fixed.type.HasField("tensor_type") and len(dims) > 0 and not dims[0].HasField("dim_value"):
            dims[0].Clear()
            dims[0].dim_value = batch
        light.input.append(fixed)
    for tensor in graph.initializer:
        count = int(np.prod(tensor.dims)) if tensor.dims else 1
        if count <= _SMALL_INITIALIZER and tensor.data_location != TensorProto.EXTERNAL:
            light.initializer.append(tensor)
        else:
            light.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
    skeleton = onnx.ModelProto()
    skeleton.ir_version = model.ir_version
    skeleton.opset_import.extend(model.opset_import)
    skeleton.functions.extend(model.functions)
    skeleton.graph.CopyFrom(light)
    return skeleton


def _shape_stand_in(node: onnx.NodeProto) -> onnx.NodeProto:
    """ONNX has no shape inference for some shape-preserving ops; an Identity has the same output shape."""
    if node.op_type in _SAME_SHAPE_NO_INFERENCE and node.domain in ("", "ai.onnx") and node.input:
        return onnx.helper.make_node("Identity", [node.input[0]], [node.output[0]], name=node.name)
    return node


def _parse_value_info(info: onnx.ValueInfoProto) -> tuple[int, tuple[Dim, ...] | None] | None:
    if not info.type.HasField("tensor_type"):
        return None
    tensor_type = info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return tensor_type.elem_type, None
    dims: list[Dim] = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
    return tensor_type.elem_type, tuple(dims)
