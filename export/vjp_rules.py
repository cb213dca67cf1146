"""Vector-Jacobian product rules for ONNX operators, emitted as standard ONNX nodes.

Each rule receives the forward node and the gradients of its outputs (``None`` where an output carries no
gradient) and returns one gradient tensor name per input (``None`` where not needed). Rules emit nodes
through :class:`Emitter`, which knows the static shapes and constant values of the forward graph, so the
gradient graph uses only standard ops of the forward model's opset and runs on ORT CPU/CUDA and TensorRT.

Linear operators whose adjoint has no single ONNX op (linear/cubic Resize, reflect Pad, strided Slice,
Gather) are differentiated exactly by applying precomputed per-axis matrices with MatMul, which needs the
static sizes of the affected axes (the batch axis may stay dynamic).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from onnx import NodeProto, TensorProto, helper, numpy_helper

Dim = int | None
# Marks a dimension that changes with the batch size: known not to be a constant 1 (so never broadcast).
DYN = -1
INT64_MAX = np.iinfo(np.int64).max
_BOOL_RESULT = frozenset({"Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Not"})
FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16})


class UnsupportedOpError(ValueError):
    """A node on the differentiable path has no VJP rule (or a variant the rule cannot handle)."""

    def __init__(self, op_type: str, node_name: str, detail: str = "") -> None:
        self.op_type = op_type
        self.node_name = node_name
        message = f"no VJP rule for ONNX op {op_type!r} (node {node_name!r})"
        super().__init__(f"{message}: {detail}" if detail else message)


def node_label(node: NodeProto) -> str:
    """A node's name, or a stable description for third-party graphs whose nodes are unnamed."""
    return node.name or f"<unnamed {node.op_type} -> {node.output[0] if node.output else '?'}>"


def op_label(node: NodeProto) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"


def attr(node: NodeProto, name: str, default: Any = None) -> Any:
    """Attribute value with bytes decoded to str; ``default`` when absent."""
    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            if isinstance(value, bytes):
                return value.decode()
            if isinstance(value, list) and value and isinstance(value[0], bytes):
                return [v.decode() for v in value]
            return value
    return default


def unsupported(node: NodeProto, detail: str) -> UnsupportedOpError:
    return UnsupportedOpError(op_label(node), node_label(node), detail)


# ---------------------------------------------------------------------------------------------------------
# Emitter: builds the gradient nodes
# ---------------------------------------------------------------------------------------------------------


class Emitter:
    """Appends gradient nodes and constants; answers static shape, dtype and constant-value queries."""

    def __init__(
        self,
        opset: int,
        types: dict[str, int],
        dims: dict[str, tuple[Dim, ...] | None],
        consts: dict[str, np.ndarray],
        taken: set[str],
        prefix: str = "vjp",
    ) -> None:
        self.opset = opset
        self.types = types
        self.dims_map = dims
        self.consts = consts
        self.taken = taken
        self.prefix = prefix
        self.nodes: list[NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.needs: Callable[[str], bool] = lambda name: False
        self._counter = 0
        self._shape_cache: dict[str, str] = {}
        self._scalar_cache: dict[tuple[float, int], str] = {}

    # -- naming and emission ----------------------------------------------------------------------------

    def fresh(self, hint: str) -> str:
        """A tensor/node name unused anywhere in the graph (third-party graphs may use any names)."""
        while True:
            self._counter += 1
            name = f"{self.prefix}/{hint}_{self._counter}"
            if name not in self.taken:
                self.taken.add(name)
                return name

    def op(self, op_type: str, inputs: Sequence[str], n_out: int = 1, **attrs: Any) -> Any:
        """Emit one node; returns its output name (or the list of names when ``n_out > 1``)."""
        outs = [self.fresh(op_type.lower()) for _ in range(n_out)]
        clean = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self.fresh(op_type), **clean))
        elem = self._result_type(op_type, list(inputs), clean)
        if elem:
            self.types.update(dict.fromkeys(outs, elem))
        return outs[0] if n_out == 1 else outs

    def _result_type(self, op_type: str, inputs: list[str], attrs: dict[str, Any]) -> int:
        """Element type of an emitted node's outputs, so later constants can match it."""
        if op_type == "Cast":
            return int(attrs["to"])
        if op_type in ("Shape", "Size", "NonZero"):
            return TensorProto.INT64
        if op_type in _BOOL_RESULT:
            return TensorProto.BOOL
        if op_type == "ConstantOfShape":
            return int(attrs["value"].data_type)
        source = inputs[1] if op_type == "Where" else (inputs[0] if inputs else "")
        return self.types.get(source, 0)

    def const(self, value: Any, like: str | int) -> str:
        """A constant of ``like``'s float type (``like`` is a tensor name or an elem type); scalars stay 0-d."""
        elem = like if isinstance(like, int) else self.elem_type(like)
        key = (float(value), elem) if np.ndim(value) == 0 else None
        if key in self._scalar_cache:
            return self._scalar_cache[key]
        if elem == TensorProto.BFLOAT16:
            name = self.op("Cast", [self.const(value, TensorProto.FLOAT)], to=TensorProto.BFLOAT16)
        else:
            name = self._initializer(np.asarray(value, dtype=helper.tensor_dtype_to_np_dtype(elem)), "const")
        if key is not None:
            self._scalar_cache[key] = name
        return name

    def ints(self, values: Sequence[int]) -> str:
        return self._initializer(np.asarray(list(values), dtype=np.int64), "ints")

    def _initializer(self, array: np.ndarray, hint: str) -> str:
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(array, name))
        self.types[name] = helper.np_dtype_to_tensor_dtype(array.dtype)
        return name

    # -- static knowledge -----------------------------------------------------------------------------

    def elem_type(self, name: str) -> int:
        return self.types.get(name, TensorProto.FLOAT)

    def dims(self, name: str) -> tuple[Dim, ...] | None:
        return self.dims_map.get(name)

    def rank(self, name: str, node: NodeProto) -> int:
        dims = self.dims(name)
        if dims is None:
            raise unsupported(node, f"the rank of {name!r} is unknown (shape inference failed)")
        return len(dims)

    def static_dims(self, name: str, node: NodeProto, axes: Sequence[int] | None = None) -> list[int]:
        """Static sizes of ``axes`` of ``name`` (all axes by default); raises if any is dynamic/unknown."""
        dims = self.dims(name)
        if dims is None:
            raise unsupported(node, f"the shape of {name!r} is unknown (shape inference failed)")
        picked = range(len(dims)) if axes is None else axes
        out = [dims[a] for a in picked]
        if any(d is None or d < 0 for d in out):
            raise unsupported(node, f"needs static sizes of axes {list(picked)} of {name!r}, got {dims}")
        return [int(d) for d in out if d is not None]

    def const_value(self, name: str) -> np.ndarray | None:
        return self.consts.get(name) if name else None

    def require_const(self, node: NodeProto, index: int, what: str) -> np.ndarray | None:
        """Value of optional input ``index`` (None when absent); raises when present but not constant."""
        if index >= len(node.input) or not node.input[index]:
            return None
        value = self.const_value(node.input[index])
        if value is None:
            raise unsupported(node, f"{what} (input {index}, {node.input[index]!r}) must be a constant")
        return value

    # -- helpers ------------------------------------------------------------------------------------------

    def shape_of(self, name: str) -> str:
        if name not in self._shape_cache:
            self._shape_cache[name] = self.op("Shape", [name])
        return self._shape_cache[name]

    def reshape_like(self, g: str, like: str) -> str:
        return self.op("Reshape", [g, self.shape_of(like)])

    def zeros_like(self, like: str) -> str:
        zero = helper.make_tensor("value", self.elem_type(like), [1], [0])
        return self.op("ConstantOfShape", [self.shape_of(like)], value=zero)

    def mul(self, a: str, b: str) -> str:
        return self.op("Mul", [a, b])

    def add(self, a: str, b: str) -> str:
        return self.op("Add", [a, b])

    def sub(self, a: str, b: str) -> str:
        return self.op("Sub", [a, b])

    def div(self, a: str, b: str) -> str:
        return self.op("Div", [a, b])

    def neg(self, a: str) -> str:
        return self.op("Neg", [a])

    def where_pos(self, cond: str, g: str, like: str) -> str:
        """``g`` where ``cond`` holds, else 0 (used by every masking rule)."""
        return self.op("Where", [cond, g, self.const(0.0, like)])

    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: bool) -> str:
        """Reduce over static ``axes``; axes moved from attribute to input in opset 13 (Sum) / 18 (others)."""
        if not axes:
            return x
        as_input = op_type == "ReduceSum" or self.opset >= 18
        if as_input:
            return self.op(op_type, [x, self.ints(axes)], keepdims=int(keepdims))
        return self.op(op_type, [x], axes=list(axes), keepdims=int(keepdims))

    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        return self.op("Unsqueeze", [x, self.ints(axes)]) if axes else x

    def unbroadcast(self, g: str, g_dims: Sequence[Dim] | None, x: str, node: NodeProto) -> str:
        """Sum ``g`` (shaped ``g_dims``, the broadcast result) down to the shape of operand ``x``."""
        x_dims = self.dims(x)
        if g_dims is None or x_dims is None:
            raise unsupported(node, f"broadcasting needs the ranks of {x!r} and of the node's output")
        lead = len(g_dims) - len(x_dims)
        if lead < 0:
            raise unsupported(node, f"operand {x!r} has a higher rank than the output")
        g = self.reduce("ReduceSum", g, list(range(lead)), keepdims=False)
        axes: list[int] = []
        unknown = False
        for i, dx in enumerate(x_dims):
            dy = g_dims[lead + i]
            if dx == 1 and dy != 1:
                axes.append(i)
            elif dx is None and dy != 1:
                unknown = True
        if unknown:
            return self._unbroadcast_dynamic(g, x)
        return self.reduce("ReduceSum", g, axes, keepdims=True)

    def _unbroadcast_dynamic(self, g: str, x: str) -> str:
        """Runtime fallback: reduce over every axis where ``x`` has size 1 (harmless where ``g`` has too)."""
        ones = self.op("Equal", [self.shape_of(x), self.ints([1])])
        axes = self.op("Reshape", [self.op("NonZero", [ones]), self.ints([-1])])
        return self.op("ReduceSum", [g, axes], keepdims=1, noop_with_empty_axes=1)

    def apply_along_axis(self, t: str, matrix: np.ndarray, axis: int, rank: int, like: str) -> str:
        """``out[..., i, ...] = Σ_j matrix[i, j] · t[..., j, ...]`` along ``axis`` of a rank-``rank`` tensor."""
        if axis == rank - 2:
            return self.op("MatMul", [self.const(matrix, like), t])
        right = self.const(np.ascontiguousarray(matrix.T), like)
        if axis == rank - 1:
            return self.op("MatMul", [t, right])
        perm = list(range(rank))
        perm[axis], perm[-1] = perm[-1], perm[axis]
        moved = self.op("MatMul", [self.op("Transpose", [t], perm=perm), right])
        return self.op("Transpose", [moved], perm=perm)


# ---------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------

RuleFn = Callable[[Emitter, NodeProto, list[str | None]], list[str | None]]


@dataclass(frozen=True)
class Rule:
    """A VJP rule, the input positions it differentiates (``None``: all) and those with zero gradient.

    A float input outside both sets that depends on z is an error, never silently dropped.
    """

    fn: RuleFn
    diff_inputs: tuple[int, ...] | None = (0,)
    inert_inputs: tuple[int, ...] = ()


RULES: dict[str, Rule] = {}

# Ops whose outputs never carry a gradient: integer/bool results, shape queries, piecewise-constant maps.
NONDIFF_OPS = frozenset(
    {
        "Shape", "Size", "Constant", "ConstantOfShape", "Range", "NonZero", "ArgMax", "ArgMin",
        "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Not", "And", "Or", "Xor",
        "IsNaN", "IsInf", "Floor", "Ceil", "Round", "Sign", "EyeLike", "RandomNormal", "RandomUniform",
        "RandomNormalLike", "RandomUniformLike", "Bernoulli", "Multinomial", "OneHot", "Hardmax",
        "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot", "QuantizeLinear",
    }
)  # fmt: skip


def rule(
    *op_types: str, diff_inputs: tuple[int, ...] | None = (0,), inert_inputs: tuple[int, ...] = ()
) -> Callable[[RuleFn], RuleFn]:
    def register(fn: RuleFn) -> RuleFn:
        for op_type in op_types:
            RULES[op_type] = Rule(fn, diff_inputs, inert_inputs)
        return fn

    return register


def _grads(node: NodeProto, **by_index: str | None) -> list[str | None]:
    out: list[str | None] = [None] * len(node.input)
    for key, value in by_index.items():
        out[int(key[1:])] = value
    return out


def _first(gys: list[str | None], node: NodeProto) -> str:
    if gys[0] is None:
        raise unsupported(node, "only gradients through output 0 are supported")
    if any(g is not None for g in gys[1:]):
        raise unsupported(node, "gradients through its secondary outputs are not supported")
    return gys[0]


def _norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


# ---------------------------------------------------------------------------------------------------------
# Pass-through, shape and layout ops
# ---------------------------------------------------------------------------------------------------------


@rule("Identity", "Dropout", inert_inputs=(1, 2))
def _identity(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    """Dropout is inference-mode identity in an exported generator (its mask output is boolean)."""
    return _grads(node, i0=_first(gys, node))


@rule("Cast", "CastLike", inert_inputs=(1,))
def _cast(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    x = node.input[0]
    if e.elem_type(x) not in FLOAT_TYPES:
        return _grads(node)
    return _grads(node, i0=e.op("Cast", [_first(gys, node)], to=e.elem_type(x)))


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def _reshape(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    """Pure re-indexing: the gradient only needs the input's runtime shape."""
    return _grads(node, i0=e.reshape_like(_first(gys, node), node.input[0]))


@rule("Transpose")
def _transpose(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    rank = e.rank(node.input[0], node)
    perm = attr(node, "perm") or list(reversed(range(rank)))
    inverse = [0] * len(perm)
    for i, p in enumerate(perm):
        inverse[p] = i
    return _grads(node, i0=e.op("Transpose", [_first(gys, node)], perm=inverse))


@rule("Expand")
def _expand(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    g = _first(gys, node)
    return _grads(node, i0=e.unbroadcast(g, e.dims(node.output[0]), node.input[0], node))


@rule("Concat", diff_inputs=None)
def _concat(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    g = _first(gys, node)
    rank = e.rank(node.output[0], node)
    axis = _norm_axis(int(attr(node, "axis")), rank)
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
    axis = _norm_axis(int(attr(node, "axis", 0)), rank)
    pieces = [g if g is not None else e.zeros_like(y) for g, y in zip(gys, node.output, strict=True)]
    return _grads(node, i0=e.op("Concat", pieces, axis=axis))


@rule("Slice")
def _slice(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    """Unit steps scatter back with one Pad; other steps use a per-axis selection matrix."""
    g = _first(gys, node)
    x = node.input[0]
    rank = e.rank(x, node)
    starts = e.require_const(node, 1, "starts")
    ends = e.require_const(node, 2, "ends")
    if starts is None or ends is None:
        raise unsupported(node, "starts and ends are required")
    axes = e.require_const(node, 3, "axes")
    steps = e.require_const(node, 4, "steps")
    axes_list = [_norm_axis(int(a), rank) for a in (axes if axes is not None else range(len(starts)))]
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
    return _grads(node, i0=g)


@rule("Pad")
def _pad(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    g = _first(gys, node)
    x = node.input[0]
    rank = e.rank(x, node)
    raw = e.require_const(node, 1, "pads")
    pads_attr = attr(node, "pads")
    pads = [int(p) for p in (raw if raw is not None else pads_attr or [])]
    axes_value = e.require_const(node, 3, "axes")
    axes = [_norm_axis(int(a), rank) for a in axes_value] if axes_value is not None else list(range(rank))
    begin = dict(zip(axes, pads[: len(axes)], strict=True))
    end = dict(zip(axes, pads[len(axes) :], strict=True))
    mode = attr(node, "mode", "constant")
    if mode == "constant":
        return _grads(node, i0=_unpad_constant(e, g, begin, end, rank))
    if mode not in ("reflect", "edge", "wrap"):
        raise unsupported(node, f"pad mode {mode!r}")
    for axis in axes:
        if begin[axis] == 0 and end[axis] == 0:
            continue
        (size,) = e.static_dims(x, node, [axis])
        matrix = _pad_matrix(size, begin[axis], end[axis], mode)
        g = e.apply_along_axis(g, matrix.T, axis, rank, x)
    return _grads(node, i0=g)


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
    g = _first(gys, node)
    x = node.input[0]
    rank = e.rank(x, node)
    axis = _norm_axis(int(attr(node, "axis", 0)), rank)
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
    return _grads(node, i0=e.apply_along_axis(grouped, select, axis, rank, x))


@rule("Tile")
def _tile(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    """Fold each tiled axis into (repeats, size) and sum the repeats."""
    g = _first(gys, node)
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
    return _grads(node, i0=e.reshape_like(g, x))


@rule("Trilu")
def _trilu(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    """A fixed triangular mask: its adjoint is the same mask."""
    return _grads(node, i0=e.op("Trilu", [_first(gys, node), *node.input[1:]], upper=int(attr(node, "upper", 1))))


@rule("CumSum")
def _cumsum(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    """The adjoint of a running sum is the running sum in the other direction."""
    reverse = 1 - int(attr(node, "reverse", 0))
    g = e.op("CumSum", [_first(gys, node), node.input[1]], exclusive=int(attr(node, "exclusive", 0)), reverse=reverse)
    return _grads(node, i0=g)


@rule("DepthToSpace", "SpaceToDepth")
def _depth_space(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    """Both are fixed permutations: undo them with the inverse reshape/transpose."""
    g = _first(gys, node)
    b = int(attr(node, "blocksize"))
    if node.op_type == "DepthToSpace":
        c, h, w = e.static_dims(node.output[0], node, [1, 2, 3])
        crd = attr(node, "mode", "DCR") == "CRD"
        # gy viewed as the forward's transposed (N, c, H, b, W, b); undo the transpose, then the split
        split = [0, c, h // b, b, w // b, b]
        perm = [0, 1, 3, 5, 2, 4] if crd else [0, 3, 5, 1, 2, 4]
        g = e.op("Transpose", [e.op("Reshape", [g, e.ints(split)])], perm=perm)
        return _grads(node, i0=e.reshape_like(g, node.input[0]))
    c, h, w = e.static_dims(node.input[0], node, [1, 2, 3])
    split, perm = [0, b, b, c, h // b, w // b], [0, 3, 4, 1, 5, 2]
    g = e.op("Transpose", [e.op("Reshape", [g, e.ints(split)])], perm=perm)
    return _grads(node, i0=e.reshape_like(g, node.input[0]))


# ---------------------------------------------------------------------------------------------------------
# Elementwise arithmetic (with numpy broadcasting)
# ---------------------------------------------------------------------------------------------------------


def _to_operand(e: Emitter, g: str, node: NodeProto, index: int) -> str:
    return e.unbroadcast(g, e.dims(node.output[0]), node.input[index], node)


@rule("Add", "Sub", diff_inputs=(0, 1))
def _add_sub(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    g = _first(gys, node)
    a, b = node.input
    ga = _to_operand(e, g, node, 0) if e.needs(a) else None
    gb = _to_operand(e, g, node, 1) if e.needs(b) else None
    if gb is not None and node.op_type == "Sub":
        gb = e.neg(gb)
    return [ga, gb]


@rule("Mul", diff_inputs=(0, 1))
def _mul(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    g = _first(gys, node)
    a, b = node.input
    ga = _to_operand(e, e.mul(g, b), node, 0) if e.needs(a) else None
    gb = _to_operand(e, e.mul(g, a), node, 1) if e.needs(b) else None
    return [ga, gb]


@rule("Div", diff_inputs=(0, 1))
def _div(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    g = _first(gys, node)
    a, b = node.input
    ga = _to_operand(e, e.div(g, b), node, 0) if e.needs(a) else None
    gb = None
    if e.needs(b):  # d(a/b)/db = -y/b
        gb = _to_operand(e, e.neg(e.div(e.mul(g, node.output[0]), b)), node, 1)
    return [ga, gb]


@rule("Pow", diff_inputs=(0, 1))
def _pow(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    g = _first(gys, node)
    a, p = node.input
    ga = gp = None
    if e.needs(a):
        exponent = p if e.elem_type(p) == e.elem_type(a) else e.op("Cast", [p], to=e.elem_type(a))
        slope = e.mul(exponent, e.op("Pow", [a, e.sub(exponent, e.const(1.0, a))]))
        ga = _to_operand(e, e.mul(g, slope), node, 0)
    if e.needs(p):
        gp = _to_operand(e, e.mul(g, e.mul(node.output[0], e.op("Log", [a]))), node, 1)
    return [ga, gp]


@rule("Sum", "Mean", diff_inputs=None)
def _sum_mean(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    g = _first(gys, node)
    if node.op_type == "Mean":
        g = e.mul(g, e.const(1.0 / len(node.input), node.output[0]))
    return [_to_operand(e, g, node, i) if e.needs(name) else None for i, name in enumerate(node.input)]


@rule("Max", "Min", diff_inputs=None)
def _max_min(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    """Ties share the gradient equally, as torch.maximum/minimum do."""
    g = _first(gys, node)
    y = node.output[0]
    hits = [e.op("Equal", [name, y]) for name in node.input]
    count = e.op("Sum", [e.op("Cast", [h], to=e.elem_type(y)) for h in hits])
    share = e.div(g, count)
    return [
        _to_operand(e, e.where_pos(h, share, y), node, i) if e.needs(name) else None
        for i, (name, h) in enumerate(zip(node.input, hits, strict=True))
    ]


@rule("Where", diff_inputs=(1, 2))
def _where(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    g = _first(gys, node)
    cond, a, b = node.input
    zero = e.const(0.0, node.output[0])
    ga = _to_operand(e, e.op("Where", [cond, g, zero]), node, 1) if e.needs(a) else None
    gb = _to_operand(e, e.op("Where", [cond, zero, g]), node, 2) if e.needs(b) else None
    return [None, ga, gb]


@rule("Clip")
def _clip(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    """Gradient passes where min ≤ x ≤ max (boundaries included, as in torch.clamp)."""
    g, x = _first(gys, node), node.input[0]
    low, high = (node.input[i] if i < len(node.input) else "" for i in (1, 2))
    if not low and attr(node, "min") is not None:  # opset < 11 keeps the bounds in attributes
        low = e.const(float(attr(node, "min")), x)
    if not high and attr(node, "max") is not None:
        high = e.const(float(attr(node, "max")), x)
    masks = [e.op("GreaterOrEqual", [x, low])] if low else []
    masks += [e.op("LessOrEqual", [x, high])] if high else []
    if not masks:
        return _grads(node, i0=g)
    mask = masks[0] if len(masks) == 1 else e.op("And", masks)
    return _grads(node, i0=e.where_pos(mask, g, x))


# ---------------------------------------------------------------------------------------------------------
# Unary elementwise functions
# ---------------------------------------------------------------------------------------------------------


def _scaled(e: Emitter, node: NodeProto, gys: list[str | None], slope: str) -> list[str | None]:
    return _grads(node, i0=e.mul(_first(gys, node), slope))


@rule("Relu")
def _relu(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    y = node.output[0]
    return _grads(node, i0=e.where_pos(e.op("Greater", [y, e.const(0.0, y)]), _first(gys, node), y))


@rule("LeakyRelu")
def _leaky_relu(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    g, x = _first(gys, node), node.input[0]
    alpha = e.const(float(attr(node, "alpha", 0.01)), x)
    positive = e.op("Greater", [x, e.const(0.0, x)])
    return _grads(node, i0=e.op("Where", [positive, g, e.mul(g, alpha)]))


@rule("PRelu")
def _prelu(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    g, (x, slope) = _first(gys, node), node.input
    positive = e.op("Greater", [x, e.const(0.0, x)])
    return _grads(node, i0=e.op("Where", [positive, g, e.mul(g, slope)]))


@rule("Elu", "Selu", "Celu")
def _elu_family(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    """For x ≤ 0 the slope is y + α (Elu), γ·α·eˣ = y + γα (Selu), y/α + 1 (Celu)."""
    x, y = node.input[0], node.output[0]
    positive = e.op("Greater", [x, e.const(0.0, x)])
    if node.op_type == "Elu":
        neg_slope, pos_slope = e.add(y, e.const(float(attr(node, "alpha", 1.0)), x)), 1.0
    elif node.op_type == "Celu":
        alpha = float(attr(node, "alpha", 1.0))
        neg_slope, pos_slope = e.add(e.mul(y, e.const(1.0 / alpha, x)), e.const(1.0, x)), 1.0
    else:
        alpha = float(attr(node, "alpha", 1.67326319217681884765625))
        gamma = float(attr(node, "gamma", 1.05070102214813232421875))
        neg_slope, pos_slope = e.add(y, e.const(gamma * alpha, x)), gamma
    slope = e.op("Where", [positive, e.const(pos_slope, x), neg_slope])
    return _scaled(e, node, gys, slope)


@rule("Tanh")
def _tanh(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    y = node.output[0]
    return _scaled(e, node, gys, e.sub(e.const(1.0, y), e.mul(y, y)))


@rule("Sigmoid")
def _sigmoid(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    y = node.output[0]
    return _scaled(e, node, gys, e.mul(y, e.sub(e.const(1.0, y), y)))


@rule("HardSigmoid", "HardSwish")
def _hard_sigmoid(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    """Slope α inside the linear band 0 < αx+β < 1; HardSwish = x·HardSigmoid(x) with α=1/6, β=1/2."""
    x = node.input[0]
    swish = node.op_type == "HardSwish"
    alpha = 1.0 / 6.0 if swish else float(attr(node, "alpha", 0.2))
    beta = 0.5 if swish else float(attr(node, "beta", 0.5))
    v = e.add(e.mul(x, e.const(alpha, x)), e.const(beta, x))
    inside = e.op("And", [e.op("Greater", [v, e.const(0.0, x)]), e.op("Less", [v, e.const(1.0, x)])])
    if not swish:
        return _scaled(e, node, gys, e.where_pos(inside, e.const(alpha, x), x))
    band = e.add(e.mul(x, e.const(2.0 * alpha, x)), e.const(beta, x))
    above = e.op("GreaterOrEqual", [v, e.const(1.0, x)])
    slope = e.op("Where", [inside, band, e.where_pos(above, e.const(1.0, x), x)])
    return _scaled(e, node, gys, slope)


@rule("Softplus")
def _softplus(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    return _scaled(e, node, gys, e.op("Sigmoid", [node.input[0]]))


@rule("Softsign")
def _softsign(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    x = node.input[0]
    denom = e.add(e.const(1.0, x), e.op("Abs", [x]))
    return _scaled(e, node, gys, e.op("Reciprocal", [e.mul(denom, denom)]))


@rule("Mish")
def _mish(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    """d/dx x·tanh(softplus x) = tanh(sp) + x·(1 − tanh²(sp))·σ(x)."""
    x = node.input[0]
    t = e.op("Tanh", [e.op("Softplus", [x])])
    sech2 = e.sub(e.const(1.0, x), e.mul(t, t))
    return _scaled(e, node, gys, e.add(t, e.mul(x, e.mul(sech2, e.op("Sigmoid", [x])))))


@rule("Exp")
def _exp(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    return _scaled(e, node, gys, node.output[0])


@rule("Log")
def _log(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    return _grads(node, i0=e.div(_first(gys, node), node.input[0]))


@rule("Sqrt")
def _sqrt(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    y = node.output[0]
    return _grads(node, i0=e.div(_first(gys, node), e.mul(y, e.const(2.0, y))))


@rule("Reciprocal")
def _reciprocal(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    y = node.output[0]
    return _scaled(e, node, gys, e.neg(e.mul(y, y)))


@rule("Neg")
def _neg(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    return _grads(node, i0=e.neg(_first(gys, node)))


@rule("Abs")
def _abs(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    return _scaled(e, node, gys, e.op("Sign", [node.input[0]]))


@rule("Sin")
def _sin(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    return _scaled(e, node, gys, e.op("Cos", [node.input[0]]))


@rule("Cos")
def _cos(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    return _scaled(e, node, gys, e.neg(e.op("Sin", [node.input[0]])))


@rule("Erf")
def _erf(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    x = node.input[0]
    bell = e.op("Exp", [e.neg(e.mul(x, x))])
    return _scaled(e, node, gys, e.mul(bell, e.const(2.0 / math.sqrt(math.pi), x)))


@rule("Gelu")
def _gelu(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    x = node.input[0]
    half, one = e.const(0.5, x), e.const(1.0, x)
    if attr(node, "approximate", "none") == "tanh":
        k, c = math.sqrt(2.0 / math.pi), 0.044715
        x2 = e.mul(x, x)
        inner = e.mul(e.mul(x, e.add(one, e.mul(x2, e.const(c, x)))), e.const(k, x))
        t = e.op("Tanh", [inner])
        dinner = e.mul(e.add(one, e.mul(x2, e.const(3.0 * c, x))), e.const(k, x))
        slope = e.add(e.mul(half, e.add(one, t)), e.mul(e.mul(half, x), e.mul(e.sub(one, e.mul(t, t)), dinner)))
        return _scaled(e, node, gys, slope)
    cdf = e.mul(half, e.add(one, e.op("Erf", [e.mul(x, e.const(1.0 / math.sqrt(2.0), x))])))
    pdf = e.mul(e.op("Exp", [e.mul(e.mul(x, x), e.const(-0.5, x))]), e.const(1.0 / math.sqrt(2 * math.pi), x))
    return _scaled(e, node, gys, e.add(cdf, e.mul(x, pdf)))


@rule("Softmax")
def _softmax(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    g, y = _first(gys, node), node.output[0]
    axis = int(attr(node, "axis", -1))
    dot = e.reduce("ReduceSum", e.mul(g, y), [axis], keepdims=True)
    return _grads(node, i0=e.mul(y, e.sub(g, dot)))


@rule("LogSoftmax")
def _log_softmax(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    g, y = _first(gys, node), node.output[0]
    axis = int(attr(node, "axis", -1))
    total = e.reduce("ReduceSum", g, [axis], keepdims=True)
    return _grads(node, i0=e.sub(g, e.mul(e.op("Exp", [y]), total)))


# ---------------------------------------------------------------------------------------------------------
# Reductions and pooling
# ---------------------------------------------------------------------------------------------------------


def _reduce_axes(e: Emitter, node: NodeProto, rank: int) -> list[int] | None:
    """Normalized reduction axes; ``None`` when the node reduces nothing (noop_with_empty_axes)."""
    value = attr(node, "axes")
    if value is None and len(node.input) > 1 and node.input[1]:
        value = e.require_const(node, 1, "axes")
    axes = [_norm_axis(int(a), rank) for a in (value if value is not None else [])]
    if not axes:
        return None if attr(node, "noop_with_empty_axes", 0) else list(range(rank))
    return sorted(axes)


def _expand_back(e: Emitter, node: NodeProto, g: str) -> str | None:
    """Broadcast a reduction's gradient back to the input shape (None for a no-op reduction)."""
    x = node.input[0]
    rank = e.rank(x, node)
    axes = _reduce_axes(e, node, rank)
    if axes is None:
        return None
    if not attr(node, "keepdims", 1):
        g = e.unsqueeze(g, axes)
    return e.op("Expand", [g, e.shape_of(x)])


def _count_ratio(e: Emitter, x: str, y: str) -> str:
    """Elements of ``x`` per element of ``y`` at runtime (a mean's divisor; the batch may be dynamic)."""
    sizes = [e.op("Cast", [e.op("Size", [t])], to=e.elem_type(x)) for t in (x, y)]
    return e.div(sizes[0], sizes[1])


@rule("ReduceSum", "ReduceMean", "ReduceSumSquare", "ReduceL1", "ReduceL2")
def _reduce(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    g, x, y = _first(gys, node), node.input[0], node.output[0]
    if node.op_type == "ReduceL2":  # slope x / y; divide before expanding (fewer elements)
        g = e.div(g, y)
    full = _expand_back(e, node, g)
    if full is None:
        return _grads(node, i0=g)
    if node.op_type == "ReduceMean":
        full = e.div(full, _count_ratio(e, x, y))
    elif node.op_type == "ReduceSumSquare":
        full = e.mul(full, e.mul(x, e.const(2.0, x)))
    elif node.op_type == "ReduceL2":
        full = e.mul(full, x)
    elif node.op_type == "ReduceL1":
        full = e.mul(full, e.op("Sign", [x]))
    return _grads(node, i0=full)


@rule("ReduceMax", "ReduceMin")
def _reduce_extremum(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    """Ties share the gradient equally, as torch.amax/amin do."""
    g, x, y = _first(gys, node), node.input[0], node.output[0]
    rank = e.rank(x, node)
    axes = _reduce_axes(e, node, rank)
    if axes is None:
        return _grads(node, i0=g)
    if not attr(node, "keepdims", 1):
        g, y = e.unsqueeze(g, axes), e.unsqueeze(y, axes)
    hit = e.op("Equal", [x, y])
    count = e.reduce("ReduceSum", e.op("Cast", [hit], to=e.elem_type(x)), axes, keepdims=True)
    return _grads(node, i0=e.where_pos(hit, e.div(g, count), x))


@rule("GlobalAveragePool")
def _global_average_pool(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    g, x, y = _first(gys, node), node.input[0], node.output[0]
    return _grads(node, i0=e.op("Expand", [e.div(g, _count_ratio(e, x, y)), e.shape_of(x)]))


@rule("AveragePool")
def _average_pool(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    """A depthwise convolution with a constant kernel: its adjoint is the matching ConvTranspose."""
    g, x = _first(gys, node), node.input[0]
    kernel = [int(k) for k in attr(node, "kernel_shape")]
    geometry = _conv_geometry(e, node, x, node.output[0], kernel)
    if attr(node, "ceil_mode", 0) or (any(geometry.pads) and not attr(node, "count_include_pad", 0)):
        raise unsupported(node, "ceil_mode or count_include_pad=0 with padding (non-uniform divisor)")
    (channels,) = e.static_dims(x, node, [1])
    weight = np.full([channels, 1, *kernel], 1.0 / float(np.prod(kernel)))
    gx = e.op(
        "ConvTranspose",
        [g, e.const(weight, x)],
        group=channels,
        kernel_shape=kernel,
        strides=geometry.strides,
        dilations=geometry.dilations,
        pads=geometry.pads,
        output_padding=geometry.output_padding,
    )
    return _grads(node, i0=gx)


# ---------------------------------------------------------------------------------------------------------
# Linear algebra and convolutions
# ---------------------------------------------------------------------------------------------------------


def _swap_last(e: Emitter, t: str, rank: int) -> str:
    perm = list(range(rank))
    perm[-1], perm[-2] = perm[-2], perm[-1]
    return e.op("Transpose", [t], perm=perm)


@rule("MatMul", diff_inputs=(0, 1))
def _matmul(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    """Promote 1-D operands to matrices, multiply by the transposed partner, sum broadcast batch dims."""
    g = _first(gys, node)
    a, b = node.input
    ra, rb = e.rank(a, node), e.rank(b, node)
    if ra == 1 and rb == 1:
        g = e.op("Reshape", [g, e.ints([1, 1])])
    elif ra == 1:
        g = e.unsqueeze(g, [-2])
    elif rb == 1:
        g = e.unsqueeze(g, [-1])
    a2 = e.unsqueeze(a, [0]) if ra == 1 else a
    b2 = e.unsqueeze(b, [1]) if rb == 1 else b
    ra2, rb2 = max(ra, 2), max(rb, 2)
    a_dims, b_dims, y_dims = e.dims(a), e.dims(b), e.dims(node.output[0])
    assert a_dims is not None and b_dims is not None and y_dims is not None  # ranks known above
    batch = list(y_dims[: len(y_dims) - (ra >= 2) - (rb >= 2)]) if ra >= 2 and rb >= 2 else None
    ga = gb = None
    if e.needs(a):
        ga = e.op("MatMul", [g, _swap_last(e, b2, rb2)])
        ga = _matmul_operand_grad(e, ga, a, ra, batch, b_dims, rb, node)
    if e.needs(b):
        gb = e.op("MatMul", [_swap_last(e, a2, ra2), g])
        gb = _matmul_operand_grad(e, gb, b, rb, batch, a_dims, ra, node)
    return [ga, gb]


def _matmul_operand_grad(
    e: Emitter,
    grad: str,
    operand: str,
    rank: int,
    batch: list[Dim] | None,
    partner_dims: tuple[Dim, ...],
    partner_rank: int,
    node: NodeProto,
) -> str:
    """Bring a raw MatMul operand gradient (batch × matrix) back to the operand's own shape."""
    dims = e.dims(operand)
    assert dims is not None
    if rank == 1:  # vector: sum every leading batch axis, then drop the unit matrix axis
        lead = max(partner_rank - 2, 0)
        grad = e.reduce("ReduceSum", grad, list(range(lead)), keepdims=False)
        return e.reshape_like(grad, operand)
    if batch is None:  # partner was a vector: grad already has operand's batch dims
        return grad
    return e.unbroadcast(grad, [*batch, *dims[-2:]], operand, node)


@rule("Gemm", diff_inputs=(0, 1, 2))
def _gemm(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    g = _first(gys, node)
    a, b = node.input[0], node.input[1]
    c = node.input[2] if len(node.input) > 2 else ""
    alpha, beta = float(attr(node, "alpha", 1.0)), float(attr(node, "beta", 1.0))
    ta, tb = int(attr(node, "transA", 0)), int(attr(node, "transB", 0))
    ga = gb = gc = None
    if e.needs(a):
        if ta:
            ga = e.op("Gemm", [b, g], alpha=alpha, transA=tb, transB=1)
        else:
            ga = e.op("Gemm", [g, b], alpha=alpha, transB=1 - tb)
    if e.needs(b):
        if tb:
            gb = e.op("Gemm", [g, a], alpha=alpha, transA=1, transB=ta)
        else:
            gb = e.op("Gemm", [a, g], alpha=alpha, transA=1 - ta)
    if c and e.needs(c):
        gc = _to_operand(e, g if beta == 1.0 else e.mul(g, e.const(beta, c)), node, 2)
    return [ga, gb, gc][: len(node.input)]


@dataclass(frozen=True)
class ConvGeometry:
    """Explicit strides/dilations/pads of a convolution-like node, plus the adjoint's output_padding."""

    strides: list[int]
    dilations: list[int]
    pads: list[int]
    output_padding: list[int]


def _conv_geometry(e: Emitter, node: NodeProto, x: str, y: str, kernel: list[int]) -> ConvGeometry:
    """Resolve auto_pad from static shapes and compute the output_padding that restores x's size."""
    n = len(kernel)
    in_sizes = e.static_dims(x, node, range(2, 2 + n))
    out_sizes = e.static_dims(y, node, range(2, 2 + n))
    strides = [int(s) for s in attr(node, "strides", [1] * n)]
    dilations = [int(d) for d in attr(node, "dilations", [1] * n)]
    auto_pad = attr(node, "auto_pad", "NOTSET")
    pads = [int(p) for p in attr(node, "pads", [0] * (2 * n))]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        for i in range(n):
            span = (kernel[i] - 1) * dilations[i] + 1
            total = max(0, (out_sizes[i] - 1) * strides[i] + span - in_sizes[i])
            small, large = total // 2, total - total // 2
            pads[i], pads[n + i] = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
    elif auto_pad == "VALID":
        pads = [0] * (2 * n)
    output_padding = []
    for i in range(n):
        span = (kernel[i] - 1) * dilations[i] + 1
        natural = strides[i] * (out_sizes[i] - 1) + span - pads[i] - pads[n + i]
        extra = in_sizes[i] - natural
        if extra < 0 or extra >= max(strides[i], dilations[i]):
            raise unsupported(node, f"inconsistent geometry on spatial axis {i} (output_padding {extra})")
        output_padding.append(extra)
    return ConvGeometry(strides, dilations, pads, output_padding)


def _kernel(e: Emitter, node: NodeProto, weight: str) -> list[int]:
    given = attr(node, "kernel_shape")
    if given:
        return [int(k) for k in given]
    rank = e.rank(weight, node)
    return e.static_dims(weight, node, range(2, rank))


@rule("Conv")
def _conv(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    """The adjoint of a convolution is the transposed convolution with the same weights."""
    g, x, w = _first(gys, node), node.input[0], node.input[1]
    kernel = _kernel(e, node, w)
    geo = _conv_geometry(e, node, x, node.output[0], kernel)
    gx = e.op(
        "ConvTranspose",
        [g, w],
        group=int(attr(node, "group", 1)),
        kernel_shape=kernel,
        strides=geo.strides,
        dilations=geo.dilations,
        pads=geo.pads,
        output_padding=geo.output_padding,
    )
    return _grads(node, i0=gx)


@rule("ConvTranspose")
def _conv_transpose(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    """The adjoint of a transposed convolution is the plain convolution with the same weights."""
    g, x, w, y = _first(gys, node), node.input[0], node.input[1], node.output[0]
    kernel = _kernel(e, node, w)
    n = len(kernel)
    in_sizes = e.static_dims(x, node, range(2, 2 + n))
    out_sizes = e.static_dims(y, node, range(2, 2 + n))
    strides = [int(s) for s in attr(node, "strides", [1] * n)]
    dilations = [int(d) for d in attr(node, "dilations", [1] * n)]
    out_pad = [int(p) for p in attr(node, "output_padding", [0] * n)]
    begin = _conv_transpose_begin_pads(node, in_sizes, out_sizes, strides, dilations, kernel, out_pad)
    end = []
    for i in range(n):
        span = (kernel[i] - 1) * dilations[i] + 1
        end.append(max(0, strides[i] * (in_sizes[i] - 1) + span - out_sizes[i] - begin[i]))
    if any(b < 0 for b in begin):
        raise unsupported(node, "negative implicit padding (output larger than the full convolution)")
    gx = e.op(
        "Conv",
        [g, w],
        group=int(attr(node, "group", 1)),
        kernel_shape=kernel,
        strides=strides,
        dilations=dilations,
        pads=begin + end,
    )
    return _grads(node, i0=gx)


def _conv_transpose_begin_pads(
    node: NodeProto,
    in_sizes: list[int],
    out_sizes: list[int],
    strides: list[int],
    dilations: list[int],
    kernel: list[int],
    out_pad: list[int],
) -> list[int]:
    """Leading crop of the full transposed convolution, per the ONNX ConvTranspose spec."""
    n = len(kernel)
    auto_pad = attr(node, "auto_pad", "NOTSET")
    if attr(node, "output_shape") is None and auto_pad in ("NOTSET", "VALID"):
        pads = attr(node, "pads", [0] * (2 * n)) if auto_pad == "NOTSET" else [0] * (2 * n)
        return [int(p) for p in pads[:n]]
    begin = []
    for i in range(n):
        span = (kernel[i] - 1) * dilations[i] + 1
        total = strides[i] * (in_sizes[i] - 1) + out_pad[i] + span - out_sizes[i]
        begin.append(total // 2 if auto_pad == "SAME_UPPER" else total - total // 2)
    return begin


# ---------------------------------------------------------------------------------------------------------
# Normalizations
# ---------------------------------------------------------------------------------------------------------


def _normalize_backward(e: Emitter, x: str, g: str, axes: list[int], eps: float) -> str:
    """Gradient of (x − μ)/σ over ``axes`` given the upstream gradient ``g`` of the normalized tensor."""
    mean = e.reduce("ReduceMean", x, axes, keepdims=True)
    centred = e.sub(x, mean)
    var = e.reduce("ReduceMean", e.mul(centred, centred), axes, keepdims=True)
    inv_std = e.op("Reciprocal", [e.op("Sqrt", [e.add(var, e.const(eps, x))])])
    xhat = e.mul(centred, inv_std)
    g_mean = e.reduce("ReduceMean", g, axes, keepdims=True)
    proj = e.reduce("ReduceMean", e.mul(g, xhat), axes, keepdims=True)
    return e.mul(inv_std, e.sub(e.sub(g, g_mean), e.mul(xhat, proj)))


def _per_channel(e: Emitter, v: str, rank: int) -> str:
    """(C,) → (C, 1, …, 1) so it broadcasts along axis 1 of an N×C×… tensor."""
    return e.unsqueeze(v, list(range(1, rank - 1)))


@rule("BatchNormalization")
def _batch_norm(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    """Inference batch norm is a per-channel affine map: scale / sqrt(var + eps)."""
    if attr(node, "training_mode", 0):
        raise unsupported(node, "training_mode=1 (batch statistics)")
    g, (x, scale, _bias, _mean, var) = _first(gys, node), node.input[:5]
    rank = e.rank(x, node)
    eps = e.const(float(attr(node, "epsilon", 1e-5)), x)
    factor = e.div(scale, e.op("Sqrt", [e.add(var, eps)]))
    return _grads(node, i0=e.mul(g, _per_channel(e, factor, rank)))


@rule("InstanceNormalization")
def _instance_norm(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    g, (x, scale) = _first(gys, node), node.input[:2]
    rank = e.rank(x, node)
    g = e.mul(g, _per_channel(e, scale, rank))
    eps = float(attr(node, "epsilon", 1e-5))
    return _grads(node, i0=_normalize_backward(e, x, g, list(range(2, rank)), eps))


@rule("LayerNormalization")
def _layer_norm(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    g, (x, scale) = _first(gys, node), node.input[:2]
    rank = e.rank(x, node)
    axis = _norm_axis(int(attr(node, "axis", -1)), rank)
    eps = float(attr(node, "epsilon", 1e-5))
    return _grads(node, i0=_normalize_backward(e, x, e.mul(g, scale), list(range(axis, rank)), eps))


@rule("GroupNormalization")
def _group_norm(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    """Scale/bias are per group in opset 18–20 and per channel from opset 21."""
    g, (x, scale) = _first(gys, node), node.input[:2]
    rank = e.rank(x, node)
    groups = int(attr(node, "num_groups"))
    eps = float(attr(node, "epsilon", 1e-5))
    grouped_shape = e.ints([0, groups, -1])
    if e.opset >= 21:
        g = e.op("Reshape", [e.mul(g, _per_channel(e, scale, rank)), grouped_shape])
    else:
        g = e.mul(e.op("Reshape", [g, grouped_shape]), e.unsqueeze(scale, [1]))
    xg = e.op("Reshape", [x, grouped_shape])
    return _grads(node, i0=e.reshape_like(_normalize_backward(e, xg, g, [2], eps), x))


# ---------------------------------------------------------------------------------------------------------
# Resize
# ---------------------------------------------------------------------------------------------------------


@rule("Resize")
def _resize(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    """Resize is linear and separable: transpose each axis' interpolation matrix (integer nearest: sum-pool)."""
    g, x, y = _first(gys, node), node.input[0], node.output[0]
    rank = e.rank(x, node)
    matrices = _resize_matrices(e, node, rank)
    if not matrices:
        return _grads(node, i0=g)
    if attr(node, "mode", "nearest") == "nearest":
        folded = _sum_pool_repeats(e, node, g, x, y, matrices)
        if folded is not None:
            return _grads(node, i0=folded)
    for axis, matrix in matrices.items():
        g = e.apply_along_axis(g, matrix.T, axis, rank, x)
    return _grads(node, i0=g)


def _resize_matrices(e: Emitter, node: NodeProto, rank: int) -> dict[int, np.ndarray]:
    """Per-axis forward interpolation matrices (out × in) of the axes the node actually changes."""
    x, y = node.input[0], node.output[0]
    mode = attr(node, "mode", "nearest")
    transform = attr(node, "coordinate_transformation_mode", "half_pixel")
    if mode not in ("nearest", "linear", "cubic"):
        raise unsupported(node, f"mode {mode!r}")
    if transform == "tf_crop_and_resize":
        raise unsupported(node, "coordinate_transformation_mode 'tf_crop_and_resize'")
    axes = [_norm_axis(int(a), rank) for a in attr(node, "axes", list(range(rank)))]
    scales = _resize_scales(e, node, axes)
    matrices = {}
    for axis, scale in zip(axes, scales, strict=True):
        if scale == 1.0:  # identity in every supported mode (and the batch axis may be dynamic)
            continue
        n_in, n_out = e.static_dims(x, node, [axis])[0], e.static_dims(y, node, [axis])[0]
        if attr(node, "antialias", 0) and scale < 1.0 and mode != "nearest":
            raise unsupported(node, "antialiased downscaling")
        coords = _source_coordinates(transform, n_in, n_out, scale)
        matrix = _interpolation_matrix(node, mode, coords, n_in)
        if not (n_in == n_out and np.array_equal(matrix, np.eye(n_in))):
            matrices[axis] = matrix
    return matrices


def _resize_scales(e: Emitter, node: NodeProto, axes: list[int]) -> list[float]:
    """Scales as ORT uses them in the coordinate transform: given scales, else sizes / input sizes."""
    scales = e.require_const(node, 2, "scales")
    if scales is not None and scales.size:
        return [float(s) for s in scales]
    x = node.input[0]
    in_sizes = e.static_dims(x, node, axes)
    sizes = e.require_const(node, 3, "sizes")
    if sizes is None or not sizes.size:
        raise unsupported(node, "neither scales nor sizes are given")
    ratios = [float(s) / float(n) for s, n in zip(sizes, in_sizes, strict=True)]
    policy = attr(node, "keep_aspect_ratio_policy", "stretch")
    if policy == "not_larger":
        return [min(ratios)] * len(ratios)
    if policy == "not_smaller":
        return [max(ratios)] * len(ratios)
    return ratios


def _source_coordinates(transform: str, n_in: int, n_out: int, scale: float) -> np.ndarray:
    """x_original of every output index, in float32 like ONNX Runtime (matters for nearest ties)."""
    f = np.float32
    out = np.arange(n_out, dtype=f)
    s = f(scale)
    if transform == "align_corners":
        if n_out == 1:
            return np.zeros(1, dtype=f)
        return out * f(n_in - 1) / f(n_out - 1)
    if transform == "asymmetric":
        return out / s
    if transform == "pytorch_half_pixel":
        return (out + f(0.5)) / s - f(0.5) if n_out > 1 else np.zeros(n_out, dtype=f)
    if transform == "half_pixel_symmetric":
        adjustment = f(n_out) / (s * f(n_in))
        offset = f(n_in) / f(2) * (f(1) - adjustment)
        return offset + (out + f(0.5)) / s - f(0.5)
    if transform == "half_pixel":
        return (out + f(0.5)) / s - f(0.5)
    raise ValueError(f"unknown coordinate_transformation_mode {transform!r}")


def _interpolation_matrix(node: NodeProto, mode: str, coords: np.ndarray, n_in: int) -> np.ndarray:
    matrix = np.zeros((coords.size, n_in))
    rows = np.arange(coords.size)
    if mode == "nearest":
        idx = _nearest_index(attr(node, "nearest_mode", "round_prefer_floor"), coords.astype(np.float64))
        matrix[rows, np.clip(idx, 0, n_in - 1)] = 1.0
    elif mode == "linear":
        c = np.clip(coords.astype(np.float64), 0.0, n_in - 1)
        lo = np.floor(c).astype(np.int64)
        hi = np.minimum(lo + 1, n_in - 1)
        frac = c - lo
        np.add.at(matrix, (rows, lo), 1.0 - frac)
        np.add.at(matrix, (rows, hi), frac)
    else:
        _cubic_weights(matrix, coords.astype(np.float64), float(attr(node, "cubic_coeff_a", -0.75)),
                       bool(attr(node, "exclude_outside", 0)))  # fmt: skip
    return matrix


def _nearest_index(nearest_mode: str, c: np.ndarray) -> np.ndarray:
    if nearest_mode == "floor":
        return np.floor(c).astype(np.int64)
    if nearest_mode == "ceil":
        return np.ceil(c).astype(np.int64)
    if nearest_mode == "round_prefer_ceil":
        return np.floor(c + 0.5).astype(np.int64)
    return np.ceil(c - 0.5).astype(np.int64)  # round_prefer_floor


def _cubic_weights(matrix: np.ndarray, coords: np.ndarray, a: float, exclude_outside: bool) -> None:
    """Keys cubic convolution with coefficient ``a``; taps outside clamp to the edge or are dropped."""
    n_in = matrix.shape[1]
    for row, c in enumerate(coords):
        base = math.floor(c)
        t = c - base
        taps = [
            ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
            ((a + 2) * t - (a + 3)) * t * t + 1,
            ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
            ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a,
        ]
        inside = [0 <= base + k < n_in for k in (-1, 0, 1, 2)]
        if exclude_outside:
            total = sum(w for w, ok in zip(taps, inside, strict=True) if ok)
            taps = [w / total if ok else 0.0 for w, ok in zip(taps, inside, strict=True)]
        for k, w in zip((-1, 0, 1, 2), taps, strict=True):
            matrix[row, min(max(base + k, 0), n_in - 1)] += w


def _sum_pool_repeats(
    e: Emitter, node: NodeProto, g: str, x: str, y: str, matrices: dict[int, np.ndarray]
) -> str | None:
    """Integer nearest upsampling repeats each pixel f times: fold (n·f) → (n, f) and sum the f axis."""
    factors = {}
    for axis, matrix in matrices.items():
        n_out, n_in = matrix.shape
        if n_out % n_in or not np.array_equal(matrix.argmax(1), np.arange(n_out) // (n_out // n_in)):
            return None
        factors[axis] = n_out // n_in
    dims = e.dims(y)
    assert dims is not None
    first = min(factors)
    shape: list[int] = []
    for axis, d in enumerate(dims):
        if axis < first:
            shape.append(0)  # Reshape copies these (batch may be dynamic)
        elif d is None or d < 0:
            return None
        elif axis in factors:
            shape += [d // factors[axis], factors[axis]]
        else:
            shape.append(d)
    folded = e.op("Reshape", [g, e.ints(shape)])
    sum_axes = [axis + 1 + k for k, axis in enumerate(sorted(factors))]  # each factor axis follows its axis
    return e.reshape_like(e.reduce("ReduceSum", folded, sum_axes, keepdims=False), x)
