"""What does "converged" mean for a JPEG'd own image? The robust mode's stall floor, measured (first set only).

The stall detector restarts an image whose best loss stopped falling while above a floor. A JPEG'd own image
stops at its compression error, above the 8-bit floor, so with the plain floor it is "stalled" and gets a
useless fresh start. The robust calibration raises the floor by the median projected compression error of
its own samples (runtime/robust/modes.py). This runs the robust mode live (early exit) on own samples and real
crops, unmodified and JPEG'd, once with each floor, and reports restarts, mean steps and verdicts.

    python benchmarks/explore_stall_floor.py --models dcgan_a vae --out benchmarks/results/robust/stall_floor.json
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import numpy as np
import torch
from common import EVAL_SAMPLE_SEED, machine, real_crops, write
from genorigin.export.bundled import assets_dir, load_bundled
from genorigin.runtime.decide.calibration import quantize_8bit
from genorigin.runtime.loop.settings import FAST_SCHEDULE, FAST_SETTINGS
from genorigin.runtime.methods.attribution import Attributor, quantization_floor
from genorigin.runtime.methods.encoder import FittedEncoder
from genorigin.runtime.robust.modes import robust_settings
from genorigin.runtime.robust.transforms import apply_transform


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", nargs="+", default=["dcgan_a"])
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--transforms", nargs="+", default=["none", "jpeg80", "jpeg50"])
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    settings = robust_settings(FAST_SETTINGS, "jpeg")
    report: dict = {"machine": machine(), "args": vars(args), "models": {}}
    for model in args.models:
        gen = load_bundled(model)
        enc = FittedEncoder.load(assets_dir() / "models" / f"{model}.encoder.pt")
        att = Attributor(gen, settings=settings, schedule=FAST_SCHEDULE, encoder=enc)
        cal = att.calibrate(100)
        floors = {"raised": cal.stall_floor, "8-bit": quantization_floor(settings.loss, gen.channels)}
        sets = {"own": quantize_8bit(gen.sample(args.n, seed=EVAL_SAMPLE_SEED)), "real": real_crops(args.n, 0)}
        entry: dict = {"floors": floors, "calibration_restarted": cal.restarted}
        for t in args.transforms:
            for name, floor in floors.items():
                att.use_calibration(replace(cal, stall_floor=floor))
                row = {}
                for i, (k, v) in enumerate(sets.items()):
                    res = att.attribute(apply_transform(t, v, seed=i))
                    row[k] = {"restarted": sum(bool(r.restart_steps) for r in res),
                              "mean_steps": float(np.mean([r.steps for r in res])),
                              "belonging": sum(r.belonging for r in res)}  # fmt: skip
                entry[f"{t}/{name}"] = row
                print(model, t, name, json.dumps(row), flush=True)
        report["models"][model] = entry
        write(args.out, json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
