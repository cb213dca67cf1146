"""Wall-clock per decision: genorigin (batched, early exit, refilling) vs a RONAN-faithful loop, one run.

RONAN-faithful = the authors' loop shape: eager PyTorch, one image at a time, one random start,
`torch.optim.Adam`, lr 0.1, 1500 steps, MSE. genorigin = the shared loop with its defaults (2 starts, early
exit, refilling) on the PyTorch and the ONNX Runtime backends, and with 4 starts halved at steps 50 and 100 on
ONNX Runtime, each with its own calibration. Rounds alternate
the loops so machine noise hits all alike; medians over rounds. Accuracy of the same settings:
docs/accuracy.md.

    python benchmarks/bench_decisions.py --out benchmarks/results/decisions.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from common import evaluation_sets, machine, write
from eval_accuracy import ronan_faithful_seconds
from genorigin.export.bundled import BUNDLED_MODELS
from genorigin.runtime.attribution import Attributor
from genorigin.runtime.inversion import InversionSettings, Schedule

from genorigin.models import resolve_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(BUNDLED_MODELS))
    p.add_argument("--per-class", type=int, default=12, help="images per class in the attributed mix")
    p.add_argument("--calibration-samples", type=int, default=50)
    p.add_argument("--ronan-images", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/decisions.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    variants = {  # name → (backend, settings)
        "genorigin_torch": ("torch", InversionSettings()),
        "genorigin_onnxruntime": ("onnxruntime", InversionSettings()),
        "genorigin_onnxruntime_4_starts_halved": (
            "onnxruntime",
            InversionSettings(restarts=4, halve_starts_at=(50, 100)),
        ),
    }
    settings = InversionSettings()
    report: dict = {"machine": machine(), "args": vars(args), "models": {}}
    for name in args.models:
        model = resolve_model(name)
        backends = {"torch": model.backend("torch"), "onnxruntime": model.backend("onnxruntime", threads=args.threads)}
        cals = {
            key: Attributor(
                model.generator, backend=backends["onnxruntime"], settings=st, schedule=Schedule(batch_size=64,
                early_exit=False)).calibrate(args.calibration_samples)
            for key, st in {"default": settings, "halved": variants["genorigin_onnxruntime_4_starts_halved"][1]}.items()
        }  # fmt: skip
        sets = evaluation_sets(name, args.per_class)
        mix = np.concatenate(list(sets.values()))
        ronan_imgs = np.concatenate(
            [sets["own"][: args.ronan_images // 2 or 1], sets["real"][: args.ronan_images // 2]]
        )
        times: dict[str, list[float]] = {"ronan_faithful": [], **{k: [] for k in variants}}
        steps: dict[str, float] = {}
        start_steps: dict[str, float] = {}
        for _ in range(args.rounds):
            times["ronan_faithful"].append(ronan_faithful_seconds(name, ronan_imgs, settings.steps, settings.lr))
            for key, (b, st) in variants.items():
                att = Attributor(
                    model.generator,
                    backend=backends[b],
                    settings=st,
                    schedule=Schedule(batch_size=64),
                    calibration=cals["halved" if key.endswith("halved") else "default"],
                )
                t0 = time.perf_counter()
                res = att.attribute(mix)
                times[key].append((time.perf_counter() - t0) / len(mix))
                steps[key] = float(np.mean([r.steps for r in res]))
                start_steps[key] = float(np.mean([st.start_steps(r.steps) for r in res]))
        med = {k: statistics.median(v) for k, v in times.items()}
        report["models"][name] = {
            "seconds_per_decision": med,
            "all_rounds": times,
            "mean_steps": steps,
            "mean_start_steps_without_pruning": start_steps,
            "speedup_vs_ronan": {k: med["ronan_faithful"] / v for k, v in med.items() if k != "ronan_faithful"},
            "images": len(mix),
        }
        write(args.out, json.dumps(report, indent=1))
        print(name, json.dumps(report["models"][name]), flush=True)
    print("| inspected | RONAN-faithful s/decision | genorigin torch s/decision (×) | genorigin ORT s/decision (×) | "
          "ORT, 4 starts halved (×) |")  # fmt: skip
    print("|---|---|---|---|---|")
    for name, e in report["models"].items():
        s, x = e["seconds_per_decision"], e["speedup_vs_ronan"]
        print(
            f"| {name} | {s['ronan_faithful']:.2f} | {s['genorigin_torch']:.3f} ({x['genorigin_torch']:.0f}×) | "
            f"{s['genorigin_onnxruntime']:.3f} ({x['genorigin_onnxruntime']:.0f}×) | "
            f"{s['genorigin_onnxruntime_4_starts_halved']:.3f} ({x['genorigin_onnxruntime_4_starts_halved']:.0f}×) |"
        )


if __name__ == "__main__":
    main()
