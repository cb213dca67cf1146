"""The Emitter appends gradient nodes to the backward graph and knows the forward graph's static facts.

Rules talk to it through :class:`Var`, an emitted tensor name with ``+ - * /`` so that a derivative reads
like the formula it implements (``g * (1 - y * y)``); every operator emits exactly one ONNX node, in the
order Python evaluates the expression, and Python numbers become constants of the other operand's type.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from onnx import NodeProto, TensorProto, helper, numpy_helper

from .errors import SHAPE_FIX, unsupported

Dim = int | None
# Marks a dimension that changes with the batch size: known not to be a constant 1 (so never broadcast).
DYN = -1
INT64_MAX = np.iinfo(np.int64).max
FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16})
_BOOL_RESULT = frozenset({"Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Not"})

Operand = str | float


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


def norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


class Var(str):
    """The name of an emitted tensor, with arithmetic that emits nodes (a thin wrapper: it *is* the name)."""

    emitter: Emitter

    def __new__(cls, name: str, emitter: Emitter) -> Var:
        var = super().__new__(cls, name)
        var.emitter = emitter
        return var

    def apply(self, op_type: str, *others: Operand, **attrs: Any) -> Var:
        """``op_type(self, *others)``: the unary/binary ONNX functions the operators do not cover."""
        e = self.emitter
        return e.op(op_type, [self, *(e.operand(o, self) for o in others)], **attrs)

    def _binary(self, op_type: str, other: Operand, swap: bool = False) -> Var:
        other_name = self.emitter.operand(other, self)
        return self.emitter.op(op_type, [other_name, self] if swap else [self, other_name])

    def __add__(self, other: Operand) -> Var:  # type: ignore[override]
        return self._binary("Add", other)

    def __radd__(self, other: Operand) -> Var:
        return self._binary("Add", other, swap=True)

    def __sub__(self, other: Operand) -> Var:
        return self._binary("Sub", other)

    def __rsub__(self, other: Operand) -> Var:
        return self._binary("Sub", other, swap=True)

    def __mul__(self, other: Operand) -> Var:  # type: ignore[override]
        return self._binary("Mul", other)

    def __rmul__(self, other: Operand) -> Var:  # type: ignore[override]
        return self._binary("Mul", other, swap=True)

    def __truediv__(self, other: Operand) -> Var:
        return self._binary("Div", other)

    def __rtruediv__(self, other: Operand) -> Var:
        return self._binary("Div", other, swap=True)

    def __neg__(self) -> Var:
        return self.emitter.op("Neg", [self])

    def square(self) -> Var:
        return self * self

    # comparisons are methods, not operators: names are sorted and compared as strings elsewhere
    def gt(self, other: Operand) -> Var:
        return self._binary("Greater", other)

    def ge(self, other: Operand) -> Var:
        return self._binary("GreaterOrEqual", other)

    def lt(self, other: Operand) -> Var:
        return self._binary("Less", other)

    def le(self, other: Operand) -> Var:
        return self._binary("LessOrEqual", other)


def where(cond: Var, a: Operand, b: Operand, like: str | None = None) -> Var:
    """``a`` where ``cond`` holds, else ``b``; numbers take the type of the other branch (or of ``like``)."""
    e = cond.emitter
    like = like or (a if isinstance(a, str) else b if isinstance(b, str) else None)
    if like is None:
        raise TypeError("where() with two numbers needs like= for their type")
    return e.op("Where", [cond, e.operand(a, like), e.operand(b, like)])


class Emitter:
    """Appends gradient nodes and constants; answers static shape, dtype and constant-value queries."""

    def __init__(
        self,
        opset: int,
        types: dict[str, int],
        dims: dict[str, tuple[Dim, ...] | None],
        consts: Any,
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
        self._shape_cache: dict[str, Var] = {}
        self._scalar_cache: dict[tuple[float, int], Var] = {}

    # -- naming and emission ----------------------------------------------------------------------------

    def fresh(self, hint: str) -> str:
        """A tensor/node name unused anywhere in the graph (third-party graphs may use any names)."""
        while True:
            self._counter += 1
            name = f"{self.prefix}/{hint}_{self._counter}"
            if name not in self.taken:
                self.taken.add(name)
                return name

    def var(self, name: str) -> Var:
        return name if isinstance(name, Var) else Var(name, self)

    def op(self, op_type: str, inputs: Sequence[str], n_out: int = 1, **attrs: Any) -> Any:
        """Emit one node; returns its output :class:`Var` (or the list of them when ``n_out > 1``)."""
        outs = [Var(self.fresh(op_type.lower()), self) for _ in range(n_out)]
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
        if op_type in ("Shape", "Size"):
            return TensorProto.INT64
        if op_type in _BOOL_RESULT:
            return TensorProto.BOOL
        if op_type == "ConstantOfShape":
            return int(attrs["value"].data_type)
        source = inputs[1] if op_type == "Where" else (inputs[0] if inputs else "")
        return self.types.get(source, 0)

    def operand(self, value: Operand, like: str) -> str:
        """A tensor name as is; a number as a constant of ``like``'s type."""
        return value if isinstance(value, str) else self.const(value, like)

    def const(self, value: Any, like: str | int) -> Var:
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

    def ints(self, values: Sequence[int]) -> Var:
        return self._initializer(np.asarray(list(values), dtype=np.int64), "ints")

    def _initializer(self, array: np.ndarray, hint: str) -> Var:
        name = Var(self.fresh(hint), self)
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
            raise unsupported(node, f"the rank of {name!r} is unknown (shape inference failed)", SHAPE_FIX)
        return len(dims)

    def static_dims(self, name: str, node: NodeProto, axes: Sequence[int] | None = None) -> list[int]:
        """Static sizes of ``axes`` of ``name`` (all axes by default); raises if any is dynamic/unknown."""
        dims = self.dims(name)
        if dims is None:
            raise unsupported(node, f"the shape of {name!r} is unknown (shape inference failed)", SHAPE_FIX)
        picked = range(len(dims)) if axes is None else axes
        out = [dims[a] for a in picked]
        if any(d is None or d < 0 for d in out):
            raise unsupported(node, f"needs static sizes of axes {list(picked)} of {name!r}, got {dims}", SHAPE_FIX)
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

    def shape_of(self, name: str) -> Var:
        if name not in self._shape_cache:
            self._shape_cache[name] = self.op("Shape", [name])
        return self._shape_cache[name]

    def reshape_like(self, g: str, like: str) -> Var:
        return self.op("Reshape", [g, self.shape_of(like)])

    def zeros_like(self, like: str) -> Var:
        zero = helper.make_tensor("value", self.elem_type(like), [1], [0])
        return self.op("ConstantOfShape", [self.shape_of(like)], value=zero)

    def where_pos(self, cond: str, g: str, like: str) -> Var:
        """``g`` where ``cond`` holds, else 0 (used by every masking rule)."""
        return self.op("Where", [cond, g, self.const(0.0, like)])

    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: bool) -> Var:
        """Reduce over static ``axes``; axes moved from attribute to input in opset 13 (Sum) / 18 (others)."""
        if not axes:
            return self.var(x)
        as_input = op_type == "ReduceSum" or self.opset >= 18
        if as_input:
            return self.op(op_type, [x, self.ints(axes)], keepdims=int(keepdims))
        return self.op(op_type, [x], axes=list(axes), keepdims=int(keepdims))

    def unsqueeze(self, x: str, axes: Sequence[int]) -> Var:
        return self.op("Unsqueeze", [x, self.ints(axes)]) if axes else self.var(x)

    def unbroadcast(self, g: str, g_dims: Sequence[Dim] | None, x: str, node: NodeProto) -> Var:
        """Sum ``g`` (shaped ``g_dims``, the broadcast result) down to the shape of operand ``x``.

        Reduction axes are always constants: where a size of ``x`` is unknown statically, the axis is summed
        and the sum kept only if ``x`` has size 1 there at run time (no NonZero, no run-time axes, which
        TensorRT may refuse and which block CUDA-graph capture).
        """
        x_dims = self.dims(x)
        if g_dims is None or x_dims is None:
            raise unsupported(node, f"broadcasting needs the ranks of {x!r} and of the node's output", SHAPE_FIX)
        lead = len(g_dims) - len(x_dims)
        if lead < 0:
            raise unsupported(node, f"operand {x!r} has a higher rank than the output")
        g = self.reduce("ReduceSum", g, list(range(lead)), keepdims=False)
        axes: list[int] = []
        unknown: list[int] = []
        for i, dx in enumerate(x_dims):
            dy = g_dims[lead + i]
            if dx == 1 and dy != 1:
                axes.append(i)
            elif dx is None and dy != 1:
                unknown.append(i)
        g = self.reduce("ReduceSum", g, axes, keepdims=True)
        return self._unbroadcast_unknown(g, x, unknown) if unknown else g

    def _unbroadcast_unknown(self, g: Var, x: str, axes: list[int]) -> Var:
        """Axes whose size in ``x`` is unknown: sum where it is 1 at run time, then crop to ``x``'s shape."""
        x_shape = self.shape_of(x)
        for axis in axes:
            size = self.op("Gather", [x_shape, self.ints([axis])], axis=0)
            is_one = self.op("Equal", [size, self.ints([1])])
            g = self.op("Where", [is_one, self.reduce("ReduceSum", g, [axis], keepdims=True), g])
        zeros = self.ints([0] * len(axes))
        ends = self.op("Gather", [x_shape, self.ints(axes)], axis=0)
        return self.op("Slice", [g, zeros, ends, self.ints(axes)])

    def apply_along_axis(self, t: str, matrix: np.ndarray, axis: int, rank: int, like: str) -> Var:
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
