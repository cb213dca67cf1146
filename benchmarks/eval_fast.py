"""Decisions in tens of steps (issue 16): the fast preset against the paper's full-budget loop, per budget.

For each inspected bundled model: load (or fit) its encoder, calibrate on N own samples with the fast preset
(encoder start, per-slot L-BFGS, adaptive restarts), then run every evaluation image to the full budget with
trajectories recorded every 10 steps. Because results do not depend on batching and a shorter budget is a
prefix of a longer one, the table reads off the same run, exactly:

* **budget b** (no early exit): each image's best score at step b, against the calibration's own scores at b;
* **early exit** at the default budget: the first checkpoint where the stop rule (and the adaptive-restart
  rule) would stop the image — the loop's own ``stop_reason``/``may_restart`` replayed on the trajectory; a
  live early-exit run on a subset checks the reading.

Near-copies (DCGANs): every weight of the inspected model multiplied by (1 + ε·N(0,1)), ε = 0.05 and 0.01 —
the stand-in for a fine-tuned derivative — are an extra non-belonging class.

The paper's full-budget numbers come from ``results/validation/accuracy_<model>.json`` (the same images,
the same protocol, run by ``eval_accuracy.py``); ``--paper-near-copies`` runs the paper loop on the
near-copies too.

    python benchmarks/eval_fast.py --eval-seed 778 --real-offset 140 --out benchmarks/results/fast/validation.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from common import EVAL_SAMPLE_SEED, auc, evaluation_sets, machine, write
from genorigin.export.bundled import BUNDLED_MODELS, assets_dir, load_bundled
from genorigin.export.generator import Generator
from genorigin.runtime.decide.calibration import Calibration, quantize_8bit
from genorigin.runtime.decide.decision import grubbs_test, quantile_test
from genorigin.runtime.decide.early_exit import TrajectoryStopRule
from genorigin.runtime.decide.result import AttributionResult
from genorigin.runtime.loop.outcome import Decision
from genorigin.runtime.loop.restarts import StallDetector, may_restart, stop_reason
from genorigin.runtime.loop.settings import (
    FAST_SCHEDULE,
    FAST_SETTINGS,
    PAPER_SCHEDULE,
    PAPER_SETTINGS,
    FitSettings,
    InversionSettings,
    Schedule,
)
from genorigin.runtime.methods.attribution import Attributor, quantization_floor
from genorigin.runtime.methods.encoder import FittedEncoder

NEAR_COPY_EPS = (0.05, 0.01)


def near_copy(model: str, eps: float, seed: int = 0) -> Generator:
    """The bundled model with every parameter multiplied by (1 + eps·N(0, 1)) (buffers untouched)."""
    gen = load_bundled(model)
    rng = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in gen.module.parameters():
            p.mul_(1.0 + eps * torch.randn(p.shape, generator=rng))
    return gen


def at_step(result: AttributionResult, step: int) -> float:
    """The best-so-far loss at ``step`` (the trajectory is recorded at every checkpoint)."""
    values = [v for s, v in result.trajectory if s <= step]
    return values[-1] if values else float("inf")


def calibration_at(cal: Calibration, step: int) -> Calibration:
    """The calibration a budget of ``step`` steps would have produced (its own scores at that step)."""
    j = cal.checkpoint_steps.index(step)
    return Calibration(**{
        **cal.__dict__,
        "scores": list(cal.checkpoint_scores[j]),
        "settings": {**cal.settings, "steps": step},
        "checkpoint_steps": list(cal.checkpoint_steps[: j + 1]),
        "checkpoint_scores": [list(row) for row in cal.checkpoint_scores[: j + 1]],
    })  # fmt: skip


def metrics(scores: dict[str, np.ndarray], cal: Calibration) -> dict:
    own = scores["own"]
    ref = np.asarray(cal.scores)
    out: dict = {"auc": {k: auc(v, own) for k, v in scores.items() if k != "own"}}
    for rule in ("grubbs", "quantile"):
        belongs = {
            k: np.array(
                [
                    grubbs_test(s, cal.mean, cal.std, cal.n, cal.alpha).belonging
                    if rule == "grubbs"
                    else quantile_test(s, cal.quantile_threshold, ref).belonging
                    for s in v
                ]
            )
            for k, v in scores.items()
        }
        main = [k for k in scores if not k.startswith("near")]  # the accuracy over the classes
        correct = belongs["own"].sum() + sum((~belongs[k]).sum() for k in main if k != "own")
        out[rule] = {
            "accuracy": float(correct / sum(len(scores[k]) for k in main)),
            "fpr_own_called_non_belonging": float((~belongs["own"]).mean()),
            "tpr_per_class": {k: float((~belongs[k]).mean()) for k in scores if k != "own"},
        }
    return out


def evaluations_at(r: AttributionResult, step: int, starts: int) -> int:
    """Gradient evaluations an image has cost by ``step``: its starts, plus the fresh ones added on stalls."""
    return starts * (step + sum(step - s for s in r.restart_steps if s < step))


def exit_reading(
    r: AttributionResult, rule: TrajectoryStopRule, settings: InversionSettings, stall: StallDetector
) -> tuple[float, int]:
    """(calibrated score, step) where the live loop would stop this image: its own rules, replayed."""
    for k, (step, loss) in enumerate(r.trajectory):
        decision = Decision(int(rule.check(step, np.array([loss]), np.array([r.complexity]))[0]))
        restarts = [s for s in r.restart_steps if s < step]
        restartable = may_restart(r.trajectory[: k + 1], restarts, settings, stall)
        if stop_reason(decision, step, settings, restartable) is not None:
            return loss / r.complexity, step
    return r.calibrated_loss, r.steps


def encoder_for(model: str, gen: Generator, args: argparse.Namespace) -> tuple[FittedEncoder, float]:
    path = assets_dir() / "models" / f"{model}.encoder.pt"
    if path.exists() and not args.refit:
        enc = FittedEncoder.load(path)
        return enc, enc.seconds
    att = Attributor(gen, settings=FAST_SETTINGS)
    enc = att.fit_encoder(FitSettings(steps=args.fit_steps))
    return enc, enc.seconds


def evaluate(model: str, args: argparse.Namespace) -> dict:
    gen = load_bundled(model)
    settings = InversionSettings(**{**FAST_SETTINGS.to_dict(), "steps": args.steps, "halve_starts_at": ()})
    encoder, fit_seconds = encoder_for(model, gen, args)
    full = Schedule(batch_size=args.batch_size, check_every=10, early_exit=False)
    att = Attributor(gen, settings=settings, schedule=full, encoder=encoder)
    t0 = time.perf_counter()
    cal = att.calibrate(args.calibration_samples, alpha=args.alpha)
    t_cal = time.perf_counter() - t0
    sets = evaluation_sets(model, args.n, args.eval_seed, args.real_offset)
    if model.startswith("dcgan"):
        for eps in NEAR_COPY_EPS:
            sets[f"near{eps}"] = quantize_8bit(near_copy(model, eps).sample(args.n, seed=args.eval_seed))
    names = list(sets)
    images = np.concatenate([sets[k] for k in names])
    bounds = np.cumsum([0] + [len(sets[k]) for k in names])
    t0 = time.perf_counter()
    results = att.attribute(images)
    t_full = time.perf_counter() - t0
    by_class = {k: results[bounds[i] : bounds[i + 1]] for i, k in enumerate(names)}
    entry: dict = {
        "encoder": {"fit_seconds": fit_seconds, "steps": encoder.steps_done, "digest": encoder.digest()},
        "calibration": cal.to_dict()["summary"] | {"seconds": t_cal, "restarted": cal.restarted},
        "full_budget_seconds_per_decision": t_full / len(images),
        "budgets": {},
        "restarted_per_class": {k: int(sum(bool(r.restart_steps) for r in v)) for k, v in by_class.items()},
    }
    for b in args.budgets:
        cal_b = calibration_at(cal, b)
        scores = {k: np.array([at_step(r, b) / r.complexity for r in v]) for k, v in by_class.items()}
        main = [k for k in names if not k.startswith("near")]
        evals = [evaluations_at(r, b, settings.restarts) for k in main for r in by_class[k]]
        entry["budgets"][b] = metrics(scores, cal_b) | {"evaluations": float(np.mean(evals))}
    # early exit at the full budget, read off the trajectories with the loop's own rules
    stall = StallDetector(settings.stall_window, settings.stall_factor, quantization_floor(settings.loss))
    early: dict = {}
    for decision_rule in ("grubbs", "quantile"):
        rule = TrajectoryStopRule(cal, decision_rule, margin=FAST_SCHEDULE.exit_margin,
                                  min_step=FAST_SCHEDULE.exit_min_step)  # fmt: skip
        read = {k: [exit_reading(r, rule, settings, stall) for r in v] for k, v in by_class.items()}
        scores = {k: np.array([s for s, _ in v]) for k, v in read.items()}
        steps = {k: np.array([n for _, n in v]) for k, v in read.items()}
        main = [k for k in names if not k.startswith("near")]
        m = metrics(scores, cal)
        m["mean_steps"] = float(np.mean(np.concatenate([steps[k] for k in main])))
        m["mean_steps_per_class"] = {k: float(v.mean()) for k, v in steps.items()}
        m["mean_evaluations"] = float(np.mean([evaluations_at(r, n, settings.restarts) for k in main
                                               for r, (_, n) in zip(by_class[k], read[k])]))  # fmt: skip
        early[decision_rule] = (m, read)
    entry["early_exit"] = early["grubbs"][0] | {"quantile_rule": early["quantile"][0]["quantile"]}
    # the live early-exit run on a subset checks the reading and times decisions
    k = max(1, args.subset // len(names))
    subset = np.concatenate([sets[c][:k] for c in names])
    live_att = Attributor(gen, settings=settings, schedule=FAST_SCHEDULE, encoder=encoder, calibration=cal)
    t0 = time.perf_counter()
    live = live_att.attribute(subset)
    t_live = time.perf_counter() - t0
    expected = [early["grubbs"][1][c][i] for c in names for i in range(k)]
    entry["early_exit"]["live_subset"] = {
        "images": len(subset),
        "steps_match_reading": all(r.steps == n for r, (_, n) in zip(live, expected)),
        "max_rel_score_diff": float(max(abs(r.calibrated_loss - s) / s for r, (s, _) in zip(live, expected))),
        "seconds_per_decision": t_live / len(subset),
    }
    entry["paper_full_budget"] = paper_reference(model, args)
    if args.paper_near_copies and model.startswith("dcgan"):
        entry["paper_near_copies"] = paper_near_copies(model, sets, args)
    return entry


def paper_reference(model: str, args: argparse.Namespace) -> dict | None:
    path = Path(args.paper_results.format(model=model))
    if not path.exists():
        return None
    ref = json.loads(path.read_text())
    same = ref["args"]["eval_seed"] == args.eval_seed and ref["args"]["real_offset"] == args.real_offset
    fixed = ref["models"][model]["fixed_budget"]
    return {"file": str(path), "same_images": same, "evaluations": fixed["mean_start_steps"]} | {
        k: fixed[k] for k in ("auc", "grubbs", "quantile")
    }


def paper_near_copies(model: str, sets: dict, args: argparse.Namespace) -> dict:
    """AUC own vs near-copies under the paper's full-budget loop (calibration not needed for an AUC)."""
    gen = load_bundled(model)
    att = Attributor(gen, settings=PAPER_SETTINGS, schedule=Schedule(batch_size=args.batch_size,
                     check_every=PAPER_SCHEDULE.check_every, early_exit=False))  # fmt: skip
    att.calibrate(3)
    keys = ["own", *(f"near{e}" for e in NEAR_COPY_EPS)]
    images = np.concatenate([sets[k][: args.paper_near_n] for k in keys])
    res = att.attribute(images)
    n = args.paper_near_n
    scores = {k: np.array([r.calibrated_loss for r in res[i * n : (i + 1) * n]]) for i, k in enumerate(keys)}
    return {"images_per_class": n, "auc": {k: auc(scores[k], scores["own"]) for k in keys[1:]}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(BUNDLED_MODELS))
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--calibration-samples", type=int, default=100)
    p.add_argument("--eval-seed", type=int, default=EVAL_SAMPLE_SEED)
    p.add_argument("--real-offset", type=int, default=0)
    p.add_argument("--steps", type=int, default=FAST_SETTINGS.steps)
    p.add_argument("--budgets", type=int, nargs="+", default=[10, 20, 50, 100, 200])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--subset", type=int, default=48)
    p.add_argument("--fit-steps", type=int, default=FitSettings.steps)
    p.add_argument("--refit", action="store_true", help="fit the encoder here instead of loading the shipped one")
    p.add_argument("--paper-results", default=str(Path(__file__).parent / "results/validation/accuracy_{model}.json"))
    p.add_argument("--paper-near-copies", action="store_true")
    p.add_argument("--paper-near-n", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/fast/accuracy.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    report: dict = {"machine": machine(), "args": vars(args), "settings": FAST_SETTINGS.to_dict(), "models": {}}
    for model in args.models:
        report["models"][model] = evaluate(model, args)
        write(args.out, json.dumps(report, indent=1, default=float))
        print(model, json.dumps(report["models"][model]["early_exit"], default=float)[:600], flush=True)


if __name__ == "__main__":
    main()
