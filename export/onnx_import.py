"""A third-party ONNX generator made into a package's forward graph: I/O renamed to (z, image) and its output
rescaled to [0, 1] inside the graph. Graph surgery only, on a header whose weights may stay external."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper


def normalised_forward(
    model: onnx.ModelProto, z_name: str, y_name: str, output_range: tuple[float, float]
) -> onnx.ModelProto:
    """Rename the I/O to (z, image) and append (y − low) / span so the image lies in [0, 1] (in place)."""
    lo, hi = output_range
    if not hi > lo:
        raise ValueError(f"output range must have high > low, got {output_range}")
    graph = model.graph
    for node in graph.node:
        node.input[:] = ["z" if i == z_name else i for i in node.input]
    for v in graph.input:
        if v.name == z_name:
            v.name = "z"
    raw = "raw_image__genorigin"
    for node in graph.node:
        node.output[:] = [raw if o == y_name else o for o in node.output]
        node.input[:] = [raw if i == y_name else i for i in node.input]
    graph.initializer.extend(
        [
            onnx.numpy_helper.from_array(np.array(lo, dtype=np.float32), "range_low__genorigin"),
            onnx.numpy_helper.from_array(np.array(hi - lo, dtype=np.float32), "range_span__genorigin"),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("Sub", [raw, "range_low__genorigin"], ["shifted__genorigin"], name="genorigin_shift"),
            helper.make_node("Div", ["shifted__genorigin", "range_span__genorigin"], ["image"], name="genorigin_scale"),
        ]
    )
    graph.output[0].name = "image"
    return model
