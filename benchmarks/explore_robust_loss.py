"""Which block-DCT projection should the robust loss keep? Explored on the FIRST evaluation set only.

For each candidate mask (luma u+v < a, chroma u+v < b) and the plain MSE: invert own samples (seed 777) and
real crops (offset 0) with the fast preset to its full budget, unmodified and after JPEG at several
qualities, and keep every image's score (loss ÷ 2-D entropy) and its projected compression error (the loss
an own image would have at the exact latent). The choice made from this file is the shipped
``PROJECTIONS["mse-dct8"]``; docs/robustness.md reports it on the disjoint validation set.

    python benchmarks/explore_robust_loss.py --models dcgan_a --out benchmarks/results/robust/explore_dcgan_a.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from common import EVAL_SAMPLE_SEED, auc, machine, real_crops, write
from genorigin.export.bundled import assets_dir, load_bundled
from genorigin.kernels.projection import PROJECTIONS, BlockDCTMask
from genorigin.kernels.reference import loss_and_grad
from genorigin.runtime.decide.calibration import quantize_8bit
from genorigin.runtime.decide.complexity import complexity
from genorigin.runtime.loop.settings import FAST_SETTINGS, InversionSettings, Schedule
from genorigin.runtime.methods.attribution import Attributor
from genorigin.runtime.methods.encoder import FittedEncoder
from genorigin.runtime.robust.transforms import apply_transform

CANDIDATES = {
    "dct-3-1": (3, 1),
    "dct-4-1": (4, 1),
    "dct-4-2": (4, 2),
    "dct-6-2": (6, 2),
    "dct-2-1": (2, 1),
    "dct-6-1": (6, 1),
    "dct-8-1": (8, 1),
}
SIBLING = {"dcgan_a": "dcgan_b", "dcgan_b": "dcgan_a"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", nargs="+", default=["dcgan_a"])
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--transforms", nargs="+", default=["none", "jpeg90", "jpeg80", "jpeg70", "jpeg50"])
    p.add_argument("--losses", nargs="+", default=["mse", *CANDIDATES])
    p.add_argument("--sibling", action="store_true", help="the sibling DCGAN's samples as a third class")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    for name, (a, b) in CANDIDATES.items():
        PROJECTIONS[name] = BlockDCTMask(a, b)
    report: dict = {"machine": machine(), "args": vars(args), "models": {}}
    for model in args.models:
        gen = load_bundled(model)
        enc = FittedEncoder.load(assets_dir() / "models" / f"{model}.encoder.pt")
        sets = {"own": quantize_8bit(gen.sample(args.n, seed=EVAL_SAMPLE_SEED)), "real": real_crops(args.n, 0)}
        if args.sibling:
            sets["sibling"] = quantize_8bit(load_bundled(SIBLING[model]).sample(args.n, seed=EVAL_SAMPLE_SEED))
        entry: dict = {}
        for t in args.transforms:
            images = {k: apply_transform(t, v, seed=i + 1) for i, (k, v) in enumerate(sets.items())}
            comp = {k: complexity(v) for k, v in images.items()}
            for loss in args.losses:
                settings = InversionSettings(**{**FAST_SETTINGS.to_dict(), "loss": loss})
                att = Attributor(gen, settings=settings, encoder=enc,
                                 schedule=Schedule(batch_size=64, check_every=10, early_exit=False))  # fmt: skip
                t0 = time.perf_counter()
                outs = att._invert(np.concatenate(list(images.values())), np.concatenate(list(comp.values())),
                                   att.schedule, None, None)  # fmt: skip
                secs = time.perf_counter() - t0
                scores = {k: np.array([x.best_loss for x in outs[i * args.n : (i + 1) * args.n]]) / comp[k]
                          for i, k in enumerate(images)}  # fmt: skip
                floor, _ = loss_and_grad(sets["own"], images["own"], loss)  # the compression error at the clean image
                so, sr = scores["own"], scores["real"]
                entry[f"{t}/{loss}"] = {k: v.tolist() for k, v in scores.items()} | {
                    "auc_real": auc(sr, so), "own_floor": (np.asarray(floor) / comp["own"]).tolist(), "seconds": secs,
                }  # fmt: skip
                if args.sibling:
                    entry[f"{t}/{loss}"]["auc_sibling"] = auc(scores["sibling"], so)
                sib = f" sibling auc {auc(scores['sibling'], so):.3f}" if args.sibling else ""
                print(model, t, loss, f"auc {auc(sr, so):.3f} own med {np.median(so):.2e} max {so.max():.2e} "
                      f"real min {sr.min():.2e} med {np.median(sr):.2e} {secs:.0f}s{sib}", flush=True)  # fmt: skip
        report["models"][model] = entry
        write(args.out, json.dumps(report))


if __name__ == "__main__":
    main()
