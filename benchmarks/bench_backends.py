"""Eager PyTorch vs ONNX Runtime on the CPU: time per image-step and per decision.

First both backends invert the same few bundled images (``runtime.backends.compare.compare_backends``): the report
records how far ONNX Runtime's best losses are from PyTorch's, so a speed-up never hides a wrong answer.
Round-robin in one process (backends alternate inside every round), medians over rounds, so machine noise
hits both alike. Per decision = the fixed 1500-step budget at that batch size (step time × steps / batch),
and, separately, measured end-to-end with early exit on a bundled mix.

    python benchmarks/bench_backends.py --out benchmarks/results/backends.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from common import evaluation_sets, machine, write
from genorigin.runtime.backends.compare import compare_backends
from genorigin.runtime.loop.backend import SlotState
from genorigin.runtime.loop.settings import InversionSettings, Schedule
from genorigin.runtime.methods.attribution import Attributor

from genorigin.models import resolve_model


def time_steps(backend, batch: int, latent_shape: tuple[int, ...], steps: int, settings) -> float:
    rng = np.random.default_rng(batch)
    z = rng.standard_normal((batch, *latent_shape)).astype(np.float32)
    x = rng.random((batch, 3, 32, 32)).astype(np.float32)
    a = backend.asarray
    state = SlotState(
        a(z),
        a(np.zeros_like(z)),
        a(np.zeros_like(z)),
        a(z.copy()),
        a(np.full(batch, np.inf, np.float32)),
        a(x),
        a(np.zeros(batch, np.float32)),
    )
    backend.step(state, settings.adam)  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        backend.step(state, settings.adam)  # t advances on the backend's device
    return (time.perf_counter() - t0) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="dcgan_a")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--steps", type=int, default=40, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--decision-images", type=int, default=16, help="per class, for the end-to-end timing")
    p.add_argument("--rtol", type=float, default=1e-3, help="best-loss agreement reported against PyTorch")
    p.add_argument("--out", default="benchmarks/results/backends.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = resolve_model(args.model)
    settings = InversionSettings()
    backends = {
        "torch": model.backend("torch", threads=args.threads),
        "onnxruntime": model.backend("onnxruntime", threads=args.threads),
    }
    sets = evaluation_sets(args.model, args.decision_images)
    images = np.concatenate(list(sets.values()))
    check = compare_backends(
        backends, images[:: max(1, len(images) // 8)][:8], InversionSettings(steps=200), args.rtol,
        latent=model.generator.latent, schedule=Schedule(batch_size=8, early_exit=False),
    )  # fmt: skip
    agreement = {"rtol": args.rtol, "max_rel_error": check.max_rel_error(), "failures": check.failures()}
    print(f"agreement (200 steps, 8 images): {agreement}")
    shape = model.generator.latent.shape
    per_step: dict[str, dict[int, list[float]]] = {k: {b: [] for b in args.batches} for k in backends}
    for _ in range(args.rounds):
        for b in args.batches:
            for name, backend in backends.items():
                per_step[name][b].append(time_steps(backend, b, shape, args.steps, settings))
    rows = []
    for b in args.batches:
        med = {k: statistics.median(per_step[k][b]) for k in backends}
        rows.append(
            {
                "batch": b,
                **{f"{k}_ms_per_step": med[k] * 1e3 for k in backends},
                **{f"{k}_us_per_image_step": med[k] / b * 1e6 for k in backends},
                **{f"{k}_s_per_decision_fixed_budget": med[k] * settings.steps / b for k in backends},
                "speedup_ort_over_torch": med["torch"] / med["onnxruntime"],
            }
        )
    # end to end, early exit, on a bundled mix (calibration shared: same model, same settings)
    cal = Attributor(
        model.generator,
        backend=backends["onnxruntime"],
        settings=settings,
        schedule=Schedule(batch_size=64, early_exit=False),
    ).calibrate(64)
    decisions = {}
    for name, backend in backends.items():
        att = Attributor(
            model.generator, backend=backend, settings=settings, schedule=Schedule(batch_size=64), calibration=cal
        )
        t0 = time.perf_counter()
        res = att.attribute(images)
        decisions[name] = {
            "s_per_decision": (time.perf_counter() - t0) / len(images),
            "mean_steps": float(np.mean([r.steps for r in res])),
        }
    report = {"machine": machine(), "args": vars(args), "agreement": agreement, "per_step": rows,
              "early_exit_decisions": decisions}  # fmt: skip
    write(args.out, json.dumps(report, indent=1))
    print(
        "| batch | torch ms/step | ORT ms/step | torch µs/image-step | ORT µs/image-step | ORT speed-up | "
        "torch s/decision (1500 steps) | ORT s/decision (1500 steps) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['batch']} | {r['torch_ms_per_step']:.2f} | {r['onnxruntime_ms_per_step']:.2f} | "
            f"{r['torch_us_per_image_step']:.0f} | {r['onnxruntime_us_per_image_step']:.0f} | "
            f"{r['speedup_ort_over_torch']:.2f}× | {r['torch_s_per_decision_fixed_budget']:.3f} | "
            f"{r['onnxruntime_s_per_decision_fixed_budget']:.3f} |"
        )
    print(json.dumps(decisions))


if __name__ == "__main__":
    main()
