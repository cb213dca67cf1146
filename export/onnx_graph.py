"""Plain ONNX graph helpers the gradient pass needs: node order and ancestry, names, renames, constants.

Nothing here knows about gradients; third-party graphs break ONNX's conventions (unsorted nodes, reused or
missing names), so these helpers do not assume them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import onnx
from onnx import NodeProto, TensorProto, helper, numpy_helper


class ConstTable(Mapping[str, np.ndarray]):
    """Values of initializers and Constant outputs, converted lazily (weights are never copied)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self._tensors = {t.name: t for t in graph.initializer}
        self._nodes = {n.output[0]: n for n in graph.node if n.op_type == "Constant" and n.output}
        self._cache: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._cache:
            if name in self._tensors:
                self._cache[name] = numpy_helper.to_array(self._tensors[name])
            elif name in self._nodes:
                self._cache[name] = constant_node_value(self._nodes[name])
            else:
                raise KeyError(name)
        return self._cache[name]

    def __contains__(self, name: object) -> bool:
        return name in self._tensors or name in self._nodes

    def alias(self, new: str, old: str) -> None:
        """Follow a rename of a forward tensor."""
        if old in self._tensors:
            self._tensors[new] = self._tensors[old]
        if old in self._nodes:
            self._nodes[new] = self._nodes[old]

    def __iter__(self) -> Iterator[str]:
        yield from self._tensors
        yield from self._nodes

    def __len__(self) -> int:
        return len(self._tensors) + len(self._nodes)


def constant_node_value(node: NodeProto) -> np.ndarray:
    for a in node.attribute:
        value = helper.get_attribute_value(a)
        if a.name == "value":
            return numpy_helper.to_array(value)
        if a.name in ("value_float", "value_int"):
            return np.asarray(value, dtype=np.float32 if a.name == "value_float" else np.int64)
        if a.name in ("value_floats", "value_ints"):
            return np.asarray(value, dtype=np.float32 if a.name == "value_floats" else np.int64)
    raise KeyError(node.output[0])


def default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise ValueError("the model imports no default-domain opset")


def topological(graph: onnx.GraphProto) -> list[NodeProto]:
    """Nodes in dependency order (ONNX requires it, but not every producer honours it)."""
    produced_by = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    order: list[NodeProto] = []
    state = [0] * len(graph.node)  # 0 new, 1 in progress, 2 done
    for start in range(len(graph.node)):
        stack = [(start, False)]
        while stack:
            i, expanded = stack.pop()
            if state[i] == 2 or (state[i] == 1 and not expanded):
                continue
            if expanded:
                state[i] = 2
                order.append(graph.node[i])
                continue
            state[i] = 1
            stack.append((i, True))
            for name in graph.node[i].input:
                j = produced_by.get(name)
                if j is not None and state[j] == 0:
                    stack.append((j, False))
    return order


def ancestors(nodes: list[NodeProto], output: str) -> list[NodeProto]:
    """Forward nodes the output depends on (others are dropped from the gradient graph)."""
    needed = {output}
    kept: list[NodeProto] = []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(node.input)
            needed.update(subgraph_inputs(node))
    kept.reverse()
    return kept


def subgraph_inputs(node: NodeProto) -> set[str]:
    """Outer-scope names used inside If/Loop/Scan bodies."""
    names: set[str] = set()
    for a in node.attribute:
        for sub in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
            for inner in sub.node:
                names.update(inner.input)
                names.update(subgraph_inputs(inner))
    return names


def all_names(graph: onnx.GraphProto) -> set[str]:
    names = {v.name for v in [*graph.input, *graph.output, *graph.value_info]}
    names.update(t.name for t in graph.initializer)
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        names.add(node.name)
    return names


def fresh_name(base: str, taken: set[str]) -> str:
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}{k}"
    taken.add(name)
    return name


def rename_in_node(node: NodeProto, renames: dict[str, str]) -> NodeProto:
    if not any(n in renames for n in [*node.input, *node.output]):
        return node
    copy = NodeProto()
    copy.CopyFrom(node)
    copy.input[:] = [renames.get(n, n) for n in node.input]
    copy.output[:] = [renames.get(n, n) for n in node.output]
    return copy


def renamed_tensor(tensor: TensorProto, name: str) -> TensorProto:
    copy = TensorProto()
    copy.CopyFrom(tensor)
    copy.name = name
    return copy


def renamed(info: onnx.ValueInfoProto, name: str, elem_type: int | None = None) -> onnx.ValueInfoProto:
    copy = onnx.ValueInfoProto()
    copy.CopyFrom(info)
    copy.name = name
    del copy.metadata_props[:]
    if elem_type is not None and copy.type.HasField("tensor_type"):
        copy.type.tensor_type.elem_type = elem_type
    return copy


def dim_proto(info: onnx.ValueInfoProto, axis: int) -> str | int | None:
    dims = info.type.tensor_type.shape.dim
    if axis >= len(dims):
        return None
    d = dims[axis]
    return d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
