"""The GPU runtime: static-buffer padding (CPU, for real), CUDA-graph backend (GPU), TensorRT backend (GPU + TensorRT).

Run all: pytest tests/test_gpu_runtime.py -v -m "gpu or tensorrt or not (gpu or tensorrt)"
The unmarked tests run the CUDA-graph backend's static-buffer iteration eagerly on CPU: the same staging,
padding and bucket code the captured graph uses. ``gpu`` tests need torch with CUDA; ``tensorrt`` tests need
TensorRT ≥ 10 as well. Every skip says why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from genorigin.runtime.backends.compare import compare_backends
from genorigin.runtime.backends.eager import TorchBackend
from genorigin.runtime.backends.gpu.slots import FIELDS, SlotBuffers
from genorigin.runtime.backends.gpu.torch_graph import CudaGraphTorchBackend
from genorigin.runtime.loop.backend import Backend, SlotState, take, to_numpy
from genorigin.runtime.loop.settings import InversionSettings, Schedule
from helpers import tiny_generator

SETTINGS = InversionSettings(steps=40, lr=0.05)
HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU visible to torch (none here)")


def _problem(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 8), dtype=np.float32), rng.random((n, 3, 8, 8), dtype=np.float32)


def drive(
    backend: Backend,
    z0: np.ndarray,
    x: np.ndarray,
    steps: int,
    *,
    compact_at: int | None = None,
    keep: np.ndarray | None = None,
    between: Any = None,
) -> dict[str, np.ndarray]:
    """The shared loop's use of ``step``: per-slot t, and the SlotState replaced by a compaction at a checkpoint."""
    n = len(z0)
    st = SlotState(
        z=backend.asarray(z0),
        m=backend.asarray(np.zeros_like(z0)),
        v=backend.asarray(np.zeros_like(z0)),
        best_z=backend.asarray(z0.copy()),
        best_loss=backend.asarray(np.full(n, np.inf, np.float32)),
        x=backend.asarray(x),
        t=backend.asarray(np.zeros(n, np.float32)),
    )
    for i in range(1, steps + 1):
        backend.step(st, SETTINGS.adam)
        if between is not None:
            between(backend, i)
        if compact_at == i:
            assert keep is not None
            for f in ("z", "m", "v", "best_z", "best_loss", "x", "t"):
                setattr(st, f, take(getattr(st, f), keep))
    return {f: to_numpy(getattr(st, f)) for f in ("z", "m", "v", "best_z", "best_loss")}


def reference_run(z0: np.ndarray, x: np.ndarray, steps: int, **kw: Any) -> dict[str, np.ndarray]:
    """The CPU reference: eager TorchBackend with the base class step (reference loss and Adam)."""
    return drive(TorchBackend(tiny_generator()), z0, x, steps, **kw)


def assert_runs_close(a: dict[str, np.ndarray], b: dict[str, np.ndarray], rtol: float, atol: float) -> None:
    for f in a:
        np.testing.assert_allclose(a[f], b[f], rtol=rtol, atol=atol, err_msg=f)


def _bucket_buffers(backend: CudaGraphTorchBackend, bucket: int) -> SlotBuffers:
    return next(e.buffers for (b, _), e in backend._buckets.items() if b == bucket)


# ---------------------------------------------------------------------------------------------- CPU


def test_slot_buffers_stage_publish_and_pad() -> None:
    bufs = SlotBuffers(4, (8,), (3, 8, 8), torch.device("cpu"))
    z, x = _problem(3)
    st = SlotState(
        z=torch.from_numpy(z), m=torch.zeros(3, 8), v=torch.zeros(3, 8), best_z=torch.from_numpy(z.copy()),
        best_loss=torch.full((3,), np.inf), x=torch.from_numpy(x), t=torch.ones(3),
    )  # fmt: skip
    assert bufs.stage(st) == 3
    assert bufs.weight.tolist() == [1, 1, 1, 0] and bufs.t[3] == 0 and float(bufs.z[3].abs().sum()) == 0
    bufs.publish(st)
    assert st.z.data_ptr() == bufs.z.data_ptr() and st.z.shape == (3, 8)
    bufs.z[0, 0] = 42.0  # the next stage finds its own views: nothing is copied over them
    bufs.stage(st)
    assert float(bufs.z[0, 0]) == 42.0
    # a replaced array (the loop compacted/refilled) is copied in; a shrink turns the freed rows into padding
    st2 = SlotState(
        **{f: take(getattr(st, f), np.array([2, 0])) for f in ("z", "m", "v", "best_z", "best_loss", "x", "t")}
    )
    bufs.stage(st2)
    assert bufs.weight.tolist() == [1, 1, 0, 0] and float(bufs.z[2].abs().sum()) == 0
    np.testing.assert_array_equal(bufs.z[:2].numpy(), np.stack([z[2], np.r_[42.0, z[0, 1:]]]))
    # an overlapping view of the buffers themselves (rows shifted by one) is copied safely
    bufs.publish(st2)
    shifted = SlotState(**{f: getattr(bufs, f)[1:3] for f in FIELDS})
    expect = bufs.z[1:3].clone()
    bufs.stage(shifted)
    torch.testing.assert_close(bufs.z[:2], expect)
    with pytest.raises(ValueError, match="do not fit"):
        SlotBuffers(2, (8,), (3, 8, 8), torch.device("cpu")).stage(st)


def test_static_buffer_step_matches_reference_on_cpu() -> None:
    """5 slots (bucket 8), compacted to 3 (bucket 4) at step 10: same numbers as the eager reference."""
    z, x = _problem(5)
    keep = np.array([4, 1, 2])
    ref = reference_run(z, x, 25, compact_at=10, keep=keep)
    backend = CudaGraphTorchBackend(tiny_generator(), device="cpu", kernels="torch")
    got = drive(backend, z, x, 25, compact_at=10, keep=keep)
    assert_runs_close(got, ref, rtol=1e-5, atol=1e-6)
    assert backend.describe()["buckets"] == [4, 8] and backend.steps == 25
    assert backend.describe()["cuda_graph"] is False


def _scribble_padding(backend: CudaGraphTorchBackend, step: int) -> None:
    """Fill the padded row with wild values: it must not reach the real rows."""
    bufs = _bucket_buffers(backend, 4)
    g = torch.Generator(device="cpu").manual_seed(step)
    bufs.z[3] = (torch.randn(bufs.z[3].shape, generator=g) * 50).to(bufs.z.device)
    bufs.x[3] = torch.rand(bufs.x[3].shape, generator=g).to(bufs.x.device)
    bufs.m[3] = 1e3
    bufs.v[3] = 1e-9


def test_padded_slots_do_not_change_real_slots_cpu() -> None:
    z, x = _problem(3, seed=2)
    backend = CudaGraphTorchBackend(tiny_generator(), device="cpu", kernels="torch")
    clean = drive(backend, z, x, 15)
    dirty = drive(backend, z, x, 15, between=_scribble_padding)
    for f in clean:
        np.testing.assert_array_equal(clean[f], dirty[f], err_msg=f)


def check_loop_matches_reference(backend: Backend, *, own: int, steps: int, rtol: float, atol: float,
                                 optimizer: str = "adam") -> None:  # fmt: skip
    """End to end through the shared loop: ``backend`` against the eager TorchBackend on ``own`` of the
    generator's samples and 3 other images, with refills (batch ``own`` of 2 restarts), with ``optimizer``
    (L-BFGS keeps its per-slot history on the backend's device)."""
    gen = tiny_generator()
    targets = np.concatenate([gen.sample(own, seed=3), _problem(3, seed=4)[1]])
    settings = InversionSettings(steps=steps, lr=0.05, restarts=2, optimizer=optimizer)
    schedule = Schedule(batch_size=own, check_every=20, early_exit=False)
    backends = {"torch": TorchBackend(tiny_generator()), backend.name: backend}
    compare_backends(backends, targets, settings, rtol, latent=gen.latent, schedule=schedule, atol=atol).check()


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_invert_with_static_buffer_backend_matches_torch_backend(optimizer: str) -> None:
    """Both optimisers run inside the backend's iteration (what the GPU captures), not over loss_and_grad."""
    backend = CudaGraphTorchBackend(tiny_generator(), device="cpu")
    check_loop_matches_reference(backend, own=2, steps=60, rtol=1e-4, atol=1e-9, optimizer=optimizer)
    assert backend.steps >= 60  # the loop's steps went through the backend's own iteration (L-BFGS did not)


def test_backends_report_the_names_they_are_chosen_by() -> None:
    """``--backend torch-cuda-graph`` must say torch-cuda-graph (it said torch-cudagraph)."""
    from genorigin.runtime.backends.gpu.tensorrt import TensorRTBackend
    from genorigin.runtime.backends.registry import BACKENDS

    assert CudaGraphTorchBackend.name == "torch-cuda-graph" and TensorRTBackend.name in BACKENDS
    assert CudaGraphTorchBackend(tiny_generator(), device="cpu").describe()["backend"] in BACKENDS


def test_capture_refused_on_cpu() -> None:
    with pytest.raises(ValueError, match="needs a CUDA device"):
        CudaGraphTorchBackend(tiny_generator(), device="cpu", capture=True)
    with pytest.raises(ValueError, match="kernels"):
        CudaGraphTorchBackend(tiny_generator(), device="cpu", kernels="cuda")


# ---------------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("kernels", ["torch", "auto"])
def test_cuda_graph_backend_matches_cpu_reference(kernels: str) -> None:
    z, x = _problem(5)
    keep = np.array([4, 1, 2])
    ref = reference_run(z, x, 30, compact_at=10, keep=keep)
    backend = CudaGraphTorchBackend(tiny_generator(), device="cuda", kernels=kernels)
    got = drive(backend, z, x, 30, compact_at=10, keep=keep)
    info = backend.describe()
    assert info["cuda_graph"] is True, "capture failed (see the log): the graph path was not exercised"
    assert info["buckets"] == [4, 8]
    assert info["kernels"] == ("torch" if kernels == "torch" else "cuda"), info["kernels_note"]  # no silent fallback
    assert_runs_close(got, ref, rtol=1e-3, atol=1e-5)


@pytest.mark.gpu
@needs_cuda
def test_cuda_graph_padding_does_not_change_real_slots() -> None:
    z, x = _problem(3, seed=2)
    backend = CudaGraphTorchBackend(tiny_generator(), device="cuda")
    clean = drive(backend, z, x, 15)
    dirty = drive(backend, z, x, 15, between=_scribble_padding)
    assert backend.describe()["cuda_graph"] is True and backend.describe()["kernels"] == "cuda"
    for f in clean:  # same captured graph, same kernels: bit for bit
        np.testing.assert_array_equal(clean[f], dirty[f], err_msg=f)


@pytest.mark.gpu
@needs_cuda
def test_cuda_graph_backend_runs_on_its_own_stream_and_closes() -> None:
    z, x = _problem(3)
    caller = torch.cuda.current_stream()
    with CudaGraphTorchBackend(tiny_generator(), device="cuda") as backend:
        drive(backend, z, x, 5)
        assert backend.stream is not None and backend.stream.cuda_stream not in (0, caller.cuda_stream)
        assert torch.cuda.current_stream() == caller  # the caller's stream is back after every step
    assert backend.closed and backend.stream is None and not backend._buckets


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_cuda_graph_backend_through_the_loop(optimizer: str) -> None:
    graphed = CudaGraphTorchBackend(tiny_generator(), device="cuda")
    check_loop_matches_reference(graphed, own=3, steps=80, rtol=2e-3, atol=1e-7, optimizer=optimizer)
    assert graphed.describe()["cuda_graph"] is True and graphed.describe()["kernels"] == "cuda"


# ---------------------------------------------------------------------------------------------- TensorRT


def _tensorrt_reason() -> str | None:
    if not HAS_CUDA:
        return "needs a CUDA GPU visible to torch (none here)"
    from genorigin.runtime.backends.gpu.trt_env import tensorrt_available

    ok, why = tensorrt_available()
    return None if ok else f"needs TensorRT >= 10: {why}"


@pytest.fixture(scope="module")
def trt_graphs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = _tensorrt_reason()
    if reason:
        pytest.skip(reason)
    from genorigin.export.package import export_generator

    return export_generator(tiny_generator(), tmp_path_factory.mktemp("trt") / "tiny")


@pytest.mark.tensorrt
def test_engine_build_cache_hit_and_foreign_rejection(trt_graphs: Path, tmp_path: Path) -> None:
    import json

    from genorigin.runtime.backends.gpu.engine_cache import sidecar_path
    from genorigin.runtime.backends.gpu.profiles import BatchProfile
    from genorigin.runtime.backends.gpu.trt_build import build_engines
    from genorigin.runtime.backends.gpu.trt_load import ForeignEngineError, load_engine

    profiles = (BatchProfile(1, 4, 16),)
    first = build_engines(trt_graphs, cache_dir=tmp_path, profiles=profiles)
    assert set(first) == {"forward", "vjp", "loss"} and all(e.built for e in first.values())
    second = build_engines(trt_graphs, cache_dir=tmp_path, profiles=profiles)
    assert not any(e.built for e in second.values())
    assert load_engine(second["vjp"].path).engine.num_io_tensors == 4
    side = sidecar_path(second["vjp"].path)
    meta = json.loads(side.read_text())
    meta["key"]["device_name"] = "Some Other GPU"
    side.write_text(json.dumps(meta))
    with pytest.raises(ForeignEngineError):
        load_engine(second["vjp"].path)
    third = build_engines(trt_graphs, cache_dir=tmp_path, profiles=profiles)
    assert third["vjp"].built and not third["forward"].built


@pytest.mark.tensorrt
@pytest.mark.parametrize("plan", ["loss", "vjp"])
@pytest.mark.parametrize("kernels", ["torch", "auto"])
def test_tensorrt_backend_matches_cpu_reference(trt_graphs: Path, tmp_path: Path, plan: str, kernels: str) -> None:
    from genorigin.runtime.backends.gpu.profiles import BatchProfile
    from genorigin.runtime.backends.gpu.tensorrt import TensorRTBackend

    backend = TensorRTBackend.from_graphs(
        trt_graphs, profiles=(BatchProfile(1, 4, 16),), cache_dir=tmp_path, plan=plan, kernels=kernels
    )
    z, x = _problem(5)
    cpu = TorchBackend(tiny_generator())
    loss_ref, grad_ref = cpu.loss_and_grad(torch.from_numpy(z), torch.from_numpy(x))
    loss, grad = backend.loss_and_grad(backend.asarray(z), backend.asarray(x))
    np.testing.assert_allclose(to_numpy(loss), to_numpy(loss_ref), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(to_numpy(grad), to_numpy(grad_ref), rtol=1e-3, atol=1e-6)
    keep = np.array([4, 1, 2])
    ref = reference_run(z, x, 30, compact_at=10, keep=keep)
    got = drive(backend, z, x, 30, compact_at=10, keep=keep)
    assert_runs_close(got, ref, rtol=2e-3, atol=1e-5)
    np.testing.assert_allclose(backend.render(z), cpu.render(z), rtol=1e-4, atol=1e-5)
    info = backend.describe()
    assert info["kernels"] == ("torch" if kernels == "torch" else "cuda"), info["kernels_note"]
    assert info["cuda_graph"] is True and info["own_stream"] is True
    backend.close()


@pytest.mark.tensorrt
def test_tensorrt_backend_runs_the_fast_preset_within_its_engines(trt_graphs: Path, tmp_path: Path) -> None:
    """The default preset (per-slot L-BFGS, one fresh start for a stalled image) through the loop on TensorRT:
    the update runs inside the backend's iteration, the slots never exceed the engines' largest batch (16)
    although 12 images × 2 slots would, and the losses follow the CPU reference."""
    from genorigin.runtime.backends.gpu.profiles import BatchProfile
    from genorigin.runtime.backends.gpu.tensorrt import TensorRTBackend

    backend = TensorRTBackend.from_graphs(trt_graphs, profiles=(BatchProfile(1, 4, 16),), cache_dir=tmp_path)
    gen = tiny_generator()
    targets = np.concatenate([gen.sample(6, seed=3), _problem(6, seed=4)[1]])
    settings = InversionSettings(steps=60, restarts=1, optimizer="lbfgs", fresh_starts=1, stall_window=10)
    schedule = Schedule(batch_size=12, check_every=10, early_exit=False)
    compare_backends({"torch": TorchBackend(gen), "tensorrt": backend}, targets, settings, 2e-3, latent=gen.latent,
                     schedule=schedule, atol=1e-7).check()  # fmt: skip
    assert backend.steps > 0 and backend.max_slots == 16
    assert backend.describe()["cuda_graph"] is True
    backend.close()
