"""Launch planning for the CUDA loss and Adam kernels: grids, vector path, workspace, packed arguments.

Pure functions of shapes, dtypes, pointer alignment and the device's SM count (no driver, no GPU), so the
launch logic is tested on CPU and equal plans give bit-identical results. ``launch.CudaKernels`` turns a
plan into ``cuLaunchKernel`` calls.

Grid sizing assumes ``*_BLOCKS_PER_SM`` resident blocks per SM: the second argument of each kernel's
``__launch_bounds__`` (``LOSS_MIN_BLOCKS``/``ADAM_MIN_BLOCKS`` in the .cu files), which makes ptxas cap the
registers so that many blocks fit. ``tests/test_kernel_occupancy.py`` checks the compiled kernels against
these numbers on sm_80 and sm_90; at run time ``CudaKernels`` asks the driver's occupancy API instead.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

LOSS_BLOCK = 256  # LOSS_BLOCK in loss.cu
ADAM_BLOCK = 256  # ADAM_BLOCK in adam.cu
LOSS_BLOCKS_PER_SM = 5  # LOSS_MIN_BLOCKS in loss.cu's __launch_bounds__
ADAM_BLOCKS_PER_SM = 5  # ADAM_MIN_BLOCKS in adam.cu's __launch_bounds__
ADAM_MIN_PER_THREAD = 4  # below this many elements per thread, one block per sample (fused best_loss)

DTYPES: dict[str, tuple[str, int]] = {"float32": ("f32", 4), "float16": ("f16", 2), "bfloat16": ("bf16", 2)}
STEP_KINDS: dict[str, int] = {"int32": 0, "int64": 1, "float32": 2, "float64": 3}
LOSS_KINDS: dict[str, int] = {"mse": 0, "l1": 1}


def block_size(kernel: str) -> int:
    """Threads per block a kernel is launched with."""
    return ADAM_BLOCK if kernel.startswith("genorigin_adam") else LOSS_BLOCK


def planned_blocks_per_sm(kernel: str) -> int | None:
    """Resident blocks per SM the kernel's grid is sized for; None when its grid does not depend on it."""
    if kernel == "genorigin_adam":
        return ADAM_BLOCKS_PER_SM
    if kernel.startswith("genorigin_loss_") and kernel != "genorigin_loss_finalize":
        return LOSS_BLOCKS_PER_SM
    return None


def dtype_name(t: Any) -> str:
    """A torch tensor's dtype as these modules name dtypes ('float32', 'bfloat16', ...)."""
    return str(t.dtype).removeprefix("torch.")


def loss_kernel_name(y_dtype: str, x_dtype: str, gy_dtype: str) -> str:
    """Kernel for these dtypes; x and gy are float32 or y's dtype (what loss.cu instantiates)."""
    for name in (y_dtype, x_dtype, gy_dtype):
        if name not in DTYPES:
            raise ValueError(f"unsupported dtype {name!r}; expected one of {sorted(DTYPES)}")
    for what, dt in (("x", x_dtype), ("gy", gy_dtype)):
        if dt not in ("float32", y_dtype):
            raise ValueError(f"{what} dtype must be float32 or y's dtype {y_dtype}, got {dt}")
    return "genorigin_loss_" + "_".join(DTYPES[d][0] for d in (y_dtype, x_dtype, gy_dtype))


@dataclass(frozen=True)
class LossPlan:
    """How one loss launch is laid out; equal plans give bit-identical results."""

    kernel: str
    grid: int
    block: int
    blocks_per_sample: int
    vec: bool
    workspace_bytes: int  # fp64 partials, N * blocks_per_sample, when blocks_per_sample > 1
    c0: float  # fp32(2/count) for MSE, fp32(1/count) for L1


def plan_loss(
    n: int,
    count: int,
    *,
    sm_count: int,
    kind: str = "mse",
    y_dtype: str = "float32",
    x_dtype: str = "float32",
    gy_dtype: str = "float32",
    ptrs: Sequence[int] = (),
    blocks_per_sample: int | None = None,
    blocks_per_sm: int = LOSS_BLOCKS_PER_SM,
) -> LossPlan:
    """Grid for N samples of ``count`` elements: enough blocks to fill the GPU, one sample per block row.

    The 4-wide vector path needs count % 4 == 0 and every pointer aligned to 4 elements; ``ptrs`` are
    (y, x, gy) addresses; ``blocks_per_sm`` is how many of the kernel's blocks one SM holds at once.
    """
    if kind not in LOSS_KINDS:
        raise ValueError(f"unknown loss kind {kind!r}; expected 'mse' or 'l1'")
    if n < 1 or count < 1:
        raise ValueError(f"need N >= 1 samples of >= 1 element, got N={n}, count={count}")
    name = loss_kernel_name(y_dtype, x_dtype, gy_dtype)
    sizes = [DTYPES[d][1] for d in (y_dtype, x_dtype, gy_dtype)]
    vec = count % 4 == 0 and all(int(p) % (4 * s) == 0 for p, s in zip(ptrs, sizes, strict=False))
    units = count // 4 if vec else count
    useful = max(1, math.ceil(units / LOSS_BLOCK))  # beyond this a block would have idle threads only
    if blocks_per_sample is None:
        wanted = math.ceil(max(1, sm_count) * max(1, blocks_per_sm) / n)
        blocks_per_sample = max(1, min(wanted, useful))
    if not 1 <= blocks_per_sample <= 65535:
        raise ValueError(f"blocks_per_sample must be in [1, 65535], got {blocks_per_sample}")
    grid = n * blocks_per_sample
    if grid > 2**31 - 1:
        raise ValueError(f"grid of {grid} blocks is too large; use fewer blocks per sample")
    c0 = float(np.float32((2.0 if kind == "mse" else 1.0) / count))
    workspace = 8 * grid if blocks_per_sample > 1 else 0
    return LossPlan(name, grid, LOSS_BLOCK, blocks_per_sample, vec, workspace, c0)


@dataclass(frozen=True)
class AdamPlan:
    grid: int
    block: int
    blocks_per_sample: int
    fused: bool  # one block per sample updates best_loss itself; else a second tiny kernel does
    best_grid: int


def plan_adam(
    n: int, d: int, *, sm_count: int, blocks_per_sample: int | None = None, blocks_per_sm: int = ADAM_BLOCKS_PER_SM
) -> AdamPlan:
    """One block per sample for small latents (a single launch); several, plus a best_loss pass, for big."""
    if n < 1 or d < 1:
        raise ValueError(f"need N >= 1 samples of >= 1 element, got N={n}, D={d}")
    if blocks_per_sample is None:
        useful = max(1, d // (ADAM_BLOCK * ADAM_MIN_PER_THREAD))
        wanted = math.ceil(max(1, sm_count) * max(1, blocks_per_sm) / n)
        blocks_per_sample = max(1, min(wanted, useful))
    if not 1 <= blocks_per_sample <= 65535:
        raise ValueError(f"blocks_per_sample must be in [1, 65535], got {blocks_per_sample}")
    fused = blocks_per_sample == 1
    return AdamPlan(
        grid=n * blocks_per_sample,
        block=ADAM_BLOCK,
        blocks_per_sample=blocks_per_sample,
        fused=fused,
        best_grid=0 if fused else math.ceil(n / ADAM_BLOCK),
    )


class PackedParams:
    """The ``void**`` array cuLaunchKernel reads: one pointer per kernel argument, each to its ctypes value.

    Keeps the values alive until the launch has copied them (the driver copies at launch time).
    """

    def __init__(self, values: Sequence[ctypes._SimpleCData]) -> None:
        self.values = list(values)
        self.array = (ctypes.c_void_p * max(1, len(self.values)))(*(ctypes.addressof(v) for v in self.values))

    @property
    def address(self) -> int:
        return ctypes.addressof(self.array)


def loss_params(
    plan: LossPlan, y: int, x: int, gy: int, weight: int, loss: int, partial: int, count: int, kind: str,
    scale: float,
) -> PackedParams:  # fmt: skip
    """Arguments in loss.cu's order: (y, x, gy, weight, loss, partial, count, bps, kind, vec, c0, scale)."""
    vp = ctypes.c_void_p
    return PackedParams([
        vp(y), vp(x), vp(gy), vp(weight or None), vp(loss), vp(partial or None),
        ctypes.c_longlong(count), ctypes.c_int(plan.blocks_per_sample), ctypes.c_int(LOSS_KINDS[kind]),
        ctypes.c_int(int(plan.vec)), ctypes.c_float(plan.c0), ctypes.c_float(scale),
    ])  # fmt: skip


def adam_params(
    plan: AdamPlan, ptrs: Sequence[int], d: int, t_kind: int, lr: float, beta1: float, beta2: float,
    eps: float, clip: float | None,
) -> PackedParams:  # fmt: skip
    """Arguments in adam.cu's order: 8 pointers (z, m, v, grad, t, loss, best_loss, best_z), then scalars."""
    vp = ctypes.c_void_p
    return PackedParams([
        *(vp(p) for p in ptrs),
        ctypes.c_longlong(d), ctypes.c_int(plan.blocks_per_sample), ctypes.c_int(t_kind),
        ctypes.c_double(lr), ctypes.c_double(beta1), ctypes.c_double(beta2), ctypes.c_float(eps),
        ctypes.c_float(0.0 if clip is None else clip), ctypes.c_int(clip is not None),
        ctypes.c_int(int(plan.fused)),
    ])  # fmt: skip
