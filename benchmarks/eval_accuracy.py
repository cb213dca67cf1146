"""Accuracy on the bundled models: the full budget, early exit, and a RONAN-faithful loop, in one run.

For each inspected model: calibrate on N own samples; belonging = N fresh own samples; non-belonging = N
samples of each other bundled model and N held-out real crops. The full-budget loop (the paper's 1500 steps,
batched) runs once on every image and records each image's best-so-far loss at every checkpoint. Because
results do not depend on batching and restart pruning is off here, the early-exit verdicts are then read off
those same trajectories exactly (the first checkpoint where the stop rule fires). A real early-exit run on a
subset checks that reading and measures wall-clock; a RONAN-faithful loop (eager PyTorch, batch 1, one start,
1500 steps) is timed on a few images for the speed ratio.

    python benchmarks/eval_accuracy.py --out benchmarks/results/accuracy.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from common import EVAL_SAMPLE_SEED, auc, evaluation_sets, machine, roc_curve, write
from genorigin.export.bundled import BUNDLED_MODELS, load_bundled
from genorigin.runtime.decide.calibration import Calibration
from genorigin.runtime.decide.decision import grubbs_test, quantile_test
from genorigin.runtime.decide.early_exit import TrajectoryStopRule
from genorigin.runtime.decide.result import AttributionResult
from genorigin.runtime.loop.outcome import CONTINUE
from genorigin.runtime.loop.settings import InversionSettings, Schedule
from genorigin.runtime.methods.attribution import Attributor


def early_exit_reading(r: AttributionResult, rule: TrajectoryStopRule) -> tuple[float, int]:
    """(calibrated score, steps) at the first checkpoint where the stop rule decides; else the full budget."""
    for step, loss in r.trajectory:
        if rule.check(step, np.array([loss]), np.array([r.complexity]))[0] != CONTINUE:
            return loss / r.complexity, step
    return r.calibrated_loss, r.steps


def verdicts(scores: np.ndarray, cal: Calibration) -> dict[str, np.ndarray]:
    """Belonging (True) per score under both rules."""
    ref = np.asarray(cal.scores)
    return {
        "grubbs": np.array([grubbs_test(s, cal.mean, cal.std, cal.n, cal.alpha).belonging for s in scores]),
        "quantile": np.array([quantile_test(s, cal.quantile_threshold, ref).belonging for s in scores]),
    }


def metrics(
    scores: dict[str, np.ndarray], steps: dict[str, np.ndarray], cal: Calibration, settings: InversionSettings
) -> dict:
    own = scores["own"]
    others = [k for k in scores if k != "own"]
    out: dict = {"auc": {k: auc(scores[k], own) for k in others}}
    for rule in ("grubbs", "quantile"):
        v = {k: verdicts(s, cal)[rule] for k, s in scores.items()}
        correct = v["own"].sum() + sum((~v[k]).sum() for k in others)
        total = sum(len(s) for s in scores.values())
        out[rule] = {
            "accuracy": float(correct / total),
            "fpr_own_called_non_belonging": float((~v["own"]).mean()),
            "tpr_per_class": {k: float((~v[k]).mean()) for k in others},
        }
    out["mean_steps"] = float(np.mean(np.concatenate(list(steps.values()))))
    out["mean_steps_per_class"] = {k: float(np.mean(s)) for k, s in steps.items()}
    out["mean_start_steps"] = float(np.mean([settings.start_steps(int(n)) for s in steps.values() for n in s]))
    return out


def _exit_rule(text: str) -> tuple[int, float]:
    rank, margin = text.split(":")
    return int(rank), float(margin)


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


def evaluate_model(model: str, args: argparse.Namespace, settings: InversionSettings) -> dict:
    gen = load_bundled(model)
    full = Schedule(batch_size=args.batch_size, check_every=50, early_exit=False)
    t0 = time.perf_counter()
    cal = Attributor(gen, settings=settings, schedule=full).calibrate(args.calibration_samples, alpha=args.alpha)
    t_cal = time.perf_counter() - t0
    sets = evaluation_sets(model, args.n, args.eval_seed, args.real_offset)
    names = list(sets)
    images = np.concatenate([sets[k] for k in names])
    bounds = np.cumsum([0] + [len(sets[k]) for k in names])
    t0 = time.perf_counter()
    results = Attributor(gen, settings=settings, schedule=full, calibration=cal).attribute(images)
    t_full = time.perf_counter() - t0
    by_class = {k: results[bounds[i] : bounds[i + 1]] for i, k in enumerate(names)}
    fixed_scores = {k: np.array([r.calibrated_loss for r in v]) for k, v in by_class.items()}
    fixed_steps = {k: np.array([r.steps for r in v]) for k, v in by_class.items()}
    early = {}
    for rank, margin in args.exit_rules:
        for decision in ("grubbs", "quantile"):
            # early exit is tied to the primary rule: each rule's exits use its own acceptance region
            rule = TrajectoryStopRule(cal, decision, margin=margin, envelope_rank=rank)
            read = {k: [early_exit_reading(r, rule) for r in v] for k, v in by_class.items()}
            scores = {k: np.array([s for s, _ in v]) for k, v in read.items()}
            steps = {k: np.array([n for _, n in v]) for k, v in read.items()}
            early[(rank, margin, decision)] = (read, metrics(scores, steps, cal, settings))

    def early_entry(rank: int, margin: float) -> dict:
        g, q = early[(rank, margin, "grubbs")][1], early[(rank, margin, "quantile")][1]
        return g | {"quantile": q["quantile"], "mean_steps_quantile_rule": q["mean_steps"],
                    "envelope_rank": rank, "margin": margin}  # fmt: skip

    primary = args.exit_rules[0]
    read = early[(*primary, "grubbs")][0]
    entry: dict = {
        "calibration": cal.to_dict()["summary"] | {"seconds": t_cal},
        "fixed_budget": metrics(fixed_scores, fixed_steps, cal, settings)
        | {"seconds_per_decision": t_full / len(images), "scores": {k: list(v) for k, v in fixed_scores.items()}},
        "early_exit": early_entry(*primary),
        "early_exit_other_rules": [early_entry(*r) for r in args.exit_rules[1:]],
    }
    # a real early-exit run on a subset: checks the reading above and gives wall-clock per decision
    k = args.subset // len(names)
    subset = np.concatenate([sets[c][:k] for c in names])
    sched = Schedule(batch_size=args.batch_size, check_every=50, exit_envelope_rank=primary[0], exit_margin=primary[1])
    t0 = time.perf_counter()
    live = Attributor(gen, settings=settings, schedule=sched, calibration=cal).attribute(subset)
    t_early = time.perf_counter() - t0
    expected = [read[c][i] for c in names for i in range(k)]
    entry["early_exit"]["seconds_per_decision"] = t_early / len(subset)
    entry["early_exit"]["live_subset"] = {
        "images": len(subset),
        "steps_match_reading": all(r.steps == n for r, (_, n) in zip(live, expected)),
        "max_rel_score_diff": float(max(abs(r.calibrated_loss - s) / s for r, (s, _) in zip(live, expected))),
        "mean_steps": float(np.mean([r.steps for r in live])),
    }
    ronan_imgs = np.concatenate([sets["own"][: args.ronan_images // 2], sets["real"][: args.ronan_images // 2]])
    entry["ronan_faithful_seconds_per_decision"] = ronan_faithful_seconds(
        model, ronan_imgs, settings.steps, settings.lr
    )
    return entry


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(BUNDLED_MODELS))
    p.add_argument("--n", type=int, default=100, help="images per evaluation class")
    p.add_argument("--calibration-samples", type=int, default=100)
    p.add_argument("--eval-seed", type=int, default=EVAL_SAMPLE_SEED, help="seed of the generated evaluation images")
    p.add_argument("--exit-rules", type=_exit_rule, nargs="+", default=[(1, 2.0)], metavar="K:MARGIN",
                   help="non-belonging exits read off the same trajectories: envelope rank k and margin; the first "
                   "is also run live")  # fmt: skip
    p.add_argument("--real-offset", type=int, default=0, help="first bundled real crop used")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--restarts", type=int, default=InversionSettings.restarts)
    p.add_argument("--halve-starts-at", type=int, nargs="*", default=list(InversionSettings.halve_starts_at))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--subset", type=int, default=40, help="images in the live early-exit run")
    p.add_argument("--ronan-images", type=int, default=4, help="images timed with the RONAN-faithful loop")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/accuracy.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    settings = InversionSettings(
        steps=args.steps, lr=args.lr, restarts=args.restarts, halve_starts_at=tuple(args.halve_starts_at)
    )
    report: dict = {"machine": machine(), "args": vars(args), "models": {}}
    for model in args.models:
        report["models"][model] = evaluate_model(model, args, settings)
        write(args.out, json.dumps(report, indent=1))
        print(model, json.dumps({k: v for k, v in report["models"][model].items() if k != "fixed_budget"}), flush=True)
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
        "| inspected | loop | AUC vs real | AUC vs other models | accuracy (Grubbs) | FPR own | TPR real | "
        "accuracy (quantile) | mean steps | s/decision |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, e in report["models"].items():
        for variant in ("fixed_budget", "early_exit"):
            m = e[variant]
            others = ", ".join(f"{k} {v:.3f}" for k, v in m["auc"].items() if k != "real")
            g = m["grubbs"]
            lines.append(
                f"| {model} | {variant.replace('_', ' ')} | {m['auc']['real']:.3f} | {others} | {g['accuracy']:.3f} | "
                f"{g['fpr_own_called_non_belonging']:.3f} | {g['tpr_per_class']['real']:.3f} | "
                f"{m['quantile']['accuracy']:.3f} | {m['mean_steps']:.0f} | {m['seconds_per_decision']:.3f} |"
            )
        lines.append(
            f"| {model} | RONAN-faithful (batch 1, 1 start) | | | | | | | {report['args']['steps']} | "
            f"{e['ronan_faithful_seconds_per_decision']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
