"""Generators at the sizes users run (issue 22): the SD-1.5-config AutoencoderKL decoder at 128/256/512 px and
StyleGAN2 config F at 256 px, random weights (seed 0), through export, one loss-and-gradient step on three
backends, activation memory, AEDR, and projections to GPUs. Results go to one JSON; docs/large_models.md is
read off it.

    python benchmarks/bench_large.py --phase all --out benchmarks/results/large_models.json

Phases (each updates the JSON; run one with --phase NAME): ``export`` (genorigin export in a child process:
seconds, peak RSS by wait4, package bytes, the v1 layout's bytes computed from the same graphs), ``steps``
(batch 1, 2 threads, eager torch fp32 / ONNX Runtime fp32 / torch bf16 alternating round by round, each in
its own child process so one backend's memory never sits under another's; FLOPs counted by
torch.utils.flop_counter on forward + input-gradient backward; the GEMM peak measured in the same run),
``activations`` (the loss graph's estimated activations per image, plain and rematerialised, at 256, 512 and
1024 px; measured RSS growth of one ORT step at 128 and 256 px), ``aedr`` (AEDR seconds per image at 512 px,
float32 and bfloat16, and the inversion-encoder time per image from the measured step). The machine is shared:
every timing records ``os.getloadavg()`` beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from large_workers import MODELS, generator, make_models, sd_folder

HERE = Path(__file__).resolve().parent
WORKERS = HERE / "large_workers.py"
GPUS = {  # fp32 CUDA-core peaks from the vendors' datasheets, and the efficiency the projection assumes
    "H100 SXM (fp32, 67 TFLOP/s)": 67e12,
    "Jetson AGX Orin 64 GB (fp32, 5.3 TFLOP/s)": 5.3e12,
}
GPU_EFFICIENCY = 0.4


OUT: list[Path] = []  # where save() writes: set by main


def save(report: dict) -> None:
    """Write the report as it grows: a stopped run keeps what it measured."""
    OUT[0].parent.mkdir(parents=True, exist_ok=True)
    OUT[0].write_text(json.dumps(report, indent=1))


def load() -> dict[str, float]:
    one, five, fifteen = os.getloadavg()
    return {"load1": one, "load5": five, "load15": fifteen}


def run_child(argv: list[str]) -> tuple[dict[str, Any], float, int]:
    """Run a child, return (its JSON stdout, wall seconds, peak RSS bytes by wait4)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {out[-2000:]}")
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return (json.loads(lines[-1]) if lines else {}), time.perf_counter() - t0, usage.ru_maxrss * 1024


def v1_layout_bytes(pkg_dir: Path) -> int:
    """What the same package weighed as three self-contained graphs (each with its own copy of the weights)."""
    import onnx
    from genorigin.export.weights import external_ref

    total = 0
    for graph in ("forward.onnx", "vjp.onnx", "loss_mse.onnx"):
        model = onnx.load(str(pkg_dir / graph), load_external_data=False)
        total += (pkg_dir / graph).stat().st_size
        total += sum(ref.length for t in model.graph.initializer if (ref := external_ref(t)) is not None)
    return total


def phase_export(report: dict, paths: dict[str, Path], work: Path, names: list[str]) -> None:
    import shutil

    from genorigin.export.package import AttributionPackage

    for name in names:
        out = work / f"{name}.pkg"
        shutil.rmtree(out, ignore_errors=True)
        if name.startswith("sd15"):
            argv = [str(Path(sys.executable).parent / "genorigin"), "export", "--model", str(paths[name]), "--out",
                    str(out), "--quiet"]  # fmt: skip
        else:
            argv = [sys.executable, str(WORKERS), "--worker", "export", "--model", name, "--pkg", str(out)]
        before = load()
        _, seconds, rss = run_child(argv)
        pkg = AttributionPackage.load(out)
        m = pkg.manifest
        report.setdefault("export", {})[name] = {
            "command": " ".join(argv),
            "seconds": seconds,
            "peak_rss_bytes": rss,
            "package_bytes": sum(f.stat().st_size for f in out.iterdir()),
            "weights_bytes": m["weights"]["bytes"],
            "v1_layout_bytes": v1_layout_bytes(out),
            "validation": m["validation"],
            "activations": m["activations"],
            "load_before": before,
            "load_after": load(),
        }
        print(
            name, json.dumps(report["export"][name]["validation"]), f"{seconds:.0f} s, {rss / 1e9:.2f} GB", flush=True
        )


STEP_BACKENDS = ("eager-torch", "torch", "onnxruntime", "torch-bf16")


def phase_steps(report: dict, work: Path, names: list[str], rounds: int, backends: list[str]) -> None:
    """Times each backend's step; a subset of backends re-measures those and keeps the others' earlier rows."""
    from bench_roofline import gemm_peak

    report["gemm_peak_gflops_2_threads"] = gemm_peak(2)
    for name in names:
        rows: dict[str, list[float]] = {b: [] for b in backends}
        info: dict[str, Any] = {}
        loads = []
        for _ in range(rounds if MODELS[name] < 512 else min(rounds, 2)):
            for backend in rows:
                argv = [sys.executable, str(WORKERS), "--worker", "step", "--model", name, "--backend", backend,
                        "--pkg", str(work / f"{name}.pkg"), "--work", str(work)]  # fmt: skip
                loads.append(load())
                result, _, rss = run_child(argv)
                rows[backend].append(result["seconds"])
                info.setdefault(backend, {}).update({k: v for k, v in result.items() if k != "seconds"})
                info[backend]["peak_rss_bytes"] = max(rss, info[backend].get("peak_rss_bytes", 0))
        flops = info["eager-torch"]["flops_per_step"]
        for backend in rows:
            info[backend].update(errors_vs_torch(work, name, backend))
        earlier = report.get("steps", {}).get(name, {})
        entry = {"flops_per_step": flops, "loads": loads}
        entry.update(
            {b: {**earlier[b], "measured_earlier": True} for b in STEP_BACKENDS if b not in rows and b in earlier}
        )
        for backend, times in rows.items():
            sec = statistics.median(times)
            gflops = flops / sec / 1e9
            entry[backend] = {**info[backend], "seconds": times, "median_seconds": sec, "gflops": gflops,
                              "of_gemm_peak": gflops / report["gemm_peak_gflops_2_threads"]}  # fmt: skip
        entry["projected_ms_per_step"] = {gpu: flops / (peak * GPU_EFFICIENCY) * 1e3 for gpu, peak in GPUS.items()}
        report.setdefault("steps", {})[name] = entry
        print(name, {b: round(entry[b]["median_seconds"], 2) for b in rows}, flush=True)
        save(report)


def errors_vs_torch(work: Path, name: str, backend: str) -> dict[str, float]:
    """Loss and gradient of ``backend`` against eager torch float32 (2 threads) on the same latent and target."""
    import numpy as np

    ref, got = np.load(work / f"{name}-eager-torch.npz"), np.load(work / f"{name}-{backend}.npz")
    ref_grad, grad = ref["grad"].astype(np.float64), got["grad"].astype(np.float64)
    return {
        "grad_error_vs_torch_fp32": float(np.linalg.norm(grad - ref_grad) / np.linalg.norm(ref_grad)),
        "loss_error_vs_torch_fp32": float(np.abs(got["loss"] - ref["loss"]).max() / np.abs(ref["loss"]).max()),
    }


def phase_activations(report: dict, work: Path) -> None:
    import tempfile

    import torch
    from genorigin.export.activation_memory import peak_activation
    from genorigin.export.onnx_autodiff import build_loss_graph
    from genorigin.export.onnx_forward import export_forward
    from genorigin.export.remat import rematerialise

    entry: dict[str, Any] = {}
    for size in (256, 512, 1024):
        name = f"sd15-{size}"
        gen = generator(name, {name: sd_folder(work, size)})
        with tempfile.TemporaryDirectory() as tmp:
            forward = export_forward(gen.module, torch.zeros(2, *gen.latent.shape), Path(tmp) / "f.onnx",
                                     keep_external=True)  # fmt: skip
            loss = build_loss_graph(forward)
        entry[str(size)] = {"plain": peak_activation(loss, 1).peak_bytes}
        for k in (4, 8, 16):
            entry[str(size)][f"remat{k}"] = peak_activation(rematerialise(loss, k), 1).peak_bytes
        del gen, forward, loss
        print(size, {k: f"{v / 2**30:.2f} GiB" for k, v in entry[str(size)].items()}, flush=True)
    measured = {}
    for name in ("sd15-128", "sd15-256"):
        argv = [sys.executable, str(WORKERS), "--worker", "memory", "--pkg", str(work / f"{name}.pkg")]
        result, _, _ = run_child(argv)
        measured[name] = result
    report["activations"] = {"estimated_per_image_bytes": entry, "measured": measured, "load": load()}


def aedr_flops(folder: Path) -> dict[str, int]:
    """FLOPs of one encode and one decode (``torch.utils.flop_counter`` on the meta device: shapes only)."""
    import torch
    from diffusers import AutoencoderKL
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder))
        x = torch.zeros(1, 3, vae.config.sample_size, vae.config.sample_size)
        with FlopCounterMode(display=False) as encode:
            latent = vae.encode(x).latent_dist.mean
        with FlopCounterMode(display=False) as decode:
            vae.decode(latent)
    return {"encode": encode.get_total_flops(), "decode": decode.get_total_flops()}


def phase_aedr(report: dict, work: Path) -> None:
    """AEDR at 512 px in both modes, its FLOPs (two round trips per image) and the GEMM peaks it is bounded by."""
    import torch
    from bench_roofline import gemm_peak

    flops = aedr_flops(sd_folder(work, 512))
    entry: dict[str, Any] = {"flops_per_image": 2 * (flops["encode"] + flops["decode"]), "flops_one_pass": flops}
    entry["gemm_peak_gflops_2_threads"] = {"float32": gemm_peak(2), "bfloat16": gemm_peak(2, dtype=torch.bfloat16)}
    for compute in ("float32", "bfloat16"):
        argv = [sys.executable, str(WORKERS), "--worker", "aedr", "--model", "sd15-512", "--compute", compute,
                "--work", str(work)]  # fmt: skip
        before = load()
        result, _, rss = run_child(argv)
        entry[compute] = {**result, "peak_rss_bytes": rss, "load_before": before, "load_after": load(),
                          "gflops": entry["flops_per_image"] / result["seconds_per_image"] / 1e9}  # fmt: skip
        print("aedr", compute, result, flush=True)
    step = report.get("steps", {}).get("sd15-512", {})
    if step:
        from genorigin.runtime.loop.settings import TRACER_SETTINGS

        per_step = min(step[b]["median_seconds"] for b in ("torch", "onnxruntime", "eager-torch"))
        entry["inversion_encoder_seconds_per_image"] = (
            TRACER_SETTINGS.steps * per_step + entry["float32"]["encode_seconds"]
        )
        entry["inversion_encoder_steps"] = TRACER_SETTINGS.steps
    report["aedr"] = entry


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--phase", default="all", choices=["all", "export", "steps", "activations", "aedr"])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--backends",
        nargs="+",
        default=list(STEP_BACKENDS),
        choices=STEP_BACKENDS,
        help="steps phase: the backends to time (eager-torch always: it is the FLOP and error reference)",
    )
    p.add_argument("--work", type=Path, default=Path("/tmp/genorigin-large"))
    p.add_argument("--out", type=Path, default=HERE / "results" / "large_models.json")
    args = p.parse_args()
    OUT.append(args.out)
    report = json.loads(args.out.read_text()) if args.out.exists() else {}
    from common import machine

    report["machine"] = {**machine(), "cpu_flags": _cpu_flags(), "date": time.strftime("%Y-%m-%d %H:%M")}
    paths = make_models(args.work)
    phases = ["export", "steps", "activations", "aedr"] if args.phase == "all" else [args.phase]
    for phase in phases:
        if phase == "export":
            phase_export(report, paths, args.work, args.models)
        elif phase == "steps":
            phase_steps(
                report,
                args.work,
                args.models,
                args.rounds,
                sorted(set(args.backends) | {"eager-torch"}, key=STEP_BACKENDS.index),
            )
        elif phase == "activations":
            phase_activations(report, args.work)
        else:
            phase_aedr(report, args.work)
        save(report)


def _cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return []
    return sorted(f for f in flags if f.startswith(("avx512", "amx")))


if __name__ == "__main__":
    main()
