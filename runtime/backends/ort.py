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
from genorigin.runtime.loop.backend import Backend

# Activations one session call may take (bytes): larger batches run in chunks of rows. Resident memory of a run
# is ~RUN_OVERHEAD × the static estimate with ONNX Runtime's arena (measured, docs/large_models.md).
STEP_MEMORY_BUDGET = 4 * 2**30
RUN_OVERHEAD = 2.0


def make_session(path: str | bytes, device: str = "cpu", threads: int | None = None) -> Any:
    """An InferenceSession on the asked device for a self-contained graph (the encoder attachment); raises
    instead of silently falling back to the CPU. A package's graphs go through ``AttributionPackage.session``,
    which shares the package's weights between its sessions."""
    return open_session(path, device, threads)


class OrtBackend(Backend):
    """Loss and gradient from the package's loss graph (one session call per step, or per chunk of rows).

    A step over more rows than fit ``memory_budget`` bytes of activations (estimated from the graph, times the
    measured run-time overhead) runs in chunks of rows: each row's loss and gradient are its own, so the
    results are those of one call, and a 512 px model's batch cannot exhaust the machine. The chunk size
    follows the package and the budget only, never the memory free at the moment, so a run is repeatable.
    """

    name = "onnxruntime"

    def __init__(
        self,
        package: AttributionPackage,
        device: str = "cpu",
        threads: int | None = None,
        loss: str = "mse",
        memory_budget: int = STEP_MEMORY_BUDGET,
    ) -> None:
        self.package = package
        self.device = device
        self.threads = threads
        self.loss = loss
        if loss == "mse":
            graph: Any = package.graph_path("loss_mse")
        else:  # built from the weight-less forward header, rematerialised as the package's own loss graph
            graph = _other_loss_graph(package, loss)
        self.loss_session = open_session(graph, device, threads, weights=package.shared_weights())
        self.forward_session = package.session("forward", device, threads)
        self.rows = rows_for_budget(graph, memory_budget)

    def asarray(self, a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a, dtype=np.float32)

    def loss_and_grad(self, z: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(z) <= self.rows:
            loss, grad = self.loss_session.run(["loss", "grad_z"], {"z": z, "target": x})
            return loss, grad
        parts = [
            self.loss_session.run(["loss", "grad_z"], {"z": z[i : i + self.rows], "target": x[i : i + self.rows]})
            for i in range(0, len(z), self.rows)
        ]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def render(self, z: np.ndarray) -> np.ndarray:
        (y,) = self.forward_session.run(["image"], {"z": self.asarray(z)})
        return np.clip(y, 0.0, 1.0)

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "device": self.device,
            "providers": self.loss_session.get_providers(),
            "threads": self.threads,
            "rows_per_call": self.rows,
            "package": str(self.package.root),
        }


def rows_for_budget(graph: Any, budget: int) -> int:
    """Rows per session call whose estimated activations, times the run-time overhead, fit ``budget`` (≥ 1)."""
    import onnx
    from genorigin.export.activation_memory import peak_activation

    model = graph if isinstance(graph, onnx.ModelProto) else onnx.load(str(graph), load_external_data=False)
    per_image = max(peak_activation(model, 1).peak_bytes, 1)
    return max(1, int(budget // (RUN_OVERHEAD * per_image)))


def _other_loss_graph(package: AttributionPackage, kind: str) -> Any:
    import onnx
    from genorigin.export.onnx_autodiff import build_loss_graph
    from genorigin.export.remat import rematerialise

    v1 = package.weights_path is None  # a self-contained v1 package: its weights are inside the graph
    header = onnx.load(str(package.graph_path("forward")), load_external_data=v1)
    graph = build_loss_graph(header, wrt="z", kind=kind)
    segments = package.manifest.get("activations", {}).get("segments", {}).get("loss_mse", 0)
    return rematerialise(graph, segments) if segments else graph


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
