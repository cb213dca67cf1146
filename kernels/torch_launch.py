"""The CUDA loss and Adam kernels on torch tensors: checked arguments, the device pointers handed to ``launch``.

torch is imported lazily, as in ``launch``: this module imports on a machine with neither GPU nor cuda-python.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from genorigin.kernels.launch import CudaKernels, get_kernels
from genorigin.kernels.plan import LOSS_KINDS, STEP_KINDS, dtype_name

if TYPE_CHECKING:
    import torch

_TORCH_DTYPES = ("float32", "float16", "bfloat16")


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _check_cuda_tensor(name: str, t: Any, device: Any | None = None) -> None:
    import torch

    _require(isinstance(t, torch.Tensor), f"{name} must be a torch.Tensor, got {type(t).__name__}")
    _require(t.is_cuda, f"{name} must be a CUDA tensor, got device {t.device}")
    _require(device is None or t.device == device, f"{name} is on {t.device}, expected {device}")
    _require(t.is_contiguous(), f"{name} must be contiguous")


def loss_and_grad_cuda(
    y: torch.Tensor,
    x: torch.Tensor,
    kind: str = "mse",
    weight: torch.Tensor | None = None,
    scale: float = 1.0,
    *,
    gy_dtype: torch.dtype | None = None,
    blocks_per_sample: int | None = None,
    kernels: CudaKernels | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """reference.loss_and_grad on CUDA tensors, on torch's current stream: returns (loss (N,) fp32, gy).

    y: fp32/fp16/bf16; x: fp32 or y's dtype; gy: fp32 by default (as the reference), or y's dtype.
    """
    import torch

    _check_cuda_tensor("y", y)
    _check_cuda_tensor("x", x, y.device)
    _require(y.ndim >= 1 and y.shape == x.shape, f"y {tuple(y.shape)} and x {tuple(x.shape)} differ in shape")
    _require(kind in LOSS_KINDS, f"unknown loss kind {kind!r}; expected 'mse' or 'l1'")
    y_dt, x_dt = dtype_name(y), dtype_name(x)
    _require(y_dt in _TORCH_DTYPES, f"y dtype must be float32, float16 or bfloat16, got {y.dtype}")
    _require(x_dt in ("float32", y_dt), f"x dtype must be float32 or y's dtype {y.dtype}, got {x.dtype}")
    gy_dt = str(gy_dtype).removeprefix("torch.") if gy_dtype is not None else "float32"
    _require(gy_dt in ("float32", y_dt), f"gy dtype must be float32 or y's dtype {y.dtype}, got {gy_dtype}")
    n = int(y.shape[0])
    count = int(math.prod(y.shape[1:])) if y.ndim > 1 else 1
    if weight is not None:
        _check_cuda_tensor("weight", weight, y.device)
        _require(weight.dtype == torch.float32 and tuple(weight.shape) == (n,), "weight must be (N,) float32")
    loss = torch.empty(n, dtype=torch.float32, device=y.device)
    gy = torch.empty(y.shape, dtype=getattr(torch, gy_dt), device=y.device)
    if n == 0:
        return loss, gy
    _require(count > 0, "each sample must have at least one element")
    ks = kernels if kernels is not None else get_kernels(y.device.index or 0)
    kw = {"kind": kind, "y_dtype": y_dt, "x_dtype": x_dt, "gy_dtype": gy_dt}
    ptrs = (y.data_ptr(), x.data_ptr(), gy.data_ptr())
    plan = ks.loss_plan(n, count, ptrs=ptrs, blocks_per_sample=blocks_per_sample, **kw)
    workspace = torch.empty(plan.workspace_bytes, dtype=torch.uint8, device=y.device)  # caching allocator
    ks.loss(
        ptrs[0], ptrs[1], loss.data_ptr(), ptrs[2], n, count,
        weight_ptr=weight.data_ptr() if weight is not None else 0, scale=scale,
        stream=torch.cuda.current_stream(y.device).cuda_stream,
        workspace_ptr=workspace.data_ptr() if plan.workspace_bytes else 0,
        blocks_per_sample=plan.blocks_per_sample, **kw,
    )  # fmt: skip
    return loss, gy


def adam_step_cuda_(
    z: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    grad: torch.Tensor,
    t: torch.Tensor,
    loss: torch.Tensor,
    best_loss: torch.Tensor,
    best_z: torch.Tensor,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    clip: float | None = None,
    *,
    blocks_per_sample: int | None = None,
    kernels: CudaKernels | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """reference.adam_step in place on CUDA tensors; returns (z, m, v, best_loss, best_z), the same objects.

    Same signature as the reference so a backend can swap it in; z, m, v, grad, best_z: (N, ...) float32,
    t: (N,) int32/int64/float32/float64 step counts, loss and best_loss: (N,) float32.
    """
    import torch

    _check_cuda_tensor("z", z)
    _require(z.dtype == torch.float32 and z.ndim >= 1, f"z must be (N, ...) float32, got {z.dtype}")
    n = int(z.shape[0])
    d = int(math.prod(z.shape[1:])) if z.ndim > 1 else 1
    for name, a in (("m", m), ("v", v), ("grad", grad), ("best_z", best_z)):
        _check_cuda_tensor(name, a, z.device)
        ok = a.dtype == torch.float32 and a.shape == z.shape
        _require(ok, f"{name} must be float32 of shape {tuple(z.shape)}")
    for name, a in (("loss", loss), ("best_loss", best_loss)):
        _check_cuda_tensor(name, a, z.device)
        _require(a.dtype == torch.float32 and tuple(a.shape) == (n,), f"{name} must be (N,) float32")
    _check_cuda_tensor("t", t, z.device)
    t_dt = dtype_name(t)
    _require(t_dt in STEP_KINDS and tuple(t.shape) == (n,), f"t must be (N,) of {sorted(STEP_KINDS)}")
    if n and d:
        ks = kernels if kernels is not None else get_kernels(z.device.index or 0)
        ks.adam(
            z.data_ptr(), m.data_ptr(), v.data_ptr(), grad.data_ptr(), t.data_ptr(), loss.data_ptr(),
            best_loss.data_ptr(), best_z.data_ptr(), n, d, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
            clip=clip, t_dtype=t_dt, stream=torch.cuda.current_stream(z.device).cuda_stream,
            blocks_per_sample=blocks_per_sample,
        )  # fmt: skip
    return z, m, v, best_loss, best_z
