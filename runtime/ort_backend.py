"""ONNX Runtime backend: the inversion loop on exported graphs, where no autograd exists.

CPU execution provider by default. When CUDA is asked for, the session must really run on CUDA: ONNX Runtime
silently falls back to the CPU when the CUDA provider cannot load, so the providers are checked and a
fallback raises.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from genorigin.export.generator import Generator
from genorigin.export.package import AttributionPackage
from genorigin.runtime.backend import Backend


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise RuntimeError(
            "onnxruntime is not installed: pip install 'genorigin[cpu]' (or '[gpu]' for onnxruntime-gpu)"
        ) from exc
    return onnxruntime


def make_session(path: str, device: str = "cpu", threads: int | None = None) -> Any:
    """An InferenceSession on the asked device; raises instead of silently falling back to the CPU."""
    ort = _ort()
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if device == "cpu":
        providers = ["CPUExecutionProvider"]
    elif device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError(
                "CUDA was asked for but this onnxruntime has no CUDAExecutionProvider "
                f"(available: {ort.get_available_providers()}); install onnxruntime-gpu instead of onnxruntime"
            )
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    session = ort.InferenceSession(path, options, providers=providers)
    if device == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
        raise RuntimeError(f"onnxruntime fell back to {session.get_providers()} for {path}: CUDA is not usable")
    return session


class OrtBackend(Backend):
    """Loss and gradient from the package's loss graph (one session call per step)."""

    name = "onnxruntime"

    def __init__(
        self, package: AttributionPackage, device: str = "cpu", threads: int | None = None, loss: str = "mse"
    ) -> None:
        self.package = package
        self.device = device
        self.threads = threads
        self.loss = loss
        if loss == "mse":
            self.loss_session = make_session(str(package.graph_path("loss_mse")), device, threads)
        else:
            import onnx
            from genorigin.export.onnx_autodiff import build_loss_graph

            graph = build_loss_graph(onnx.load(str(package.graph_path("forward"))), wrt="z", kind=loss)
            self.loss_session = make_session(graph.SerializeToString(), device, threads)
        self.forward_session = make_session(str(package.graph_path("forward")), device, threads)

    def asarray(self, a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a, dtype=np.float32)

    def loss_and_grad(self, z: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        loss, grad = self.loss_session.run(["loss", "grad_z"], {"z": z, "target": x})
        return loss, grad

    def render(self, z: np.ndarray) -> np.ndarray:
        (y,) = self.forward_session.run(["image"], {"z": self.asarray(z)})
        return np.clip(y, 0.0, 1.0)

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "device": self.device,
            "providers": self.loss_session.get_providers(),
            "threads": self.threads,
            "package": str(self.package.root),
        }


def package_generator(package: AttributionPackage, threads: int | None = None) -> Generator:
    """The Generator view of a package: latent and image size from the manifest, render via ORT, and as its
    identity the fingerprint of the graph files' bytes (so a calibration follows the graphs, not the manifest)."""
    session = make_session(str(package.graph_path("forward")), "cpu", threads)
    image = package.manifest["image"]

    def render(z: np.ndarray) -> np.ndarray:
        return session.run(["image"], {"z": np.ascontiguousarray(z, dtype=np.float32)})[0]

    return Generator(
        name=package.manifest["name"],
        module=None,
        latent=package.latent,
        channels=image["channels"],
        image_size=(image["height"], image["width"]),
        config={"package": package.manifest["graphs"]["forward"]["sha256"]},
        family=package.manifest["source"].get("family", "onnx"),
        render=render,
        recorded_fingerprint=package.fingerprint,
    )


__all__ = ["OrtBackend", "make_session", "package_generator"]
