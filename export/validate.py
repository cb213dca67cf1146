"""Numerical validation of an exported package before it is written: the gradient graphs must compute the
gradient, not just pass ``onnx.checker``.

Two references, whichever exists:

* the source PyTorch module (``genorigin export --model``): the package's ``loss_mse`` graph (loss, grad_z)
  and ``vjp`` graph (g_z for the loss's image gradient), run on ONNX Runtime CPU, against
  ``genorigin.kernels.reference.loss_and_grad`` + torch.autograd on seeded latents and targets (a batch of 1
  and one of 2, so the dynamic batch is exercised too);
* the forward graph alone (a third-party ONNX file): the directional derivative of the loss along unit
  directions (the gradient's own direction and random ones) by central finite differences of the forward
  graph, the loss summed on the host in float64 (ONNX Runtime has no float64 kernels for convolutions, so
  the graph itself stays float32), against ⟨grad_z, v⟩.

Errors are relative: loss error max|Δloss| / max|loss|; gradient error ‖Δgrad‖ / ‖grad‖; a finite-difference
error |FD − ⟨grad, v⟩| / ‖grad‖ (v has unit norm, so ‖grad‖ bounds the derivative). A wrong rule gives errors
of order 1 (a flipped sign gives 2); float32 round-off through a deep graph stays below 1e-4.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from genorigin.kernels.reference import loss_and_grad

from .generator import LatentSpec
from .memory import release_freed_memory
from .sessions import SharedWeights, open_session

# Against PyTorch autograd: both sides float32, kernels differ (summation order, fused ops).
MODULE_TOLERANCE = 1e-3
# Against central finite differences of a float32 forward graph: truncation + round-off of the difference.
FINITE_DIFFERENCE_TOLERANCE = 2e-2
FD_DIRECTIONS = 3
# Step along a unit direction, relative to ‖z‖. For a smooth loss the best step is near the cube root of
# float32's epsilon (5e-3), where truncation (∝ h²) and round-off (∝ 1/h) balance; ReLU kinks inside the step
# add an error ∝ h, so the step is smaller. Measured with it (2026-12): ≤ 5e-3 on the bundled DCGAN and VAE,
# ≤ 1e-3 on the test families (DDIM K=2, consistency, AutoencoderKL, StyleGAN).
FD_RELATIVE_STEP = 1e-3
SEED = 0

Session = Any  # onnxruntime.InferenceSession


class ValidationError(ValueError):
    """The exported gradient graphs do not compute the gradient of the model they were derived from."""


@dataclass(frozen=True)
class ValidationReport:
    """What the manifest records under ``validation``."""

    method: str
    samples: int
    max_loss_error: float
    max_grad_error: float
    tolerance: float
    max_vjp_error: float | None = None
    seed: int = SEED

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def check(self, name: str) -> ValidationReport:
        """Raise a one-line :class:`ValidationError` if any error is past the tolerance (NaN included)."""
        errors = {"loss": self.max_loss_error, "grad_z": self.max_grad_error, "vjp g_z": self.max_vjp_error}
        for what, error in errors.items():
            if error is not None and not error <= self.tolerance:
                raise ValidationError(
                    f"export validation failed for {name!r}: {what} of the gradient graphs differs from "
                    f"{self.method} by {error:.3g} (relative; tolerance {self.tolerance:g}); nothing was written "
                    "(a VJP rule is wrong for this model: please report it; validation_tolerance= overrides)"
                )
        return self


def validate_against_module(
    graphs: Mapping[str, Path],
    module: torch.nn.Module,
    latent: LatentSpec,
    image_shape: tuple[int, int, int],
    *,
    tolerance: float | None = None,
    seed: int = SEED,
    weights: SharedWeights | None = None,
) -> ValidationReport:
    """The ``loss_mse`` and ``vjp`` graphs against ``module`` (z → image in [0, 1]) and torch.autograd.

    The reference runs one sample at a time (the generator is per-sample), so torch holds one image's
    activations even for the batch of 2; each phase's memory is returned before the next (export's peak).
    """
    loss_session, vjp_session = _session(graphs["loss_mse"], weights), _session(graphs["vjp"], weights)
    device = next(iter(module.parameters()), torch.empty(0)).device
    rng = np.random.default_rng(seed)
    loss_errors, grad_errors, vjp_errors = [], [], []
    for batch in (1, 2):
        z = latent.sample(batch, rng)
        x = rng.random((batch, *image_shape), dtype=np.float32)
        refs = [_autograd(module, z[i : i + 1], x[i : i + 1], device) for i in range(batch)]
        ref_loss, ref_grad, g_image = (np.concatenate([r[k] for r in refs]) for k in range(3))
        release_freed_memory()
        loss, grad = loss_session.run(["loss", "grad_z"], {"z": z, "target": x})
        release_freed_memory()
        (vjp_grad,) = vjp_session.run(["g_z"], {"z": z, "g_image": g_image})
        release_freed_memory()
        loss_errors.append(_max_relative(loss, ref_loss))
        grad_errors.append(_norm_relative(grad, ref_grad))
        vjp_errors.append(_norm_relative(vjp_grad, ref_grad))
    return ValidationReport(
        method="torch-autograd",
        samples=3,
        max_loss_error=max(loss_errors),
        max_grad_error=max(grad_errors),
        max_vjp_error=max(vjp_errors),
        tolerance=MODULE_TOLERANCE if tolerance is None else tolerance,
        seed=seed,
    )


def _autograd(
    module: torch.nn.Module, z: np.ndarray, x: np.ndarray, device: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference per-sample loss, its gradient with respect to z (torch.autograd) and the image gradient."""
    zt = torch.from_numpy(z).to(device).requires_grad_(True)
    image = module(zt)
    ref_loss, g_image = loss_and_grad(image.detach(), torch.from_numpy(x).to(device))
    (ref_grad,) = torch.autograd.grad(image, zt, g_image)
    return ref_loss.detach().cpu().numpy(), ref_grad.cpu().numpy(), g_image.cpu().numpy().astype(np.float32)


def validate_by_finite_differences(
    graphs: Mapping[str, Path],
    latent: LatentSpec,
    image_shape: tuple[int, int, int],
    *,
    tolerance: float | None = None,
    seed: int = SEED,
    directions: int = FD_DIRECTIONS,
    weights: SharedWeights | None = None,
) -> ValidationReport:
    """grad_z of the ``loss_mse`` graph against central differences of the ``forward`` graph's loss."""
    forward, loss_session, vjp_session = (_session(graphs[k], weights) for k in ("forward", "loss_mse", "vjp"))
    rng = np.random.default_rng(seed)
    z = latent.sample(2, rng)
    x = rng.random((2, *image_shape), dtype=np.float32)

    def host_loss(at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        (image,) = forward.run(["image"], {"z": at.astype(np.float32)})
        return loss_and_grad(image, x.astype(np.float64))

    loss, grad = loss_session.run(["loss", "grad_z"], {"z": z, "target": x})
    ref_loss, g_image = host_loss(z)
    (vjp_grad,) = vjp_session.run(["g_z"], {"z": z, "g_image": g_image.astype(np.float32)})
    grad64 = grad.astype(np.float64)
    scale = max(float(np.linalg.norm(grad64)), np.finfo(np.float64).tiny)
    step = FD_RELATIVE_STEP * max(float(np.linalg.norm(z)), 1.0)
    fd_errors = []
    for v in _unit_directions(grad64, directions, rng):
        ahead, behind = (float(host_loss(z + sign * step * v)[0].sum()) for sign in (1.0, -1.0))
        fd_errors.append(abs((ahead - behind) / (2.0 * step) - float(np.vdot(grad64, v))) / scale)
    return ValidationReport(
        method="finite-differences",
        samples=2,
        max_loss_error=_max_relative(loss, ref_loss),
        max_grad_error=max(fd_errors),
        max_vjp_error=_norm_relative(vjp_grad, grad),
        tolerance=FINITE_DIFFERENCE_TOLERANCE if tolerance is None else tolerance,
        seed=seed,
    )


def storage_effect(
    reference: tuple[Path, SharedWeights | None],
    stored: tuple[Path, SharedWeights | None],
    latent: LatentSpec,
    image_shape: tuple[int, int, int],
    *,
    seed: int = SEED,
) -> dict[str, float]:
    """How far half-precision weight storage moves the loss graph: ``stored`` against the float32 ``reference``
    on seeded latents and targets (batch 2), as relative errors (informative; the graphs are validated in
    float32 before storage is reduced)."""
    rng = np.random.default_rng(seed)
    z = latent.sample(2, rng)
    x = rng.random((2, *image_shape), dtype=np.float32)
    results = []
    for path, weights in (reference, stored):
        results.append(_session(path, weights).run(["loss", "grad_z"], {"z": z, "target": x}))
        release_freed_memory()
    (ref_loss, ref_grad), (loss, grad) = results
    return {"max_loss_change": _max_relative(loss, ref_loss), "grad_change": _norm_relative(grad, ref_grad)}


def _unit_directions(grad: np.ndarray, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The gradient's direction (the largest, best-resolved derivative) and ``count - 1`` random ones."""
    out = []
    norm = np.linalg.norm(grad)
    if norm > 0:
        out.append(grad / norm)
    while len(out) < count:
        v = rng.standard_normal(grad.shape)
        out.append(v / np.linalg.norm(v))
    return out


def _max_relative(value: np.ndarray, reference: np.ndarray) -> float:
    reference = np.asarray(reference, dtype=np.float64)
    floor = max(float(np.abs(reference).max()), np.finfo(np.float64).tiny)
    return float(np.abs(np.asarray(value, dtype=np.float64) - reference).max() / floor)


def _norm_relative(value: np.ndarray, reference: np.ndarray) -> float:
    reference = np.asarray(reference, dtype=np.float64)
    floor = max(float(np.linalg.norm(reference)), np.finfo(np.float64).tiny)
    return float(np.linalg.norm(np.asarray(value, dtype=np.float64) - reference) / floor)


def _session(path: Path, weights: SharedWeights | None) -> Session:
    """A few runs only: basic optimisations, lean memory and the memory-first node order keep export's peak
    near one run's activations."""
    return open_session(path, "cpu", weights=weights, optimization="basic", lean=True, quiet=True, order="priority")


# (graph files by role, the package's shared weights or None) → report
Validator = Callable[[Mapping[str, Path], SharedWeights | None], ValidationReport]
