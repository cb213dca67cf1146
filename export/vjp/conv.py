"""VJP rules of the linear layers: MatMul, Gemm, Conv and ConvTranspose.

Each adjoint is the layer's transposed twin with the same weights (MatMul by the transposed partner,
ConvTranspose for Conv and back), so the backward graph runs on the same fast kernels as the forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from onnx import NodeProto

from .emitter import Dim, Emitter, attr
from .errors import unsupported
from .pointwise import to_operand
from .registry import first_grad, grads, rule


def _swap_last(e: Emitter, t: str, rank: int) -> str:
    perm = list(range(rank))
    perm[-1], perm[-2] = perm[-2], perm[-1]
    return e.op("Transpose", [t], perm=perm)


@rule("MatMul", diff_inputs=(0, 1))
def _matmul(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    """Promote 1-D operands to matrices, multiply by the transposed partner, sum broadcast batch dims."""
    g = first_grad(gys, node)
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
    g = first_grad(gys, node)
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
        gc = to_operand(e, g if beta == 1.0 else e.var(g) * e.const(beta, c), node, 2)
    return [ga, gb, gc][: len(node.input)]


@dataclass(frozen=True)
class ConvGeometry:
    """Explicit strides/dilations/pads of a convolution-like node, plus the adjoint's output_padding."""

    strides: list[int]
    dilations: list[int]
    pads: list[int]
    output_padding: list[int]

    def adjoint_attrs(self) -> dict[str, Any]:
        """The geometry attributes of the ConvTranspose that is this convolution's adjoint."""
        return {"strides": self.strides, "dilations": self.dilations, "pads": self.pads,
                "output_padding": self.output_padding}  # fmt: skip


def conv_geometry(e: Emitter, node: NodeProto, x: str, y: str, kernel: list[int]) -> ConvGeometry:
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
    g, x, w = first_grad(gys, node), node.input[0], node.input[1]
    kernel = _kernel(e, node, w)
    geo = conv_geometry(e, node, x, node.output[0], kernel)
    gx = e.op(
        "ConvTranspose",
        [g, w],
        group=int(attr(node, "group", 1)),
        kernel_shape=kernel,
        **geo.adjoint_attrs(),
    )
    return grads(node, i0=gx)


@rule("ConvTranspose")
def _conv_transpose(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    """The adjoint of a transposed convolution is the plain convolution with the same weights."""
    g, x, w, y = first_grad(gys, node), node.input[0], node.input[1], node.output[0]
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
    return grads(node, i0=gx)


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


#
