"""The 512 px SD-1.5-config decoder on every GPU backend: export, build, time one loss-and-gradient step.

    python benchmarks/gpu_large.py --out OUT/large.json [--size 512] [--batch 1 4] [--allow-cpu]

Run by benchmarks/gpu_large.sh (which bounds each part in time). The model is the AutoencoderKL with Stable
Diffusion 1.5's VAE configuration, random weights, seed 0 (benchmarks/large_workers.py), exported once into
OUT's cache; then each backend in turn (torch-cuda, torch-cuda-graph, onnxruntime-cuda, tensorrt) is built,
warmed up and timed (median of --repeat steps per batch), its gradient compared with eager torch on the GPU,
and its peak GPU memory read. A backend that cannot run says why in the JSON and the others go on.
``--allow-cpu`` (the dry run on a machine without a GPU) uses a small size and the CPU backends instead, to
check the pipeline.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
GPU_BACKENDS = ("torch-cuda", "torch-cuda-graph", "onnxruntime-cuda", "tensorrt")
CPU_BACKENDS = ("torch", "onnxruntime")


def time_backend(backend: Any, gen: Any, batch: int, repeat: int, device: str) -> dict[str, Any]:
    import torch

    rng = np.random.default_rng(batch)
    z = gen.latent.sample(batch, rng)
    x = rng.random((batch, gen.channels, *gen.image_size), dtype=np.float32)
    zb, xb = backend.asarray(z), backend.asarray(x)
    _, grad = backend.loss_and_grad(zb, xb)  # warm-up: kernels chosen, graphs captured, engines loaded
    times = []
    for _ in range(repeat):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        backend.loss_and_grad(zb, xb)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    grad = np.asarray(grad.cpu() if hasattr(grad, "cpu") else grad, dtype=np.float64)
    return {"batch": batch, "ms_per_step": statistics.median(times) * 1e3, "times_s": times, "grad": grad}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--work", type=Path, default=None, help="model folder's parent (default: beside --out)")
    p.add_argument("--backends", nargs="+", default=None)
    p.add_argument("--allow-cpu", action="store_true", help="dry run: small size, CPU backends")
    args = p.parse_args()
    import torch

    sys.path.insert(0, str(HERE))
    from genorigin.runtime.backends.registry import make_backend
    from large_workers import sd_folder

    from genorigin.models import resolve_model

    gpu = torch.cuda.is_available()
    if not gpu and not args.allow_cpu:
        print("gpu_large: no CUDA GPU (use --allow-cpu for a dry run)", file=sys.stderr)
        return 2
    size = args.size if gpu else min(args.size, 64)
    device = "cuda" if gpu else "cpu"
    names = args.backends or (GPU_BACKENDS if gpu else CPU_BACKENDS)
    work = args.work or args.out.parent
    report: dict[str, Any] = {"size": size, "device": torch.cuda.get_device_name() if gpu else "cpu", "backends": {}}
    model = resolve_model(str(sd_folder(work, size)))
    t0 = time.perf_counter()
    package = model.package()  # exported (and validated) into the cache once
    report["export_seconds"] = time.perf_counter() - t0
    manifest = package.manifest
    report["package"] = {"activations": manifest.get("activations"), "validation": manifest["validation"]}
    reference: dict[int, np.ndarray] = {}
    for name in names:
        entry: dict[str, Any] = {}
        try:
            t0 = time.perf_counter()
            backend = make_backend(model, name)
            entry["build_seconds"] = time.perf_counter() - t0
            if gpu:
                torch.cuda.reset_peak_memory_stats()
            rows = []
            for batch in args.batch:
                row = time_backend(backend, model.generator, batch, args.repeat, device)
                grad = row.pop("grad")
                reference.setdefault(batch, grad)  # the first backend (eager torch) is the reference
                ref = reference[batch]
                row["grad_error_vs_first"] = float(np.linalg.norm(grad - ref) / np.linalg.norm(ref))
                rows.append(row)
            entry["rows"] = rows
            entry["describe"] = backend.describe()
            if gpu:
                entry["peak_gpu_memory_bytes"] = torch.cuda.max_memory_allocated()
            backend.close()
        except Exception as exc:  # one backend failing must not hide the others
            entry["error"] = f"{type(exc).__name__}: {exc}"
        report["backends"][name] = entry
        print(name, json.dumps({k: v for k, v in entry.items() if k != "describe"})[:400], flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1, default=str))
    failed = [n for n, e in report["backends"].items() if "error" in e]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
