"""Accuracy of attribution on the bundled models, full budget vs early exit, and vs a RONAN-faithful loop.

For each inspected model: calibrate on N own samples; belonging = N fresh own samples; non-belonging = N
samples of each other bundled model and N held-out real crops. Reports AUC per non-belonging class, and
accuracy / TPR / FPR at α for the Grubbs and quantile rules, for the fixed-budget loop (the paper's budget,
batched) and the early-exit loop, side by side in one run; plus wall-clock per decision of a RONAN-faithful
loop (eager PyTorch, batch 1, 1 restart, full budget) on a subset.

    python benchmarks/eval_accuracy.py --out benchmarks/results/accuracy.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from common import auc, evaluation_sets, machine, roc_curve, write
from genorigin.export.bundled import BUNDLED_MODELS, load_bundled
from genorigin.runtime.attribution import Attributor
from genorigin.runtime.inversion import InversionSettings, Schedule


def metrics(results: dict[str, list], alpha: float) -> dict:
    own = results["own"]
    out: dict = {"n_per_class": {k: len(v) for k, v in results.items()}}
    for rule in ("grubbs", "quantile"):
        tp = {k: float(np.mean([not r[rule]["belonging"] for r in v])) for k, v in results.items() if k != "own"}
        fpr = float(np.mean([not r[rule]["belonging"] for r in own]))
        n_neg = sum(len(v) for k, v in results.items() if k != "own")
        correct = (1 - fpr) * len(own) + sum(tp[k] * len(results[k]) for k in tp)
        out[rule] = {
            "accuracy": float(correct / (len(own) + n_neg)),
            "fpr_own_called_non_belonging": fpr,
            "tpr_per_class": tp,
        }
    own_scores = np.array([r["calibrated_loss"] for r in own])
    out["auc"] = {
        k: auc(np.array([r["calibrated_loss"] for r in v]), own_scores) for k, v in results.items() if k != "own"
    }
    out["mean_steps"] = float(np.mean([r["steps"] for v in results.values() for r in v]))
    return out


def run_variant(attributor: Attributor, sets: dict[str, np.ndarray]) -> tuple[dict[str, list], float]:
    names = list(sets)
    images = np.concatenate([sets[k] for k in names])
    t0 = time.perf_counter()
    res = attributor.attribute(images)
    seconds = time.perf_counter() - t0
    out, i = {}, 0
    for k in names:
        out[k] = [r.to_dict() for r in res[i : i + len(sets[k])]]
        i += len(sets[k])
    return out, seconds


def ronan_faithful_seconds(model: str, images: np.ndarray, steps: int, lr: float) -> float:
    """Per-image wall clock of the authors' loop shape: one image, one start, eager Adam, full budget."""
    gen = load_bundled(model)
    t0 = time.perf_counter()
    for x in images:
        target = torch.from_numpy(x[None])
        z = torch.randn((1, *gen.latent.shape), requires_grad=True)
        opt = torch.optim.Adam([z], lr=lr)
        best = float("inf")
        for _ in range(steps):
            opt.zero_grad()
            loss = ((gen.forward(z) - target) ** 2).mean()
            best = min(best, loss.item())
            loss.backward()
            opt.step()
    return (time.perf_counter() - t0) / len(images)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(BUNDLED_MODELS))
    p.add_argument("--n", type=int, default=100, help="images per class and calibration samples")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--restarts", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--ronan-images", type=int, default=4, help="images timed with the RONAN-faithful loop")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/accuracy.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    settings = InversionSettings(steps=args.steps, lr=args.lr, restarts=args.restarts)
    report: dict = {"machine": machine(), "args": vars(args), "models": {}}
    for model in args.models:
        gen = load_bundled(model)
        sched = Schedule(batch_size=args.batch_size, check_every=50, early_exit=False)
        t0 = time.perf_counter()
        cal = Attributor(gen, settings=settings, schedule=sched).calibrate(args.n, alpha=args.alpha)
        t_cal = time.perf_counter() - t0
        sets = evaluation_sets(model, args.n)
        entry: dict = {"calibration_seconds": t_cal, "calibration": cal.to_dict()["summary"]}
        for name, early in (("fixed_budget", False), ("early_exit", True)):
            sched = Schedule(batch_size=args.batch_size, check_every=50, early_exit=early)
            res, seconds = run_variant(Attributor(gen, settings=settings, schedule=sched, calibration=cal), sets)
            n_img = sum(len(v) for v in res.values())
            entry[name] = metrics(res, args.alpha) | {"seconds": seconds, "seconds_per_decision": seconds / n_img}
            entry[name]["scores"] = {k: [r["calibrated_loss"] for r in v] for k, v in res.items()}
            print(model, name, json.dumps({k: v for k, v in entry[name].items() if k != "scores"}), flush=True)
        if args.ronan_images:
            subset = np.concatenate([sets["own"][: args.ronan_images // 2], sets["real"][: args.ronan_images // 2]])
            entry["ronan_faithful_seconds_per_decision"] = ronan_faithful_seconds(model, subset, args.steps, args.lr)
        report["models"][model] = entry
        write(args.out, json.dumps(report, indent=1))
    roc_figure(report, args.out.replace(".json", "_roc.png"))
    print(markdown_table(report))


def roc_figure(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(report["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        scores = report["models"][model]["fixed_budget"]["scores"]
        own = np.array(scores["own"])
        for k, v in scores.items():
            if k != "own":
                fpr, tpr = roc_curve(own, np.array(v))
                ax.plot(fpr, tpr, label=f"vs {k} (AUC {auc(np.array(v), own):.3f})")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set_title(f"inspected: {model}")
        ax.set_xlabel("own samples called non-belonging (FPR)")
        ax.set_ylabel("others called non-belonging (TPR)")
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown_table(report: dict) -> str:
    lines = [
        "| inspected | variant | AUC vs real | AUC vs each other model | acc. (Grubbs) | FPR | TPR real | "
        "acc. (quantile) | mean steps | s/decision |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, e in report["models"].items():
        for variant in ("fixed_budget", "early_exit"):
            m = e[variant]
            others = ", ".join(f"{k} {v:.3f}" for k, v in m["auc"].items() if k != "real")
            g = m["grubbs"]
            lines.append(
                f"| {model} | {variant} | {m['auc']['real']:.3f} | {others} | {g['accuracy']:.3f} | "
                f"{g['fpr_own_called_non_belonging']:.3f} | {g['tpr_per_class']['real']:.3f} | "
                f"{m['quantile']['accuracy']:.3f} | {m['mean_steps']:.0f} | {m['seconds_per_decision']:.3f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
