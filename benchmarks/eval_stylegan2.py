"""StyleGAN2 config F at 256 px (random weights, seed 0): attribution of its own samples vs real photos, on
ONNX Runtime through an exported package. Small n (the step costs seconds on this CPU); said in the output.

    python benchmarks/eval_stylegan2.py --out benchmarks/results/stylegan2_attribution.json

Calibration: --calibrate own samples (seed 7000+), the paper's random-start Adam (lr 0.1) for --steps steps,
1 start (the fast preset needs an encoder fitted on thousands of 256 px samples: hours here). Belonging: fresh
own samples (8-bit, seed 777). Non-belonging: the bundled held-out real crops (32×32 photos, resized to 256 px by
the generator's own image preparation: blurry, so an easy negative; said plainly).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calibrate", type=int, default=5)
    p.add_argument("--n", type=int, default=5, help="own samples and real photos attributed, each")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=HERE / "results" / "stylegan2_attribution.json")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(HERE))
    from common import machine, real_crops
    from genorigin.export.package import AttributionPackage, export_generator
    from genorigin.export.stylegan import StyleGANConfig, random_stylegan
    from genorigin.runtime.backends.ort import OrtBackend
    from genorigin.runtime.decide.calibration import quantize_8bit
    from genorigin.runtime.loop.settings import PAPER_SETTINGS, Schedule
    from genorigin.runtime.methods.attribution import Attributor

    gen = random_stylegan(StyleGANConfig.config_f(256), seed=0, name="stylegan2f-256")
    settings = dataclasses.replace(PAPER_SETTINGS, steps=args.steps, restarts=1)
    schedule = Schedule(batch_size=8, check_every=max(args.steps // 5, 1))
    with tempfile.TemporaryDirectory() as tmp:
        pkg = AttributionPackage.load(export_generator(gen, Path(tmp) / "sg.pkg"))
        backend = OrtBackend(pkg, threads=args.threads)
        att = Attributor(gen, backend=backend, settings=settings, schedule=schedule)
        t0 = time.perf_counter()
        cal = att.calibrate(args.calibrate, sample_seed=7000)
        cal_seconds = time.perf_counter() - t0
        own = quantize_8bit(gen.sample(args.n, seed=777))
        crops = (real_crops(args.n).transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)
        real = np.stack([gen.prepare_image(im) for im in crops])
        t0 = time.perf_counter()
        results = att.attribute(np.concatenate([own, real]))
        seconds = time.perf_counter() - t0
    rows = [{"class": "own" if i < args.n else "real", "verdict": r.verdict, "calibrated_loss": r.calibrated_loss,
             "p_value": r.p_value, "steps": r.steps} for i, r in enumerate(results)]  # fmt: skip
    own_ok = sum(r["verdict"] == "belonging" for r in rows[: args.n])
    real_ok = sum(r["verdict"] != "belonging" for r in rows[args.n :])
    report = {
        "machine": machine(),
        "load": os.getloadavg(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "calibration": {"n": cal.n, "mean": cal.mean, "std": cal.std, "seconds": cal_seconds},
        "own_called_belonging": f"{own_ok}/{args.n}",
        "real_called_not_belonging": f"{real_ok}/{args.n}",
        "seconds_per_image": seconds / len(rows),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
    main()
