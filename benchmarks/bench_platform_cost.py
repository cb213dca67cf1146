"""What a decision costs in the platform mode against the plain mode, side by side in one process (issue 25).

For each model: calibrate both modes on the same own samples (fast preset), then attribute the same own
samples and real crops with the live early exit, each mode on its own input (plain: the model-size image as
a file of it is read; platform: the image as served), and report per decision: gradient evaluations, steps,
wall seconds and CPU seconds (the process's, which a shared machine's load disturbs less), and the ratios.
The two modes alternate per transform so that load drifts hit both::

    OMP_NUM_THREADS=1 python benchmarks/bench_platform_cost.py --models dcgan_a \\
        --out benchmarks/results/robust/platform_cost_dcgan_a.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import numpy as np
import torch
from common import machine, real_crops, write
from genorigin.export.bundled import BUNDLED_MODELS, assets_dir, load_bundled
from genorigin.runtime.decide.calibration import quantize_8bit
from genorigin.runtime.loop.settings import FAST_SCHEDULE, FAST_SETTINGS
from genorigin.runtime.methods.encoder import FittedEncoder
from genorigin.runtime.methods.platform_encoder import platform_encoder_path
from genorigin.runtime.methods.registry import BareModel, MethodOptions, build_method
from genorigin.runtime.robust.modes import robust_settings
from genorigin.runtime.robust.transforms import apply_transform

from genorigin.robustness_eval import at_model_size


def timed(method, images) -> dict:
    wall, cpu = time.perf_counter(), time.process_time()
    results = method.attribute(images)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "images": len(results),
        "evaluations": float(np.mean([r.evaluations for r in results])),
        "steps": float(np.mean([r.steps for r in results])),
        "wall_s": wall / len(results),
        "cpu_s": cpu / len(results),
    }


def evaluate(model: str, args: argparse.Namespace) -> dict:
    gen = load_bundled(model)
    encoder_file = assets_dir() / "models" / f"{model}.encoder.pt"
    encoders = {"plain": FittedEncoder.load(encoder_file),
                "platform": FittedEncoder.load(platform_encoder_path(encoder_file))}  # fmt: skip
    settings = {"plain": FAST_SETTINGS, "platform": robust_settings(FAST_SETTINGS, "platform")}
    methods = {}
    for mode in ("plain", "platform"):
        options = MethodOptions(settings=settings[mode], schedule=replace(FAST_SCHEDULE, batch_size=args.batch_size),
                                encoder=encoders[mode])  # fmt: skip
        methods[mode] = build_method("inversion", BareModel(gen), options)
        t0 = time.perf_counter()
        methods[mode].calibrate(args.calibration_samples)
        print(model, mode, f"calibrated in {time.perf_counter() - t0:.0f} s", flush=True)
    sets = {"own": quantize_8bit(gen.sample(args.n, seed=args.seed)), "real": real_crops(args.n, args.real_offset)}
    out: dict = {"transforms": {}}
    for k, t in enumerate(args.transforms):
        served = np.concatenate([apply_transform(t, v, seed=i) for i, v in enumerate(sets.values())])
        order = ("plain", "platform") if k % 2 == 0 else ("platform", "plain")
        row = {}
        for mode in order:
            images = list(served) if mode == "platform" else at_model_size(gen, served)
            row[mode] = timed(methods[mode], images)
        row["ratio"] = {q: row["platform"][q] / row["plain"][q] for q in ("evaluations", "steps", "wall_s", "cpu_s")}
        print(model, t, json.dumps(row["ratio"]), flush=True)
        out["transforms"][t] = row
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(BUNDLED_MODELS))
    p.add_argument("--transforms", nargs="+", default=["none", "jpeg80", "cut0.8", "down0.5+jpeg80", "up2"])
    p.add_argument("--n", type=int, default=20, help="own samples and real crops each")
    p.add_argument("--calibration-samples", type=int, default=30)
    p.add_argument("--seed", type=int, default=780)
    p.add_argument("--real-offset", type=int, default=170)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", default="benchmarks/results/robust/platform_cost.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    report: dict = {"machine": machine(), "args": vars(args), "models": {}}
    for model in args.models:
        report["models"][model] = evaluate(model, args)
        write(args.out, json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
