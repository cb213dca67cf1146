"""VJP rules of ops that only move, copy or select elements: their adjoints scatter the gradient back.

Layout ops undo themselves (inverse Reshape/Transpose/DepthToSpace); selections (Slice, Gather, Pad, Tile)
are linear with a known 0/1 matrix per axis, applied with MatMul when no single ONNX op is the adjoint.
"""

from __future__ import annotations

import numpy as np
from onnx import NodeProto

from .emitter import FLOAT_TYPES, INT64_MAX, Emitter, attr, norm_axis
from .errors import unsupported
from .registry import first_grad, grads, rule


def _output_grad_input_rank(e: Emitter, node: NodeProto, gys: list[str | None]) -> tuple[str, str, int]:
    """(gradient of output 0, input 0, its rank): what every selection rule starts from."""
    x = node.input[0]
    return first_grad(gys, node), x, e.rank(x, node)


@rule("Identity", "Dropout", inert_inputs=(1, 2))
def _identity(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    """Dropout is inference-mode identity in an exported generator (its mask output is boolean)."""
    return grads(node, i0=first_grad(gys, node))


@rule("Cast", "CastLike", inert_inputs=(1,))
def _cast(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    x = node.input[0]
    if e.elem_type(x) not in FLOAT_TYPES:
        return grads(node)
    return grads(node, i0=e.op("Cast", [first_grad(gys, node)], to=e.elem_type(x)))


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def _reshape(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    """Pure re-indexing: the gradient only needs the input's runtime shape."""
    return grads(node, i0=e.reshape_like(first_grad(gys, node), node.input[0]))


@rule("Transpose")
def _transpose(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    rank = e.rank(node.input[0], node)
    perm = attr(node, "perm") or list(reversed(range(rank)))
    inverse = [0] * len(perm)
    for i, p in enumerate(perm):
        inverse[p] = i
    return grads(node, i0=e.op("Transpose", [first_grad(gys, node)], perm=inverse))


@rule("Expand")
def _expand(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    g = first_grad(gys, node)
    return grads(node, i0=e.unbroadcast(g, e.dims(node.output[0]), node.input[0], node))


@rule("Concat", diff_inputs=None)
def _concat(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    g = first_grad(gys, node)
    rank = e.rank(node.output[0], node)
    axis = norm_axis(int(attr(node, "axis")), rank)
    live = [name for name in node.input if name]
    sizes = [_static_size(e, name, axis) for name in live]
    if all(size is not None for size in sizes):
        split = e.ints([int(size) for size in sizes if size is not None])
    else:  # some sizes only known at runtime
        parts = [
            e.ints([size]) if size is not None else e.op("Gather", [e.shape_of(name), e.ints([axis])], axis=0)
            for name, size in zip(live, sizes, strict=True)
        ]
        split = e.op("Concat", parts, axis=0)
    parts = e.op("Split", [g, split], n_out=len(live), axis=axis) if len(live) > 1 else [g]
    by_name = iter(parts)
    return [next(by_name) if name else None for name in node.input]


def _static_size(e: Emitter, name: str, axis: int) -> int | None:
    dims = e.dims(name)
    size = dims[axis] if dims is not None else None
    return int(size) if size is not None and size >= 0 else None


@rule("Split")
def _split(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    rank = e.rank(node.input[0], node)
    axis = norm_axis(int(attr(node, "axis", 0)), rank)
    pieces = [g if g is not None else e.zeros_like(y) for g, y in zip(gys, node.output, strict=True)]
    return grads(node, i0=e.op("Concat", pieces, axis=axis))


@rule("Slice")
def _slice(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    """Unit steps scatter back with one Pad; other steps use a per-axis selection matrix."""
    g, x, rank = _output_grad_input_rank(e, node, gys)
    starts = e.require_const(node, 1, "starts")
    ends = e.require_const(node, 2, "ends")
    if starts is None or ends is None:
        raise unsupported(node, "starts and ends are required")
    axes = e.require_const(node, 3, "axes")
    steps = e.require_const(node, 4, "steps")
    axes_list = [norm_axis(int(a), rank) for a in (axes if axes is not None else range(len(starts)))]
    steps_list = [int(s) for s in (steps if steps is not None else [1] * len(starts))]
    pads = [0] * (2 * rank)
    strided: list[tuple[int, np.ndarray]] = []
    for axis, start, end, step in zip(axes_list, starts, ends, steps_list, strict=True):
        if step == 1 and int(start) == 0 and int(end) >= 2**31 - 1:
            continue  # the whole axis (exporters emit this for the batch axis, whose size is dynamic)
        (size,) = e.static_dims(x, node, [axis])
        picked = range(size)[slice(int(start), int(end), step)]
        if step == 1:
            pads[axis] = picked.start if len(picked) else 0
            pads[rank + axis] = size - (picked.stop if len(picked) else 0)
        else:
            select = np.zeros((len(picked), size))
            select[np.arange(len(picked)), list(picked)] = 1.0
            strided.append((axis, select))
    for axis, select in strided:
        g = e.apply_along_axis(g, select.T, axis, rank, x)
    if any(pads):
        g = e.op("Pad", [g, e.ints(pads)])
    return grads(node, i0=g)


@rule("Pad")
def _pad(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    g, x, rank = _output_grad_input_rank(e, node, gys)
    raw = e.require_const(node, 1, "pads")
    pads_attr = attr(node, "pads")
    pads = [int(p) for p in (raw if raw is not None else pads_attr or [])]
    axes_value = e.require_const(node, 3, "axes")
    axes = [norm_axis(int(a), rank) for a in axes_value] if axes_value is not None else list(range(rank))
    begin = dict(zip(axes, pads[: len(axes)], strict=True))
    end = dict(zip(axes, pads[len(axes) :], strict=True))
    mode = attr(node, "mode", "constant")
    if mode == "constant":
        return grads(node, i0=_unpad_constant(e, g, begin, end, rank))
    if mode not in ("reflect", "edge", "wrap"):
        raise unsupported(node, f"pad mode {mode!r}")
    for axis in axes:
        if begin[axis] == 0 and end[axis] == 0:
            continue
        (size,) = e.static_dims(x, node, [axis])
        matrix = _pad_matrix(size, begin[axis], end[axis], mode)
        g = e.apply_along_axis(g, matrix.T, axis, rank, x)
    return grads(node, i0=g)


def _unpad_constant(e: Emitter, g: str, begin: dict[int, int], end: dict[int, int], rank: int) -> str:
    """Constant padding's adjoint: crop what was added, zero-fill what a negative pad cropped."""
    axes = [a for a in begin if begin[a] > 0 or end[a] > 0]
    if axes:
        starts = [max(begin[a], 0) for a in axes]
        stops = [-end[a] if end[a] > 0 else INT64_MAX for a in axes]
        g = e.op("Slice", [g, e.ints(starts), e.ints(stops), e.ints(axes)])
    refill = [0] * (2 * rank)
    for a in begin:
        refill[a] = max(-begin[a], 0)
        refill[rank + a] = max(-end[a], 0)
    return e.op("Pad", [g, e.ints(refill)]) if any(refill) else g


def _pad_matrix(size: int, before: int, after: int, mode: str) -> np.ndarray:
    """Forward matrix (out × in) of non-constant padding along one axis."""
    out = size + before + after
    matrix = np.zeros((out, size))
    for o in range(out):
        src = o - before
        if mode == "edge":
            src = min(max(src, 0), size - 1)
        elif mode == "wrap":
            src %= size
        else:  # reflect without repeating the edge
            period = 2 * (size - 1) if size > 1 else 1
            src %= period
            if src >= size:
                src = period - src
        matrix[o, src] += 1.0
    return matrix


@rule("Gather")
def _gather(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    """Constant indices: scatter-add through a one-hot matrix (duplicated indices accumulate)."""
    g, x, rank = _output_grad_input_rank(e, node, gys)
    axis = norm_axis(int(attr(node, "axis", 0)), rank)
    indices = e.require_const(node, 1, "indices")
    if indices is None:
        raise unsupported(node, "indices are required")
    (size,) = e.static_dims(x, node, [axis])
    flat = np.asarray(indices, dtype=np.int64).reshape(-1)
    flat = np.where(flat < 0, flat + size, flat)
    select = np.zeros((size, flat.size))
    np.add.at(select, (flat, np.arange(flat.size)), 1.0)
    head = e.op("Slice", [e.shape_of(x), e.ints([0]), e.ints([axis])])
    tail = e.op("Slice", [e.shape_of(x), e.ints([axis + 1]), e.ints([INT64_MAX])])
    grouped = e.op("Reshape", [g, e.op("Concat", [head, e.ints([flat.size]), tail], axis=0)])
    return grads(node, i0=e.apply_along_axis(grouped, select, axis, rank, x))


@rule("Tile")
def _tile(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    """Fold each tiled axis into (repeats, size) and sum the repeats."""
    g = first_grad(gys, node)
    x = node.input[0]
    repeats = e.require_const(node, 1, "repeats")
    if repeats is None:
        raise unsupported(node, "repeats are required")
    dims = e.dims(x)
    if dims is None:
        raise unsupported(node, f"the shape of {x!r} is unknown")
    folded: list[int] = []
    for r, d in zip(repeats, dims, strict=True):
        folded += [int(r), int(d) if d is not None and d >= 0 else -1]
    if folded.count(-1) > 1:
        raise unsupported(node, "more than one dynamic axis")
    g = e.op("Reshape", [g, e.ints(folded)])
    g = e.reduce("ReduceSum", g, list(range(0, 2 * len(dims), 2)), keepdims=False)
    return grads(node, i0=e.reshape_like(g, x))


@rule("Trilu")
def _trilu(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    """A fixed triangular mask: its adjoint is the same mask."""
    return grads(node, i0=e.op("Trilu", [first_grad(gys, node), *node.input[1:]], upper=int(attr(node, "upper", 1))))


@rule("CumSum")
def _cumsum(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    """The adjoint of a running sum is the running sum in the other direction."""
    exclusive, reverse = int(attr(node, "exclusive", 0)), 1 - int(attr(node, "reverse", 0))
    g = e.op("CumSum", [first_grad(gys, node), node.input[1]], exclusive=exclusive, reverse=reverse)
    return grads(node, i0=g)


@rule("DepthToSpace", "SpaceToDepth")
def _depth_space(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    """Both are fixed permutations: undo them with the inverse reshape/transpose."""
    g = first_grad(gys, node)
    b = int(attr(node, "blocksize"))
    if node.op_type == "DepthToSpace":
        c, h, w = e.static_dims(node.output[0], node, [1, 2, 3])
        crd = attr(node, "mode", "DCR") == "CRD"
        # gy viewed as the forward's transposed (N, c, H, b, W, b); undo the transpose, then the split
        split = [0, c, h // b, b, w // b, b]
        perm = [0, 1, 3, 5, 2, 4] if crd else [0, 3, 5, 1, 2, 4]
        g = e.op("Transpose", [e.op("Reshape", [g, e.ints(split)])], perm=perm)
        return grads(node, i0=e.reshape_like(g, node.input[0]))
    c, h, w = e.static_dims(node.input[0], node, [1, 2, 3])
    split, perm = [0, b, b, c, h // b, w // b], [0, 3, 4, 1, 5, 2]
    g = e.op("Transpose", [e.op("Reshape", [g, e.ints(split)])], perm=perm)
    return grads(node, i0=e.reshape_like(g, node.input[0]))
