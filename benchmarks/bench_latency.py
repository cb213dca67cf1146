"""Latency of one attribution decision and batched throughput of the inversion backends on one GPU.

Backends: ``eager`` (the RONAN-faithful setting: eager PyTorch TorchBackend, batch 1, 1 restart, every
step of the budget, no early exit), ``cudagraph`` (CudaGraphTorchBackend with ``--kernels``, by default the
custom CUDA loss/Adam kernels), ``cudagraph-torchops`` (the same with torch ops for loss and Adam),
``ort-cuda`` (the package's OrtBackend on ONNX Runtime's CUDA provider, host arrays as shipped),
``ort-iobinding`` (the same loss graph with its I/O bound to torch CUDA tensors: no host copies) — both where
onnxruntime-gpu is installed — and ``tensorrt`` (TensorRTBackend, where TensorRT ≥ 10 is installed). Model:
the bundled 32×32 DCGAN ``dcgan_a`` (random DCGAN weights of the same architecture when the bundled file is
absent: timing does not depend on the weights).

Two measurements per backend: through the shared loop (``invert``: what a user gets, including checkpoint
syncs every 50 steps) and through ``Backend.step`` driven directly (what the loop costs once it calls
``step``; the JSON records whether it did, and each backend's ``describe()``: which kernels really ran).
Per-decision latency: p50/p95 over ``--decisions`` single-image inversions. Throughput: images/s for batches
of 8-256 images, ``--steps`` steps each. Goals on an H100: p50 ≤ 20 ms per decision, ≥ 2,000 images/s
batched.

    python benchmarks/bench_latency.py --out bench_latency.json      # also writes bench_latency.png

Without a CUDA GPU it measures nothing, says what was skipped and exits 0.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from genorigin.runtime.backends.gpu.trt_env import PRECISIONS

BACKENDS = ("eager", "cudagraph", "cudagraph-torchops", "ort-cuda", "ort-iobinding", "tensorrt")
GOAL_P50_MS = 20.0
GOAL_IMAGES_PER_S = 2000.0


class Skip(Exception):
    """This backend cannot run here; the message says why."""


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def load_model(name: str) -> tuple[Any, str | None]:
    """The bundled model, or a random-weight DCGAN of the same shape (with a note) when its file is absent."""
    from genorigin.export.bundled import load_bundled

    try:
        return load_bundled(name), None
    except (FileNotFoundError, ValueError, KeyError) as e:
        import torch
        from genorigin.export.adapters import dcgan_from_state_dict
        from genorigin.export.architectures import DCGANGenerator

        torch.manual_seed(0)
        note = f"bundled model {name!r} unavailable ({e}); timed a random-weight DCGAN of the same architecture"
        return dcgan_from_state_dict(DCGANGenerator().state_dict(), name="dcgan-random"), note


def export_package(generator: Any, folder: Path) -> Path:
    """The generator's attribution package (forward, vjp, loss_mse graphs + manifest), once per folder."""
    from genorigin.export.package import export_generator

    if (folder / "manifest.json").is_file():
        return folder
    cpu_copy = dataclasses.replace(generator, module=copy.deepcopy(generator.module).cpu())  # timed ones stay put
    return export_generator(cpu_copy, folder)


def make_ort_backend(loss_onnx: Path, device_index: int, tf32: bool) -> Any:
    """ONNX Runtime CUDA on the loss graph with I/O bound to torch CUDA tensors; reference Adam in torch."""
    import torch
    from genorigin.runtime.loop.backend import Backend

    try:
        import onnxruntime as ort
    except ImportError as e:
        raise Skip(f"onnxruntime is not installed ({e})") from e
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise Skip(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (install onnxruntime-gpu alone)")

    class OrtCudaBackend(Backend):
        name = "ort-iobinding"

        def __init__(self) -> None:
            options: dict[str, Any] = {"device_id": device_index, "use_tf32": int(tf32)}
            try:  # use_tf32 (default on) exists in recent ONNX Runtime only
                self.session = ort.InferenceSession(str(loss_onnx), providers=[("CUDAExecutionProvider", options)])
            except Exception:
                options.pop("use_tf32")
                self.session = ort.InferenceSession(str(loss_onnx), providers=[("CUDAExecutionProvider", options)])
            if self.session.get_providers()[0] != "CUDAExecutionProvider":
                raise Skip(f"ONNX Runtime fell back to {self.session.get_providers()}")
            self.device = torch.device("cuda", device_index)

        def asarray(self, a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

        def loss_and_grad(self, z: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            z, x = z.contiguous(), x.contiguous()
            loss = torch.empty(z.shape[0], dtype=torch.float32, device=self.device)
            grad = torch.empty_like(z)
            io = self.session.io_binding()
            for name, t in (("z", z), ("target", x)):
                io.bind_input(name, "cuda", device_index, np.float32, tuple(t.shape), t.data_ptr())
            for name, t in (("loss", loss), ("grad_z", grad)):
                io.bind_output(name, "cuda", device_index, np.float32, tuple(t.shape), t.data_ptr())
            torch.cuda.current_stream(self.device).synchronize()  # ORT runs on its own stream
            self.session.run_with_iobinding(io)
            return loss, grad

    return OrtCudaBackend()


def make_backend(name: str, generator: Any, args: argparse.Namespace, work: Path) -> Any:
    import torch

    if name == "eager":
        from genorigin.runtime.backends.eager import TorchBackend

        return TorchBackend(generator, device="cuda")
    if name.startswith("cudagraph"):
        from genorigin.runtime.backends.gpu.torch_graph import CudaGraphTorchBackend

        kernels = "torch" if name == "cudagraph-torchops" else args.kernels
        return CudaGraphTorchBackend(generator, device="cuda", kernels=kernels, tf32=args.tf32)
    if name == "ort-iobinding":
        loss_graph = export_package(generator, work / "package") / "loss_mse.onnx"
        return make_ort_backend(loss_graph, torch.cuda.current_device(), args.tf32)
    if name == "ort-cuda":
        from genorigin.export.package import AttributionPackage
        from genorigin.runtime.backends.ort import OrtBackend

        try:
            return OrtBackend(AttributionPackage.load(export_package(generator, work / "package")), device="cuda")
        except RuntimeError as e:  # no CUDAExecutionProvider, or ONNX Runtime fell back to the CPU
            raise Skip(str(e)) from e
    if name == "tensorrt":
        from genorigin.runtime.backends.gpu.profiles import BatchProfile
        from genorigin.runtime.backends.gpu.tensorrt import TensorRTBackend
        from genorigin.runtime.backends.gpu.trt_env import tensorrt_available

        ok, why = tensorrt_available()
        if not ok:
            raise Skip(why)
        top = max(args.batches)
        profile = BatchProfile(1, min(32, top), top)
        return TensorRTBackend.from_graphs(
            export_package(generator, work / "package"), precision=args.precision, profiles=(profile,),
            cache_dir=args.cache_dir, kernels=args.kernels, plan=args.trt_plan,
        )  # fmt: skip
    raise ValueError(name)


def time_loop(backend: Any, generator: Any, targets: np.ndarray, steps: int) -> float:
    """Seconds for the shared loop to invert ``targets`` together (all in flight, no early exit)."""
    import torch
    from genorigin.runtime.loop.inversion import invert
    from genorigin.runtime.loop.settings import InversionSettings, Schedule

    settings = InversionSettings(steps=steps, restarts=1)
    schedule = Schedule(batch_size=len(targets), early_exit=False)
    torch.cuda.synchronize()
    start = time.perf_counter()
    invert(backend, targets, generator.latent, settings, schedule)
    torch.cuda.synchronize()
    return time.perf_counter() - start


def time_steps(backend: Any, generator: Any, targets: np.ndarray, steps: int) -> float:
    """Seconds for ``steps`` calls of ``backend.step`` on one batch, one host sync at the end."""
    import torch
    from genorigin.runtime.loop.backend import SlotState
    from genorigin.runtime.loop.settings import InversionSettings

    settings = InversionSettings(steps=steps, restarts=1)
    n = len(targets)
    z0 = generator.latent.sample(n, np.random.default_rng(0))
    st = SlotState(
        z=backend.asarray(z0), m=backend.asarray(np.zeros_like(z0)), v=backend.asarray(np.zeros_like(z0)),
        best_z=backend.asarray(z0.copy()), best_loss=backend.asarray(np.full(n, np.inf, np.float32)),
        x=backend.asarray(targets), t=backend.asarray(np.zeros(n, np.float32)),
    )  # fmt: skip
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        backend.step(st, settings.adam)  # t advances on the device: no upload per step
    float(st.best_loss.min())  # the decision needs the losses on the host
    return time.perf_counter() - start


def measure(name: str, backend: Any, generator: Any, targets: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"describe": backend.describe()}
    timers: tuple[tuple[str, Callable[..., float]], ...] = (("loop", time_loop), ("step", time_steps))
    for mode, timer in timers:
        timer(backend, generator, targets[:1], min(args.steps, 50))  # warm-up: capture, autotuning, engines
        lat = [timer(backend, generator, targets[i : i + 1], args.steps) * 1e3 for i in range(args.decisions)]
        thr = {}
        for b in args.batches:
            timer(backend, generator, targets[:b], min(args.steps, 50))
            thr[str(b)] = b / timer(backend, generator, targets[:b], args.steps)
        out[mode] = {
            "latency_ms": {"p50": _percentile(lat, 50), "p95": _percentile(lat, 95), "all": lat},
            "images_per_s": thr,
        }
        print(
            f"  {name:10s} {mode:4s} p50 {out[mode]['latency_ms']['p50']:8.1f} ms  "
            f"p95 {out[mode]['latency_ms']['p95']:8.1f} ms  " + "  ".join(f"B{b}: {v:7.0f}/s" for b, v in thr.items()),
            flush=True,
        )
    out["loop_calls_step"] = _loop_used_step(backend, generator, targets) if hasattr(backend, "steps") else None
    return out


def _loop_used_step(backend: Any, generator: Any, targets: np.ndarray) -> bool:
    """Whether the shared loop drives ``Backend.step`` (else it calls loss_and_grad + adam_step)."""
    before = backend.steps
    time_loop(backend, generator, targets[:1], 2)
    return backend.steps > before


def goals(results: dict[str, Any]) -> dict[str, Any]:
    lat = [(r["loop"]["latency_ms"]["p50"], n) for n, r in results.items()]
    thr = [(v, n, int(b)) for n, r in results.items() for b, v in r["loop"]["images_per_s"].items()]
    best_lat, best_thr = min(lat, default=None), max(thr, default=None)
    return {
        "decision_p50_ms": {
            "goal": GOAL_P50_MS,
            "best": None if best_lat is None else {"backend": best_lat[1], "ms": best_lat[0]},
            "met": best_lat is not None and best_lat[0] <= GOAL_P50_MS,
        },
        "images_per_s": {
            "goal": GOAL_IMAGES_PER_S,
            "best": None if best_thr is None else {"backend": best_thr[1], "batch": best_thr[2], "rate": best_thr[0]},
            "met": best_thr is not None and best_thr[0] >= GOAL_IMAGES_PER_S,
        },
    }


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = list(results)
    xs = np.arange(len(names))
    for k, (q, shade) in enumerate((("p50", 0.9), ("p95", 0.5))):
        vals = [results[n]["loop"]["latency_ms"][q] for n in names]
        ax1.bar(xs + (k - 0.5) * 0.38, vals, 0.38, label=q, alpha=shade)
    ax1.axhline(GOAL_P50_MS, color="red", ls="--", lw=1, label=f"goal p50 ≤ {GOAL_P50_MS:g} ms")
    ax1.set_xticks(xs, names)
    ax1.set_yscale("log")
    ax1.set_ylabel(f"ms per decision (batch 1, {report['meta']['steps']} steps)")
    ax1.legend()
    for n in names:
        for mode, style in (("loop", "-o"), ("step", ":x")):
            thr = results[n][mode]["images_per_s"]
            ax2.plot([int(b) for b in thr], list(thr.values()), style, label=f"{n} ({mode})")
    ax2.axhline(GOAL_IMAGES_PER_S, color="red", ls="--", lw=1, label=f"goal ≥ {GOAL_IMAGES_PER_S:g}/s")
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log")
    ax2.set_xlabel("images in flight")
    ax2.set_ylabel("images / s")
    ax2.legend(fontsize=7)
    fig.suptitle(f"{report['meta']['model']} on {report['meta'].get('device', '?')}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("bench_latency.json"), help="JSON results (PNG beside it)")
    p.add_argument("--plot", type=Path, default=None, help="PNG path (default: --out with .png)")
    p.add_argument("--model", default="dcgan_a")
    p.add_argument("--steps", type=int, default=1500, help="steps per inversion (RONAN: 1500)")
    p.add_argument("--decisions", type=int, default=20, help="single-image inversions timed per backend")
    p.add_argument("--batches", type=lambda s: [int(v) for v in s.split(",")], default=[8, 32, 64, 128, 256])
    p.add_argument("--backends", type=lambda s: s.split(","), default=list(BACKENDS))
    p.add_argument("--kernels", choices=["auto", "cuda", "torch"], default="auto", help="loss/Adam kernels")
    p.add_argument("--tf32", action="store_true", help="let the CUDA-graph backend use TF32 convolutions")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="TensorRT engine precision; fp16/bf16 need TensorRT 10 (TensorRT 11 has no flag for them)",
    )
    p.add_argument("--trt-plan", choices=["auto", "loss", "vjp"], default="auto")
    p.add_argument("--cache-dir", type=Path, default=None, help="TensorRT engine cache (default: user cache)")
    p.add_argument("--quick", action="store_true", help="smoke run: 100 steps, 3 decisions, batches 8,32")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.decisions, args.batches = 100, 3, [8, 32]
    unknown = set(args.backends) - set(BACKENDS)
    if unknown:
        p.error(f"unknown backends {sorted(unknown)}; choose from {BACKENDS}")
    report: dict[str, Any] = {
        "meta": {"model": args.model, "steps": args.steps, "decisions": args.decisions, "batches": args.batches,
                 "python": sys.version.split()[0], "platform": platform.platform(), "tf32": args.tf32},
        "results": {},
        "skipped": {},
    }  # fmt: skip
    try:
        import torch
    except ImportError:
        torch = None  # type: ignore[assignment]
    if torch is None or not torch.cuda.is_available():
        why = "torch is not installed" if torch is None else "no CUDA GPU visible to torch"
        report["skipped"] = {b: why for b in args.backends}
        report["meta"]["note"] = "nothing was measured"
        args.out.write_text(json.dumps(report, indent=2))
        print(f"bench_latency: {why}; skipped {', '.join(args.backends)} (nothing measured). Wrote {args.out}")
        return 0
    torch.set_num_threads(1)
    report["meta"].update(device=torch.cuda.get_device_name(), torch=torch.__version__)
    generator, note = load_model(args.model)
    if note:
        report["meta"]["note"] = note
        print(f"bench_latency: {note}")
    n_targets = max(args.decisions, max(args.batches))
    targets = generator.sample(n_targets, seed=1)  # the model's own images: every run goes the full budget
    from genorigin.runtime.backends.gpu.numerics import fp32_math

    with tempfile.TemporaryDirectory() as tmp, fp32_math(args.tf32):
        for name in args.backends:
            try:
                with make_backend(name, generator, args, Path(tmp)) as backend:  # close() frees its GPU memory
                    report["results"][name] = measure(name, backend, generator, targets, args)
            except Skip as e:
                report["skipped"][name] = str(e)
                print(f"  {name:10s} skipped: {e}")
            except Exception as e:  # keep the other backends' numbers; record why this one failed
                report["skipped"][name] = f"failed: {type(e).__name__}: {e}"
                print(f"  {name:10s} FAILED: {type(e).__name__}: {e}")
    report["goals"] = goals(report["results"])
    args.out.write_text(json.dumps(report, indent=2))
    png = args.plot or args.out.with_suffix(".png")
    if report["results"]:
        plot(report, png)
    print(f"wrote {args.out}" + (f" and {png}" if report["results"] else ""))
    if report["skipped"]:
        print("skipped: " + "; ".join(f"{k} ({v})" for k, v in report["skipped"].items()))
    g = report["goals"]
    print(f"goal p50 ≤ {GOAL_P50_MS:g} ms: {'met' if g['decision_p50_ms']['met'] else 'NOT met'} "
          f"{g['decision_p50_ms']['best']}; goal ≥ {GOAL_IMAGES_PER_S:g} images/s: "
          f"{'met' if g['images_per_s']['met'] else 'NOT met'} {g['images_per_s']['best']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
