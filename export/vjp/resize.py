"""VJP rule of Resize: linear and separable, so the adjoint applies each axis' transposed interpolation matrix.

The matrices are built here from ONNX's coordinate transforms (in float32, as ONNX Runtime computes them, so
nearest-neighbour ties fall the same way); integer nearest upsampling folds into a cheaper sum-pool.
"""

from __future__ import annotations

import math

import numpy as np
from onnx import NodeProto

from .emitter import Emitter, attr, norm_axis
from .errors import unsupported
from .registry import first_grad, grads, rule


@rule("Resize")
def _resize(e: Emitter, node: NodeProto, gys: list[str | None]) -> list[str | None]:
    """Resize is linear and separable: transpose each axis' interpolation matrix (integer nearest: sum-pool)."""
    g, x, y = first_grad(gys, node), node.input[0], node.output[0]
    rank = e.rank(x, node)
    matrices = _resize_matrices(e, node, rank)
    if not matrices:
        return grads(node, i0=g)
    if attr(node, "mode", "nearest") == "nearest":
        folded = _sum_pool_repeats(e, node, g, x, y, matrices)
        if folded is not None:
            return grads(node, i0=folded)
    for axis, matrix in matrices.items():
        g = e.apply_along_axis(g, matrix.T, axis, rank, x)
    return grads(node, i0=g)


def _resize_matrices(e: Emitter, node: NodeProto, rank: int) -> dict[int, np.ndarray]:
    """Per-axis forward interpolation matrices (out × in) of the axes the node actually changes."""
    x, y = node.input[0], node.output[0]
    mode = attr(node, "mode", "nearest")
    transform = attr(node, "coordinate_transformation_mode", "half_pixel")
    if mode not in ("nearest", "linear", "cubic"):
        raise unsupported(node, f"mode {mode!r}")
    if transform == "tf_crop_and_resize":
        raise unsupported(node, "coordinate_transformation_mode 'tf_crop_and_resize'")
    axes = [norm_axis(int(a), rank) for a in attr(node, "axes", list(range(rank)))]
    scales = _resize_scales(e, node, axes)
    matrices = {}
    for axis, scale in zip(axes, scales, strict=True):
        if scale == 1.0:  # identity in every supported mode (and the batch axis may be dynamic)
            continue
        n_in, n_out = e.static_dims(x, node, [axis])[0], e.static_dims(y, node, [axis])[0]
        if attr(node, "antialias", 0) and scale < 1.0 and mode != "nearest":
            raise unsupported(node, "antialiased downscaling")
        coords = _source_coordinates(transform, n_in, n_out, scale)
        matrix = _interpolation_matrix(node, mode, coords, n_in)
        if not (n_in == n_out and np.array_equal(matrix, np.eye(n_in))):
            matrices[axis] = matrix
    return matrices


def _resize_scales(e: Emitter, node: NodeProto, axes: list[int]) -> list[float]:
    """Scales as ORT uses them in the coordinate transform: given scales, else sizes / input sizes."""
    scales = e.require_const(node, 2, "scales")
    if scales is not None and scales.size:
        return [float(s) for s in scales]
    x = node.input[0]
    in_sizes = e.static_dims(x, node, axes)
    sizes = e.require_const(node, 3, "sizes")
    if sizes is None or not sizes.size:
        raise unsupported(node, "neither scales nor sizes are given")
    ratios = [float(s) / float(n) for s, n in zip(sizes, in_sizes, strict=True)]
    policy = attr(node, "keep_aspect_ratio_policy", "stretch")
    if policy == "not_larger":
        return [min(ratios)] * len(ratios)
    if policy == "not_smaller":
        return [max(ratios)] * len(ratios)
    return ratios


def _source_coordinates(transform: str, n_in: int, n_out: int, scale: float) -> np.ndarray:
    """x_original of every output index, in float32 like ONNX Runtime (matters for nearest ties)."""
    f = np.float32
    out = np.arange(n_out, dtype=f)
    s = f(scale)
    if transform == "align_corners":
        if n_out == 1:
            return np.zeros(1, dtype=f)
        return out * f(n_in - 1) / f(n_out - 1)
    if transform == "asymmetric":
        return out / s
    if transform == "pytorch_half_pixel":
        return (out + f(0.5)) / s - f(0.5) if n_out > 1 else np.zeros(n_out, dtype=f)
    if transform == "half_pixel_symmetric":
        adjustment = f(n_out) / (s * f(n_in))
        offset = f(n_in) / f(2) * (f(1) - adjustment)
        return offset + (out + f(0.5)) / s - f(0.5)
    if transform == "half_pixel":
        return (out + f(0.5)) / s - f(0.5)
    raise ValueError(f"unknown coordinate_transformation_mode {transform!r}")


def _interpolation_matrix(node: NodeProto, mode: str, coords: np.ndarray, n_in: int) -> np.ndarray:
    matrix = np.zeros((coords.size, n_in))
    rows = np.arange(coords.size)
    if mode == "nearest":
        idx = _nearest_index(attr(node, "nearest_mode", "round_prefer_floor"), coords.astype(np.float64))
        matrix[rows, np.clip(idx, 0, n_in - 1)] = 1.0
    elif mode == "linear":
        c = np.clip(coords.astype(np.float64), 0.0, n_in - 1)
        lo = np.floor(c).astype(np.int64)
        hi = np.minimum(lo + 1, n_in - 1)
        frac = c - lo
        np.add.at(matrix, (rows, lo), 1.0 - frac)
        np.add.at(matrix, (rows, hi), frac)
    else:
        _cubic_weights(matrix, coords.astype(np.float64), float(attr(node, "cubic_coeff_a", -0.75)),
                       bool(attr(node, "exclude_outside", 0)))  # fmt: skip
    return matrix


def _nearest_index(nearest_mode: str, c: np.ndarray) -> np.ndarray:
    if nearest_mode == "floor":
        return np.floor(c).astype(np.int64)
    if nearest_mode == "ceil":
        return np.ceil(c).astype(np.int64)
    if nearest_mode == "round_prefer_ceil":
        return np.floor(c + 0.5).astype(np.int64)
    return np.ceil(c - 0.5).astype(np.int64)  # round_prefer_floor


def _cubic_weights(matrix: np.ndarray, coords: np.ndarray, a: float, exclude_outside: bool) -> None:
    """Keys cubic convolution with coefficient ``a``; taps outside clamp to the edge or are dropped."""
    n_in = matrix.shape[1]
    for row, c in enumerate(coords):
        base = math.floor(c)
        t = c - base
        taps = [
            ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
            ((a + 2) * t - (a + 3)) * t * t + 1,
            ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
            ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a,
        ]
        inside = [0 <= base + k < n_in for k in (-1, 0, 1, 2)]
        if exclude_outside:
            total = sum(w for w, ok in zip(taps, inside, strict=True) if ok)
            taps = [w / total if ok else 0.0 for w, ok in zip(taps, inside, strict=True)]
        for k, w in zip((-1, 0, 1, 2), taps, strict=True):
            matrix[row, min(max(base + k, 0), n_in - 1)] += w


def _sum_pool_repeats(
    e: Emitter, node: NodeProto, g: str, x: str, y: str, matrices: dict[int, np.ndarray]
) -> str | None:
    """Integer nearest upsampling repeats each pixel f times: fold (n·f) → (n, f) and sum the f axis."""
    factors = {}
    for axis, matrix in matrices.items():
        n_out, n_in = matrix.shape
        if n_out % n_in or not np.array_equal(matrix.argmax(1), np.arange(n_out) // (n_out // n_in)):
            return None
        factors[axis] = n_out // n_in
    dims = e.dims(y)
    assert dims is not None
    first = min(factors)
    shape: list[int] = []
    for axis, d in enumerate(dims):
        if axis < first:
            shape.append(0)  # Reshape copies these (batch may be dynamic)
        elif d is None or d < 0:
            return None
        elif axis in factors:
            shape += [d // factors[axis], factors[axis]]
        else:
            shape.append(d)
    folded = e.op("Reshape", [g, e.ints(shape)])
    sum_axes = [axis + 1 + k for k, axis in enumerate(sorted(factors))]  # each factor axis follows its axis
    return e.reshape_like(e.reduce("ReduceSum", folded, sum_axes, keepdims=False), x)
