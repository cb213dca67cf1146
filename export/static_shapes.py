"""Static shapes of an ONNX graph's tensors, as the autodiff rules need them.

ONNX shape inference with the batch fixed, on a copy without large weights (cheap for big models, never
touching external data), plus constant folding for the shape arithmetic exporters leave behind. Needs only
``onnx`` (no torch, no runtime).
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

Dim = int | None
ShapeMap = dict[str, tuple[int, tuple[Dim, ...] | None]]
# Initializers above this many elements are dropped before shape inference: only their shapes matter there.
_SMALL_INITIALIZER = 4096
# Default-domain ops whose output 0 has the input's shape but that onnx.shape_inference leaves unshaped.
_SAME_SHAPE_NO_INFERENCE = frozenset({"GroupNormalization", "MeanVarianceNormalization"})
_NONDETERMINISTIC = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Bernoulli", "Multinomial"}
)


def infer_static_shapes(model: onnx.ModelProto, batch: int) -> ShapeMap:
    """Element type and shape of every tensor with the batch dimension of the graph inputs fixed to ``batch``.

    Returns ``{name: (elem_type, dims)}``; ``dims`` is ``None`` when even the rank is unknown and a dim is
    ``None`` when ONNX shape inference could not determine it. Large initializers are replaced by typed graph
    inputs first, so this is cheap even for big models and never touches external data. When some shapes stay
    unknown, nodes computed from constants alone are evaluated and inference runs again: exporters leave
    such arithmetic on shapes (the legacy exporter's ``nn.Unflatten``: a ``Mod`` of two constants) and ONNX's
    data propagation stops at it.
    """
    light = _shape_skeleton(model, batch)
    shapes = _infer(light)
    if _incomplete(light, shapes) and fold_constants(light):
        shapes = _infer(light)
    for tensor in model.graph.initializer:
        shapes[tensor.name] = (tensor.data_type, tuple(int(d) for d in tensor.dims))
    return shapes


def _infer(light: onnx.ModelProto) -> ShapeMap:
    """Plain inference first; data propagation only when shapes stay unknown. Data propagation is the fragile
    part, and it materialises every 1-D tensor as a shape: 2.8 s and gigabytes for a 10⁷-element table."""
    out = _inferred(onnx.shape_inference.infer_shapes(light, check_type=False, strict_mode=False))
    if not _incomplete(light, out):
        return out
    try:
        return _inferred(onnx.shape_inference.infer_shapes(light, check_type=False, strict_mode=False, data_prop=True))
    except onnx.shape_inference.InferenceError:  # shapes without data propagation still help
        return out


def _inferred(inferred: onnx.ModelProto) -> ShapeMap:
    out: ShapeMap = {}
    graph = inferred.graph
    for info in [*graph.input, *graph.value_info, *graph.output]:
        parsed = _parse_value_info(info)
        if parsed is not None:
            out[info.name] = parsed
    for tensor in graph.initializer:
        out[tensor.name] = (tensor.data_type, tuple(int(d) for d in tensor.dims))
    return out


def _incomplete(light: onnx.ModelProto, shapes: ShapeMap) -> bool:
    """Whether some node output has no known rank or an unknown dimension."""
    for node in light.graph.node:
        for name in node.output:
            dims = shapes.get(name, (0, None))[1] if name else ()
            if dims is None or None in dims:
                return True
    return False


def fold_constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Replace, in place, the nodes computed from constants alone by initializers holding their values.

    Only small results are folded (shape arithmetic, not weights), and only deterministic default-domain ops
    without subgraphs; a node the reference evaluator cannot run stays. Returns the folded values.
    """
    graph = model.graph
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    folded: dict[str, np.ndarray] = {}
    kept: list[onnx.NodeProto] = []
    for node in graph.node:
        outputs = _evaluate(model, node, values) if _foldable(node, values) else None
        if outputs is None:
            kept.append(node)
            continue
        for name, value in zip(node.output, outputs, strict=True):
            values[name] = folded[name] = value
            graph.initializer.append(numpy_helper.from_array(value, name))
    del graph.node[:]
    graph.node.extend(kept)
    return folded


def _foldable(node: onnx.NodeProto, values: dict[str, np.ndarray]) -> bool:
    return (
        node.domain in ("", "ai.onnx")
        and node.op_type not in _NONDETERMINISTIC
        and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
        and all(name in values for name in node.input if name)
    )


def _evaluate(model: onnx.ModelProto, node: onnx.NodeProto, values: dict[str, np.ndarray]) -> list[np.ndarray] | None:
    """The node's outputs by ONNX's reference implementation, or None if it fails or the result is large."""
    from onnx.reference import ReferenceEvaluator

    inputs = [name for name in node.input if name]
    graph = onnx.helper.make_graph(
        [node],
        "fold",
        [onnx.helper.make_tensor_value_info(name, _elem_type(values[name]), values[name].shape) for name in inputs],
        [onnx.helper.make_tensor_value_info(name, 0, None) for name in node.output],
    )
    try:
        evaluator = ReferenceEvaluator(onnx.helper.make_model(graph, opset_imports=model.opset_import))
        outputs = [np.asarray(v) for v in evaluator.run(None, {name: values[name] for name in inputs})]
    except Exception:  # an op or variant the reference evaluator lacks: leave the node to inference
        return None
    return outputs if all(v.size <= _SMALL_INITIALIZER for v in outputs) else None


def _elem_type(value: np.ndarray) -> int:
    return onnx.helper.np_dtype_to_tensor_dtype(value.dtype)


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
