"""Vector-Jacobian product rules for ONNX operators, emitted as standard ONNX nodes.

Each rule receives the forward node and the gradients of its outputs (``None`` where an output carries no
gradient) and returns one gradient tensor name per input (``None`` where not needed). Rules emit nodes
through :class:`Emitter`, which knows the static shapes and constant values of the forward graph, so the
gradient graph uses only standard ops of the forward model's opset and runs on ORT CPU/CUDA and TensorRT.

Where things are: ``registry`` (the ``@rule`` decorator, ``RULES``, ``NONDIFF_OPS``), ``emitter`` (nodes,
constants, static shapes, the ``Var`` arithmetic), and the rules by kind: ``shape``, ``pointwise``,
``reduce``, ``conv``, ``norm``, ``resize``. Importing this package registers every rule.
"""

from . import conv, norm, pointwise, reduce, resize, shape  # noqa: F401  (registers the rules)
from .emitter import DYN, FLOAT_TYPES, Dim, Emitter, Var
from .errors import UnsupportedOpError, node_label, op_label
from .registry import NONDIFF_OPS, RULES, DuplicateRuleError, Rule, nearest_supported, rule, supported_ops

__all__ = [
    "DYN",
    "FLOAT_TYPES",
    "NONDIFF_OPS",
    "RULES",
    "Dim",
    "DuplicateRuleError",
    "Emitter",
    "Rule",
    "UnsupportedOpError",
    "Var",
    "nearest_supported",
    "node_label",
    "op_label",
    "rule",
    "supported_ops",
]
