"""Reverse-mode differentiation of an ONNX forward graph, emitted as a standard ONNX graph.

PyTorch cannot export its own backward pass cleanly, so the gradient graph is derived from the exported
forward instead: walk the forward nodes in reverse, emit each node's vector-Jacobian product with standard
ops (rules in :mod:`genorigin.export.vjp`) and accumulate contributions with ``Sum``. The result keeps
the forward's weights and opset, so ONNX Runtime (CPU/CUDA) and TensorRT run it like any other model.

Only differentiable data edges are followed: a tensor that depends on z only through ``Shape``, a
comparison or an integer op (diffusers timestep paths) is treated as a constant, so such paths need no rules.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import onnx
from genorigin.kernels.reference import loss_kinds
from onnx import NodeProto, TensorProto, helper

from .loss_head import loss_nodes
from .onnx_graph import (
    ConstTable,
    all_names,
    ancestors,
    default_opset,
    dim_proto,
    fresh_name,
    rename_in_node,
    renamed,
    renamed_tensor,
    subgraph_inputs,
    topological,
)
from .static_shapes import infer_static_shapes
from .vjp import DYN, FLOAT_TYPES, NONDIFF_OPS, RULES, Dim, Emitter, UnsupportedOpError, supported_ops
from .vjp.errors import NO_RULE_FIX, node_label, op_label, unsupported
from .vjp.registry import nearest_supported

__all__ = ["UnsupportedOpError", "build_loss_graph", "build_vjp_graph", "supported_ops"]

LossKind = Literal["mse", "l1", "mse-dct8"]
AUTODIFF_KEY = "genorigin.autodiff"


def build_vjp_graph(
    forward: onnx.ModelProto,
    wrt: str = "z",
    output: str | None = None,
    *,
    include_forward_output: bool = True,
) -> onnx.ModelProto:
    """Graph computing ``g_<wrt> = (∂output/∂wrt)ᵀ · g_<output>`` from inputs (wrt, g_<output>).

    Outputs are ``[output, g_<wrt>]`` (or just ``[g_<wrt>]`` with ``include_forward_output=False``), so a
    GPU loop can run forward and backward in one session call. Other forward inputs stay inputs.
    """
    prep = _Prepared.from_model(forward, wrt, output)
    seed_name = prep.claim(f"g_{prep.output}")
    if prep.output in prep.types:  # the seed has the output's type: constants built from it must match
        prep.types[seed_name] = prep.types[prep.output]
    grad_name = prep.claim(f"g_{wrt}")
    emitter = prep.emitter()
    grad = _backprop(prep, emitter, prep.output, seed_name)
    emitter.nodes.append(helper.make_node("Identity", [grad], [grad_name], name=emitter.fresh("grad_out")))
    y_info = prep.value_info(prep.output)
    inputs = [*prep.inputs(), renamed(y_info, seed_name)]
    outputs = [renamed(prep.value_info(wrt), grad_name)]
    if include_forward_output:
        outputs.insert(0, y_info)
    return prep.assemble(emitter, inputs, outputs, {"kind": "vjp", "wrt": wrt, "output": prep.output})


def build_loss_graph(
    forward: onnx.ModelProto,
    wrt: str = "z",
    kind: LossKind = "mse",
    *,
    output: str | None = None,
    include_image: bool = False,
) -> onnx.ModelProto:
    """Graph from (wrt, target) to per-sample ``loss`` (N,) and ``grad_z`` = d(Σₙ lossₙ)/d wrt.

    ``lossₙ`` is the mean over C·H·W of (y − target)² (``mse``) or |y − target| (``l1``), or ‖P(y − target)‖²
    over C·H·W for a projection kind (``mse-dct8``: a fixed strided Conv, its gradient the ConvTranspose with
    the same weights; kernels/projection.py), computed in float32 (float64 for double models) exactly as
    ``genorigin.kernels.reference.loss_and_grad`` with ``scale=1``. ``image`` (the forward output) is appended
    to the outputs when ``include_image`` is set.
    """
    if kind not in loss_kinds():
        raise ValueError(f"unknown loss kind {kind!r}; expected one of {', '.join(loss_kinds())}")
    prep = _Prepared.from_model(forward, wrt, output)
    names = {key: prep.claim(key) for key in ("target", "loss", "grad_z")}
    image = prep.claim("image") if include_image and prep.output != "image" else prep.output
    emitter = prep.emitter()
    work_type = TensorProto.DOUBLE if prep.types.get(prep.output) == TensorProto.DOUBLE else TensorProto.FLOAT
    y_type = prep.types.get(prep.output, TensorProto.FLOAT)
    loss, seed = loss_nodes(emitter, prep.output, prep.dims.get(prep.output), y_type, names["target"], kind, work_type)
    grad = _backprop(prep, emitter, prep.output, seed)
    emitter.nodes.append(helper.make_node("Identity", [loss], [names["loss"]], name=emitter.fresh("loss_out")))
    emitter.nodes.append(helper.make_node("Identity", [grad], [names["grad_z"]], name=emitter.fresh("grad_out")))
    y_info = prep.value_info(prep.output)
    target_info = renamed(y_info, names["target"], elem_type=work_type)
    batch = dim_proto(y_info, 0)
    loss_info = helper.make_tensor_value_info(names["loss"], work_type, [batch])
    outputs = [loss_info, renamed(prep.value_info(wrt), names["grad_z"])]
    if include_image:
        if image != prep.output:  # expose the forward output under the conventional name
            emitter.nodes.append(helper.make_node("Identity", [prep.output], [image], name=emitter.fresh("image")))
        outputs.append(renamed(y_info, image))
    meta = {"kind": f"loss-{kind}", "wrt": wrt, "output": prep.output}
    return prep.assemble(emitter, [*prep.inputs(), target_info], outputs, meta)


# ---------------------------------------------------------------------------------------------------------
# Preparation: pruning, static shapes, constants, activity
# ---------------------------------------------------------------------------------------------------------


@dataclass
class _Prepared:
    """Everything about the forward graph that the backward pass consults."""

    model: onnx.ModelProto
    wrt: str
    output: str
    nodes: list[NodeProto]
    opset: int
    types: dict[str, int]
    dims: dict[str, tuple[Dim, ...] | None]
    consts: ConstTable
    taken: set[str]
    renames: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_model(cls, model: onnx.ModelProto, wrt: str, output: str | None) -> _Prepared:
        graph = model.graph
        init_names = {t.name for t in graph.initializer}
        real_inputs = [v.name for v in graph.input if v.name not in init_names]
        if wrt not in real_inputs:
            raise ValueError(f"{wrt!r} is not an input of the graph (inputs: {real_inputs})")
        outputs = [v.name for v in graph.output]
        output = output or outputs[0]
        if output not in outputs:
            raise ValueError(f"{output!r} is not an output of the graph (outputs: {outputs})")
        opset = default_opset(model)
        if opset < 13:
            raise ValueError(f"opset {opset} < 13 is not supported (re-export with a newer opset)")
        types, dims = _static_info(model)
        nodes = ancestors(topological(graph), output)
        taken = all_names(graph)
        return cls(model, wrt, output, nodes, opset, types, dims, ConstTable(graph), taken)

    def emitter(self) -> Emitter:
        return Emitter(self.opset, self.types, self.dims, self.consts, self.taken, prefix="vjp")

    def claim(self, name: str) -> str:
        """Reserve ``name`` for a new graph input/output, renaming an internal forward tensor that has it."""
        graph = self.model.graph
        if name in {v.name for v in graph.input} or name == self.output:
            raise ValueError(f"the forward graph already has an input/output named {name!r}")
        if name in self.taken:
            new = self.renames[name] = fresh_name(f"{name}__fwd", self.taken)
            self.nodes = [rename_in_node(n, self.renames) for n in self.nodes]
            for table in (self.types, self.dims):
                if name in table:
                    table[new] = table.pop(name)  # type: ignore[attr-defined]
            self.consts.alias(new, name)
        self.taken.add(name)
        return name

    def inputs(self) -> list[onnx.ValueInfoProto]:
        init_names = {t.name for t in self.model.graph.initializer}
        return [v for v in self.model.graph.input if v.name not in init_names]

    def value_info(self, name: str) -> onnx.ValueInfoProto:
        """The declared type of a graph input/output, completed from shape inference when partial."""
        declared = next((v for v in [*self.model.graph.input, *self.model.graph.output] if v.name == name), None)
        if declared is not None:
            tensor_type = declared.type.tensor_type
            if tensor_type.elem_type and tensor_type.HasField("shape"):
                return declared
        elem = self.types.get(name) or (declared.type.tensor_type.elem_type if declared else 0) or TensorProto.FLOAT
        dims = self.dims.get(name)
        shape = None if dims is None else [d if d is not None and d >= 0 else None for d in dims]
        return helper.make_tensor_value_info(name, elem, shape)

    def assemble(
        self,
        emitter: Emitter,
        inputs: list[onnx.ValueInfoProto],
        outputs: list[onnx.ValueInfoProto],
        meta: dict[str, str],
    ) -> onnx.ModelProto:
        """The final model: forward nodes + gradient nodes, forward weights + gradient constants."""
        graph = self.model.graph
        used = {name for node in emitter.nodes for name in node.input}
        emitter.initializers = [t for t in emitter.initializers if t.name in used]
        initializers = [t for t in graph.initializer if t.name not in self.renames]
        initializers += [renamed_tensor(t, self.renames[t.name]) for t in graph.initializer if t.name in self.renames]
        new_graph = helper.make_graph(
            [*self.nodes, *emitter.nodes],
            f"{graph.name or 'forward'}_{meta['kind']}",
            inputs,
            outputs,
            initializer=[*initializers, *emitter.initializers],
            sparse_initializer=list(graph.sparse_initializer),
        )
        model = helper.make_model(
            new_graph,
            opset_imports=list(self.model.opset_import),
            ir_version=self.model.ir_version,
            producer_name="genorigin.onnx_autodiff",
            functions=list(self.model.functions),
        )
        for prop in self.model.metadata_props:
            model.metadata_props.add(key=prop.key, value=prop.value)
        meta = {**meta, "forward_nodes": str(len(self.nodes))}  # the forward prefix, for rematerialisation
        model.metadata_props.add(key=AUTODIFF_KEY, value=",".join(f"{k}={v}" for k, v in meta.items()))
        if model.ByteSize() < 2**31 - 2**20:
            _check(model, self.model)
        return model


def _check(model: onnx.ModelProto, forward: onnx.ModelProto) -> None:
    """onnx.checker, but no stricter than on the forward itself (e.g. deprecated GroupNormalization-18,
    which ONNX Runtime still runs)."""
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError:
        try:
            onnx.checker.check_model(forward)
        except onnx.checker.ValidationError:
            return
        raise


def _static_info(model: onnx.ModelProto) -> tuple[dict[str, int], dict[str, tuple[Dim, ...] | None]]:
    """Element types and dims; a dim that differs between batch 2 and 3 is marked DYN (batch-dependent)."""
    at2, at3 = infer_static_shapes(model, 2), infer_static_shapes(model, 3)
    types = {name: elem for name, (elem, _) in at2.items() if elem}
    dims: dict[str, tuple[Dim, ...] | None] = {}
    for name, (_, d2) in at2.items():
        d3 = at3.get(name, (0, None))[1]
        if d2 is None or d3 is None or len(d2) != len(d3):
            dims[name] = None
            continue
        dims[name] = tuple(
            a if a == b else (DYN if a is not None and b is not None else None) for a, b in zip(d2, d3, strict=True)
        )
    return types, dims


# ---------------------------------------------------------------------------------------------------------
# The backward pass
# ---------------------------------------------------------------------------------------------------------


def _is_float(prep: _Prepared, name: str) -> bool:
    return prep.types.get(name, TensorProto.FLOAT) in FLOAT_TYPES


def _active(prep: _Prepared) -> set[str]:
    """Float tensors that depend on ``wrt`` along data edges (Shape, comparisons and ints cut the path)."""
    active = {prep.wrt}
    for node in prep.nodes:
        if node.op_type in NONDIFF_OPS and node.domain in ("", "ai.onnx"):
            continue
        if any(name in active for name in node.input if name) or subgraph_inputs(node) & active:
            active.update(o for o in node.output if o and _is_float(prep, o))
    return active


def _useful(prep: _Prepared) -> set[str]:
    """Tensors the output depends on (the backward pass only visits these)."""
    useful = {prep.output}
    for node in reversed(prep.nodes):
        if any(o in useful for o in node.output):
            useful.update(n for n in node.input if n)
    return useful


def _backprop(prep: _Prepared, emitter: Emitter, output: str, seed: str) -> str:
    """Emit the reverse sweep; returns the name of the gradient w.r.t. ``prep.wrt``."""
    active, useful = _active(prep), _useful(prep)
    needed = {t for t in active & useful if _is_float(prep, t)}
    emitter.needs = needed.__contains__
    pending: dict[str, list[str]] = {output: [seed]} if output in needed else {}
    for node in reversed(prep.nodes):
        if not any(o in pending for o in node.output):
            continue
        gys = [_accumulate(emitter, pending.pop(o)) if o in pending else None for o in node.output]
        try:
            node_grads = _apply_rule(emitter, node, gys, needed)
        except UnsupportedOpError as err:
            raise err.with_path(_path_from_latent(prep, node)) from None
        for name, g in zip(node.input, node_grads, strict=True):
            if g is not None and name in needed:
                pending.setdefault(name, []).append(g)
    contributions = pending.pop(prep.wrt, [])
    if not contributions:  # the output does not depend on wrt through data edges
        return emitter.zeros_like(prep.wrt)
    return _accumulate(emitter, contributions)


def _apply_rule(emitter: Emitter, node: NodeProto, gys: list[str | None], needed: set[str]) -> list[str | None]:
    rule = RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
    if rule is None:
        detail = "it lies on the differentiable path"
        raise UnsupportedOpError(
            op_label(node), node_label(node), detail, fix=NO_RULE_FIX, supported=nearest_supported(node.op_type)
        )
    for i, name in enumerate(node.input):
        if i in rule.inert_inputs:
            continue
        if name in needed and rule.diff_inputs is not None and i not in rule.diff_inputs:
            raise unsupported(node, f"gradient w.r.t. input {i} ({name!r}) is not supported")
    grads = list(rule.fn(emitter, node, gys)) + [None] * len(node.input)
    return [None if i in rule.inert_inputs else g for i, g in enumerate(grads[: len(node.input)])]


def _path_from_latent(prep: _Prepared, target: NodeProto, keep: int = 4) -> list[str]:
    """The shortest chain of nodes from ``wrt`` to ``target`` along data edges, for error messages.

    Long chains keep their first and last ``keep`` links: enough to find the node in the user's model.
    """
    consumers: dict[str, list[NodeProto]] = {}
    for node in prep.nodes:
        for name in set(node.input):
            consumers.setdefault(name, []).append(node)
    parent: dict[int, NodeProto | None] = {id(n): None for n in consumers.get(prep.wrt, [])}
    queue = deque(consumers.get(prep.wrt, []))
    while queue and id(target) not in parent:
        node = queue.popleft()
        for out in node.output:
            for nxt in consumers.get(out, []):
                if id(nxt) not in parent:
                    parent[id(nxt)] = node
                    queue.append(nxt)
    chain: list[NodeProto] = []
    current: NodeProto | None = target if id(target) in parent else None
    while current is not None:
        chain.append(current)
        current = parent[id(current)]
    labels = [prep.wrt] + [f"{n.op_type} {node_label(n)!r}" for n in reversed(chain)]
    if len(labels) > 2 * keep + 1:
        labels = [*labels[: keep + 1], f"… {len(labels) - 2 * keep - 1} more …", *labels[-keep:]]
    return labels


def _accumulate(emitter: Emitter, contributions: list[str]) -> str:
    return contributions[0] if len(contributions) == 1 else emitter.op("Sum", contributions)
