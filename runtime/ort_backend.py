"""ONNX Runtime backend: the inversion loop on exported graphs, where no autograd exists.

CPU execution provider by default. When CUDA is asked for, the session must really run on CUDA: ONNX Runtime
silently falls back to the CPU when the CUDA provider cannot load, so the providers are checked and a
fallback raises. The package's weights are read once and shared by the loss and forward sessions (and the
package's Generator view): ``AttributionPackage.session``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from genorigin.export.generator import Generator
from genorigin.export.package import AttributionPackage
from genorigin.export.sessions import open_session
from genorigin.runtime.backend import Backend


def make_session(path: str | bytes, device: str = "cpu", threads: int | None = None) -> Any:
    """An InferenceSession on the asked device for a self-contained graph (the encoder attachment); raises
    instead of silently falling back to the CPU. A package's graphs go through ``AttributionPackage.session``,
    which shares the package's weights between its sessions."""
    return open_session(path, device, threads)


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
            self.loss_session = package.session("loss_mse", device, threads)
        else:  # built from the weight-less forward header; its weights come from the package's shared buffer
            import onnx
            from genorigin.export.onnx_autodiff import build_loss_graph

            v1 = package.weights_path is None  # a self-contained v1 package: its weights are inside the graph
            header = onnx.load(str(package.graph_path("forward")), load_external_data=v1)
            graph = build_loss_graph(header, wrt="z", kind=loss)
            self.loss_session = open_session(graph, device, threads, weights=package.shared_weights())
        self.forward_session = package.session("forward", device, threads)

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
    session = package.session("forward", "cpu", threads)
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
