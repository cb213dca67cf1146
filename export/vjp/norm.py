"""VJP rules of the normalization layers (batch, instance, layer and group norm).

Inference batch norm is a per-channel affine map; the others normalise by statistics of the input itself,
whose gradient is the one closed form :func:`_normalize_backward`.
"""

from __future__ import annotations

from onnx import NodeProto

from .emitter import Emitter, Var, attr, norm_axis
from .errors import unsupported
from .registry import first_grad, grads, rule


def _normalize_backward(e: Emitter, x: str, g: str, axes: list[int], eps: float) -> Var:
    """Gradient of (x − μ)/σ over ``axes`` given the upstream gradient ``g`` of the normalized tensor."""
    x, g = e.var(x), e.var(g)
    centred = x - e.reduce("ReduceMean", x, axes, keepdims=True)
    var = e.reduce("ReduceMean", centred * centred, axes, keepdims=True)
    inv_std = (var + e.const(eps, x)).apply("Sqrt").apply("Reciprocal")
    xhat = centred * inv_std
    g_mean = e.reduce("ReduceMean", g, axes, keepdims=True)
    proj = e.reduce("ReduceMean", g * xhat, axes, keepdims=True)
    return inv_std * ((g - g_mean) - xhat * proj)


def _per_channel(e: Emitter, v: str, rank: int) -> Var:
    """(C,) → (C, 1, …, 1) so it broadcasts along axis 1 of an N×C×… tensor."""
    return e.unsqueeze(v, list(range(1, rank - 1)))


@rule("BatchNormalization")
def _batch_norm(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    """Inference batch norm is a per-channel affine map: scale / sqrt(var + eps)."""
    if attr(node, "training_mode", 0):
        raise unsupported(node, "training_mode=1 (batch statistics)")
    g, (x, scale, _bias, _mean, var) = e.var(first_grad(gys, node)), node.input[:5]
    rank = e.rank(x, node)
    eps = e.const(float(attr(node, "epsilon", 1e-5)), x)
    factor = e.var(scale) / (e.var(var) + eps).apply("Sqrt")
    return grads(node, i0=g * _per_channel(e, factor, rank))


@rule("InstanceNormalization")
def _instance_norm(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    g, (x, scale) = e.var(first_grad(gys, node)), node.input[:2]
    rank = e.rank(x, node)
    g = g * _per_channel(e, scale, rank)
    eps = float(attr(node, "epsilon", 1e-5))
    return grads(node, i0=_normalize_backward(e, x, g, list(range(2, rank)), eps))


@rule("LayerNormalization")
def _layer_norm(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    g, (x, scale) = e.var(first_grad(gys, node)), node.input[:2]
    rank = e.rank(x, node)
    axis = norm_axis(int(attr(node, "axis", -1)), rank)
    eps = float(attr(node, "epsilon", 1e-5))
    return grads(node, i0=_normalize_backward(e, x, g * scale, list(range(axis, rank)), eps))


@rule("GroupNormalization")
def _group_norm(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    """Scale/bias are per group in opset 18–20 and per channel from opset 21."""
    g, (x, scale) = e.var(first_grad(gys, node)), node.input[:2]
    rank = e.rank(x, node)
    groups = int(attr(node, "num_groups"))
    eps = float(attr(node, "epsilon", 1e-5))
    grouped_shape = e.ints([0, groups, -1])
    if e.opset >= 21:
        g = e.op("Reshape", [g * _per_channel(e, scale, rank), grouped_shape])
    else:
        g = e.op("Reshape", [g, grouped_shape]) * e.unsqueeze(scale, [1])
    xg = e.op("Reshape", [x, grouped_shape])
    return grads(node, i0=e.reshape_like(_normalize_backward(e, xg, g, [2], eps), x))
