"""The loss head of the loss graph: per-sample loss and its gradient w.r.t. the generator's image, as ONNX nodes.

Kept beside ``onnx_autodiff`` (which backpropagates the gradient this head seeds through the forward graph) so
the definition the ONNX graphs share with ``genorigin.kernels.reference.loss_and_grad`` reads in one place.
"""

from __future__ import annotations

import numpy as np
from genorigin.kernels.projection import BLOCK, PROJECTIONS, padded_size, projection_weights

from .vjp import Dim, Emitter


def loss_nodes(
    e: Emitter, y: str, dims: tuple[Dim, ...] | None, y_type: int, target: str, kind: str, work_type: int
) -> tuple[str, str]:
    """Per-sample loss (N,) between the image ``y`` and ``target``, and its gradient w.r.t. the image, as in
    kernels/reference.py; computed in ``work_type``, the gradient cast back to the image's ``y_type``."""
    y_work = y if y_type == work_type else e.op("Cast", [y], to=work_type)
    diff = e.op("Sub", [y_work, target])
    if kind in PROJECTIONS:
        loss, gy = projection_nodes(e, diff, kind, dims, work_type)
        return loss, (e.op("Cast", [gy], to=y_type) if y_type != work_type else gy)
    per_element = e.op("Mul", [diff, diff]) if kind == "mse" else e.op("Abs", [diff])
    if dims is None:  # rank unknown (a third-party graph inference cannot follow): mean over the flattened sample
        loss = e.reduce("ReduceMean", e.op("Reshape", [per_element, e.ints([0, -1])]), [1], keepdims=False)
    else:
        loss = e.reduce("ReduceMean", per_element, list(range(1, len(dims))), keepdims=False)
    slope = diff if kind == "mse" else e.op("Sign", [diff])
    scale = 2.0 if kind == "mse" else 1.0
    static = [d for d in dims[1:] if d is not None and d >= 0] if dims is not None else []
    if dims is not None and len(static) == len(dims) - 1:
        gy = e.op("Mul", [slope, e.const(scale / float(np.prod(static, dtype=np.int64)), work_type)])
    else:
        count = e.op("Div", [e.op("Size", [y]), e.op("Gather", [e.shape_of(y), e.ints([0])], axis=0)])
        gy = e.op("Div", [e.op("Mul", [slope, e.const(scale, work_type)]), e.op("Cast", [count], to=work_type)])
    if y_type != work_type:
        gy = e.op("Cast", [gy], to=y_type)
    return loss, gy


def projection_nodes(e: Emitter, diff: str, kind: str, dims: tuple[Dim, ...] | None, work_type: int
                      ) -> tuple[str, str]:  # fmt: skip
    """‖P·diff‖²/(C·H·W) per sample and 2·Pᵀ·P·diff/(C·H·W): P a Conv with stride 8 (zero-padded to whole
    blocks), Pᵀ the ConvTranspose with the same weights (cropped back), as kernels/reference.project."""
    static = [int(d) for d in dims[1:] if d is not None and d >= 0] if dims is not None else []
    if dims is None or len(dims) != 4 or len(static) != 3:
        raise ValueError(f"loss {kind!r} needs a generator output of static shape N×C×H×W, got {dims}")
    c, h, w = static
    weights = e.const(projection_weights(kind, c), work_type)
    ph, pw = padded_size(h) - h, padded_size(w) - w
    padded = e.op("Pad", [diff, e.ints([0, 0, 0, 0, 0, 0, ph, pw])]) if ph or pw else diff
    coef = e.op("Conv", [padded, weights], kernel_shape=[BLOCK, BLOCK], strides=[BLOCK, BLOCK])
    count = float(c * h * w)
    loss = e.op("Mul", [e.reduce("ReduceSum", e.op("Mul", [coef, coef]), [1, 2, 3], keepdims=False),
                        e.const(1.0 / count, work_type)])  # fmt: skip
    back = e.op("ConvTranspose", [coef, weights], kernel_shape=[BLOCK, BLOCK], strides=[BLOCK, BLOCK])
    if ph or pw:
        back = e.op("Slice", [back, e.ints([0, 0]), e.ints([h, w]), e.ints([2, 3])])
    return loss, e.op("Mul", [back, e.const(2.0 / count, work_type)])
