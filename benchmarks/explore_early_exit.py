"""Replay candidate non-belonging exit rules on recorded full-budget trajectories (exploration, not shipped).

Records every image's best-so-far score at each checkpoint (full budget, no early exit) for the calibration
samples and an evaluation mix, then replays rules offline: the shipped envelope rule, and a plateau-conditioned
envelope (stop when no accepted own trajectory was both as flat over the last 200 steps and as high).

    python explore_early_exit.py --model dcgan_a --n 50 --out results/explore_dcgan_a.json
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from common import auc, evaluation_sets, machine, write
from genorigin.runtime.loop.settings import InversionSettings, Schedule
from genorigin.runtime.methods.attribution import Attributor

from genorigin.models import resolve_model


def replay(
    traj: np.ndarray,
    steps: np.ndarray,
    final_ok: np.ndarray,
    accept: float,
    cal: np.ndarray,
    kind: str,
    lag: int = 4,
    margin: float = 2.0,
    min_count: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """(score, steps) per image under a rule; traj: images × checkpoints, cal: own × checkpoints."""
    acc = cal[final_ok]
    out_s, out_n = traj[:, -1].copy(), np.full(len(traj), steps[-1])
    for i, row in enumerate(traj):
        for j, s in enumerate(row):
            if s <= accept:
                out_s[i], out_n[i] = s, steps[j]
                break
            if steps[j] < 100:
                continue
            if kind == "envelope":
                limit = margin * acc[:, j].max()
            else:  # plateau-conditioned: accepted own trajectories at least as flat over the last `lag` checkpoints
                if j < lag:
                    continue
                flat = row[j - lag] / s
                own_flat = acc[:, j - lag] / acc[:, j] <= flat
                limit = margin * acc[own_flat, j].max() if own_flat.sum() >= min_count else margin * acc[:, j].max()
            if s > limit:
                out_s[i], out_n[i] = s, steps[j]
                break
    return out_s, out_n


def sweep(npz_path: str) -> list[dict]:
    """k-th-largest envelope × margin, replayed on saved trajectories: steps saved vs own samples lost."""
    d = np.load(npz_path)
    steps, own, traj, labels, accept = d["steps"], d["own"], d["traj"], d["labels"], float(d["accept"])
    accepted = own[d["final_ok"]]
    rows = []
    for k in (1, 2, 3, 5):
        env = np.sort(accepted, axis=0)[::-1][k - 1]
        for margin in (2.0, 1.5, 1.0):
            s, n = traj[:, -1].copy(), np.full(len(traj), steps[-1])
            for i, row in enumerate(traj):
                for j, v in enumerate(row):
                    if v <= accept or (steps[j] >= 100 and v > margin * env[j]):
                        s[i], n[i] = v, steps[j]
                        break
            called, is_own = s <= accept, labels == "own"
            rows.append({
                "k": k, "margin": margin, "mean_steps": float(n.mean()),
                "own_called_non_belonging": float((~called[is_own]).mean()),
                "accuracy": float((is_own == called).mean()),
                "min_auc": min(auc(s[labels == c], s[is_own]) for c in set(labels) - {"own"}),
            })  # fmt: skip
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="dcgan_a")
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--calibration-samples", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="results/explore_dcgan_a.json")
    p.add_argument("--sweep", help="only replay the k × margin sweep on a saved .npz")
    args = p.parse_args()
    if args.sweep:
        for row in sweep(args.sweep):
            print(json.dumps(row))
        return
    torch.set_num_threads(args.threads)
    model = resolve_model(args.model)
    settings = InversionSettings()
    backend = model.backend("onnxruntime", threads=args.threads)
    att = Attributor(
        model.generator, backend=backend, settings=settings, schedule=Schedule(batch_size=64, early_exit=False)
    )
    cal = att.calibrate(args.calibration_samples)
    sets = evaluation_sets(args.model, args.n)
    res = att.attribute(np.concatenate(list(sets.values())))
    steps = np.array(cal.checkpoint_steps)
    own_traj = np.array(cal.checkpoint_scores).T
    traj = np.array([[v / r.complexity for _, v in r.trajectory] for r in res])
    labels = np.concatenate([[k] * len(v) for k, v in sets.items()])
    accept = cal.grubbs_threshold
    final_ok = np.asarray(cal.scores) <= accept
    report = {"machine": machine(), "args": vars(args), "rules": {}}
    for kind in ("envelope", "plateau"):
        s, n = replay(traj, steps, final_ok, accept, own_traj, kind)
        own = s[labels == "own"]
        called = s <= accept
        report["rules"][kind] = {
            "mean_steps": float(n.mean()),
            "mean_steps_per_class": {k: float(n[labels == k].mean()) for k in sets},
            "auc": {k: auc(s[labels == k], own) for k in sets if k != "own"},
            "accuracy": float(((labels == "own") == called).mean()),
            "own_called_non_belonging": float((~called[labels == "own"]).mean()),
        }
    full = traj[:, -1]
    report["rules"]["full_budget"] = {
        "mean_steps": float(steps[-1]),
        "auc": {k: auc(full[labels == k], full[labels == "own"]) for k in sets if k != "own"},
        "accuracy": float(((labels == "own") == (full <= accept)).mean()),
        "own_called_non_belonging": float((full[labels == "own"] > accept).mean()),
    }
    write(args.out, json.dumps(report, indent=1))
    np.savez_compressed(args.out.replace(".json", ".npz"), steps=steps, own=own_traj, traj=traj, labels=labels,
                        accept=accept, final_ok=final_ok)  # fmt: skip
    print(json.dumps(report["rules"], indent=1))


if __name__ == "__main__":
    main()
