"""VJP rules of elementwise ops, as tables: one derivative per line, written as the formula.

Unary ops map (g, x, y, attribute) to the input gradient; binary ops give one function per operand,
(g, a, b, y) → the operand's gradient before it is summed back over broadcast axes (JAX's ``defjvp``
style). Each ``+ - * /`` emits one node, so every line is also the exact graph that is emitted.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from onnx import NodeProto

from .emitter import Emitter, Var, attr, where
from .registry import first_grad, grads, rule

Attr = Callable[[str, Any], Any]
UnaryVjp = Callable[[Var, Var, Var, Attr], Var]
OperandVjp = Callable[[Var, Var, Var, Var], Var]

_SELU_ALPHA, _SELU_GAMMA = 1.67326319217681884765625, 1.05070102214813232421875


def _selu(g: Var, x: Var, y: Var, a: Attr) -> Var:
    """For x ≤ 0 the slope is γ·α·eˣ = y + γα."""
    alpha, gamma = float(a("alpha", _SELU_ALPHA)), float(a("gamma", _SELU_GAMMA))
    return g * where(x.gt(0.0), gamma, y + gamma * alpha)


def _hard_sigmoid_band(x: Var, alpha: float, beta: float) -> tuple[Var, Var]:
    """(αx + β, whether it lies strictly inside (0, 1), where the slope is α)."""
    v = x * alpha + beta
    return v, v.gt(0.0).apply("And", v.lt(1.0))


def _hard_sigmoid(g: Var, x: Var, y: Var, a: Attr) -> Var:
    alpha, beta = float(a("alpha", 0.2)), float(a("beta", 0.5))
    _, inside = _hard_sigmoid_band(x, alpha, beta)
    return g * where(inside, alpha, 0.0, like=x)


def _hard_swish(g: Var, x: Var, y: Var, a: Attr) -> Var:
    """HardSwish = x·HardSigmoid(x) with α = 1/6, β = 1/2: slope 2αx + β in the band, 1 above it."""
    alpha, beta = 1.0 / 6.0, 0.5
    v, inside = _hard_sigmoid_band(x, alpha, beta)
    band = x * (2.0 * alpha) + beta
    above = v.ge(1.0)
    return g * where(inside, band, where(above, 1.0, 0.0, like=x))


def _mish(g: Var, x: Var, y: Var, a: Attr) -> Var:
    """d/dx x·tanh(softplus x) = tanh(sp) + x·(1 − tanh²(sp))·σ(x)."""
    t = x.apply("Softplus").apply("Tanh")
    return g * (t + x * ((1 - t * t) * x.apply("Sigmoid")))


def _gelu(g: Var, x: Var, y: Var, a: Attr) -> Var:
    if a("approximate", "none") == "tanh":
        k, c = math.sqrt(2.0 / math.pi), 0.044715
        x2 = x * x
        t = ((x * (1 + x2 * c)) * k).apply("Tanh")
        d_inner = (1 + x2 * (3.0 * c)) * k
        return g * (0.5 * (1 + t) + (0.5 * x) * ((1 - t * t) * d_inner))
    cdf = 0.5 * (1 + (x * (1.0 / math.sqrt(2.0))).apply("Erf"))
    pdf = ((x * x) * -0.5).apply("Exp") * (1.0 / math.sqrt(2 * math.pi))
    return g * (cdf + x * pdf)


UNARY_VJPS: dict[str, UnaryVjp] = {
    "Relu": lambda g, x, y, a: where(y.gt(0.0), g, 0.0, like=y),
    "LeakyRelu": lambda g, x, y, a: where(x.gt(0.0), g, g * float(a("alpha", 0.01))),
    "Elu": lambda g, x, y, a: g * where(x.gt(0.0), 1.0, y + float(a("alpha", 1.0))),
    "Celu": lambda g, x, y, a: g * where(x.gt(0.0), 1.0, y * (1.0 / float(a("alpha", 1.0))) + 1),
    "Selu": _selu,
    "Tanh": lambda g, x, y, a: g * (1 - y * y),
    "Sigmoid": lambda g, x, y, a: g * (y * (1 - y)),
    "HardSigmoid": _hard_sigmoid,
    "HardSwish": _hard_swish,
    "Softplus": lambda g, x, y, a: g * x.apply("Sigmoid"),
    "Softsign": lambda g, x, y, a: g * (1 + x.apply("Abs")).square().apply("Reciprocal"),
    "Mish": _mish,
    "Exp": lambda g, x, y, a: g * y,
    "Log": lambda g, x, y, a: g / x,
    "Sqrt": lambda g, x, y, a: g / (y * 2),
    "Reciprocal": lambda g, x, y, a: g * -(y * y),
    "Neg": lambda g, x, y, a: -g,
    "Abs": lambda g, x, y, a: g * x.apply("Sign"),
    "Sin": lambda g, x, y, a: g * x.apply("Cos"),
    "Cos": lambda g, x, y, a: g * -x.apply("Sin"),
    "Erf": lambda g, x, y, a: g * ((-(x * x)).apply("Exp") * (2.0 / math.sqrt(math.pi))),
    "Gelu": _gelu,
}


@rule(*UNARY_VJPS)
def _unary(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    g, x, y = e.var(first_grad(gys, node)), e.var(node.input[0]), e.var(node.output[0])
    return grads(node, i0=UNARY_VJPS[node.op_type](g, x, y, lambda name, default: attr(node, name, default)))


@rule("PRelu")
def _prelu(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    g, x = e.var(first_grad(gys, node)), e.var(node.input[0])
    return grads(node, i0=where(x.gt(0.0), g, g * node.input[1]))


# ---------------------------------------------------------------------------------------------------------
# Binary and variadic ops (numpy broadcasting)
# ---------------------------------------------------------------------------------------------------------


def _pow_base(g: Var, a: Var, p: Var, y: Var) -> Var:
    exponent = p if a.emitter.elem_type(p) == a.emitter.elem_type(a) else p.apply("Cast", to=a.emitter.elem_type(a))
    return g * (exponent * a.apply("Pow", exponent - 1))


BINARY_VJPS: dict[str, tuple[OperandVjp, OperandVjp]] = {
    "Add": (lambda g, a, b, y: g, lambda g, a, b, y: g),
    "Sub": (lambda g, a, b, y: g, lambda g, a, b, y: -g),
    "Mul": (lambda g, a, b, y: g * b, lambda g, a, b, y: g * a),
    "Div": (lambda g, a, b, y: g / b, lambda g, a, b, y: -(g * y / b)),  # d(a/b)/db = -y/b
    "Pow": (_pow_base, lambda g, a, p, y: g * (y * a.apply("Log"))),
}


def to_operand(e: Emitter, g: str, node: NodeProto, index: int) -> str:
    """Sum a broadcast gradient back to the shape of input ``index``.

    When every other input is a scalar the output has this input's shape, so no rank is needed: graphs whose
    shapes inference cannot follow (third-party exports) still get genorigin's output scaling differentiated.
    """
    others = [name for i, name in enumerate(node.input) if i != index and name]
    if others and all(e.dims(name) == () for name in others):
        return g
    return e.unbroadcast(g, e.dims(node.output[0]), node.input[index], node)


@rule(*BINARY_VJPS, diff_inputs=(0, 1))
def _binary(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    g = e.var(first_grad(gys, node))
    a, b, y = (e.var(name) for name in (*node.input, node.output[0]))
    return [
        to_operand(e, vjp(g, a, b, y), node, i) if e.needs(name) else None
        for i, (name, vjp) in enumerate(zip(node.input, BINARY_VJPS[node.op_type], strict=True))
    ]


@rule("Sum", "Mean", diff_inputs=None)
def _sum_mean(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    g = e.var(first_grad(gys, node))
    if node.op_type == "Mean":
        g = g * e.const(1.0 / len(node.input), node.output[0])
    return [to_operand(e, g, node, i) if e.needs(name) else None for i, name in enumerate(node.input)]


@rule("Max", "Min", diff_inputs=None)
def _max_min(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    """Ties share the gradient equally, as torch.maximum/minimum do."""
    g = e.var(first_grad(gys, node))
    y = node.output[0]
    hits = [e.op("Equal", [name, y]) for name in node.input]
    share = g / e.op("Sum", [e.op("Cast", [h], to=e.elem_type(y)) for h in hits])
    return [
        to_operand(e, e.where_pos(h, share, y), node, i) if e.needs(name) else None
        for i, (name, h) in enumerate(zip(node.input, hits, strict=True))
    ]


@rule("Where", diff_inputs=(1, 2))
def _where(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    g = e.var(first_grad(gys, node))
    cond, a, b = (e.var(name) for name in node.input)
    zero = e.const(0.0, node.output[0])
    ga = to_operand(e, where(cond, g, zero), node, 1) if e.needs(a) else None
    gb = to_operand(e, where(cond, zero, g), node, 2) if e.needs(b) else None
    return [None, ga, gb]


@rule("Clip")
def _clip(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    """Gradient passes where min ≤ x ≤ max (boundaries included, as in torch.clamp)."""
    g, x = first_grad(gys, node), e.var(node.input[0])
    low, high = (node.input[i] if i < len(node.input) else "" for i in (1, 2))
    if not low and attr(node, "min") is not None:  # opset < 11 keeps the bounds in attributes
        low = e.const(float(attr(node, "min")), x)
    if not high and attr(node, "max") is not None:
        high = e.const(float(attr(node, "max")), x)
    masks = [x.ge(low)] if low else []
    masks += [x.le(high)] if high else []
    if not masks:
        return grads(node, i0=g)
    mask = masks[0] if len(masks) == 1 else masks[0].apply("And", masks[1])
    return grads(node, i0=e.where_pos(mask, g, x))
