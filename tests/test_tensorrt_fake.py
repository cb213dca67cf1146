"""The TensorRT backend's own code on CPU, with TensorRT and torch's CUDA stream calls faked (issue 15.2).

TensorRT cannot run here, so a plain-Python fake of its engine and execution context records what the
backend passes it; torch's CUDA stream/graph calls are faked the same way (this torch has no CUDA). What is
checked is genorigin's side: every enqueue and profile switch goes to the backend's own stream (never handle 0,
the legacy default stream, which the old code passed via ``torch.cuda.current_stream()``), capture happens on
that stream, the caller's stream is ordered around it, engine tensors alias the slot buffers, and ``close()``
releases contexts and stream.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from genorigin.runtime.backends.gpu import tensorrt as trt_backend
from genorigin.runtime.backends.gpu.trt_load import LoadedEngine
from genorigin.runtime.loop.backend import SlotState
from genorigin.runtime.loop.settings import InversionSettings

OUR_STREAM = 0xBEEF
LATENT, IMAGE = (8,), (3, 8, 8)


class FakeStream:
    """torch.cuda.Stream stand-in: a handle and the handles it was told to wait for."""

    def __init__(self, handle: int) -> None:
        self.cuda_stream = handle
        self.waited: list[int] = []

    def wait_stream(self, other: FakeStream) -> None:
        self.waited.append(other.cuda_stream)

    def synchronize(self) -> None:
        pass


class FakeContext:
    """TensorRT IExecutionContext stand-in: records stream arguments and bindings; 'runs' by zeroing outputs."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.streams: list[tuple[str, int]] = []
        self.addresses: dict[str, int] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}

    def set_optimization_profile_async(self, index: int, stream: int) -> bool:
        self.streams.append(("set_optimization_profile_async", stream))
        return True

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.shapes[name] = shape
        return True

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream: int) -> bool:
        self.streams.append(("execute_async_v3", stream))
        n = self.shapes["z"][0]
        for name, per_row in (("loss", 1), ("grad_z", int(np.prod(LATENT)))):
            ctypes.memset(self.addresses[name], 0, 4 * n * per_row)
        return True


class FakeEngine:
    """TensorRT ICudaEngine stand-in for a loss graph: (z, target) → (loss, grad_z), one profile 1:4:16."""

    num_io_tensors = 4
    num_optimization_profiles = 1

    def __init__(self) -> None:
        self.shapes = {"z": (-1, *LATENT), "target": (-1, *IMAGE), "loss": (-1,), "grad_z": (-1, *LATENT)}
        self.contexts: list[FakeContext] = []

    def get_tensor_name(self, i: int) -> str:
        return list(self.shapes)[i]

    def get_tensor_mode(self, name: str) -> str:
        return "INPUT" if name in ("z", "target") else "OUTPUT"

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.shapes[name]

    def get_tensor_dtype(self, name: str) -> Any:
        return types.SimpleNamespace(name="FLOAT")

    def get_tensor_profile_shape(self, name: str, index: int) -> tuple[tuple[int, ...], ...]:
        rest = self.shapes[name][1:]
        return (1, *rest), (4, *rest), (16, *rest)

    def create_execution_context(self) -> FakeContext:
        self.contexts.append(FakeContext(self))
        return self.contexts[-1]


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Fakes of the tensorrt module and of torch.cuda's stream and graph API; returns what they record."""
    seen: dict[str, Any] = {"caller": FakeStream(0), "entered": [], "capture_streams": [], "replays": 0}
    fake_trt = types.ModuleType("tensorrt")
    fake_trt.__version__ = "10.16.1"  # type: ignore[attr-defined]
    fake_trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt)

    @contextlib.contextmanager
    def use_stream(stream: FakeStream) -> Iterator[None]:
        seen["entered"].append(stream.cuda_stream)
        yield

    @contextlib.contextmanager
    def capture(graph: Any, stream: FakeStream | None = None, **kw: Any) -> Iterator[None]:
        seen["capture_streams"].append(stream)
        yield

    class FakeGraph:
        def replay(self) -> None:
            seen["replays"] += 1

    cuda = torch.cuda
    for name, value in {
        "is_available": lambda: True, "set_device": lambda d: None, "current_device": lambda: 0,
        "Stream": lambda *a, **k: FakeStream(OUR_STREAM), "current_stream": lambda *a, **k: seen["caller"],
        "stream": use_stream, "synchronize": lambda *a, **k: None, "CUDAGraph": FakeGraph, "graph": capture,
    }.items():  # fmt: skip
        monkeypatch.setattr(cuda, name, value)
    engine = FakeEngine()
    meta = {"key": {"precision": "fp32", "tensorrt_version": "10.16.1"}, "graph_kind": "loss-mse"}
    loaded = LoadedEngine(engine, runtime=None, logger=None, path=Path("loss.engine"), meta=meta)
    monkeypatch.setattr(trt_backend, "load_engine", lambda path, device=0: loaded)
    seen["engine"] = engine
    yield seen


def _backend(cuda_graph: bool) -> trt_backend.TensorRTBackend:
    backend = trt_backend.TensorRTBackend({"loss": "loss.engine"}, kernels="torch", cuda_graph=cuda_graph)
    backend.device = torch.device("cpu")  # buffers on the host: the fakes read and write them there
    return backend


def _state(n: int) -> SlotState:
    rng = np.random.default_rng(0)
    z = torch.from_numpy(rng.standard_normal((n, *LATENT), dtype=np.float32))
    x = torch.from_numpy(rng.random((n, *IMAGE), dtype=np.float32))
    zeros = torch.zeros_like(z)
    return SlotState(z, zeros, zeros.clone(), z.clone(), torch.full((n,), np.inf), x, torch.zeros(n))


@pytest.mark.parametrize("cuda_graph", [False, True], ids=["eager", "captured"])
def test_enqueues_on_the_backends_own_stream(fake_cuda: dict[str, Any], cuda_graph: bool) -> None:
    backend = _backend(cuda_graph)
    state = _state(3)
    for _ in range(4):
        backend.step(state, InversionSettings(lr=0.05).adam)
    calls = [c for ctx in fake_cuda["engine"].contexts for c in ctx.streams]
    assert {what for what, _ in calls} == {"set_optimization_profile_async", "execute_async_v3"}
    assert all(stream == OUR_STREAM for _, stream in calls), f"stream handles passed to TensorRT: {calls}"
    assert backend.stream.waited and set(backend.stream.waited) == {0}  # after the caller's work
    assert set(fake_cuda["caller"].waited) == {OUR_STREAM}  # the caller's next work after ours
    assert set(fake_cuda["entered"]) == {OUR_STREAM}
    if cuda_graph:
        assert fake_cuda["capture_streams"] == [backend.stream] and fake_cuda["replays"] == 4
    bucket = next(iter(backend._buckets.values()))
    ctx = fake_cuda["engine"].contexts[0]
    assert ctx.addresses["z"] == bucket.buffers.z.data_ptr() and ctx.shapes["z"] == (4, *LATENT)  # aliased, padded
    assert state.t.tolist() == ([0.0] * 3 if cuda_graph else [4.0] * 3)  # the fake graph replays nothing


def test_close_releases_contexts_and_stream(fake_cuda: dict[str, Any]) -> None:
    with _backend(cuda_graph=False) as backend:
        backend.step(_state(2), InversionSettings(lr=0.05).adam)
        eng = backend.engines["loss"]
        assert eng.contexts
    assert backend.closed and backend.stream is None and not eng.contexts and not backend.engines
    with pytest.raises(RuntimeError, match="closed"):
        backend.step(_state(2), InversionSettings(lr=0.05).adam)
