"""IEEE fp32 or TF32 for torch's CUDA convolutions and matmuls while a backend picks and captures kernels.

PyTorch lets cuDNN convolutions use TF32 by default (10 mantissa bits: ~1e-3 relative error), unlike the CPU
reference. The flags are read when an op is launched, so setting them around warm-up and capture fixes the
captured kernels.

torch ≥ 2.9 keeps two views of one state and checks them against each other: the ``fp32_precision`` tree
(global → cuda → matmul/conv/rnn, global → mkldnn → ...; a node set to "none" inherits from its parent, and
the getters return the inherited value) and the private legacy values behind ``cudnn.allow_tf32``,
``cuda.matmul.allow_tf32`` and ``get_float32_matmul_precision()``. A legacy getter raises ("a mix of the
legacy and new APIs") whenever the tree disagrees with the legacy values, and only the legacy setters write
those. So ``fp32_math`` sets the legacy values through their setters and then every CUDA node of the tree
explicitly (cuda, matmul, conv, rnn): both views agree, every getter is readable inside, and a global
``torch.backends.fp32_precision`` cannot leak in through a "none". On exit it puts back the legacy values
(reconstructed, when torch refused to show them, as the ones that make the same getters refuse) and then the
nodes it wrote, as "none" wherever a node's value is its parent's, so inheritance survives.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

# tree node (path under torch.backends) → its parent, parents first
TREE: dict[str, str | None] = {
    "": None, "cudnn": "", "cuda.matmul": "cudnn", "cudnn.conv": "cudnn", "cudnn.rnn": "cudnn",
    "mkldnn": "", "mkldnn.matmul": "mkldnn", "mkldnn.conv": "mkldnn", "mkldnn.rnn": "mkldnn",
}  # fmt: skip
CUDA_NODES = ("cudnn", "cuda.matmul", "cudnn.conv", "cudnn.rnn")
# what fp32_math (and torch's legacy setters) write, so what it restores; global and mkldnn are only read
# (and torch 2.13's ``mkldnn.fp32_precision`` setter writes the global node: never call it)
WRITTEN = (*CUDA_NODES, "mkldnn.matmul")
MATMUL_PRECISIONS = ("highest", "high", "medium")


def _node(path: str) -> Any:
    obj: Any = torch.backends
    for part in filter(None, path.split(".")):
        obj = getattr(obj, part)
    return obj


def has_precision_tree() -> bool:
    """Whether this torch has the ``fp32_precision`` API (torch ≥ 2.9)."""
    return hasattr(torch.backends, "fp32_precision") and hasattr(_node("cudnn.rnn"), "fp32_precision")


def _read(getter: Any) -> Any:
    """A legacy getter's value, or None where torch refuses to read a mixed state."""
    try:
        return getter()
    except RuntimeError:
        return None


def _legacy_values(tree: dict[str, str]) -> tuple[bool, str]:
    """(cudnn allow_tf32, float32 matmul precision) as torch holds them: read, or the values under which
    torch's own consistency checks fail exactly where they failed."""
    cudnn = _read(lambda: bool(torch.backends.cudnn.allow_tf32))
    if cudnn is None:  # torch refuses unless rnn, conv and the legacy value agree
        cudnn = tree.get("cudnn.rnn") != "tf32"
    matmul = _read(torch.get_float32_matmul_precision)
    if matmul is None:
        allow = _read(lambda: bool(torch.backends.cuda.matmul.allow_tf32))
        cuda_tf32, cpu = tree.get("cuda.matmul") == "tf32", tree.get("mkldnn.matmul")
        for cand in MATMUL_PRECISIONS:
            legacy_tf32 = cand != "highest"
            invalid = (cuda_tf32 and not legacy_tf32) or (cpu == "bf16" and cand != "medium")
            invalid = invalid or (cpu == "tf32" and cand != "high")
            if invalid and (legacy_tf32 == cuda_tf32 if allow is not None else legacy_tf32 != cuda_tf32):
                matmul = cand
                break
        else:
            matmul = "highest"
    return cudnn, matmul


def _set_legacy(cudnn_tf32: bool, matmul: str) -> None:
    torch.backends.cudnn.allow_tf32 = cudnn_tf32
    torch.set_float32_matmul_precision(matmul)


def _restore_tree(tree: dict[str, str]) -> None:
    for path in WRITTEN:  # parents first
        parent = TREE[path]
        inherit = parent is not None and tree[parent] == tree[path]
        _node(path).fp32_precision = "none" if inherit else tree[path]


@contextlib.contextmanager
def fp32_math(tf32: bool) -> Iterator[None]:
    """TF32 (``tf32=True``) or IEEE fp32 for CUDA convolutions, RNNs and matmuls inside; restored after."""
    tree = {path: _node(path).fp32_precision for path in TREE} if has_precision_tree() else {}
    legacy = _legacy_values(tree)
    try:
        _set_legacy(tf32, "high" if tf32 else "highest")
        for path in CUDA_NODES if tree else ():
            _node(path).fp32_precision = "tf32" if tf32 else "ieee"
        yield
    finally:
        _set_legacy(*legacy)
        if tree:
            _restore_tree(tree)
