"""Does another Adam learning rate or a decaying one make own samples converge sooner? (exploration)

Records best-so-far score trajectories of the calibration samples (and an evaluation mix) for one model
under one learning-rate setting, then summarises the own samples at a step: median score, Grubbs threshold,
and how many sit 10× above the median (stuck).

    python explore_lr_schedules.py --model dcgan_a --lr 0.2 --steps 600 --out results/lr/dcgan_a_lr0.2.npz
    python explore_lr_schedules.py --summarise results/lr/*.npz --at 600
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from common import evaluation_sets
from genorigin.runtime.decide.decision import grubbs_critical_value
from genorigin.runtime.loop.settings import InversionSettings, Schedule
from genorigin.runtime.methods.attribution import Attributor

from genorigin.models import resolve_model


def record(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    model = resolve_model(args.model)
    settings = InversionSettings(steps=args.steps, lr=args.lr, lr_halve_every=args.lr_halve_every)
    schedule = Schedule(batch_size=64, early_exit=False, check_every=25)
    att = Attributor(model.generator, backend=model.backend("onnxruntime", threads=1), settings=settings,
                     schedule=schedule)  # fmt: skip
    cal = att.calibrate(args.calibration_samples)
    sets = evaluation_sets(args.model, args.n)
    res = att.attribute(np.concatenate(list(sets.values())))
    np.savez_compressed(
        args.out,
        steps=np.array(cal.checkpoint_steps),
        own=np.array(cal.checkpoint_scores).T,
        traj=np.array([[v / r.complexity for _, v in r.trajectory] for r in res]),
        labels=np.concatenate([[k] * len(v) for k, v in sets.items()]),
        accept=cal.grubbs_threshold,
    )


def summarise(paths: list[str], at: int) -> None:
    for path in paths:
        d = np.load(path)
        own = d["own"][:, list(d["steps"]).index(at)]
        median = float(np.median(own))
        print(json.dumps({
            "file": path, "own_samples": len(own), "step": at, "median_score": median,
            "grubbs_threshold": float(own.mean() + grubbs_critical_value(len(own), 0.05) * own.std(ddof=1)),
            "stuck_10x_median": int((own > 10 * median).sum()),
        }))  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="dcgan_a")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--lr-halve-every", type=int, default=0)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--calibration-samples", type=int, default=60)
    p.add_argument("--n", type=int, default=30, help="evaluation images per class")
    p.add_argument("--out", default="results/lr/dcgan_a.npz")
    p.add_argument("--summarise", nargs="+", help="only summarise saved .npz files")
    p.add_argument("--at", type=int, default=600)
    args = p.parse_args()
    if args.summarise:
        summarise(args.summarise, args.at)
    else:
        record(args)


if __name__ == "__main__":
    main()
