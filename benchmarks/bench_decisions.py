"""Wall-clock per decision: genorigin (batched, early exit, refilling) vs a RONAN-faithful loop, one run.

RONAN-faithful = the authors' loop shape: eager PyTorch, one image at a time, one random start,
`torch.optim.Adam`, lr 0.1, 1500 steps, MSE. genorigin = the shared loop with its fast preset (encoder start,
per-slot L-BFGS, 200 steps, early exit) on the PyTorch and the ONNX Runtime backends, and with the paper
preset (2 random starts, Adam, 1500 steps, early exit), each with its own calibration. Rounds alternate the
loops so machine noise hits all alike; medians over rounds. The encoder's one-off fitting time is reported
apart, and amortised over 10³–10⁵ decisions. Accuracy of the same settings: docs/accuracy.md.

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
from genorigin.export.bundled import BUNDLED_MODELS, assets_dir
from genorigin.runtime.loop.settings import FAST_SCHEDULE, FAST_SETTINGS, PAPER_SCHEDULE, PAPER_SETTINGS, Schedule
from genorigin.runtime.methods.attribution import Attributor
from genorigin.runtime.methods.encoder import FittedEncoder

from genorigin.models import resolve_model


def attributor(model, backends, encoder, variant, calibration=None, early_exit: bool = True) -> Attributor:
    """The attributor of one variant (backend, settings, schedule) for a resolved bundled model."""
    b, st, sc = variant
    sc = Schedule(**{**sc.__dict__, "batch_size": 64, "early_exit": early_exit})
    enc = encoder if st.init == "encoder" else None
    return Attributor(model.generator, backend=backends[b], settings=st, schedule=sc, encoder=enc,
                      calibration=calibration)  # fmt: skip


VARIANTS = {  # name → (backend, settings, schedule)
    "fast_torch": ("torch", FAST_SETTINGS, FAST_SCHEDULE),
    "fast_onnxruntime": ("onnxruntime", FAST_SETTINGS, FAST_SCHEDULE),
    "paper_torch": ("torch", PAPER_SETTINGS, PAPER_SCHEDULE),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(BUNDLED_MODELS))
    p.add_argument("--per-class", type=int, default=12, help="images per class in the attributed mix")
    p.add_argument("--calibration-samples", type=int, default=50)
    p.add_argument("--ronan-images", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--out", default="benchmarks/results/decisions.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    variants = {k: VARIANTS[k] for k in args.variants}
    report: dict = {"machine": machine(), "args": vars(args), "models": {}}
    for name in args.models:
        model = resolve_model(name)
        encoder = FittedEncoder.load(assets_dir() / "models" / f"{name}.encoder.pt")
        backends = {"torch": model.backend("torch"), "onnxruntime": model.backend("onnxruntime", threads=args.threads)}
        parts = (model, backends, encoder)
        cals = {k: attributor(*parts, variants[k], early_exit=False).calibrate(args.calibration_samples)
                for k in variants}  # fmt: skip
        sets = evaluation_sets(name, args.per_class)
        mix = np.concatenate(list(sets.values()))
        ronan_imgs = np.concatenate(
            [sets["own"][: args.ronan_images // 2 or 1], sets["real"][: args.ronan_images // 2]]
        )
        times: dict[str, list[float]] = {"ronan_faithful": [], **{k: [] for k in variants}}
        steps: dict[str, float] = {}
        evaluations: dict[str, float] = {}
        for _ in range(args.rounds):
            times["ronan_faithful"].append(ronan_faithful_seconds(name, ronan_imgs, 1500, 0.1))
            for key in variants:
                att = attributor(*parts, variants[key], cals[key])
                t0 = time.perf_counter()
                res = att.attribute(mix)
                times[key].append((time.perf_counter() - t0) / len(mix))
                steps[key] = float(np.mean([r.steps for r in res]))
                evaluations[key] = float(np.mean([r.evaluations for r in res]))
        med = {k: statistics.median(v) for k, v in times.items()}
        report["models"][name] = {
            "seconds_per_decision": med,
            "all_rounds": times,
            "mean_steps": steps,
            "mean_evaluations": evaluations,
            "speedup_vs_ronan": {k: med["ronan_faithful"] / v for k, v in med.items() if k != "ronan_faithful"},
            "encoder_fit_seconds": encoder.seconds,
            "encoder_fit_seconds_per_decision": {n: encoder.seconds / n for n in (1_000, 10_000, 100_000)},
            "images": len(mix),
        }
        write(args.out, json.dumps(report, indent=1))
        print(name, json.dumps(report["models"][name]), flush=True)
    print(f"| inspected | RONAN-faithful s/decision | {' | '.join(f'{k} s (×)' for k in variants)} | "
          f"mean gradient evaluations ({', '.join(variants)}) |")  # fmt: skip
    print("|---" * (3 + len(variants)) + "|")
    for name, e in report["models"].items():
        s, x, ev = e["seconds_per_decision"], e["speedup_vs_ronan"], e["mean_evaluations"]
        cells = " | ".join(f"{s[k]:.3f} ({x[k]:.0f}×)" for k in variants)
        print(f"| {name} | {s['ronan_faithful']:.2f} | {cells} | {' / '.join(f'{ev[k]:.0f}' for k in variants)} |")


if __name__ == "__main__":
    main()
