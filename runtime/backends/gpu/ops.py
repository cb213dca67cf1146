"""The loss and Adam halves of one inversion iteration on slot buffers: the CUDA kernels, or torch ops.

Both write into the bucket's static buffers, so a captured graph replays them in place. Which of the two
runs is decided once per backend by ``resolve_kernels``; a silent fall-back to torch ops would hide a broken
install (e.g. a cuda-python without ``cuda.bindings``), so ``kernels="auto"`` warns when it falls back.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
from genorigin.kernels import reference
from genorigin.kernels.plan import LOSS_KINDS
from genorigin.kernels.reference import AdamConfig
from genorigin.runtime.backends.gpu.slots import SlotBuffers
from genorigin.runtime.loop.optimizers import LBFGS

log = logging.getLogger(__name__)


class KernelFallbackWarning(RuntimeWarning):
    """kernels='auto' found no usable CUDA kernels on a CUDA device and uses torch ops instead."""


def resolve_kernels(choice: str, device: torch.device) -> tuple[Any | None, str | None]:
    """(the CUDA loss/Adam kernels or None, why not): 'cuda' requires them, 'torch' never uses them, 'auto'
    uses them on a CUDA device when they load and warns (KernelFallbackWarning) when they do not."""
    if choice not in ("auto", "cuda", "torch"):
        raise ValueError(f"kernels must be 'auto', 'cuda' or 'torch', got {choice!r}")
    if choice == "torch":
        return None, "kernels='torch'"
    if device.type != "cuda":
        if choice == "cuda":
            raise ValueError("kernels='cuda' needs a CUDA device")
        return None, f"device {device} is not CUDA"
    try:
        from genorigin.kernels.launch import get_kernels

        return get_kernels(device.index or 0), None
    except Exception as e:  # cuda-python/NVRTC absent or too old, compile or load failure
        if choice == "cuda":
            raise
        why = f"{type(e).__name__}: {e}"
        warn_fallback(why)
        return None, why


GPU_LOSS_KINDS = tuple(LOSS_KINDS)  # what the CUDA loss kernel and the TensorRT loss engines compute


def require_gpu_loss(loss: str) -> None:
    """Refuse, before any GPU work, a loss kind the GPU backends do not compute (the projection losses of the
    robust mode run on the torch and onnxruntime backends only)."""
    if loss not in GPU_LOSS_KINDS:
        raise ValueError(f"loss {loss!r} has no CUDA kernel or TensorRT loss graph (GPU backends compute "
                         f"{', '.join(GPU_LOSS_KINDS)}): use --backend torch, torch-cuda or onnxruntime")  # fmt: skip


def warn_fallback(why: str) -> None:
    msg = f"CUDA loss/Adam kernels unavailable, using torch ops (slower): {why}"
    log.warning(msg)
    warnings.warn(msg, KernelFallbackWarning, stacklevel=3)


def loss_into(y: torch.Tensor, bufs: SlotBuffers, kind: str, kernels: Any | None) -> torch.Tensor:
    """Per-slot loss into ``bufs.loss`` and the weighted ∂loss/∂y (padding weight 0) returned."""
    if kernels is not None:
        from genorigin.kernels.torch_launch import loss_and_grad_cuda

        loss, gy = loss_and_grad_cuda(y.contiguous(), bufs.x, kind, bufs.weight, kernels=kernels)
    else:
        loss, gy = reference.loss_and_grad(y, bufs.x, kind, bufs.weight)
    bufs.loss.copy_(loss)
    return gy


def update_into(bufs: SlotBuffers, grad: torch.Tensor, update: AdamConfig | LBFGS, kernels: Any | None) -> None:
    """The optimiser half of a captured iteration: Adam (kernel or reference) or the per-slot L-BFGS."""
    if isinstance(update, LBFGS):
        lbfgs_into(bufs, grad, update)
    else:
        adam_into(bufs, grad, update, kernels)


def lbfgs_into(bufs: SlotBuffers, grad: torch.Tensor, lbfgs: LBFGS) -> None:
    """t += 1, best-so-far, then the L-BFGS update (its history in ``bufs.extra``), all in place on the
    buffers: the same ``LBFGS.update`` the CPU runs, with no host read, so a CUDA graph captures it whole."""
    bufs.t.add_(1.0)
    improved = bufs.loss < bufs.best_loss
    bufs.best_z.copy_(torch.where(improved.reshape(-1, *([1] * (bufs.z.dim() - 1))), bufs.z, bufs.best_z))
    bufs.best_loss.copy_(torch.where(improved, bufs.loss, bufs.best_loss))
    n = bufs.bucket
    state = dict(bufs.extra)
    new_z = lbfgs.update(bufs.z.reshape(n, -1), bufs.loss, grad.reshape(n, -1).float(), state)
    bufs.z.copy_(new_z.reshape(bufs.z.shape))
    for name, value in state.items():
        if value is not bufs.extra[name]:
            bufs.extra[name].copy_(value)


def adam_into(bufs: SlotBuffers, grad: torch.Tensor, adam: AdamConfig, kernels: Any | None) -> None:
    """t += 1, then Adam with best-so-far on the buffers in place (the fused kernel, or reference.adam_step).

    The step counter is incremented here, inside the captured iteration, so no step uploads it from the host.
    """
    bufs.t.add_(1.0)
    hyper = (float(adam.lr), float(adam.beta1), float(adam.beta2), float(adam.eps))
    grad = grad.reshape(bufs.z.shape)
    if grad.dtype != torch.float32:
        grad = grad.float()
    if kernels is not None:
        from genorigin.kernels.torch_launch import adam_step_cuda_

        adam_step_cuda_(
            bufs.z, bufs.m, bufs.v, grad.contiguous(), bufs.t, bufs.loss, bufs.best_loss, bufs.best_z, *hyper,
            kernels=kernels,
        )  # fmt: skip
        return
    new = reference.adam_step(bufs.z, bufs.m, bufs.v, grad, bufs.t, bufs.loss, bufs.best_loss, bufs.best_z, *hyper)
    for dst, src in zip((bufs.z, bufs.m, bufs.v, bufs.best_loss, bufs.best_z), new):
        dst.copy_(src)
