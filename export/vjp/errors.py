"""The one error of the gradient pass: which node of the user's graph cannot be differentiated, and what to do.

A message names the op and the node, the node's path from the latent input (so the user finds it in their
model), a fix, and, when the op has no rule at all, the supported ops nearest to it first.
"""

from __future__ import annotations

from collections.abc import Sequence

from onnx import NodeProto

NO_RULE_FIX = "rewrite that part of the model with supported ops, or add a rule in genorigin/export/vjp/"
SHAPE_FIX = (
    "re-export the model with static non-batch shapes (torch.onnx.export(..., dynamo=True)), or fold its shape "
    "computations first (e.g. onnxsim)"
)
VARIANT_FIX = "re-export the model without this variant of the op"


class UnsupportedOpError(ValueError):
    """A node on the differentiable path has no VJP rule (or a variant the rule cannot handle)."""

    def __init__(
        self,
        op_type: str,
        node_name: str,
        detail: str = "",
        *,
        fix: str = VARIANT_FIX,
        supported: Sequence[str] = (),
    ) -> None:
        super().__init__(op_type, node_name, detail)
        self.op_type = op_type
        self.node_name = node_name
        self.detail = detail
        self.fix = fix
        self.supported = list(supported)
        self.path: list[str] = []

    def __str__(self) -> str:
        head = "no VJP rule for" if self.supported else "cannot differentiate"
        what = f"{head} ONNX op {self.op_type!r} (node {self.node_name!r})"
        parts = [f"{what}: {self.detail}" if self.detail else what]
        if self.path:
            parts.append(f"path from the latent: {' → '.join(self.path)}")
        parts.append(f"fix: {self.fix}")
        if self.supported:
            parts.append(f"supported ops, nearest first: {', '.join(self.supported)}")
        return "; ".join(parts)

    def with_path(self, path: Sequence[str]) -> UnsupportedOpError:
        """Attach the node's path from the latent (known only to the graph walker, not to the rule)."""
        self.path = list(path)
        return self


def node_label(node: NodeProto) -> str:
    """A node's name, or a stable description for third-party graphs whose nodes are unnamed."""
    return node.name or f"<unnamed {node.op_type} -> {node.output[0] if node.output else '?'}>"


def op_label(node: NodeProto) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"


def unsupported(node: NodeProto, detail: str, fix: str = VARIANT_FIX) -> UnsupportedOpError:
    return UnsupportedOpError(op_label(node), node_label(node), detail, fix=fix)
