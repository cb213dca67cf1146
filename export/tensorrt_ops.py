"""The ONNX ops TensorRT's ONNX parser accepts, as data, to check gradient graphs before anyone builds an engine.

Source: the operator support matrix of onnx-tensorrt (``docs/operators.md``) for TensorRT 10.0, opsets 9–20:
the ops marked supported there. Per-op restrictions (types, modes) are not modelled; this is the first gate.
``NonZero`` is left out on purpose although TensorRT 10 parses it: its output shape depends on the data,
which forces dynamic-shape handling and blocks CUDA-graph capture, so genorigin's graphs must not use it.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx

TENSORRT_VERSION = "10.0"

TENSORRT_ONNX_OPS = frozenset(
    {
        "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan", "Atanh", "AveragePool",
        "BatchNormalization", "Cast", "CastLike", "Ceil", "Celu", "Clip", "Concat", "Constant", "ConstantOfShape",
        "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum", "DeformConv", "DepthToSpace", "DequantizeLinear", "Div",
        "Dropout", "Einsum", "Elu", "Equal", "Erf", "Exp", "Expand", "EyeLike", "Flatten", "Floor", "Gather",
        "GatherElements", "GatherND", "Gelu", "Gemm", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "Greater",
        "GreaterOrEqual", "GridSample", "GroupNormalization", "GRU", "HardSigmoid", "HardSwish", "Hardmax",
        "Identity", "If", "ImageScaler", "InstanceNormalization", "IsInf", "IsNaN", "LayerNormalization", "LeakyRelu",
        "Less", "LessOrEqual", "Log", "LogSoftmax", "Loop", "LRN", "LSTM", "LpNormalization", "LpPool", "MatMul",
        "Max", "MaxPool", "Mean", "MeanVarianceNormalization", "Min", "Mish", "Mod", "Mul", "Neg",
        "NonMaxSuppression", "Not", "OneHot", "Or", "Pad", "ParametricSoftplus", "Pow", "PRelu", "QuantizeLinear",
        "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Range", "Reciprocal", "ReduceL1",
        "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd",
        "ReduceSum", "ReduceSumSquare", "Relu", "Reshape", "Resize", "ReverseSequence", "RNN", "RoiAlign", "Round",
        "ScaledTanh", "Scan", "Scatter", "ScatterElements", "ScatterND", "Selu", "Shape", "Shrink", "Sigmoid", "Sign",
        "Sin", "Sinh", "Size", "Slice", "Softmax", "Softplus", "Softsign", "SpaceToDepth", "Split", "Sqrt", "Squeeze",
        "Sub", "Sum", "Tan", "Tanh", "ThresholdedRelu", "Tile", "TopK", "Transpose", "Trilu", "Unsqueeze", "Upsample",
        "Where", "Xor",
    }
)  # fmt: skip


def ops_outside_tensorrt(model: onnx.ModelProto | Iterable[onnx.NodeProto]) -> set[str]:
    """Op types of ``model``'s nodes that TensorRT cannot parse (custom domains count as unsupported)."""
    nodes = model.graph.node if isinstance(model, onnx.ModelProto) else model
    return {
        node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        for node in nodes
        if node.domain not in ("", "ai.onnx") or node.op_type not in TENSORRT_ONNX_OPS
    }
