"""The fast preset (the default decision) on every GPU backend: latency, throughput, host syncs, verdicts.

Issue 23's one-command GPU measurement, run by ``gpu_check.sh``. The bundled ``dcgan_a`` with its shipped
encoder is calibrated once on the CPU (torch backend, fast preset); then, on each GPU backend that can run
here (``torch-cuda`` eager, ``torch-cuda-graph``, ``tensorrt`` when TensorRT is installed, ``onnxruntime-cuda``
when onnxruntime-gpu is), with that calibration:

- decision latency at batch 1: p50/p99 over ``--decisions`` own and real images, each attributed alone;
- throughput at batch 64: images/s attributing 64 images in one call;
- host synchronisations per optimiser step between checkpoints, from the profiler (CUDA runtime calls that
  wait for the device, and ``aten::_local_scalar_dense``: a tensor read on the host);
- the encoder start's cost per image (it runs at admission, on the host's encoder);
- verdicts against the CPU run on the same images (how many differ, and the largest |log score ratio|).

    python benchmarks/bench_fast_gpu.py --out bench_fast_gpu.json

Without a CUDA GPU it measures nothing, says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "aten::_local_scalar_dense")


def _images(n: int) -> tuple[Any, np.ndarray, list[str]]:
    from genorigin.export.bundled import real_images_dir
    from genorigin.runtime.decide.calibration import quantize_8bit

    from genorigin.images import load_rgb8
    from genorigin.models import resolve_model

    model = resolve_model("dcgan_a")
    gen = model.generator
    own = quantize_8bit(gen.sample(n, seed=778))
    real = np.stack([gen.prepare_image(load_rgb8(p)) for p in sorted(real_images_dir().glob("*.png"))[140 : 140 + n]])
    return model, np.concatenate([own, real]).astype(np.float32), ["own"] * n + ["real"] * len(real)


def _attributor(model: Any, backend: Any, calibration: Any = None, batch_size: int = 32) -> Any:
    from genorigin.runtime.loop.settings import FAST_SCHEDULE, FAST_SETTINGS
    from genorigin.runtime.methods.attribution import Attributor
    from genorigin.runtime.methods.encoder import FittedEncoder

    schedule = FAST_SCHEDULE.__class__(**{**FAST_SCHEDULE.__dict__, "batch_size": batch_size})
    return Attributor(model.generator, backend=backend, settings=FAST_SETTINGS, schedule=schedule,
                      calibration=calibration, encoder=FittedEncoder.load(model.encoder_path))  # fmt: skip


def _gpu_backends(model: Any) -> tuple[dict[str, Any], dict[str, str]]:
    from genorigin.runtime.backends.registry import make_backend

    made, skipped = {}, {}
    for name in ("torch-cuda", "torch-cuda-graph", "tensorrt", "onnxruntime-cuda"):
        try:
            made[name] = make_backend(model, name)
        except Exception as e:  # not installed here, or refused: say why, measure the rest
            skipped[name] = f"{type(e).__name__}: {e}"
    return made, skipped


def host_syncs_per_step(attributor: Any, images: np.ndarray, steps: int = 9) -> float:
    """Device→host synchronisations per optimiser step, between two checkpoints (profiler events)."""
    import torch
    from genorigin.runtime.loop.inversion import InversionLoop
    from genorigin.runtime.loop.slots import FreshSlots
    from genorigin.runtime.loop.work import ListSource, WorkItem

    loop: InversionLoop = attributor._loop(attributor.schedule, None)
    source = ListSource([WorkItem(i, img) for i, img in enumerate(images)])
    loop.pool.rebuild(np.zeros(0, dtype=np.int64), FreshSlots.concat(loop._admit(source, [])))
    state = loop.pool.state()
    loop.optimizer.step(loop.backend, state)  # warm-up (and capture) outside the window
    torch.cuda.synchronize()
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            loop.optimizer.step(loop.backend, state)
    torch.cuda.synchronize()
    count = sum(e.count for e in prof.key_averages() if any(name in e.key for name in SYNC_CALLS))
    return count / steps


def measure(backend: Any, model: Any, calibration: Any, images: np.ndarray, cpu: list, args) -> dict:
    import torch

    att = _attributor(model, backend, calibration)
    att.attribute(images[:2])  # warm-up: capture, engine load, cuDNN autotune
    latencies = []
    for i in range(min(args.decisions, len(images))):
        torch.cuda.synchronize()
        start = time.perf_counter()
        att.attribute(images[i : i + 1])
        torch.cuda.synchronize()
        latencies.append(time.perf_counter() - start)
    batch = np.concatenate([images] * math.ceil(64 / len(images)))[:64]
    att64 = _attributor(model, backend, calibration, batch_size=64)
    start = time.perf_counter()
    att64.attribute(batch)
    torch.cuda.synchronize()
    images_per_s = 64 / (time.perf_counter() - start)
    results = att.attribute(images)
    diffs = [abs(math.log(r.calibrated_loss / c.calibrated_loss)) for r, c in zip(results, cpu)]
    start = time.perf_counter()
    for img in images:
        att.initializer(img, 1, np.random.default_rng(0))
    encoder_ms = 1e3 * (time.perf_counter() - start) / len(images)
    return {
        "p50_ms": 1e3 * float(np.percentile(latencies, 50)), "p99_ms": 1e3 * float(np.percentile(latencies, 99)),
        "images_per_s_batch64": images_per_s, "host_syncs_per_step": host_syncs_per_step(att, images[:4]),
        "encoder_start_ms_per_image": encoder_ms,
        "verdicts_differing_from_cpu": sum(r.verdict != c.verdict for r, c in zip(results, cpu)),
        "max_log_score_ratio_vs_cpu": max(diffs), "steps": [r.steps for r in results],
        "describe": backend.describe(),
    }  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("bench_fast_gpu.json"))
    p.add_argument("--n", type=int, default=8, help="own and real images each")
    p.add_argument("--decisions", type=int, default=16, help="single-image decisions timed per backend")
    p.add_argument("--calibration", type=int, default=30, help="own samples in the CPU calibration")
    args = p.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("bench_fast_gpu: no CUDA GPU visible to torch; nothing measured", file=sys.stderr)
        args.out.write_text(json.dumps({"skipped": "no CUDA GPU"}))
        return 0
    from genorigin.runtime.backends.eager import TorchBackend

    model, images, labels = _images(args.n)
    cpu_att = _attributor(model, TorchBackend(model.generator))
    calibration = cpu_att.calibrate(args.calibration)
    cpu = cpu_att.attribute(images)
    backends, skipped = _gpu_backends(model)
    results = {}
    for name, backend in backends.items():
        try:
            results[name] = measure(backend, model, calibration, images, cpu, args)
        except Exception as e:
            skipped[name] = f"failed: {type(e).__name__}: {e}"
        print(f"bench_fast_gpu: {name}: {results.get(name, skipped.get(name))}", file=sys.stderr, flush=True)
    out = {"device": torch.cuda.get_device_name(), "labels": labels, "cpu_verdicts": [r.verdict for r in cpu],
           "results": results, "skipped": skipped, "date": time.strftime("%Y-%m-%d")}  # fmt: skip
    args.out.write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
