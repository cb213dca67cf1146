"""Rematerialisation (checkpointing) of a gradient graph: keep a few forward tensors, recompute the rest.

A VJP or loss graph from :mod:`.onnx_autodiff` is the forward nodes followed by the backward nodes, and every
forward tensor a backward node reads stays alive from the forward pass to that read. At 512 px that is ~10 GB
per image for an SD-class decoder. Here the forward nodes are cut into segments of about equal saved bytes;
only the tensors that cross a segment boundary (checkpoints) are kept, and before the backward part of a
segment runs, that segment's forward nodes run again from its checkpoints (copies under new names) and the
backward nodes read the copies. One extra forward pass per step buys memory ≈ checkpoints + one segment.

Order is enforced by data, not by node order: ONNX Runtime and TensorRT may run a node as soon as its inputs
exist, which would recompute every segment during the forward pass. So each segment's checkpoint inputs pass
through ``x · 1`` where the 1 is computed from the gradient that arrives at that segment (``Size`` → ``Greater``
→ ``Cast``): exact, and the recomputation cannot start before the backward pass reaches it.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence

import onnx
from onnx import NodeProto, TensorProto, helper

from .activation_memory import _bytes, peak_activation
from .onnx_autodiff import AUTODIFF_KEY
from .static_shapes import infer_static_shapes

REMAT_KEY = "genorigin.remat"
_SHAPE_OPS = frozenset({"Shape", "Size"})  # read only a tensor's shape: moved next to its producer instead


def forward_node_count(model: onnx.ModelProto) -> int:
    """How many leading nodes are the forward pass (recorded by the autodiff); raises for other graphs."""
    meta = {p.key: p.value for p in model.metadata_props}
    fields = dict(item.split("=", 1) for item in meta.get(AUTODIFF_KEY, "").split(",") if "=" in item)
    if "forward_nodes" not in fields:
        raise ValueError("not a gradient graph of this genorigin (no forward_nodes in its autodiff metadata)")
    return int(fields["forward_nodes"])


def rematerialise(model: onnx.ModelProto, segments: int) -> onnx.ModelProto:
    """A copy of the gradient graph ``model`` whose forward pass is recomputed in ``segments`` segments."""
    n_forward = forward_node_count(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)  # nodes are rewired in place: never the caller's
    nodes = list(out.graph.node)
    forward, backward = nodes[:n_forward], nodes[n_forward:]
    backward, early = _split_shape_reads(forward, backward)
    forward = _place_after_producers(forward, early)
    produced_at = {name: i for i, node in enumerate(forward) for name in node.output if name}
    saved = {name for node in backward for name in node.input if name in produced_at}
    kept = {v.name for v in model.graph.output}
    shapes = infer_static_shapes(model, 1)
    bounds = _segment_bounds(forward, saved, shapes, segments)
    weights = {t.name for t in model.graph.initializer}
    # what recomputation reads from outside its segment (earlier checkpoints, z) and must wait for
    floats = {name for name, (elem, _) in shapes.items() if elem == TensorProto.FLOAT and name not in weights}
    recompute: list[NodeProto] = []
    renamed: dict[str, str] = {}
    for seg, (start, stop) in enumerate(itertools.pairwise(bounds)):
        reads = {name for name in saved - kept if start <= produced_at[name] < stop}
        if not reads or stop == len(forward):  # the last segment's backward runs first: keep its tensors
            continue
        gate = _first_gradient_reading(backward, reads, produced_at)
        copies, names = _recompute_segment(forward, start, stop, reads, produced_at, gate, seg, floats)
        recompute.extend(copies)
        renamed.update(names)
    for node in backward:
        node.input[:] = [renamed.get(name, name) for name in node.input]
    ordered = [_detached(node) for node in _topological([*forward, *recompute, *backward], model)]
    del out.graph.node[:]
    out.graph.node.extend(ordered)
    out.metadata_props.add(key=REMAT_KEY, value=f"segments={segments}")
    return out


def rematerialise_to_fit(model: onnx.ModelProto, budget_bytes: int, batch: int = 1) -> tuple[onnx.ModelProto, int]:
    """The plain graph if its estimated activations at ``batch`` fit ``budget_bytes``, else the fewest segments
    (2, 4, 8, …) that do; returns (graph, segments), segments 0 for the plain graph. Raises if none fits."""
    if peak_activation(model, batch).peak_bytes <= budget_bytes:
        return model, 0
    best = None
    for segments in (2, 4, 8, 16, 32, 64):
        candidate = rematerialise(model, segments)
        peak = peak_activation(candidate, batch).peak_bytes
        if peak <= budget_bytes:
            return candidate, segments
        best = min(best or (peak, segments), (peak, segments))
    raise ValueError(
        f"even rematerialised, one step needs ~{best[0] / 2**30:.1f} GiB of activations at batch {batch} "  # type: ignore[index]
        f"(budget {budget_bytes / 2**30:.1f} GiB)"
    )


def _split_shape_reads(forward: list[NodeProto], backward: list[NodeProto]) -> tuple[list[NodeProto], list[NodeProto]]:
    """Backward Shape/Size nodes that read a forward tensor: taken out (they go to the forward pass)."""
    forward_names = {name for node in forward for name in node.output}
    early = [n for n in backward if n.op_type in _SHAPE_OPS and n.input and n.input[0] in forward_names]
    early_ids = {id(n) for n in early}
    return [n for n in backward if id(n) not in early_ids], early


def _place_after_producers(forward: list[NodeProto], early: list[NodeProto]) -> list[NodeProto]:
    by_input: dict[str, list[NodeProto]] = {}
    for node in early:
        by_input.setdefault(node.input[0], []).append(node)
    out: list[NodeProto] = []
    for node in forward:
        out.append(node)
        for name in node.output:
            out.extend(by_input.pop(name, []))
    return out


def _segment_bounds(forward: list[NodeProto], saved: set[str], shapes: dict, segments: int) -> list[int]:
    """Node indices cutting the forward pass into ``segments`` runs of about equal saved bytes."""
    sizes = [sum(_bytes(shapes, name) for name in node.output if name in saved) for node in forward]
    total = max(sum(sizes), 1)
    bounds, running = [0], 0
    for index, size in enumerate(sizes):
        running += size
        if running >= total * len(bounds) / segments and len(bounds) < segments and index + 1 < len(forward):
            bounds.append(index + 1)
    bounds.append(len(forward))
    return bounds


def _first_gradient_reading(backward: list[NodeProto], reads: set[str], produced_at: dict[str, int]) -> str:
    """A backward tensor that exists just before the first backward node reading one of ``reads``."""
    for index, node in enumerate(backward):
        if reads & set(node.input):
            for name in node.input:
                if name and name not in produced_at and _is_backward_output(backward[:index], name):
                    return name
            for earlier in reversed(backward[:index]):  # no gradient input: the node run just before
                if earlier.output and earlier.output[0]:
                    return earlier.output[0]
    raise ValueError("no backward node reads the segment (nothing to recompute)")


def _is_backward_output(nodes: Sequence[NodeProto], name: str) -> bool:
    return any(name in node.output for node in nodes)


def _recompute_segment(
    forward: list[NodeProto],
    start: int,
    stop: int,
    reads: set[str],
    produced_at: dict[str, int],
    gate: str,
    seg: int,
    floats: set[str],
) -> tuple[list[NodeProto], dict[str, str]]:
    """Copies of the segment's nodes the ``reads`` need, inputs from earlier segments gated on ``gate``."""
    needed: set[int] = set()
    frontier = [produced_at[name] for name in reads]
    while frontier:
        index = frontier.pop()
        if index in needed:
            continue
        needed.add(index)
        for name in forward[index].input:
            if name in produced_at and start <= produced_at[name] < stop:
                frontier.append(produced_at[name])
    tag = f"__rc{seg}"
    one = f"remat{seg}/one"
    copies = [
        helper.make_node("Size", [gate], [f"remat{seg}/size"], name=f"remat{seg}/size"),
        helper.make_node(
            "Greater", [f"remat{seg}/size", f"remat{seg}/minus_one"], [f"remat{seg}/yes"], name=f"remat{seg}/yes"
        ),
        helper.make_node("Cast", [f"remat{seg}/yes"], [one], to=TensorProto.FLOAT, name=f"remat{seg}/one"),
    ]
    minus_one = helper.make_node(
        "Constant", [], [f"remat{seg}/minus_one"], value=helper.make_tensor("v", TensorProto.INT64, [], [-1])
    )
    copies.insert(0, minus_one)
    renamed: dict[str, str] = {}
    gated: dict[str, str] = {}
    for index in sorted(needed):
        node = forward[index]
        inputs = []
        for name in node.input:
            if name in renamed:
                inputs.append(renamed[name])
            elif name in floats:  # a checkpoint or z (a weight never is): read once the gate opens
                if name not in gated:
                    gated[name] = f"{name}{tag}_gated"
                    copies.append(helper.make_node("Mul", [name, one], [gated[name]], name=f"remat{seg}/{name}/gate"))
                inputs.append(gated[name])
            else:
                inputs.append(name)  # z, a weight, or a constant
        outputs = [f"{name}{tag}" if name else "" for name in node.output]
        renamed.update({name: f"{name}{tag}" for name in node.output if name})
        copy = NodeProto()
        copy.CopyFrom(node)
        copy.name = f"{node.name or node.op_type}{tag}"
        copy.input[:] = inputs
        copy.output[:] = outputs
        copies.append(copy)
    return copies, {name: renamed[name] for name in reads}


def _detached(node: NodeProto) -> NodeProto:
    copy = NodeProto()
    copy.CopyFrom(node)
    return copy


def _topological(nodes: list[NodeProto], model: onnx.ModelProto) -> list[NodeProto]:
    """A topological order that keeps the given order wherever the data allows (Kahn's algorithm, earliest
    listed ready node first): recomputed nodes, listed before the backward pass, run as soon as their gate
    opens, then the backward nodes that read them."""
    available = {v.name for v in model.graph.input} | {t.name for t in model.graph.initializer} | {""}
    producer = {name: i for i, node in enumerate(nodes) for name in node.output if name}
    waiting = [sum(1 for name in set(node.input) if name not in available) for node in nodes]
    readers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in set(node.input):
            if name not in available:
                if name not in producer:
                    raise ValueError(f"{node.name or node.op_type} reads {name!r}, which nothing produces")
                readers.setdefault(name, []).append(i)
    ready = [i for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    ordered: list[NodeProto] = []
    while ready:
        i = heapq.heappop(ready)
        ordered.append(nodes[i])
        for name in nodes[i].output:
            for j in readers.get(name, []):
                waiting[j] -= 1
                if waiting[j] == 0:
                    heapq.heappush(ready, j)
    if len(ordered) != len(nodes):
        raise ValueError("the rematerialised graph has a cycle")
    return ordered
