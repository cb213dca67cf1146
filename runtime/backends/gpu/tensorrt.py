"""TensorRT backend for the shared inversion loop: engines for the graph, CUDA kernels for loss and Adam.

Two step plans, chosen from the engines given:
- ``loss``: one engine from the autodiff loss graph, (z, target) → (loss, grad_z); the forward runs once.
- ``vjp``: a forward engine z → image, the CUDA loss kernel (image, x) → (loss, g_image) with padding weight
  0, and a VJP engine (z, g_image) → g_z (it recomputes the forward inside).
Adam with best-so-far is the fused CUDA kernel (torch ops when cuda-python/NVRTC are missing).

Buffers are torch CUDA tensors bound by address (``set_tensor_address``). Everything is enqueued on the
backend's own stream (``GraphedBackend``), never on the legacy default stream. Slot counts are padded to the
engines' bucket sizes (powers of two inside the optimisation profiles). Each bucket's iteration is captured
once after one eager enqueue (TensorRT does its shape-dependent setup there) and replayed; binding a context
to another bucket's shapes and addresses drops that bucket's graph, which is then captured again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from genorigin.export.generator import Generator
from genorigin.kernels import reference
from genorigin.kernels.plan import dtype_name
from genorigin.runtime.backends.gpu.engine_io import TensorSpec, assign_io, buffer_shapes
from genorigin.runtime.backends.gpu.graphed import GraphBucket, GraphedBackend, Update
from genorigin.runtime.backends.gpu.graphs import GraphSource, usable_role_sets
from genorigin.runtime.backends.gpu.ops import require_gpu_loss, update_into
from genorigin.runtime.backends.gpu.profiles import BatchProfile, choose_profile
from genorigin.runtime.backends.gpu.slots import SlotBuffers, bucket_sizes, choose_bucket
from genorigin.runtime.backends.gpu.trt_build import BuiltEngine, build_engines
from genorigin.runtime.backends.gpu.trt_env import TensorRTUnavailableError
from genorigin.runtime.backends.gpu.trt_load import LoadedEngine, engine_profiles, engine_tensors, load_engine

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                "int32": torch.int32, "int64": torch.int64, "int8": torch.int8, "uint8": torch.uint8,
                "bool": torch.bool}  # fmt: skip


class EngineContexts:
    """One deserialized engine: its I/O, and one execution context per optimisation profile."""

    def __init__(self, role: str, loaded: LoadedEngine) -> None:
        self.role = role
        self.loaded = loaded
        self.specs: list[TensorSpec] = engine_tensors(loaded.engine)
        self.io = assign_io(role, self.specs)
        self.profiles: list[BatchProfile] = engine_profiles(loaded.engine, self.io["z"])
        self.contexts: dict[int, Any] = {}
        self.owner: dict[int, int] = {}  # profile index → id of the bucket whose shapes/addresses are bound

    def spec(self, logical: str) -> TensorSpec:
        return next(s for s in self.specs if s.name == self.io[logical])

    def bind(self, bucket: int, owner: int, tensors: Mapping[str, torch.Tensor], stream: Any) -> tuple[Any, bool]:
        """(context, rebound): the profile's context with this bucket's shapes and addresses set."""
        index = choose_profile(bucket, self.profiles)
        ctx = self.contexts.get(index)
        if ctx is None:
            ctx = self.loaded.engine.create_execution_context()
            if ctx is None:
                raise RuntimeError(f"TensorRT could not create an execution context for the {self.role} engine")
            if not ctx.set_optimization_profile_async(index, stream.cuda_stream):
                raise RuntimeError(f"could not select optimisation profile {index} of the {self.role} engine")
            stream.synchronize()  # once per context: the profile switch is stream-ordered
            self.contexts[index] = ctx
        if self.owner.get(index) == owner:
            return ctx, False
        for s in self.specs:
            t = tensors[s.name]
            if s.is_input and not ctx.set_input_shape(s.name, tuple(t.shape)):
                raise RuntimeError(f"{self.role} engine rejected shape {tuple(t.shape)} for {s.name}")
            if not ctx.set_tensor_address(s.name, t.data_ptr()):
                raise RuntimeError(f"{self.role} engine rejected the address of {s.name}")
        self.owner[index] = owner
        return ctx, True

    def close(self) -> None:
        self.contexts.clear()
        self.owner.clear()


@dataclass
class TrtBucket(GraphBucket):
    """A bucket's slot buffers plus every engine I/O tensor and the contexts bound to them."""

    tensors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # role → tensor name → buffer
    contexts: dict[str, Any] = field(default_factory=dict)
    z_in: torch.Tensor | None = None  # cast copy of z when an engine's z is not float32
    target_in: torch.Tensor | None = None
    workspace: torch.Tensor | None = None


class TensorRTBackend(GraphedBackend):
    """Inversion steps on TensorRT engines built by :func:`genorigin.runtime.backends.gpu.trt_build.build_engines`.

    ``engines``: {role: engine path or BuiltEngine}; each file's sidecar is checked against this machine
    (foreign or stale engines raise, never run). ``plan``: 'auto' (loss engine if given, else forward+vjp),
    'loss' or 'vjp'. ``generator`` is only used by ``render`` when no forward engine is given.
    """

    name = "tensorrt"

    def __init__(
        self,
        engines: Mapping[str, str | Path | BuiltEngine],
        *,
        device: str = "cuda",
        loss: str = "mse",
        kernels: str = "auto",
        cuda_graph: bool = True,
        plan: str = "auto",
        generator: Generator | None = None,
    ) -> None:
        require_gpu_loss(loss)
        if not torch.cuda.is_available():
            raise TensorRTUnavailableError("no CUDA GPU visible to torch; the TensorRT backend needs one")
        dev = torch.device(device)
        if dev.type != "cuda":
            raise ValueError(f"the TensorRT backend runs on CUDA devices, got {device!r}")
        dev = dev if dev.index is not None else torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(dev)
        paths = {role: e.path if isinstance(e, BuiltEngine) else Path(e) for role, e in engines.items()}
        plans = usable_role_sets(list(paths))
        wanted = {"auto": plans[:1], "loss": [p for p in plans if p == ("loss",)],
                  "vjp": [p for p in plans if p == ("forward", "vjp")]}.get(plan)  # fmt: skip
        if wanted is None:
            raise ValueError(f"plan must be 'auto', 'loss' or 'vjp', got {plan!r}")
        if not wanted:
            raise ValueError(f"engines {sorted(paths)} do not allow plan {plan!r} (need 'loss', or 'forward'+'vjp')")
        self.plan = "loss" if wanted[0] == ("loss",) else "vjp"
        self.loss = loss
        roles = set(wanted[0]) | ({"forward"} if "forward" in paths else set())
        self.engines = {r: EngineContexts(r, load_engine(paths[r], dev.index or 0)) for r in sorted(roles)}
        if self.plan == "loss":
            kind = self.engines["loss"].loaded.meta.get("graph_kind")
            if kind not in (None, f"loss-{loss}"):
                raise ValueError(f"the loss engine computes {kind!r}, but loss={loss!r} was asked for")
        self._check_shapes()
        self._setup_graphed(dev, kernels=kernels, capture=cuda_graph)
        self.generator = generator
        main = self.engines["loss" if self.plan == "loss" else "vjp"]
        every = [e.profiles for e in self.engines.values()]
        sizes = bucket_sizes(main.profiles)
        self.buckets = tuple(b for b in sizes if all(any(p.contains(b) for p in ps) for ps in every))
        if not self.buckets:
            raise ValueError("the engines share no batch size: rebuild them with the same profiles")
        self._identity = {k: next(iter(self.engines.values())).loaded.key.get(k)
                          for k in ("precision", "tensorrt_version")}  # fmt: skip

    @classmethod
    def from_graphs(
        cls,
        package_or_onnx_paths: GraphSource,
        *,
        precision: str = "fp32",
        profiles: tuple[BatchProfile, ...] | None = None,
        cache_dir: str | Path | None = None,
        force: bool = False,
        **kwargs: Any,
    ) -> TensorRTBackend:
        """Build (or take from the verified cache) the engines for exported graphs, then open the backend."""
        require_gpu_loss(kwargs.get("loss", "mse"))  # before minutes of engine building
        device = torch.device(kwargs.get("device", "cuda"))
        built = build_engines(
            package_or_onnx_paths, precision=precision, profiles=profiles, cache_dir=cache_dir, force=force,
            device=device.index or 0,
        )  # fmt: skip
        return cls(built, **kwargs)

    # ------------------------------------------------------------------ shapes and buffers

    def _check_shapes(self) -> None:
        z_shapes = {tuple(e.spec("z").shape[1:]) for e in self.engines.values()}
        if len(z_shapes) != 1:
            raise ValueError(f"engines disagree on the latent shape: {sorted(z_shapes)}")
        self.latent_shape = tuple(int(d) for d in z_shapes.pop())
        if self.plan == "loss":
            image = self.engines["loss"].spec("target").shape
        else:
            image = self.engines["forward"].spec("image").shape
            seed = self.engines["vjp"].spec("seed").shape
            if tuple(seed[1:]) != tuple(image[1:]):
                raise ValueError(f"forward image {image} and vjp seed {seed} differ in shape")
        self.image_shape = tuple(int(d) for d in image[1:])

    def bucket_for(self, n: int) -> int:
        return choose_bucket(n, self.buckets)

    @property
    def max_slots(self) -> int:  # type: ignore[override]
        """The engines' largest batch: the loop admits no more slots than this (``images_in_flight``)."""
        return max(self.buckets)

    def _alloc(self, bucket: int) -> TrtBucket:
        b = TrtBucket(SlotBuffers(bucket, self.latent_shape, self.image_shape, self.device))
        for role, eng in self.engines.items():
            shapes = buffer_shapes(eng.specs, bucket)
            tensors: dict[str, torch.Tensor] = {}
            for s in eng.specs:
                dtype = TORCH_DTYPES[s.dtype]
                logical = next((k for k, v in eng.io.items() if v == s.name), None)
                t = self._bind_target(b, logical, dtype, shapes[s.name])
                tensors[s.name] = t if t is not None else torch.empty(shapes[s.name], dtype=dtype, device=self.device)
            b.tensors[role] = tensors
        if self.plan == "vjp" and self.kernels is not None:
            y, seed = self._tensor(b, "forward", "image"), self._tensor(b, "vjp", "seed")
            size = self.kernels.loss_workspace_bytes(
                bucket, math.prod(self.image_shape), kind=self.loss, y_dtype=dtype_name(y),
                gy_dtype=dtype_name(seed), ptrs=(y.data_ptr(), b.buffers.x.data_ptr(), seed.data_ptr()),
            )  # fmt: skip
            b.workspace = torch.empty(max(size, 1), dtype=torch.uint8, device=self.device)
        return b

    def _tensor(self, b: TrtBucket, role: str, logical: str) -> torch.Tensor:
        return b.tensors[role][self.engines[role].io[logical]]

    def _bind_target(
        self, b: TrtBucket, logical: str | None, dtype: torch.dtype, shape: tuple[int, ...]
    ) -> torch.Tensor | None:
        """The existing buffer an engine tensor should alias (no copy), or None for a fresh one."""
        bufs = b.buffers
        if logical == "z":
            if dtype == torch.float32:
                return bufs.z
            if b.z_in is None:
                b.z_in = torch.empty(shape, dtype=dtype, device=self.device)
            return b.z_in
        if logical == "target":
            if dtype == torch.float32:
                return bufs.x
            b.target_in = torch.empty(shape, dtype=dtype, device=self.device)
            return b.target_in
        if logical == "loss" and dtype == torch.float32:
            return bufs.loss
        return None

    def _prepare(self, b: GraphBucket) -> None:
        """Bind the bucket's buffers to every engine context; a rebind drops its stale captured graph."""
        assert isinstance(b, TrtBucket)
        rebound = False
        for role, eng in self.engines.items():
            ctx, changed = eng.bind(b.buffers.bucket, id(b), b.tensors[role], self.stream)
            b.contexts[role] = ctx
            rebound |= changed
        if rebound:
            b.graph = None

    # ------------------------------------------------------------------ the iteration

    def _execute(self, b: TrtBucket, role: str) -> None:
        if not b.contexts[role].execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError(f"TensorRT {role} engine failed to enqueue")

    def _loss_vjp(self, b: TrtBucket) -> None:
        """loss and g_image between the forward engine's image and x, padding weighted 0."""
        bufs = b.buffers
        y, seed = self._tensor(b, "forward", "image"), self._tensor(b, "vjp", "seed")
        if self.kernels is not None:
            self.kernels.loss(
                y.data_ptr(), bufs.x.data_ptr(), bufs.loss.data_ptr(), seed.data_ptr(), bufs.bucket,
                math.prod(self.image_shape), kind=self.loss, weight_ptr=bufs.weight.data_ptr(),
                y_dtype=dtype_name(y), x_dtype="float32", gy_dtype=dtype_name(seed), stream=self.stream.cuda_stream,
                workspace_ptr=b.workspace.data_ptr() if b.workspace is not None else 0,
            )  # fmt: skip
            return
        loss, gy = reference.loss_and_grad(y, bufs.x, self.loss, bufs.weight)
        bufs.loss.copy_(loss)
        seed.copy_(gy)

    def _forward_backward(self, b: TrtBucket) -> torch.Tensor:
        """Enqueue loss and gradient for every row of the bucket; returns the engine's grad buffer."""
        bufs = b.buffers
        if b.z_in is not None:
            b.z_in.copy_(bufs.z)
        if self.plan == "loss":
            if b.target_in is not None:
                b.target_in.copy_(bufs.x)
            self._execute(b, "loss")
            out = self._tensor(b, "loss", "loss")
            if out.data_ptr() != bufs.loss.data_ptr():
                bufs.loss.copy_(out)
            return self._tensor(b, "loss", "grad")
        self._execute(b, "forward")
        self._loss_vjp(b)
        self._execute(b, "vjp")
        return self._tensor(b, "vjp", "grad")

    def _iteration(self, b: GraphBucket, update: Update) -> None:
        assert isinstance(b, TrtBucket)
        update_into(b.buffers, self._forward_backward(b), update, self.kernels)

    # ------------------------------------------------------------------ Backend API

    def loss_and_grad(self, z: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = int(z.shape[0])
        with self.on_stream():
            b = self.bucket((self.bucket_for(n), None))
            assert isinstance(b, TrtBucket)
            b.buffers.stage_inputs(z, x)
            grad = self._forward_backward(b)
            loss, g = b.buffers.loss[:n].clone(), grad[:n].float().reshape(z.shape).clone()
        return self.hand_over(loss), self.hand_over(g)

    @torch.no_grad()
    def render(self, z: np.ndarray) -> np.ndarray:
        if "forward" not in self.engines:
            if self.generator is None:
                raise RuntimeError("render needs a forward engine or the generator")
            self.generator.module.to(self.device)
            return self.generator.forward(self.asarray(z)).clamp(0, 1).float().cpu().numpy()
        out = []
        step = max(self.buckets)
        for start in range(0, len(z), step):
            chunk = self.asarray(z[start : start + step])
            n = len(chunk)
            with self.on_stream():
                b = self.bucket((self.bucket_for(n), None))
                assert isinstance(b, TrtBucket)
                b.buffers.stage_inputs(chunk, torch.zeros((n, *self.image_shape), device=self.device))
                if b.z_in is not None:
                    b.z_in.copy_(b.buffers.z)
                self._execute(b, "forward")
                out.append(self._tensor(b, "forward", "image")[:n].float().clamp(0, 1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, *self.image_shape), np.float32)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "plan": self.plan,
            "engines": {r: e.loaded.path.name for r, e in self.engines.items()},
            **self._identity,
            "buckets": list(self.buckets),
        }

    def _release(self) -> None:
        for eng in self.engines.values():
            eng.close()
        self.engines = {}  # the last references to the engines and their TensorRT runtimes
