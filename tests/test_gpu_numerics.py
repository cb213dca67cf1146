"""fp32_math (issue 15.3): one consistent TF32 state inside, every getter readable, the caller's state after.

torch ≥ 2.9 raises from its legacy TF32 getters when they disagree with the per-op ``fp32_precision`` tree; the
old helper set only the new conv/matmul flags, so inside it ``cudnn.allow_tf32`` raised and cuDNN conv and RNN
disagreed. This runs on the CPU build of torch: the flags are process state, not GPU state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from genorigin.runtime.backends.gpu.numerics import TREE, _node, fp32_math, has_precision_tree

pytestmark = pytest.mark.skipif(not has_precision_tree(), reason=f"torch {torch.__version__} has no fp32_precision")

LEGACY: dict[str, Callable[[], Any]] = {
    "cudnn.allow_tf32": lambda: torch.backends.cudnn.allow_tf32,
    "cuda.matmul.allow_tf32": lambda: torch.backends.cuda.matmul.allow_tf32,
    "get_float32_matmul_precision": torch.get_float32_matmul_precision,
}


def observe() -> dict[str, Any]:
    """What every getter says: each legacy getter's value or 'raises', and every node of the precision tree."""
    out: dict[str, Any] = {}
    for name, getter in LEGACY.items():
        try:
            out[name] = getter()
        except RuntimeError:
            out[name] = "raises"
    out.update({f"tree:{p or 'global'}": _node(p).fp32_precision for p in TREE})
    return out


def _reset() -> None:
    """torch's defaults: cuDNN TF32 on (conv and rnn), matmul highest, nothing else set."""
    for path in TREE:
        _node(path).fp32_precision = "none"
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("highest")


SETUPS: dict[str, Callable[[], None]] = {
    "defaults": lambda: None,
    "legacy-high": lambda: torch.set_float32_matmul_precision("high"),
    "legacy-cudnn-off": lambda: setattr(torch.backends.cudnn, "allow_tf32", False),
    "global-tf32": lambda: setattr(torch.backends, "fp32_precision", "tf32"),  # legacy getters raise already
    "global-ieee": lambda: setattr(torch.backends, "fp32_precision", "ieee"),
    "conv-ieee-only": lambda: setattr(torch.backends.cudnn.conv, "fp32_precision", "ieee"),
    "mkldnn-bf16": lambda: setattr(torch.backends.mkldnn.matmul, "fp32_precision", "bf16"),
}


@pytest.fixture(autouse=True)
def clean_flags() -> Iterator[None]:
    _reset()
    yield
    _reset()


@pytest.mark.parametrize("setup", SETUPS)
@pytest.mark.parametrize("tf32", [False, True], ids=["ieee", "tf32"])
def test_every_getter_readable_inside_and_restored_after(setup: str, tf32: bool) -> None:
    SETUPS[setup]()
    before = observe()
    with fp32_math(tf32):
        inside = observe()
    assert observe() == before
    mode = "tf32" if tf32 else "ieee"
    assert inside["cudnn.allow_tf32"] is tf32 and inside["cuda.matmul.allow_tf32"] is tf32
    assert inside["get_float32_matmul_precision"] == ("high" if tf32 else "highest")
    for node in ("cudnn", "cuda.matmul", "cudnn.conv", "cudnn.rnn"):  # conv and rnn agree: no mixed state
        assert inside[f"tree:{node}"] == mode, node


def test_inheritance_survives_the_round_trip() -> None:
    """Nodes that inherited ("none") before inherit after: a later change of the global reaches them."""
    with fp32_math(False):
        pass
    torch.backends.fp32_precision = "ieee"
    assert torch.backends.cuda.matmul.fp32_precision == "ieee"
    assert torch.backends.mkldnn.conv.fp32_precision == "ieee"


def test_restored_after_an_exception() -> None:
    before = observe()
    with pytest.raises(KeyError), fp32_math(True):
        raise KeyError("boom")
    assert observe() == before
