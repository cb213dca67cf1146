"""Reference definitions of the per-sample loss and the Adam step with best-so-far bookkeeping.

These formulas are THE definition used by every backend: the CPU backends call them directly (they work on
NumPy arrays and on torch tensors alike), and the CUDA kernels in this folder are tested against them.

Conventions
- ``loss[n]`` is the mean over C·H·W of the per-element loss; it is reported unweighted.
- ``gy = scale · weight[n] · ∂loss[n]/∂y``. The inversion loop uses ``scale=1`` (each sample follows its own
  gradient, independent of batch composition); ``scale=1/N`` gives the gradient of the batch mean.
- ``adam_step`` first records the best-so-far loss and latent (the loss was measured at the current z), then
  applies one Adam update with bias correction by the per-sample step count ``t`` (1-based), exactly as
  ``torch.optim.Adam`` does. Per-sample ``t`` lets a batch slot be refilled with a new image mid-run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .projection import BLOCK, PROJECTIONS, padded_size, projection_weights

LossKind = Literal["mse", "l1", "mse-dct8"]


def loss_kinds() -> tuple[str, ...]:
    """Every loss kind the reference defines: the pointwise ones and the projections (kernels/projection.py)."""
    return ("mse", "l1", *PROJECTIONS)


Array = Any  # numpy.ndarray or torch.Tensor


@dataclass(frozen=True)
class AdamConfig:
    """Adam's hyper-parameters, typed: what every backend's ``step`` receives (never a loose tuple)."""

    lr: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    lr_halve_every: int = 0  # 0: constant lr (the paper); k: halve every k steps of a slot (LatentTracer)

    def __post_init__(self) -> None:
        if not self.lr > 0 or not 0 <= self.beta1 < 1 or not 0 <= self.beta2 < 1 or not self.eps > 0:
            raise ValueError(f"bad Adam hyper-parameters {self}")
        if self.lr_halve_every < 0:
            raise ValueError("lr_halve_every must be ≥ 0")

    def lr_at(self, t: Array) -> float | Array:
        """Learning rate of each slot at its (1-based) step count ``t`` (a scalar when the lr is constant)."""
        if not self.lr_halve_every:
            return self.lr
        return self.lr * 0.5 ** ((t - 1) // self.lr_halve_every)


def _is_torch(a: Array) -> bool:
    return type(a).__module__.startswith("torch")


def _per_sample(vec: Array, like: Array) -> Array:
    """Reshape an (N,) vector to broadcast against an (N, ...) array."""
    return vec.reshape((vec.shape[0],) + (1,) * (like.ndim - 1))


def _where(cond: Array, a: Array, b: Array) -> Array:
    if _is_torch(cond):
        import torch

        return torch.where(cond, a, b)
    return np.where(cond, a, b)


def _sqrt(a: Array) -> Array:
    return a.sqrt() if _is_torch(a) else np.sqrt(a)


def _sign(a: Array) -> Array:
    return a.sign() if _is_torch(a) else np.sign(a)


def _abs(a: Array) -> Array:
    return a.abs() if _is_torch(a) else np.abs(a)


def _like(a: Array, like: Array) -> Array:
    """Cast a to like's dtype (float64 per-sample terms back to the latent's precision)."""
    return a.to(like.dtype) if _is_torch(a) else a.astype(like.dtype)


def loss_and_grad(
    y: Array,
    x: Array,
    kind: LossKind = "mse",
    weight: Array | None = None,
    scale: float = 1.0,
) -> tuple[Array, Array]:
    """Per-sample loss between generated ``y`` and target ``x`` (N×C×H×W) and its gradient w.r.t. ``y``."""
    if y.shape != x.shape:
        raise ValueError(f"y {tuple(y.shape)} and x {tuple(x.shape)} differ in shape")
    n = y.shape[0]
    count = int(np.prod(y.shape[1:])) if y.ndim > 1 else 1
    diff = y.astype(np.float32) - x if not _is_torch(y) else y.float() - x
    flat = diff.reshape(n, -1)
    if kind == "mse":
        loss = (flat * flat).sum(1) / count
        gy = diff * (2.0 / count)
    elif kind == "l1":
        loss = _abs(flat).sum(1) / count
        gy = _sign(diff) * (1.0 / count)
    elif kind in PROJECTIONS:
        coef = project(diff, kind)
        loss = (coef * coef).reshape(n, -1).sum(1) / count
        gy = project_transpose(coef, kind, diff.shape) * (2.0 / count)
    else:
        raise ValueError(f"unknown loss kind {kind!r}; expected one of {', '.join(loss_kinds())}")
    factor = scale if weight is None else _per_sample(weight, gy) * scale
    return loss, gy * factor


def _weights_like(kind: str, channels: int, like: Array) -> Array:
    """The projection's weights in ``like``'s array type, dtype and device."""
    w = projection_weights(kind, channels)
    if _is_torch(like):
        import torch

        return torch.tensor(w, dtype=like.dtype, device=like.device)
    return w.astype(like.dtype)


def project(r: Array, kind: str) -> Array:
    """P·r for N×C×H×W residuals: N×K×⌈H/8⌉×⌈W/8⌉ kept block-DCT coefficients (kernels/projection.py)."""
    n, c, h, w = r.shape
    ph, pw = padded_size(h) - h, padded_size(w) - w
    if ph or pw:
        if _is_torch(r):
            import torch

            r = torch.nn.functional.pad(r, (0, pw, 0, ph))
        else:
            r = np.pad(r, ((0, 0), (0, 0), (0, ph), (0, pw)))
    blocks = r.reshape(n, c, (h + ph) // BLOCK, BLOCK, (w + pw) // BLOCK, BLOCK)
    return _einsum("ncaibj,kcij->nkab", blocks, _weights_like(kind, c, r))


def project_transpose(coef: Array, kind: str, shape: tuple[int, ...]) -> Array:
    """Pᵀ·coef back to an N×C×H×W image (the padding cropped off): the adjoint of ``project``."""
    n, c, h, w = (int(s) for s in shape)
    blocks = _einsum("nkab,kcij->ncaibj", coef, _weights_like(kind, c, coef))
    full = blocks.reshape(n, c, coef.shape[2] * BLOCK, coef.shape[3] * BLOCK)
    return full[:, :, :h, :w]


def _einsum(spec: str, a: Array, b: Array) -> Array:
    if _is_torch(a):
        import torch

        # one sample at a time: a batched contraction picks its kernel by the batch's size, which gave a sample
        # other bits beside other samples (measured: 8×8 and 16×16 residuals); one sample's are its own
        if len(a) < 2:
            return torch.einsum(spec, a, b)
        return torch.cat([torch.einsum(spec, a[i : i + 1], b) for i in range(len(a))])
    return np.einsum(spec, a, b, optimize=True)


def adam_step(
    z: Array,
    m: Array,
    v: Array,
    grad: Array,
    t: Array,
    loss: Array,
    best_loss: Array,
    best_z: Array,
    lr: float | Array,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    clip: float | None = None,
) -> tuple[Array, Array, Array, Array, Array]:
    """One Adam update per sample plus best-so-far bookkeeping; returns (z, m, v, best_loss, best_z).

    ``t`` holds each sample's step count after this step (1 on a sample's first step).
    """
    improved = loss < best_loss
    best_loss = _where(improved, loss, best_loss)
    best_z = _where(_per_sample(improved, z), z, best_z)
    if clip is not None:
        grad = grad.clip(-clip, clip)
    m = beta1 * m + (1.0 - beta1) * grad
    v = beta2 * v + (1.0 - beta2) * grad * grad
    # Bias corrections in float64, rounded once to z's dtype, as torch.optim.Adam does (Python floats): in
    # float32, 1 - 0.999**t loses ~1e-5 relative accuracy for small t.
    tt = _per_sample(t, z)
    tt = tt.double() if _is_torch(tt) else np.asarray(tt, dtype=np.float64)
    if not isinstance(lr, float | int):  # a per-slot learning rate (N,)
        lr = _per_sample(lr, tt)
    bias1 = 1.0 - beta1**tt
    bias2 = 1.0 - beta2**tt
    step_size = _like(lr / bias1, z)
    bias2_sqrt = _like(_sqrt(bias2), z)
    denom = _sqrt(v) / bias2_sqrt + eps
    z = z - step_size * m / denom
    return z, m, v, best_loss, best_z
