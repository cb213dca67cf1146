"""Does the bfloat16 mode keep the bundled models' verdicts? Each model calibrated and attributed twice, once on
``torch`` (float32) and once on ``torch-bf16``, each mode with its own calibration (as a user would), on the
same images: fresh own samples, the other bundled models' samples and held-out real crops.

    python benchmarks/eval_bf16_verdicts.py --out benchmarks/results/bf16_verdicts.json

Fast preset (the shipped encoders), Grubbs at α = 0.05. Reports per model and class how many verdicts differ
between the modes, each mode's accuracy, and seconds per decision (these models are 32×32: bfloat16 is not
expected to be faster there; its speed is measured at size in bench_large.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calibrate", type=int, default=50)
    p.add_argument("--n", type=int, default=30, help="images per class")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=HERE / "results" / "bf16_verdicts.json")
    args = p.parse_args()
    sys.path.insert(0, str(HERE))
    from common import evaluation_sets, machine
    from genorigin.export.bundled import BUNDLED_MODELS
    from genorigin.runtime.loop.settings import FitSettings

    from genorigin import workflow
    from genorigin.threads import use_threads

    use_threads(args.threads)
    report: dict = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}, "models": {}}
    for name in BUNDLED_MODELS:
        model = workflow.resolve(name)
        sets = evaluation_sets(name, args.n)
        images = np.concatenate(list(sets.values()))
        classes = [c for c, x in sets.items() for _ in range(len(x))]
        verdicts, entry = {}, {}
        for backend in ("torch", "torch-bf16"):
            choice = workflow.MethodChoice(backend=backend, threads=args.threads)
            method = workflow.method_for_calibration(model, choice)
            workflow.prepare_encoder(method, model.encoder_path, fit=FitSettings())  # the shipped encoder
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            method.calibrate(args.calibrate)
            calibrate_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            results = method.attribute(images)
            seconds = (time.perf_counter() - t0) / len(images)
            verdicts[backend] = [r.belonging for r in results]
            correct = [v == (c == "own") for v, c in zip(verdicts[backend], classes, strict=True)]
            words = {c: dict(Counter(r.verdict for r, k in zip(results, classes, strict=True) if k == c)) for c in sets}
            entry[backend] = {"accuracy": float(np.mean(correct)), "seconds_per_decision": seconds,
                              "calibration_seconds": calibrate_s, "load1": load, "verdicts": words,
                              "calibration_band": method.calibration.band,
                              "calibration_scores_median": float(np.median(method.calibration.scores))}  # fmt: skip
        changed = {c: int(sum(a != b and k == c for a, b, k in zip(verdicts["torch"], verdicts["torch-bf16"], classes)))
                   for c in sets}  # fmt: skip
        entry["verdicts_changed"] = changed
        entry["verdicts_changed_total"] = f"{sum(changed.values())}/{len(images)}"
        report["models"][name] = entry
        print(name, json.dumps(entry), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
