"""Which ONNX ops have a VJP rule, which never carry a gradient, and the decorator that registers a rule.

Registration is kept apart from the rules (shape, pointwise, reduce, conv, norm, resize modules) so that the
table is one place to read, and an op can be registered only once: a second rule for the same op would
silently replace the first, which is how a wrong gradient goes unnoticed.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

from onnx import NodeProto

from .emitter import Emitter
from .errors import unsupported

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


class DuplicateRuleError(ValueError):
    """An op was registered twice (or registered although it never carries a gradient)."""


def rule(
    *op_types: str, diff_inputs: tuple[int, ...] | None = (0,), inert_inputs: tuple[int, ...] = ()
) -> Callable[[RuleFn], RuleFn]:
    """Register ``fn`` as the VJP rule of ``op_types``; raises if any of them already has one."""

    def register(fn: RuleFn) -> RuleFn:
        for op_type in op_types:
            if op_type in RULES:
                owner = RULES[op_type].fn.__qualname__
                raise DuplicateRuleError(f"ONNX op {op_type!r} already has a VJP rule ({owner})")
            if op_type in NONDIFF_OPS:
                raise DuplicateRuleError(f"ONNX op {op_type!r} is listed as never carrying a gradient")
        for op_type in op_types:
            RULES[op_type] = Rule(fn, diff_inputs, inert_inputs)
        return fn

    return register


def supported_ops() -> list[str]:
    """Op types with a VJP rule (ops in the default ONNX domain)."""
    return sorted(RULES)


def nearest_supported(op_type: str) -> list[str]:
    """Every supported op, the most similar names to ``op_type`` first (for error messages)."""
    ops = supported_ops()
    return difflib.get_close_matches(op_type, ops, n=len(ops), cutoff=0.0)


def grads(node: NodeProto, **by_index: str | None) -> list[str | None]:
    """One gradient slot per input of ``node``: ``grads(node, i0=g)`` sets input 0's."""
    out: list[str | None] = [None] * len(node.input)
    for key, value in by_index.items():
        out[int(key[1:])] = value
    return out


def first_grad(gys: list[str | None], node: NodeProto) -> str:
    """The gradient of output 0, for rules of single-output ops (secondary outputs must be unused)."""
    if gys[0] is None:
        raise unsupported(node, "only gradients through output 0 are supported")
    if any(g is not None for g in gys[1:]):
        raise unsupported(node, "gradients through its secondary outputs are not supported")
    return gys[0]
