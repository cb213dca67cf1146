"""How much memory a graph's activations take at its peak, from static shapes: before running it.

A gradient graph keeps every forward tensor its backward part reads until that part runs, so its activation
memory grows with the image (×16 from 128 to 512 px) and, at 512 px and above, one image may not fit a
machine. The estimate walks the nodes in order, allocates each output when its node runs and frees each tensor
after its last reader (graph outputs are kept); the peak of the live bytes is the estimate. Weights are not
activations and are not counted. ONNX Runtime runs the same order with buffer reuse, so it lands near this;
the measured ratio is in docs/large_models.md.

Export validation and the benchmarks use it to choose batch sizes that fit the memory a machine has
(:func:`batch_for_memory`), and :mod:`.remat` to decide where recomputation is needed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from .static_shapes import infer_static_shapes

# Resident memory of a run over this estimate, measured (docs/large_models.md): ONNX Runtime lean sessions
# 0.9-1.5x, torch autograd ~1.2x, with export's fixed mmap threshold. Budgets divide by this.
OVERHEAD = 1.5
EXPORT_MEMORY_FRACTION = 0.6  # of the memory available when export starts: the rest is the machine's


@dataclass(frozen=True)
class ActivationEstimate:
    """Peak live activation bytes of one run at ``batch``, and at which node the peak falls."""

    batch: int
    peak_bytes: int
    peak_node: str

    @property
    def per_image(self) -> float:
        return self.peak_bytes / self.batch


def peak_activation(model: onnx.ModelProto, batch: int = 1) -> ActivationEstimate:
    """Liveness walk over ``model``'s nodes in graph order with shapes at ``batch`` (weights excluded)."""
    shapes = infer_static_shapes(model, batch)
    weights = {t.name for t in model.graph.initializer}
    inputs = {v.name for v in model.graph.input}
    outputs = {v.name for v in model.graph.output}
    held = weights | inputs | outputs  # the caller's inputs and the results are alive throughout
    last_read: dict[str, int] = {}
    for index, node in enumerate(model.graph.node):
        for name in node.input:
            last_read[name] = index
    live = sum(_bytes(shapes, name) for name in inputs - weights)
    peak, peak_node = live, "(inputs)"
    for index, node in enumerate(model.graph.node):
        live += sum(_bytes(shapes, name) for name in node.output if name)
        if live > peak:
            peak, peak_node = live, node.name or node.op_type
        for name in set(node.input) | set(node.output):
            if name and name not in held and last_read.get(name, -1) <= index:
                live -= _bytes(shapes, name)
    return ActivationEstimate(batch, peak, peak_node)


def _bytes(shapes: dict, name: str) -> int:
    elem, dims = shapes.get(name, (0, None))
    if not elem or dims is None or any(d is None or d < 0 for d in dims):
        return 0
    return int(np.prod(dims, dtype=np.int64)) * np.dtype(helper.tensor_dtype_to_np_dtype(elem)).itemsize


def available_memory() -> int:
    """Bytes this process could still allocate: Linux's MemAvailable (the cgroup limit when lower)."""
    found = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found = int(line.split()[1]) * 1024
    except OSError:
        pass
    if found is None:
        found = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    limit = _cgroup_limit()
    return min(found, limit) if limit else found


def _cgroup_limit() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            return int(text)
    return None


def batch_for_memory(model: onnx.ModelProto, budget_bytes: int, largest: int = 256) -> int:
    """The largest batch (≤ ``largest``) whose estimated activations fit ``budget_bytes``; 0 if not even one.

    Activations grow linearly with the batch, so batch 1 and 2 give the slope and the rest is arithmetic.
    """
    one, two = peak_activation(model, 1).peak_bytes, peak_activation(model, 2).peak_bytes
    if one > budget_bytes:
        return 0
    slope = max(two - one, 1)
    return int(min(largest, 1 + (budget_bytes - one) // slope))
