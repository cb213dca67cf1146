"""Reverse-mode autodiff over ONNX graphs (genorigin.export.onnx_autodiff) against torch.autograd.

Per-rule tests build tiny graphs with onnx.helper and compare the VJP graph's g_z (run in ONNX Runtime on
CPU) with torch.autograd on a float64 torch twin. Linear ops whose twin would be awkward (padding modes,
strided slices, Resize modes, auto_pad) are checked against their exact Jacobian instead: the forward graph
evaluated on every basis vector, so the reference is ONNX Runtime's own forward semantics.

Tolerances: float64 graphs must agree to 1e-9 (relative, norm-based). ONNX Runtime has no float64 kernels
for Conv/ConvTranspose/Resize/InstanceNormalization/Erf/Softplus-family/LeakyRelu/AveragePool/Mean, so those
run in float32 against a float64 reference: float32 round-off (6e-8) through a handful of ops and
reductions over at most a few hundred terms stays well below 1e-6, and 1e-5 leaves a safety margin.
"""

from __future__ import annotations

import ast
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from genorigin.export import onnx_forward
from genorigin.export.architectures import DCGANGenerator, VAEConfig, VAEDecoder
from genorigin.export.onnx_autodiff import UnsupportedOpError, build_loss_graph, build_vjp_graph, supported_ops
from genorigin.export.onnx_forward import export_forward
from genorigin.export.vjp import RULES, DuplicateRuleError, rule
from genorigin.kernels.reference import loss_and_grad
from helpers import assert_static_gradient_graph
from onnx import TensorProto, helper, numpy_helper

TOL64 = 1e-9
TOL32 = 1e-5
f64, f32 = np.float64, np.float32
Twin = Callable[[torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------


def rel(a: Any, b: Any) -> float:
    a = np.asarray(a.detach() if isinstance(a, torch.Tensor) else a, dtype=np.float64)
    b = np.asarray(b.detach() if isinstance(b, torch.Tensor) else b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def make_model(
    nodes: Sequence[onnx.NodeProto],
    z_shape: Sequence[int | str],
    *,
    dtype: type = f64,
    inits: dict[str, np.ndarray] | None = None,
    opset: int = 18,
    out: str = "y",
) -> onnx.ModelProto:
    """One-input graph z → y; ``inits`` become initializers (float64 ones cast to ``dtype``)."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    tensors = []
    for name, value in (inits or {}).items():
        array = np.asarray(value)
        if array.dtype == np.float64:
            array = array.astype(dtype)
        tensors.append(numpy_helper.from_array(array, name))
    graph = helper.make_graph(
        list(nodes),
        "test",
        [helper.make_tensor_value_info("z", elem, list(z_shape))],
        [helper.make_tensor_value_info(out, elem, None)],
        initializer=tensors,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    return model


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run_vjp(model: onnx.ModelProto, z: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y, g_z, g_y) with a random g_y, through the built VJP graph."""
    vjp = build_vjp_graph(model)
    (y,) = session(model).run(None, {"z": z})
    gy = np.random.default_rng(seed).standard_normal(y.shape).astype(y.dtype)
    y2, gz = session(vjp).run(None, {"z": z, "g_y": gy})
    np.testing.assert_array_equal(y, y2)
    assert gz.shape == z.shape and gz.dtype == z.dtype
    return y, gz, gy


def check_twin(model: onnx.ModelProto, z: np.ndarray, twin: Twin, tol: float) -> None:
    """g_z from ONNX equals torch.autograd of the float64 twin (whose forward must match too)."""
    y, gz, gy = run_vjp(model, z)
    zt = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    yt = twin(zt)
    assert rel(y, yt) <= tol, "the torch twin does not reproduce the ONNX forward"
    (gt,) = torch.autograd.grad(yt, zt, torch.tensor(gy, dtype=torch.float64))
    assert rel(gz, gt) <= tol


def check_linear(model: onnx.ModelProto, z_shape: Sequence[int], tol: float, dtype: type = f32) -> None:
    """For a linear map, g_z must equal Jᵀ·g_y with J read off the forward on every basis vector."""
    forward = session(model)
    n = int(np.prod(z_shape))
    columns = []
    for i in range(n):
        basis = np.zeros(n, dtype=dtype)
        basis[i] = 1.0
        columns.append(forward.run(None, {"z": basis.reshape(z_shape)})[0].reshape(-1))
    jacobian = np.stack(columns, axis=1).astype(np.float64)
    z = np.random.default_rng(1).standard_normal(z_shape).astype(dtype)
    _, gz, gy = run_vjp(model, z)
    assert rel(gz.reshape(-1), jacobian.T @ gy.reshape(-1).astype(np.float64)) <= tol


def t64(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(np.asarray(a), dtype=torch.float64)


def randn(*shape: int, seed: int = 0, dtype: type = f64) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def positive(*shape: int, seed: int = 0, dtype: type = f64) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.5, 2.0, shape).astype(dtype)


def node(op: str, inputs: Sequence[str], output: str = "y", **attrs: Any) -> onnx.NodeProto:
    return helper.make_node(op, list(inputs), [output], **attrs)


# ---------------------------------------------------------------------------------------------------------
# (a) Unary elementwise rules
# ---------------------------------------------------------------------------------------------------------

UNARY_64: list[tuple[str, dict, Twin, str]] = [
    ("Relu", {}, torch.relu, "normal"),
    ("Tanh", {}, torch.tanh, "normal"),
    ("Sigmoid", {}, torch.sigmoid, "normal"),
    ("Exp", {}, torch.exp, "normal"),
    ("Log", {}, torch.log, "positive"),
    ("Sqrt", {}, torch.sqrt, "positive"),
    ("Neg", {}, torch.neg, "normal"),
    ("Sin", {}, torch.sin, "normal"),
    ("Cos", {}, torch.cos, "normal"),
    ("Abs", {}, torch.abs, "normal"),
    ("Reciprocal", {}, torch.reciprocal, "positive"),
    ("Identity", {}, lambda z: z, "normal"),
    ("Softmax", {}, lambda z: torch.softmax(z, -1), "normal"),
    ("Softmax", {"axis": 1}, lambda z: torch.softmax(z, 1), "normal"),
    ("LogSoftmax", {"axis": 0}, lambda z: torch.log_softmax(z, 0), "normal"),
    ("Sign", {}, lambda z: torch.sign(z), "normal"),  # piecewise constant: zero gradient
]

UNARY_32: list[tuple[str, dict, Twin, int]] = [
    ("Erf", {}, torch.erf, 18),
    ("Softplus", {}, F.softplus, 18),
    ("Softsign", {}, F.softsign, 18),
    ("Elu", {"alpha": 0.7}, lambda z: F.elu(z, 0.7), 18),
    ("Selu", {}, F.selu, 18),
    ("Celu", {"alpha": 1.3}, lambda z: F.celu(z, 1.3), 18),
    ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}, lambda z: torch.clamp(0.3 * z + 0.4, 0, 1), 18),
    ("HardSwish", {}, F.hardswish, 18),
    ("Mish", {}, F.mish, 18),
    ("LeakyRelu", {"alpha": 0.1}, lambda z: F.leaky_relu(z, 0.1), 18),
    ("Gelu", {}, F.gelu, 20),
    ("Gelu", {"approximate": "tanh"}, lambda z: F.gelu(z, approximate="tanh"), 20),
]


@pytest.mark.parametrize("op,attrs,twin,domain", UNARY_64, ids=lambda v: str(v) if isinstance(v, str) else "")
@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 5)])
def test_unary_float64(op: str, attrs: dict, twin: Twin, domain: str, shape: tuple[int, ...]) -> None:
    z = positive(*shape) if domain == "positive" else randn(*shape) * 2
    check_twin(make_model([node(op, ["z"], **attrs)], shape), z, twin, TOL64)


@pytest.mark.parametrize("op,attrs,twin,opset", UNARY_32, ids=lambda v: str(v) if isinstance(v, str) else "")
def test_unary_float32(op: str, attrs: dict, twin: Twin, opset: int) -> None:
    z = randn(2, 3, 7, dtype=f32) * 3
    check_twin(make_model([node(op, ["z"], **attrs)], z.shape, dtype=f32, opset=opset), z, twin, TOL32)


def test_castlike_type_input_is_inert() -> None:
    """CastLike's second input only supplies a type, even when it depends on z."""
    nodes = [node("Sin", ["z"], "s"), node("CastLike", ["s", "z"], "c"), node("Mul", ["c", "c"])]
    check_twin(make_model(nodes, (3, 4)), randn(3, 4), lambda t: torch.sin(t) ** 2, TOL64)


def test_prelu_and_dropout_and_cast() -> None:
    slope = np.array([[0.1], [-0.3], [0.6]])
    nodes = [
        node("Cast", ["z"], "c", to=TensorProto.FLOAT),
        node("PRelu", ["c", "slope"], "p"),
        node("Dropout", ["p"], "d"),
        node("Cast", ["d"], to=TensorProto.DOUBLE),
    ]
    model = make_model(nodes, (2, 3, 4), inits={"slope": slope.astype(f32)})
    z = randn(2, 3, 4)
    # one float32 round trip: float32 tolerance
    check_twin(model, z, lambda t: torch.where(t > 0, t, t * t64(slope)), TOL32)


@pytest.mark.parametrize(
    "bounds",
    [("lo", "hi"), ("lo", ""), ("", "hi"), ()],
)
def test_clip(bounds: tuple[str, ...]) -> None:
    inits = {"lo": np.array(-0.5), "hi": np.array(0.8)}
    model = make_model([node("Clip", ["z", *bounds])], (4, 5), inits=inits)
    lo = -0.5 if "lo" in bounds else None
    hi = 0.8 if "hi" in bounds else None
    check_twin(model, randn(4, 5), lambda t: torch.clamp(t, lo, hi) if bounds else t, TOL64)


# ---------------------------------------------------------------------------------------------------------
# (a) Binary elementwise rules with broadcasting
# ---------------------------------------------------------------------------------------------------------

BINARY: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "Add": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Div": torch.div,
    "Pow": torch.pow,
    "Max": torch.maximum,
    "Min": torch.minimum,
}
SHAPE_PAIRS = [((2, 3, 4), (2, 3, 4)), ((2, 3, 4), (4,)), ((2, 1, 4), (3, 1)), ((2, 3), ()), ((1, 3, 1), (2, 1, 4))]


@pytest.mark.parametrize("op", list(BINARY))
@pytest.mark.parametrize("shapes", SHAPE_PAIRS, ids=str)
@pytest.mark.parametrize("z_first", [True, False], ids=["z_op_c", "c_op_z"])
def test_binary_broadcasting(op: str, shapes: tuple, z_first: bool) -> None:
    z_shape, c_shape = shapes if z_first else shapes[::-1]
    # positive operands keep Div and Pow (with a tensor exponent) smooth and real
    z, c = positive(*z_shape, seed=1), positive(*c_shape, seed=2)
    inputs = ["z", "c"] if z_first else ["c", "z"]
    model = make_model([node(op, inputs)], z_shape, inits={"c": c})
    fn = BINARY[op]
    check_twin(model, z, (lambda t: fn(t, t64(c))) if z_first else (lambda t: fn(t64(c), t)), TOL64)


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Max", "Min", "Sum"])
def test_duplicate_inputs(op: str) -> None:
    """Add(a, a) and friends: both input slots contribute to a's gradient."""
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = BINARY.get(op, torch.add)
    nodes = [node("Tanh", ["z"], "a"), node(op, ["a", "a"], "b"), node("Mul", ["b", "a"])]
    model = make_model(nodes, (3, 4))
    check_twin(model, randn(3, 4), lambda t: fn(torch.tanh(t), torch.tanh(t)) * torch.tanh(t), TOL64)


def test_sum_mean_variadic() -> None:
    c1, c2 = randn(4, seed=3), randn(3, 1, seed=4)
    nodes = [node("Sum", ["z", "c1", "z", "c2"], "s"), node("Mean", ["s", "z", "c2"], "m"), node("Mul", ["m", "s"])]
    model = make_model([*nodes], (3, 4), dtype=f32, inits={"c1": c1, "c2": c2})

    def twin(t: torch.Tensor) -> torch.Tensor:
        s = t + t64(c1) + t + t64(c2)
        return (s + t + t64(c2)) / 3 * s

    check_twin(model, randn(3, 4, dtype=f32), twin, TOL32)


def test_pow_constant_exponents() -> None:
    nodes = [node("Pow", ["z", "two"], "a"), node("Pow", ["z", "half"], "b"), node("Pow", ["a", "three"], "c")]
    nodes += [node("Add", ["b", "c"])]
    inits = {"two": np.array(2.0), "half": np.array(0.5), "three": np.array(3, dtype=np.int64)}
    model = make_model(nodes, (3, 4), inits=inits)
    check_twin(model, positive(3, 4), lambda t: t**0.5 + (t**2) ** 3, TOL64)


def test_where_both_branches() -> None:
    cond = np.random.default_rng(5).random((3, 1)) > 0.5
    c = randn(4, seed=6)
    nodes = [node("Tanh", ["z"], "a"), node("Where", ["cond", "a", "c"], "w"), node("Where", ["cond", "c", "z"], "v")]
    nodes += [node("Mul", ["w", "v"])]
    model = make_model(nodes, (3, 4), inits={"cond": cond, "c": c})
    ct, mask = t64(c), torch.tensor(cond)
    check_twin(model, randn(3, 4), lambda t: torch.where(mask, torch.tanh(t), ct) * torch.where(mask, ct, t), TOL64)


# ---------------------------------------------------------------------------------------------------------
# (a) Reductions
# ---------------------------------------------------------------------------------------------------------

REDUCE_TWINS: dict[str, Callable[[torch.Tensor, list[int], bool], torch.Tensor]] = {
    "ReduceSum": lambda t, a, k: t.sum(a, keepdim=k),
    "ReduceMean": lambda t, a, k: t.mean(a, keepdim=k),
    "ReduceSumSquare": lambda t, a, k: (t * t).sum(a, keepdim=k),
    "ReduceL1": lambda t, a, k: t.abs().sum(a, keepdim=k),
    "ReduceL2": lambda t, a, k: t.square().sum(a, keepdim=k).sqrt(),
}


@pytest.mark.parametrize("op", list(REDUCE_TWINS))
@pytest.mark.parametrize("axes,keepdims", [([1], 1), ([-1, 0], 0), ([], 0), ([0, 2], 1)], ids=str)
@pytest.mark.parametrize("opset", [13, 18])
def test_reductions(op: str, axes: list[int], keepdims: int, opset: int) -> None:
    as_input = op == "ReduceSum" or opset >= 18
    inputs = ["z", "axes"] if as_input and axes else ["z"]
    attrs = {"keepdims": keepdims} | ({} if as_input or not axes else {"axes": axes})
    model = make_model([node(op, inputs, **attrs)], (2, 3, 4), inits={"axes": np.array(axes, np.int64)}, opset=opset)
    dims = [a % 3 for a in axes] or [0, 1, 2]
    check_twin(model, randn(2, 3, 4), lambda t: REDUCE_TWINS[op](t, dims, bool(keepdims)), TOL64)


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_extremum_with_ties(op: str, keepdims: int) -> None:
    """Ties share the gradient equally (torch.amax/amin)."""
    z = np.round(randn(2, 3, 4) * 1.5)  # many exact ties
    model = make_model([node(op, ["z", "axes"], keepdims=keepdims)], (2, 3, 4), inits={"axes": np.array([1, 2])})
    fn = torch.amax if op == "ReduceMax" else torch.amin
    check_twin(model, z, lambda t: fn(t, (1, 2), keepdim=bool(keepdims)), TOL64)


def test_reduce_noop_with_empty_axes() -> None:
    model = make_model([node("ReduceSum", ["z"], "r", noop_with_empty_axes=1), node("Tanh", ["r"])], (2, 3))
    check_twin(model, randn(2, 3), torch.tanh, TOL64)


def test_global_average_pool() -> None:
    model = make_model([node("GlobalAveragePool", ["z"])], (2, 3, 4, 5), dtype=f32)
    check_twin(model, randn(2, 3, 4, 5, dtype=f32), lambda t: t.mean((2, 3), keepdim=True), TOL32)


@pytest.mark.parametrize(
    "attrs",
    [
        {"kernel_shape": [2, 2], "strides": [2, 2]},
        {"kernel_shape": [3, 2], "pads": [1, 0, 1, 1], "count_include_pad": 1},
    ],
    ids=["k2s2", "k3pad"],
)
def test_average_pool(attrs: dict) -> None:
    check_linear(make_model([node("AveragePool", ["z"], **attrs)], (1, 2, 5, 4), dtype=f32), (1, 2, 5, 4), TOL32)


# ---------------------------------------------------------------------------------------------------------
# (a) Shape and layout ops
# ---------------------------------------------------------------------------------------------------------


def test_reshape_family() -> None:
    nodes = [
        node("Reshape", ["z", "shape"], "r"),  # (2, 3, 4) → (2, 12)
        node("Unsqueeze", ["r", "ax"], "u"),  # → (1, 2, 1, 12)
        node("Squeeze", ["u", "ax"], "s"),
        node("Flatten", ["s"], "f", axis=0),
        node("Tanh", ["f"]),
    ]
    inits = {"shape": np.array([2, -1], np.int64), "ax": np.array([0, 2], np.int64)}
    model = make_model(nodes, (2, 3, 4), inits=inits)
    check_twin(model, randn(2, 3, 4), lambda t: torch.tanh(t.reshape(1, -1)), TOL64)


@pytest.mark.parametrize("perm", [[2, 0, 1], None])
def test_transpose(perm: list[int] | None) -> None:
    attrs = {"perm": perm} if perm else {}
    model = make_model([node("Transpose", ["z"], "t", **attrs), node("Mul", ["t", "t"])], (2, 3, 4))
    p = perm or [2, 1, 0]
    check_twin(model, randn(2, 3, 4), lambda t: t.permute(*p) ** 2, TOL64)


def test_expand_and_tile() -> None:
    nodes = [node("Expand", ["z", "shape"], "e"), node("Tile", ["e", "reps"], "t"), node("Sin", ["t"])]
    inits = {"shape": np.array([2, 3, 4], np.int64), "reps": np.array([1, 2, 3], np.int64)}
    model = make_model(nodes, (3, 1), inits=inits)
    check_twin(model, randn(3, 1), lambda t: torch.sin(t.expand(2, 3, 4).repeat(1, 2, 3)), TOL64)


def test_concat_split() -> None:
    c = randn(2, 2, 3, seed=7)
    nodes = [
        node("Concat", ["z", "c", "z"], "cat", axis=1),  # (2, 6, 3)
        helper.make_node("Split", ["cat", "sizes"], ["a", "b", "unused"], axis=1),  # 3 + 2 + 1 channels
        node("ReduceSum", ["a", "one"], "s"),
        node("Mul", ["s", "b"]),
    ]
    inits = {"c": c, "sizes": np.array([3, 2, 1], np.int64), "one": np.array([1], np.int64)}
    model = make_model(nodes, (2, 2, 3), inits=inits)

    def twin(t: torch.Tensor) -> torch.Tensor:
        cat = torch.cat([t, t64(c), t], 1)
        return cat[:, :3].sum(1, keepdim=True) * cat[:, 3:5]

    check_twin(model, randn(2, 2, 3), twin, TOL64)


@pytest.mark.parametrize(
    "starts,ends,axes,steps",
    [
        ([1], [3], [1], None),
        ([0, -3], [2, 100], [2, 1], [1, 2]),
        ([-1], [-100], [2], [-2]),
        ([3, 1], [0, 4], [1, 2], [-1, 1]),
    ],
    ids=["unit", "strided", "reverse", "mixed"],
)
def test_slice(starts: list, ends: list, axes: list, steps: list | None) -> None:
    inputs = ["z", "starts", "ends", "axes"] + (["steps"] if steps else [])
    inits = {k: np.array(v, np.int64) for k, v in [("starts", starts), ("ends", ends), ("axes", axes)]}
    if steps:
        inits["steps"] = np.array(steps, np.int64)
    check_linear(make_model([node("Slice", inputs)], (2, 4, 5), inits=inits, dtype=f64), (2, 4, 5), TOL64, f64)


@pytest.mark.parametrize(
    "pads,mode",
    [
        ([0, 1, 2, 0, 2, 1], "constant"),
        ([0, -1, 2, 0, 1, -2], "constant"),
        ([0, 2, 1, 0, 1, 3], "reflect"),
        ([0, 2, 1, 0, 1, 3], "edge"),
        ([0, 3, 1, 0, 2, 2], "wrap"),
    ],
    ids=str,
)
def test_pad(pads: list[int], mode: str) -> None:
    model = make_model([node("Pad", ["z", "pads"], mode=mode)], (2, 4, 5), inits={"pads": np.array(pads, np.int64)},
                       opset=19)  # fmt: skip
    check_linear(model, (2, 4, 5), TOL64, f64)


def test_pad_with_axes_input() -> None:
    inits = {"pads": np.array([1, 2, 0, 1], np.int64), "axes": np.array([-1, 1], np.int64)}
    model = make_model([node("Pad", ["z", "pads", "", "axes"])], (2, 3, 4), inits=inits)
    check_twin(model, randn(2, 3, 4), lambda t: F.pad(t, (1, 0, 2, 1)), TOL64)


@pytest.mark.parametrize("indices,axis", [([0, 2, 2, -1], 1), ([[1, 0], [1, 1]], 2), (1, 1)], ids=str)
def test_gather(indices: Any, axis: int) -> None:
    idx = np.array(indices, np.int64)
    model = make_model([node("Gather", ["z", "idx"], "g", axis=axis), node("Sin", ["g"])], (2, 3, 4),
                       inits={"idx": idx})  # fmt: skip
    index = torch.tensor(np.where(idx < 0, idx + 3 + (axis == 2), idx))

    def twin(t: torch.Tensor) -> torch.Tensor:
        picked = torch.index_select(t, axis, index.reshape(-1))
        return torch.sin(picked.reshape(*t.shape[:axis], *index.shape, *t.shape[axis + 1 :]))

    check_twin(model, randn(2, 3, 4), twin, TOL64)


@pytest.mark.parametrize("upper,k", [(1, 0), (0, -1), (1, 2)])
def test_trilu(upper: int, k: int) -> None:
    model = make_model([node("Trilu", ["z", "k"], "t", upper=upper), node("Sin", ["t"])], (2, 3, 4),
                       inits={"k": np.array(k, np.int64)})  # fmt: skip
    check_twin(model, randn(2, 3, 4), lambda t: torch.sin(torch.triu(t, k) if upper else torch.tril(t, k)), TOL64)


@pytest.mark.parametrize("exclusive,reverse", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_cumsum(exclusive: int, reverse: int) -> None:
    model = make_model([node("CumSum", ["z", "axis"], "c", exclusive=exclusive, reverse=reverse), node("Sin", ["c"])],
                       (2, 5), inits={"axis": np.array(1, np.int64)})  # fmt: skip

    def twin(t: torch.Tensor) -> torch.Tensor:
        t = t.flip(1) if reverse else t
        c = t.cumsum(1) - (t if exclusive else 0)
        return torch.sin(c.flip(1) if reverse else c)

    check_twin(model, randn(2, 5), twin, TOL64)


def test_full_range_slice_on_dynamic_batch() -> None:
    """TorchScript exports emit Slice(axes=[0], 0, INT64_MAX) on the dynamic batch axis."""
    inits = {"s": np.array([0, 1], np.int64), "e": np.array([2**63 - 1, 3], np.int64), "a": np.array([0, 1], np.int64)}
    model = make_model([node("Slice", ["z", "s", "e", "a"], "c"), node("Tanh", ["c"])], ("N", 4), inits=inits)
    check_twin(model, randn(3, 4), lambda t: torch.tanh(t[:, 1:3]), TOL64)


@pytest.mark.parametrize("op,mode", [("DepthToSpace", "DCR"), ("DepthToSpace", "CRD"), ("SpaceToDepth", None)])
def test_depth_space(op: str, mode: str | None) -> None:
    attrs = {"blocksize": 2} | ({"mode": mode} if mode else {})
    shape = (1, 8, 2, 3) if op == "DepthToSpace" else (1, 2, 4, 6)
    check_linear(make_model([node(op, ["z"], **attrs)], shape), shape, TOL64, f64)


def test_pixel_shuffle_twin() -> None:
    """torch.pixel_shuffle is DepthToSpace in CRD mode."""
    model = make_model([node("DepthToSpace", ["z"], "d", blocksize=2, mode="CRD"), node("Tanh", ["d"])], (2, 8, 3, 3))
    check_twin(model, randn(2, 8, 3, 3), lambda t: torch.tanh(F.pixel_shuffle(t, 2)), TOL64)


# ---------------------------------------------------------------------------------------------------------
# (a) MatMul, Gemm
# ---------------------------------------------------------------------------------------------------------

MATMUL_SHAPES = [((2, 3, 4), (4, 5)), ((4,), (2, 4, 5)), ((2, 3, 4), (4,)), ((3, 4), (4,)), ((4,), (4,)),
                 ((2, 1, 3, 4), (5, 4, 6)), ((1, 3, 4), (2, 4, 2))]  # fmt: skip


@pytest.mark.parametrize("shapes", MATMUL_SHAPES, ids=str)
@pytest.mark.parametrize("z_first", [True, False], ids=["z@c", "c@z"])
def test_matmul(shapes: tuple, z_first: bool) -> None:
    a_shape, b_shape = shapes
    z_shape, c_shape = (a_shape, b_shape) if z_first else (b_shape, a_shape)
    c = randn(*c_shape, seed=8)
    model = make_model([node("MatMul", ["z", "c"] if z_first else ["c", "z"])], z_shape, inits={"c": c})
    twin = (lambda t: t @ t64(c)) if z_first else (lambda t: t64(c) @ t)
    check_twin(model, randn(*z_shape), twin, TOL64)


def test_matmul_both_operands() -> None:
    nodes = [node("Transpose", ["z"], "zt", perm=[0, 2, 1]), node("MatMul", ["z", "zt"])]
    check_twin(make_model(nodes, (2, 3, 4)), randn(2, 3, 4), lambda t: t @ t.transpose(1, 2), TOL64)


@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (1, 0), (0, 1), (1, 1)])
@pytest.mark.parametrize("slot", ["A", "B", "C"])
def test_gemm(trans_a: int, trans_b: int, slot: str) -> None:
    m, k, n = 3, 4, 5
    shapes = {"A": (k, m) if trans_a else (m, k), "B": (n, k) if trans_b else (k, n), "C": (n,)}
    values = {name: randn(*shape, seed=i) for i, (name, shape) in enumerate(shapes.items())}
    inputs = ["z" if name == slot else name for name in "ABC"]
    inits = {name: v for name, v in values.items() if name != slot}
    alpha, beta = 0.75, 1.25  # exact in float32 (ONNX float attributes)
    model = make_model([node("Gemm", inputs, alpha=alpha, beta=beta, transA=trans_a, transB=trans_b)], shapes[slot],
                       inits=inits)  # fmt: skip

    def twin(t: torch.Tensor) -> torch.Tensor:
        v = {name: (t if name == slot else t64(values[name])) for name in "ABC"}
        a = v["A"].T if trans_a else v["A"]
        b = v["B"].T if trans_b else v["B"]
        return alpha * (a @ b) + beta * v["C"]

    check_twin(model, values[slot], twin, TOL64)


# ---------------------------------------------------------------------------------------------------------
# (a) Convolutions
# ---------------------------------------------------------------------------------------------------------

CONV_CASES = [  # attrs, input shape, weight shape, torch kwargs (padding is applied by F.pad first)
    ({"pads": [1, 1, 1, 1]}, (2, 3, 6, 5), (4, 3, 3, 3), {}),
    ({"strides": [2, 2], "pads": [1, 0, 2, 1]}, (2, 3, 7, 6), (4, 3, 3, 3), {"stride": 2}),
    ({"dilations": [2, 1], "group": 3, "pads": [2, 1, 2, 1]}, (1, 6, 7, 5), (3, 2, 3, 3),
     {"dilation": (2, 1), "groups": 3}),
    ({"strides": [3, 2]}, (2, 2, 8, 7), (2, 2, 2, 3), {"stride": (3, 2)}),
]  # fmt: skip


@pytest.mark.parametrize(
    "attrs,x_shape,w_shape,kwargs", CONV_CASES, ids=["basic", "strided-asym", "dilated-group", "odd"]
)
def test_conv2d(attrs: dict, x_shape: tuple, w_shape: tuple, kwargs: dict) -> None:
    w, b = randn(*w_shape, seed=9, dtype=f32), randn(w_shape[0], seed=10, dtype=f32)
    model = make_model([node("Conv", ["z", "w", "b"], **attrs)], x_shape, dtype=f32, inits={"w": w, "b": b})
    p = attrs.get("pads", [0, 0, 0, 0])

    def twin(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(t, (p[1], p[3], p[0], p[2])), t64(w), t64(b), **kwargs)

    check_twin(model, randn(*x_shape, dtype=f32), twin, TOL32)


def test_conv1d() -> None:
    w = randn(3, 2, 4, seed=11, dtype=f32)
    model = make_model([node("Conv", ["z", "w"], strides=[2], pads=[1, 2])], (2, 2, 9), dtype=f32, inits={"w": w})
    check_twin(model, randn(2, 2, 9, dtype=f32), lambda t: F.conv1d(F.pad(t, (1, 2)), t64(w), stride=2), TOL32)


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
def test_conv_auto_pad(auto_pad: str) -> None:
    w = randn(2, 2, 2, 3, seed=12, dtype=f32)
    model = make_model([node("Conv", ["z", "w"], auto_pad=auto_pad, strides=[2, 1])], (1, 2, 5, 4), dtype=f32,
                       inits={"w": w})  # fmt: skip
    check_linear(model, (1, 2, 5, 4), TOL32)


CONV_T_CASES = [
    ({"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}, (2, 4, 3, 4), (4, 3, 3, 3),
     {"stride": 2, "padding": 1, "output_padding": 1}),
    ({"strides": [2, 2], "pads": [1, 1, 1, 1]}, (2, 4, 4, 4), (4, 2, 4, 4), {"stride": 2, "padding": 1}),
    ({"group": 2, "dilations": [2, 2]}, (1, 4, 3, 3), (4, 1, 3, 2), {"groups": 2, "dilation": 2}),
]  # fmt: skip


@pytest.mark.parametrize("attrs,x_shape,w_shape,kwargs", CONV_T_CASES, ids=["outpad", "dcgan", "group-dilated"])
def test_conv_transpose(attrs: dict, x_shape: tuple, w_shape: tuple, kwargs: dict) -> None:
    w, b = randn(*w_shape, seed=13, dtype=f32), randn(w_shape[1] * attrs.get("group", 1), seed=14, dtype=f32)
    model = make_model([node("ConvTranspose", ["z", "w", "b"], **attrs)], x_shape, dtype=f32, inits={"w": w, "b": b})
    check_twin(model, randn(*x_shape, dtype=f32), lambda t: F.conv_transpose2d(t, t64(w), t64(b), **kwargs), TOL32)


@pytest.mark.parametrize(
    "attrs",
    [{"output_shape": [8, 7], "strides": [2, 2]}, {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
     {"auto_pad": "SAME_LOWER", "strides": [2, 1]}, {"pads": [0, 1, 2, 0], "strides": [3, 2]}],
    ids=["output_shape", "same_upper", "same_lower", "asym"],
)  # fmt: skip
def test_conv_transpose_geometry(attrs: dict) -> None:
    w = randn(2, 3, 3, 3, seed=15, dtype=f32)
    model = make_model([node("ConvTranspose", ["z", "w"], **attrs)], (1, 2, 3, 3), dtype=f32, inits={"w": w})
    check_linear(model, (1, 2, 3, 3), TOL32)


# ---------------------------------------------------------------------------------------------------------
# (a) Normalizations
# ---------------------------------------------------------------------------------------------------------


def test_batch_norm() -> None:
    c = 3
    scale, bias, mean, var = randn(c, seed=1), randn(c, seed=2), randn(c, seed=3), positive(c, seed=4)
    inits = {"s": scale, "b": bias, "m": mean, "v": var}
    model = make_model([node("BatchNormalization", ["z", "s", "b", "m", "v"], epsilon=1e-3)], (2, c, 4, 3), inits=inits)

    def twin(t: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(t, t64(mean), t64(var), t64(scale), t64(bias), training=False, eps=1e-3)

    check_twin(model, randn(2, c, 4, 3), twin, TOL64)


def test_instance_norm_full_backward() -> None:
    scale, bias = randn(3, seed=1, dtype=f32), randn(3, seed=2, dtype=f32)
    nodes = [node("InstanceNormalization", ["z", "s", "b"], "n", epsilon=1e-4), node("Mul", ["n", "n"])]
    model = make_model(nodes, (2, 3, 4, 5), dtype=f32, inits={"s": scale, "b": bias})

    def twin(t: torch.Tensor) -> torch.Tensor:
        return F.instance_norm(t, weight=t64(scale), bias=t64(bias), eps=1e-4) ** 2

    check_twin(model, randn(2, 3, 4, 5, dtype=f32), twin, TOL32)


@pytest.mark.parametrize("axis,opset", [(-1, 17), (1, 18)])
def test_layer_norm(axis: int, opset: int) -> None:
    shape = (2, 3, 4)
    norm_shape = shape[axis:] if axis > 0 else shape[-1:]
    scale, bias = randn(*norm_shape, seed=1), randn(*norm_shape, seed=2)
    nodes = [node("LayerNormalization", ["z", "s", "b"], "n", axis=axis, epsilon=1e-4), node("Tanh", ["n"])]
    model = make_model(nodes, shape, inits={"s": scale, "b": bias}, opset=opset)
    twin = lambda t: torch.tanh(F.layer_norm(t, norm_shape, t64(scale), t64(bias), eps=1e-4))  # noqa: E731
    check_twin(model, randn(*shape), twin, TOL64)


@pytest.mark.parametrize("opset", [18, 21])
def test_group_norm(opset: int) -> None:
    """Opset 18 scales per group, opset 21 per channel (the reason opset 18's version was deprecated)."""
    n, c, groups = 2, 6, 3
    per = groups if opset < 21 else c
    scale, bias = randn(per, seed=1), randn(per, seed=2)
    # opset 21 statistics default to float32 (stash_type=1): ask for float64 to keep the float64 tolerance
    stash = {"stash_type": TensorProto.DOUBLE} if opset >= 21 else {}
    nodes = [node("GroupNormalization", ["z", "s", "b"], "n", num_groups=groups, epsilon=1e-4, **stash)]
    nodes.append(node("Sin", ["n"]))
    model = make_model(nodes, (n, c, 3, 4), inits={"s": scale, "b": bias}, opset=opset)
    reps = c // per

    def twin(t: torch.Tensor) -> torch.Tensor:
        w, b = t64(scale).repeat_interleave(reps), t64(bias).repeat_interleave(reps)
        return torch.sin(F.group_norm(t, groups, w, b, eps=1e-4))

    check_twin(model, randn(n, c, 3, 4), twin, TOL64)


def test_decomposed_group_norm() -> None:
    """The exporters' GroupNorm: Reshape → InstanceNormalization(ones) → Reshape → Mul/Add per channel."""
    weight, bias = randn(6, 1, 1, seed=1, dtype=f32), randn(6, 1, 1, seed=2, dtype=f32)
    nodes = [
        node("Reshape", ["z", "grouped"], "r"),
        node("InstanceNormalization", ["r", "ones", "zeros"], "i", epsilon=1e-5),
        node("Reshape", ["i", "shape"], "u"),
        node("Mul", ["u", "w"], "m"),
        node("Add", ["m", "b"]),
    ]
    inits = {"grouped": np.array([0, 3, -1], np.int64), "shape": np.array([-1, 6, 3, 4], np.int64),
             "ones": np.ones(3), "zeros": np.zeros(3), "w": weight, "b": bias}  # fmt: skip
    model = make_model(nodes, ("N", 6, 3, 4), dtype=f32, inits=inits)
    twin = lambda t: F.group_norm(t, 3, t64(weight).reshape(-1), t64(bias).reshape(-1))  # noqa: E731
    check_twin(model, randn(2, 6, 3, 4, dtype=f32), twin, TOL32)


# ---------------------------------------------------------------------------------------------------------
# (a) Resize
# ---------------------------------------------------------------------------------------------------------

RESIZE_CASES = [
    ({"mode": "linear"}, [1, 1, 2, 2]),
    ({"mode": "linear", "coordinate_transformation_mode": "align_corners"}, [1, 1, 1.5, 2.5]),
    ({"mode": "linear", "coordinate_transformation_mode": "asymmetric"}, [1, 1, 0.6, 1.7]),
    ({"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"}, [1, 1, 0.34, 3]),
    ({"mode": "linear", "coordinate_transformation_mode": "half_pixel_symmetric"}, [1, 1, 1.5, 0.8]),
    ({"mode": "nearest"}, [1, 1, 1.5, 2.5]),
    ({"mode": "nearest", "nearest_mode": "floor", "coordinate_transformation_mode": "asymmetric"}, [1, 1, 2, 3]),
    ({"mode": "nearest", "nearest_mode": "round_prefer_ceil"}, [1, 1, 0.5, 1.75]),
    ({"mode": "nearest", "nearest_mode": "ceil", "coordinate_transformation_mode": "align_corners"}, [1, 1, 2, 1]),
    ({"mode": "cubic"}, [1, 1, 2, 1.5]),
    ({"mode": "cubic", "cubic_coeff_a": -0.5, "exclude_outside": 1}, [1, 1, 0.75, 2]),
]


def _case_id(value: Any) -> str:
    return "-".join(map(str, value.values())) if isinstance(value, dict) else str(value)


@pytest.mark.parametrize("attrs,scales", RESIZE_CASES, ids=_case_id)
def test_resize_scales(attrs: dict, scales: list[float]) -> None:
    inits = {"roi": np.array([], f32), "scales": np.array(scales, f32)}
    model = make_model([node("Resize", ["z", "roi", "scales"], **attrs)], (1, 2, 4, 5), dtype=f32, inits=inits)
    check_linear(model, (1, 2, 4, 5), TOL32)


@pytest.mark.parametrize("policy", ["stretch", "not_larger", "not_smaller"])
def test_resize_sizes_and_axes(policy: str) -> None:
    inits = {"sizes": np.array([7, 6], np.int64)}
    attrs = {"mode": "linear", "axes": [2, 3], "keep_aspect_ratio_policy": policy}
    model = make_model([node("Resize", ["z", "", "", "sizes"], **attrs)], (1, 2, 4, 5), dtype=f32, inits=inits)
    check_linear(model, (1, 2, 4, 5), TOL32)


@pytest.mark.parametrize(
    "attrs,twin",
    [
        ({"mode": "linear"}, lambda t: F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)),
        ({"mode": "linear", "coordinate_transformation_mode": "align_corners"},
         lambda t: F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=True)),
        ({"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
         lambda t: F.interpolate(t, scale_factor=2, mode="nearest")),
    ],
    ids=["bilinear", "bilinear-corners", "nearest"],
)  # fmt: skip
def test_resize_torch_twins(attrs: dict, twin: Twin) -> None:
    inits = {"roi": np.array([], f32), "scales": np.array([1, 1, 2, 2], f32)}
    nodes = [node("Resize", ["z", "roi", "scales"], "r", **attrs), node("Tanh", ["r"])]
    model = make_model(nodes, ("N", 3, 4, 5), dtype=f32, inits=inits)
    check_twin(model, randn(2, 3, 4, 5, dtype=f32), lambda t: torch.tanh(twin(t)), TOL32)


# ---------------------------------------------------------------------------------------------------------
# (b) End to end: exported generators, loss graph vs torch per-sample MSE/L1 + autograd
# ---------------------------------------------------------------------------------------------------------


def _randomise_batch_norm(module: torch.nn.Module) -> None:
    """Fresh BatchNorm stats are identity maps; random ones make the folded weights non-trivial."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[torch.nn.Module, onnx.ModelProto, tuple]]:
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("onnx")
    dcgan = DCGANGenerator().eval()
    _randomise_batch_norm(dcgan)
    vae = VAEDecoder(VAEConfig(latent_dim=16, width=16)).eval()
    return {
        "dcgan": (dcgan, export_forward(dcgan, torch.randn(2, 100, 1, 1), out / "dcgan.onnx"), (100, 1, 1)),
        "vae": (vae, export_forward(vae, torch.randn(1, 16), out / "vae.onnx"), (16,)),
    }


def _torch_loss_grad(module: torch.nn.Module, z: torch.Tensor, x: torch.Tensor, kind: str) -> tuple:
    zz = z.clone().requires_grad_(True)
    y = module(zz)
    loss, gy = loss_and_grad(y.detach(), x, kind)  # THE definition (kernels/reference.py)
    (gz,) = torch.autograd.grad(y, zz, gy)
    return loss, gz


@pytest.mark.parametrize("name", ["dcgan", "vae"])
@pytest.mark.parametrize("kind,batch", [("mse", 3), ("mse", 1), ("l1", 5), ("mse-dct8", 2)])
def test_end_to_end_loss_graph(exported: dict, name: str, kind: str, batch: int) -> None:
    module, forward, latent = exported[name]
    start = time.perf_counter()
    graph = build_loss_graph(forward, kind=kind, include_image=True)
    assert time.perf_counter() - start < 1.0
    assert [o.name for o in graph.graph.output] == ["loss", "grad_z", "image"]
    gen = torch.Generator().manual_seed(batch)
    z = torch.randn(batch, *latent, generator=gen)
    with torch.no_grad():
        image = module(z)
    x = torch.rand(image.shape, generator=gen) * 2 - (1 if name == "dcgan" else 0)
    loss, grad_z, ort_image = session(graph).run(None, {"z": z.numpy(), "target": x.numpy()})
    ref_loss, ref_grad = _torch_loss_grad(module, z, x, kind)
    assert loss.shape == (batch,) and grad_z.shape == tuple(z.shape)
    assert rel(ort_image, image) <= 1e-5
    assert rel(loss, ref_loss) <= 1e-5
    assert rel(grad_z, ref_grad) <= 1e-5


def test_end_to_end_vjp_graph(exported: dict) -> None:
    module, forward, latent = exported["dcgan"]
    graph = build_vjp_graph(forward)
    assert [i.name for i in graph.graph.input] == ["z", "g_image"]
    assert [o.name for o in graph.graph.output] == ["image", "g_z"]
    assert [o.name for o in build_vjp_graph(forward, include_forward_output=False).graph.output] == ["g_z"]
    z = torch.randn(4, *latent)
    zz = z.clone().requires_grad_(True)
    y = module(zz)
    gy = torch.randn(y.shape)
    (ref,) = torch.autograd.grad(y, zz, gy)
    image, gz = session(graph).run(None, {"z": z.numpy(), "g_image": gy.numpy()})
    assert rel(image, y) <= 1e-5 and rel(gz, ref) <= 1e-5
    # same weights, standard ops, same opset
    assert {t.name for t in forward.graph.initializer} <= {t.name for t in graph.graph.initializer}
    assert list(graph.opset_import) == list(forward.opset_import)
    assert all(n.domain in ("", "ai.onnx") for n in graph.graph.node)


def test_export_forward_single_file(exported: dict, tmp_path: Path) -> None:
    _, forward, _ = exported["vae"]
    meta = {p.key: p.value for p in forward.metadata_props}
    assert meta[onnx_forward.EXPORTER_KEY] == "dynamo"
    assert forward.graph.input[0].name == "z" and forward.graph.output[0].name == "image"
    assert not forward.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")  # dynamic batch
    assert all(t.data_location != TensorProto.EXTERNAL for t in forward.graph.initializer)


def test_torchscript_fallback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The TorchScript exporter's Shape→Gather→Concat→Reshape: z reaches the shape only through Shape."""

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("dynamo unavailable")

    monkeypatch.setattr(onnx_forward, "_export_dynamo", broken)
    torch.manual_seed(1)
    module = VAEDecoder(VAEConfig(latent_dim=8, width=8)).eval()
    forward = export_forward(module, torch.randn(2, 8), tmp_path / "vae_ts.onnx")
    assert {p.key: p.value for p in forward.metadata_props}[onnx_forward.EXPORTER_KEY] == "torchscript"
    assert "Shape" in {n.op_type for n in forward.graph.node}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vae_ts.onnx"]
    z, x = torch.randn(3, 8), torch.rand(3, 3, 32, 32)
    loss, grad_z = session(build_loss_graph(forward)).run(None, {"z": z.numpy(), "target": x.numpy()})
    ref_loss, ref_grad = _torch_loss_grad(module, z, x, "mse")
    assert rel(loss, ref_loss) <= 1e-5 and rel(grad_z, ref_grad) <= 1e-5


# ---------------------------------------------------------------------------------------------------------
# (c) Unsupported ops, (d) shape-only dependencies, naming
# ---------------------------------------------------------------------------------------------------------


def test_unsupported_op_names_op_and_node() -> None:
    nodes = [node("Tanh", ["z"], "t"), helper.make_node("LpNormalization", ["t"], ["c"], name="my_lpnorm"),
             node("Sin", ["c"])]  # fmt: skip
    model = make_model(nodes, (2, 3))
    with pytest.raises(UnsupportedOpError, match="LpNormalization") as info:
        build_vjp_graph(model)
    assert "my_lpnorm" in str(info.value) and info.value.op_type == "LpNormalization"
    assert info.value.node_name == "my_lpnorm" and isinstance(info.value, ValueError)


def test_unsupported_unnamed_and_custom_domain_nodes() -> None:
    unnamed = make_model([node("Tanh", ["z"], "t"), node("Det", ["t"])], (3, 3))
    with pytest.raises(UnsupportedOpError, match=r"Det.*unnamed Det -> y"):
        build_vjp_graph(unnamed)
    custom = make_model([helper.make_node("FastGelu", ["z"], ["y"], name="fg", domain="com.microsoft")], (3, 3))
    custom.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with pytest.raises(UnsupportedOpError, match=r"com\.microsoft::FastGelu"):
        build_vjp_graph(custom)


def test_unsupported_rule_variant() -> None:
    inits = {"roi": np.array([0, 0, 0.1, 0.1, 1, 1, 0.9, 0.9], f32), "scales": np.array([1, 1, 2, 2], f32)}
    attrs = {"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize"}
    model = make_model([helper.make_node("Resize", ["z", "roi", "scales"], ["y"], name="crop", **attrs)],
                       (1, 1, 4, 4), dtype=f32, inits=inits)  # fmt: skip
    with pytest.raises(UnsupportedOpError, match=r"crop.*tf_crop_and_resize"):
        build_vjp_graph(model)


def test_shape_only_dependency_is_not_differentiated() -> None:
    """A diffusers-style timestep path: z → Shape → … → Sin/CumSum → scales the data path, yet is constant."""
    nodes = [
        node("Shape", ["z"], "shape"),
        node("Gather", ["shape", "zero"], "n", axis=0),
        node("Cast", ["n"], "nf", to=TensorProto.DOUBLE),
        node("Unsqueeze", ["nf", "zero"], "nv"),
        node("LpNormalization", ["nv"], "unit", p=1),  # no VJP rule: must never be visited
        node("Add", ["unit", "nv"], "cs"),
        node("Sin", ["cs"], "emb"),
        node("Tanh", ["z"], "t"),
        node("Mul", ["t", "emb"], "m"),
        node("ConstantOfShape", ["shape"], "ones", value=helper.make_tensor("v", TensorProto.DOUBLE, [1], [1.0])),
        node("Add", ["m", "ones"]),
    ]
    model = make_model(nodes, ("N", 3), inits={"zero": np.array([0], np.int64)})
    z = randn(4, 3)
    check_twin(model, z, lambda t: torch.tanh(t) * np.sin(5.0) + 1.0, TOL64)


def test_output_independent_of_z_gives_zero_gradient() -> None:
    nodes = [node("Shape", ["z"], "s"), node("Cast", ["s"], "sf", to=TensorProto.DOUBLE), node("Sin", ["sf"])]
    model = make_model(nodes, (2, 3))
    _, gz, _ = run_vjp(model, randn(2, 3))
    assert not gz.any()


def test_names_that_collide_with_new_inputs_are_renamed() -> None:
    """Third-party graphs may already use 'target', 'loss' or 'g_y' internally."""
    nodes = [node("Tanh", ["z"], "target"), node("Mul", ["target", "target"], "loss"), node("Sin", ["loss"], "g_y"),
             node("Add", ["g_y", "target"], "image")]  # fmt: skip
    model = make_model(nodes, ("N", 2, 3), dtype=f32, out="image")
    z, x = randn(2, 2, 3, dtype=f32), randn(2, 2, 3, dtype=f32)
    loss, grad_z = session(build_loss_graph(model)).run(None, {"z": z, "target": x})
    zt = torch.tensor(z, requires_grad=True)
    y = torch.sin(torch.tanh(zt) ** 2) + torch.tanh(zt)
    ref_loss, gy = loss_and_grad(y.detach(), torch.tensor(x))
    (ref_grad,) = torch.autograd.grad(y, zt, gy)
    assert rel(loss, ref_loss) <= TOL32 and rel(grad_z, ref_grad) <= TOL32
    vjp = build_vjp_graph(model)
    assert [i.name for i in vjp.graph.input] == ["z", "g_image"]


def test_bad_arguments() -> None:
    model = make_model([node("Tanh", ["z"])], (2, 3))
    with pytest.raises(ValueError, match="not an input"):
        build_vjp_graph(model, wrt="x")
    with pytest.raises(ValueError, match="not an output"):
        build_vjp_graph(model, output="nope")
    with pytest.raises(ValueError, match="loss kind"):
        build_loss_graph(model, kind="huber")  # type: ignore[arg-type]


def opaque_batch_shape(tail: Sequence[int], out: str = "di") -> tuple[list[onnx.NodeProto], dict[str, np.ndarray]]:
    """Nodes computing the shape (batch of z, *tail) whose values neither shape inference nor constant folding can
    see (Ceil stops ONNX data propagation; the batch comes from z, so nothing is constant)."""
    nodes = [
        node("Shape", ["z"], "zs"),
        node("Gather", ["zs", "zero"], "zn", axis=0),
        node("Concat", ["zn", "tail"], "full", axis=0),
        node("Cast", ["full"], "df", to=TensorProto.FLOAT),
        node("Ceil", ["df"], "dc"),
        node("Cast", ["dc"], out, to=TensorProto.INT64),
    ]
    return nodes, {"zero": np.array([0], np.int64), "tail": np.array(list(tail), np.int64)}


def test_unbroadcast_with_unknown_static_shape() -> None:
    """When shape inference cannot size an operand, its size-1 axes are found at runtime, yet the gradient
    graph keeps static shapes: no NonZero, no reduction over run-time axes (TensorRT, CUDA graphs)."""
    c = randn(2, 3, 4, seed=9)
    shape_nodes, inits = opaque_batch_shape([1, 4])
    nodes = [*shape_nodes, node("Reshape", ["z", "di"], "r"), node("Mul", ["r", "c"])]
    model = make_model(nodes, (2, 4), inits={**inits, "c": c})
    assert_static_gradient_graph(build_vjp_graph(model))
    check_twin(model, randn(2, 4), lambda t: t.reshape(2, 1, 4) * t64(c), TOL64)


def test_scalar_scaling_of_an_output_of_unknown_rank() -> None:
    """genorigin appends (y − low)/span to third-party graphs: with scalar operands no rank is needed, and the
    loss head averages the flattened sample, so graphs whose output rank inference cannot find still work."""
    shape = helper.make_tensor_value_info("shape", TensorProto.INT64, [None])  # its length is unknown: so is the rank
    nodes = [node("Reshape", ["z", "shape"], "r"), node("Tanh", ["r"], "t"), node("Sub", ["t", "low"], "s"),
             node("Div", ["s", "span"], "y")]  # fmt: skip
    model = make_model(nodes, ("N", 8), dtype=f32, inits={"low": np.array(-1.0), "span": np.array(2.0)})
    model.graph.input.append(shape)
    z, gy = randn(2, 8, dtype=f32), randn(2, 2, 2, 2, seed=1, dtype=f32)
    feeds = {"z": z, "shape": np.array([2, 2, 2, 2], np.int64)}
    zt = torch.tensor(z, requires_grad=True)
    image = (torch.tanh(zt.reshape(2, 2, 2, 2)) + 1) / 2
    (_, gz) = session(build_vjp_graph(model)).run(None, {**feeds, "g_y": gy})
    (ref,) = torch.autograd.grad(image, zt, torch.tensor(gy), retain_graph=True)
    assert rel(gz, ref) <= TOL32
    target = randn(2, 2, 2, 2, seed=2, dtype=f32)
    loss, grad_z = session(build_loss_graph(model)).run(None, {**feeds, "target": target})
    ref_loss, g_image = loss_and_grad(image.detach(), torch.tensor(target))
    (ref_grad,) = torch.autograd.grad(image, zt, g_image)
    assert rel(loss, ref_loss) <= TOL32 and rel(grad_z, ref_grad) <= TOL32


# ---------------------------------------------------------------------------------------------------------
# (e) The rule table: coverage, duplicates, what an unsupported graph is told
# ---------------------------------------------------------------------------------------------------------


def _ops_with_cases() -> set[str]:
    """Op types of the nodes this module's tests differentiate: literal ``node("Op", …)`` calls and the values
    of parametrized ``op`` arguments, read from this file."""
    ops: set[str] = set()
    for call in ast.walk(ast.parse(Path(__file__).read_text())):
        if not isinstance(call, ast.Call):
            continue
        callee = getattr(call.func, "id", getattr(call.func, "attr", ""))
        if callee in ("node", "make_node") and call.args and isinstance(call.args[0], ast.Constant):
            ops.add(call.args[0].value)
        if callee == "parametrize" and isinstance(call.args[0], ast.Constant):
            names = [name.strip() for name in call.args[0].value.split(",")]
            if "op" in names:
                values = eval(compile(ast.Expression(call.args[1]), __file__, "eval"), globals())
                ops.update(v if len(names) == 1 else v[names.index("op")] for v in values)
    return ops


def test_every_supported_op_has_a_gradient_case() -> None:
    missing = sorted(set(supported_ops()) - _ops_with_cases())
    assert not missing, f"VJP rules without a gradient test case in this file: {missing}"


def test_registering_an_op_twice_raises() -> None:
    before = dict(RULES)

    def fn(e: Any, n: Any, gys: list) -> list:
        return gys

    with pytest.raises(DuplicateRuleError, match="'Tanh' already has a VJP rule"):
        rule("Tanh")(fn)
    with pytest.raises(DuplicateRuleError, match="'Shape' is listed as never carrying a gradient"):
        rule("Shape")(fn)
    with pytest.raises(DuplicateRuleError):
        rule("NotAnOnnxOp", "Sigmoid")(fn)  # all or nothing: the new op is not registered either
    assert dict(RULES) == before


def test_unsupported_op_error_gives_path_fix_and_nearest_ops() -> None:
    nodes = [
        helper.make_node("Tanh", ["z"], ["t"], name="tanh1"),
        helper.make_node("Sin", ["z"], ["s"], name="sin1"),
        helper.make_node("Mul", ["t", "s"], ["m"], name="mul1"),
        helper.make_node("LpNormalization", ["m"], ["c"], name="my_lpnorm"),
        node("Sin", ["c"]),
    ]
    with pytest.raises(UnsupportedOpError) as info:
        build_vjp_graph(make_model(nodes, (2, 3)))
    err = info.value
    assert err.path == ["z", "Tanh 'tanh1'", "Mul 'mul1'", "LpNormalization 'my_lpnorm'"]
    assert sorted(err.supported) == supported_ops() and err.supported[0].endswith("Normalization")
    message = str(err)
    assert "z → Tanh 'tanh1' → Mul 'mul1' → LpNormalization 'my_lpnorm'" in message
    assert "fix: rewrite that part of the model with supported ops" in message and "\n" not in message


def test_unknown_shape_error_names_the_users_node_and_the_fix() -> None:
    """A shape that inference cannot follow: the message says which node needs it and how to re-export."""
    shape_nodes, inits = opaque_batch_shape([2, 2, 2])
    nodes = [
        *shape_nodes,
        helper.make_node("Reshape", ["z", "di"], ["r"], name="user_reshape"),
        helper.make_node("Conv", ["r", "w"], ["y"], name="user_conv"),
    ]
    inits["w"] = randn(1, 2, 1, 1)
    with pytest.raises(UnsupportedOpError, match=r"node 'user_conv'.*z → Reshape 'user_reshape' → Conv 'user_conv'.*"
                       r"fix: re-export the model with static non-batch shapes"):  # fmt: skip
        build_vjp_graph(make_model(nodes, (1, 8), dtype=f32, inits=inits))
