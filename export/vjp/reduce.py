"""VJP rules of reductions, pooling and softmax: the gradient is broadcast back over the reduced axes.

Reduction axes in the backward graph are always constants (static ranks), never computed at run time.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from onnx import NodeProto

from .conv import conv_geometry
from .emitter import Emitter, Var, attr, norm_axis
from .errors import unsupported
from .registry import first_grad, grads, rule

# (gradient expanded to x's shape, x, y) → input gradient; ReduceL2's g is divided by y before expanding.
_REDUCE_VJPS: dict[str, Callable[[Var, Var, Var], Var]] = {
    "ReduceSum": lambda full, x, y: full,
    "ReduceMean": lambda full, x, y: full / _count_ratio(x, y),
    "ReduceSumSquare": lambda full, x, y: full * (x * 2.0),
    "ReduceL2": lambda full, x, y: full * x,
    "ReduceL1": lambda full, x, y: full * x.apply("Sign"),
}


def _reduce_axes(e: Emitter, node: NodeProto, rank: int) -> list[int] | None:
    """Normalized reduction axes; ``None`` when the node reduces nothing (noop_with_empty_axes)."""
    value = attr(node, "axes")
    if value is None and len(node.input) > 1 and node.input[1]:
        value = e.require_const(node, 1, "axes")
    axes = [norm_axis(int(a), rank) for a in (value if value is not None else [])]
    if not axes:
        return None if attr(node, "noop_with_empty_axes", 0) else list(range(rank))
    return sorted(axes)


def _expand_back(e: Emitter, node: NodeProto, g: str) -> Var | None:
    """Broadcast a reduction's gradient back to the input shape (None for a no-op reduction)."""
    x = node.input[0]
    rank = e.rank(x, node)
    axes = _reduce_axes(e, node, rank)
    if axes is None:
        return None
    if not attr(node, "keepdims", 1):
        g = e.unsqueeze(g, axes)
    return e.op("Expand", [g, e.shape_of(x)])


def _count_ratio(x: Var, y: Var) -> Var:
    """Elements of ``x`` per element of ``y`` at runtime (a mean's divisor; the batch may be dynamic)."""
    e = x.emitter
    sizes = [e.op("Cast", [e.op("Size", [t])], to=e.elem_type(x)) for t in (x, y)]
    return sizes[0] / sizes[1]


@rule(*_REDUCE_VJPS)
def _reduce(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    g, x, y = (e.var(name) for name in (first_grad(gys, node), node.input[0], node.output[0]))
    if node.op_type == "ReduceL2":  # slope x / y; divide before expanding (fewer elements)
        g = g / y
    full = _expand_back(e, node, g)
    if full is None:
        return grads(node, i0=g)
    return grads(node, i0=_REDUCE_VJPS[node.op_type](full, x, y))


@rule("ReduceMax", "ReduceMin")
def _reduce_extremum(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    """Ties share the gradient equally, as torch.amax/amin do."""
    g, x, y = first_grad(gys, node), node.input[0], node.output[0]
    rank = e.rank(x, node)
    axes = _reduce_axes(e, node, rank)
    if axes is None:
        return grads(node, i0=g)
    if not attr(node, "keepdims", 1):
        g, y = e.unsqueeze(g, axes), e.unsqueeze(y, axes)
    hit = e.op("Equal", [x, y])
    count = e.reduce("ReduceSum", e.op("Cast", [hit], to=e.elem_type(x)), axes, keepdims=True)
    return grads(node, i0=e.where_pos(hit, e.var(g) / count, x))


@rule("GlobalAveragePool")
def _global_average_pool(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    g, x, y = (e.var(name) for name in (first_grad(gys, node), node.input[0], node.output[0]))
    return grads(node, i0=e.op("Expand", [g / _count_ratio(x, y), e.shape_of(x)]))


@rule("AveragePool")
def _average_pool(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    """A depthwise convolution with a constant kernel: its adjoint is the matching ConvTranspose."""
    g, x = first_grad(gys, node), node.input[0]
    kernel = [int(k) for k in attr(node, "kernel_shape")]
    geometry = conv_geometry(e, node, x, node.output[0], kernel)
    if attr(node, "ceil_mode", 0) or (any(geometry.pads) and not attr(node, "count_include_pad", 0)):
        raise unsupported(node, "ceil_mode or count_include_pad=0 with padding (non-uniform divisor)")
    (channels,) = e.static_dims(x, node, [1])
    weight = np.full([channels, 1, *kernel], 1.0 / float(np.prod(kernel)))
    gx = e.op("ConvTranspose", [g, e.const(weight, x)], group=channels, kernel_shape=kernel, **geometry.adjoint_attrs())
    return grads(node, i0=gx)


@rule("Softmax")
def _softmax(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    g, y = e.var(first_grad(gys, node)), e.var(node.output[0])
    dot = e.reduce("ReduceSum", g * y, [int(attr(node, "axis", -1))], keepdims=True)
    return grads(node, i0=y * (g - dot))


@rule("LogSoftmax")
def _log_softmax(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    g, y = e.var(first_grad(gys, node)), e.var(node.output[0])
    total = e.reduce("ReduceSum", g, [int(attr(node, "axis", -1))], keepdims=True)
    return grads(node, i0=g - y.apply("Exp") * total)
