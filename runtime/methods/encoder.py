"""Amortised starts: a small encoder E: image → latent, fitted once per model on the model's own samples.

Own samples are free and unlimited, so E learns the inverse on pairs (G(z), z): a latent-regression term
‖E(G(z)) − z‖² plus a reconstruction term ‖G(E(x)) − x‖², whose gradient w.r.t. E's output comes from the
inversion backend itself (``loss_and_grad``). E therefore fits for any generator genorigin can invert — a
PyTorch module, an exported ONNX graph on ONNX Runtime — with no autograd through G.

E(x) is then the first start of each image's inversion (the others stay random): an own image starts next to
its preimage and converges in tens of steps instead of hundreds.

The fit is deterministic from its seed and step count (a wall-clock budget may stop it early; the steps
actually done are recorded, and they enter the encoder's hash).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from genorigin.export.generator import Generator, LatentSpec
from genorigin.runtime.decide.calibration import quantize_8bit  # E trains on what attribution will see
from genorigin.runtime.loop.backend import Backend, to_numpy
from genorigin.runtime.loop.invariant import exact_rows
from genorigin.runtime.loop.settings import FitSettings
from torch import nn

from genorigin.files import atomic_write_bytes, sha256_file

ENCODER_FORMAT = "genorigin-encoder-v1"


@dataclass(frozen=True)
class EncoderShape:
    """What E maps between: images C×H×W in [0, 1] and latents of the generator's shape."""

    channels: int
    height: int
    width: int
    latent_shape: tuple[int, ...]
    base_width: int = 32
    hidden: int = 256

    def __post_init__(self) -> None:
        object.__setattr__(self, "latent_shape", tuple(int(d) for d in self.latent_shape))
        if min(self.height, self.width) < 4:
            raise ValueError(f"images must be at least 4×4, got {self.height}×{self.width}")


class LatentEncoder(nn.Module):
    """Strided convolutions down to ~4×4, then a two-layer head to the flattened latent."""

    def __init__(self, shape: EncoderShape) -> None:
        super().__init__()
        self.shape = shape
        layers: list[nn.Module] = []
        ch, h, w, width = shape.channels, shape.height, shape.width, shape.base_width
        while min(h, w) > 4:
            layers += [nn.Conv2d(ch, width, 4, 2, 1), nn.LeakyReLU(0.2)]
            ch, h, w, width = width, h // 2, w // 2, width * 2
        self.features = nn.Sequential(*layers, nn.Flatten())
        d = math.prod(shape.latent_shape)
        self.head = nn.Sequential(nn.Linear(ch * h * w, shape.hidden), nn.LeakyReLU(0.2), nn.Linear(shape.hidden, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """N×C×H×W in [0, 1] → N×latent."""
        return self.head(self.features(x * 2.0 - 1.0)).reshape(x.shape[0], *self.shape.latent_shape)


class Encoder(Protocol):
    """What the inversion needs of an encoder: latents for images, their shape, and an identity to pin."""

    @property
    def latent_shape(self) -> tuple[int, ...]: ...

    def encode(self, images: np.ndarray) -> np.ndarray: ...

    def digest(self) -> str: ...


@dataclass
class FittedEncoder:
    """A fitted encoder with the record of how it was fitted."""

    module: LatentEncoder
    fit: FitSettings
    steps_done: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def shape(self) -> EncoderShape:
        return self.module.shape

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return self.shape.latent_shape

    def digest(self) -> str:
        """SHA-256 of the architecture, the fit record and the weights: what a calibration pins."""
        h = hashlib.sha256()
        meta = {"shape": asdict(self.shape), "fit": asdict(self.fit), "steps_done": self.steps_done}
        h.update(json.dumps(meta, sort_keys=True).encode())
        for key, tensor in sorted(self.module.state_dict().items()):
            h.update(key.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    @torch.no_grad()
    def encode(self, images: np.ndarray, batch: int = 256) -> np.ndarray:
        """Latents for N×C×H×W float32 images in [0, 1] (float32, N×latent)."""
        self.module.eval()
        with exact_rows():  # a start is the same bits whatever torch's threads (runtime/loop/invariant.py)
            out = [self.module(torch.from_numpy(np.ascontiguousarray(images[i : i + batch]))).numpy()
                   for i in range(0, len(images), batch)]  # fmt: skip
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, *self.shape.latent_shape), np.float32)

    def save(self, path: str | Path) -> Path:
        payload = {
            "format": ENCODER_FORMAT,
            "shape": {**asdict(self.shape), "latent_shape": list(self.shape.latent_shape)},
            "fit": asdict(self.fit),
            "steps_done": self.steps_done,
            "seconds": self.seconds,
            "digest": self.digest(),
            "state_dict": {k: v.detach().cpu().half().contiguous() for k, v in self.module.state_dict().items()},
        }
        import io

        buf = io.BytesIO()
        torch.save(payload, buf)
        return atomic_write_bytes(path, buf.getvalue())

    def onnx_bytes(self) -> bytes:
        """The encoder as an ONNX graph (images → latent, dynamic batch), for ONNX Runtime and packages."""
        import io

        buf = io.BytesIO()
        shape = self.shape
        example = torch.zeros((1, shape.channels, shape.height, shape.width))
        torch.onnx.export(self.module.eval(), (example,), buf, input_names=["image"], output_names=["latent"],
                          dynamic_axes={"image": {0: "n"}, "latent": {0: "n"}}, dynamo=False)  # fmt: skip
        return buf.getvalue()

    @classmethod
    def load(cls, path: str | Path) -> FittedEncoder:
        """Load with ``weights_only=True`` and check the stored digest against the weights."""
        path = Path(path)
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(f"{path}: not a loadable genorigin encoder ({type(exc).__name__})") from exc
        if not isinstance(payload, dict) or payload.get("format") != ENCODER_FORMAT:
            raise ValueError(f"{path}: not a genorigin encoder file (format {ENCODER_FORMAT!r})")
        try:
            shape = EncoderShape(**{**payload["shape"], "latent_shape": tuple(payload["shape"]["latent_shape"])})
            module = LatentEncoder(shape)
            module.load_state_dict({k: v.float() for k, v in payload["state_dict"].items()}, strict=True)
            enc = cls(module.eval(), FitSettings(**payload["fit"]), int(payload["steps_done"]),
                      float(payload["seconds"]))  # fmt: skip
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            first = (str(exc).splitlines() or [""])[0]
            raise ValueError(f"{path}: malformed encoder file ({first})") from exc
        if enc.digest() != payload.get("digest"):
            raise ValueError(f"{path}: encoder weights do not match their recorded digest (tampered or corrupt)")
        return enc


class _BackendReconstruction(torch.autograd.Function):
    """Per-sample ‖G(z) − x‖² with its gradient from the inversion backend (no autograd through G)."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, x: np.ndarray, backend: Backend) -> torch.Tensor:  # type: ignore[override]
        loss, grad = backend.loss_and_grad(backend.asarray(z.detach().numpy()), backend.asarray(x))
        ctx.save_for_backward(torch.from_numpy(np.asarray(to_numpy(grad), dtype=np.float32)))
        return torch.from_numpy(np.asarray(to_numpy(loss), dtype=np.float32))

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return grad * grad_loss.reshape(-1, *([1] * (grad.ndim - 1))), None, None


def fit_encoder(
    render: Callable[[np.ndarray], np.ndarray],
    latent: LatentSpec,
    image_shape: tuple[int, int, int],
    backend: Backend | None,
    settings: FitSettings = FitSettings(),
    *,
    seconds: float | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    shape: EncoderShape | None = None,
    pairs: Pairs | None = None,
    warm_start: LatentEncoder | None = None,
) -> FittedEncoder:
    """Fit E on fresh own samples: ``render`` maps host latents to images in [0, 1] (the model's forward).

    ``backend`` supplies the reconstruction term's gradient (None: latent regression only). ``seconds``
    caps the wall clock; the steps done are recorded either way. ``pairs`` replaces the training pairs
    (image, latent) — default: z from the prior, its 8-bit rendering — and ``warm_start`` copies the weights
    of another encoder wherever the shapes agree (the platform encoder starts from the model's).
    """
    c, h, w = image_shape
    shape = shape or EncoderShape(c, h, w, latent.shape)
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    module = LatentEncoder(shape)
    if warm_start is not None:
        _copy_matching(warm_start, module)
    if pairs is None:
        pairs = lambda rng, n: _own_pairs(render, latent, rng, n)  # noqa: E731
    opt = torch.optim.Adam(module.parameters(), lr=settings.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=settings.steps, eta_min=settings.lr * 0.05)
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    step = 0
    module.train()
    while step < settings.steps and (seconds is None or time.perf_counter() - start < seconds):
        x, z = pairs(rng, settings.batch)
        z_hat = module(torch.from_numpy(x))
        latent_err = ((z_hat - torch.from_numpy(z)) ** 2).mean()
        loss = latent_err
        rec = torch.zeros(())
        if backend is not None and settings.recon_weight > 0 and step >= settings.recon_from:
            rec = _BackendReconstruction.apply(z_hat, x, backend).mean()
            loss = loss + settings.recon_weight * rec
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        record = {"latent_mse": float(latent_err.detach()), "recon_mse": float(rec.detach())}
        if step % 50 == 0 or step == settings.steps:
            history.append({"step": step, **record})
        if on_step is not None:
            on_step(step, record)
    module.eval()
    with torch.no_grad():  # stored in float16 (half the file); round now so the saved encoder is this one
        for p in module.parameters():
            p.copy_(p.half().float())
    return FittedEncoder(module, settings, step, time.perf_counter() - start, history)


# (the fit's generator, batch size) → (N×C×H×W images in [0, 1], N×latent targets)
Pairs = Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]


def _own_pairs(render: Callable[[np.ndarray], np.ndarray], latent: LatentSpec, rng: np.random.Generator,
               n: int) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    z = latent.sample(n, rng)
    return quantize_8bit(np.asarray(render(z), dtype=np.float32)), z


def _copy_matching(source: LatentEncoder, target: LatentEncoder) -> None:
    """Copy ``source``'s weights into ``target`` where the shapes agree; the output layer's rows as far as
    both have them (the platform encoder's first outputs are the model's latent)."""
    mine = target.state_dict()
    for key, value in source.state_dict().items():
        if key not in mine:
            continue
        if mine[key].shape == value.shape:
            mine[key] = value.clone()
        elif mine[key].shape[1:] == value.shape[1:] and mine[key].shape[0] > value.shape[0]:
            mine[key][: value.shape[0]] = value
    target.load_state_dict(mine)


def fit_generator_encoder(
    generator: Generator,
    settings: FitSettings = FitSettings(),
    *,
    backend: Backend | None = None,
    seconds: float | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> FittedEncoder:
    """``fit_encoder`` for a Generator: its own forward renders the training pairs (ONNX Runtime for a package)."""
    return fit_encoder(
        generator.render_latents,
        generator.latent,
        (generator.channels, *generator.image_size),
        backend,
        settings,
        seconds=seconds,
        on_step=on_step,
    )


class EncoderStarts:
    """The inversion's initializer: E(x) as the first start, the rest from the prior (the image's own generator).

    ``encode`` maps N×C×H×W images to N×latent (a fitted encoder in torch, or its ONNX graph on ONNX Runtime).
    """

    def __init__(self, encode: Callable[[np.ndarray], np.ndarray], latent: LatentSpec, digest: str) -> None:
        self.encode = encode
        self.latent = latent
        self.digest = digest

    @classmethod
    def from_fitted(cls, encoder: Encoder, latent: LatentSpec) -> EncoderStarts:
        """Starts from a torch encoder or its ONNX graph (digest: the weights', or the graph file's)."""
        if tuple(encoder.latent_shape) != tuple(latent.shape):
            raise ValueError(f"encoder latent shape {encoder.latent_shape} does not match the model's {latent.shape}")
        return cls(encoder.encode, latent, encoder.digest())

    def __call__(self, image: np.ndarray, restarts: int, rng: np.random.Generator) -> np.ndarray:
        first = np.asarray(self.encode(image[None]), dtype=np.float32).reshape(1, *self.latent.shape)
        return np.concatenate([first, self.latent.sample(restarts - 1, rng)])


class OnnxEncoder:
    """An encoder graph run by ONNX Runtime: how a package's backends (ORT, TensorRT) get their starts.

    ``digest`` is the SHA-256 of the graph's bytes: a calibration made with these starts pins this file.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        from genorigin.runtime.backends.ort import make_session

        self.path = Path(path)
        self._digest = sha256_file(self.path)
        self.session = make_session(str(self.path), "cpu", threads)
        shape = self.session.get_outputs()[0].shape
        self.latent_shape = tuple(int(d) for d in shape[1:])

    def digest(self) -> str:
        return self._digest

    def encode(self, images: np.ndarray) -> np.ndarray:
        (z,) = self.session.run(["latent"], {"image": np.ascontiguousarray(images, dtype=np.float32)})
        return z


def attach_encoder(package_root: str | Path, fitted: FittedEncoder) -> Path:
    """Put the encoder into an attribution package as ``encoder.onnx`` (checked against the torch encoder)."""
    from genorigin.export.package import ENCODER_GRAPH, attach_file

    data = fitted.onnx_bytes()
    package = attach_file(package_root, "encoder", data, ENCODER_GRAPH)
    path = package.attachment("encoder")
    assert path is not None
    probe = np.random.default_rng(0).random((2, fitted.shape.channels, fitted.shape.height, fitted.shape.width),
                                            dtype=np.float32)  # fmt: skip
    got, want = OnnxEncoder(path).encode(probe), fitted.encode(probe)
    if not np.allclose(got, want, rtol=1e-4, atol=1e-4):
        raise ValueError(f"{path}: the exported encoder differs from the fitted one ({np.abs(got - want).max():.2e})")
    return path
