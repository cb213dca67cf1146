"""Reproducibility: what is bit-identical where, how far scores move on another instruction set, and what
batch invariance costs (issue 21; docs/accuracy.md "Reproducibility").

Each configuration runs in its own process (the CPU kernels are chosen at start-up):
  native        this CPU's best kernels (AVX-512 here)
  avx2          ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 (an AVX2-only machine's arithmetic)
  default       ATEN_CPU_CAPABILITY=default (ATen's scalar kernels)
and, per configuration, with 1 and 2 threads. Each process calibrates the fast preset (the default) on each
bundled model and attributes one evaluation set (own samples, the other models' samples, real crops), alone
and in batches. The driver compares every configuration with native/1 thread: per image |log(score/score₀)|,
verdict flips, whether the calibration's reproducibility band covered the move, and whether the batch
changed any bit.

The cost of batch invariance is timed in the native process: the same decisions with the invariant torch
evaluation and L-BFGS reductions, and with them switched off (plain batched evaluation, ``tensor.sum``),
alternating rounds in one process.

    .venv/bin/python benchmarks/bench_reproducibility.py --n 12 --calibration 30
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CONFIGS = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "default": {"ATEN_CPU_CAPABILITY": "default"},
}


def worker(args: argparse.Namespace) -> dict:
    """One configuration: calibrate, attribute alone and batched, per model; optionally time the cost."""
    import torch
    from genorigin.runtime.backends.eager import TorchBackend
    from genorigin.runtime.methods.attribution import Attributor
    from genorigin.runtime.methods.encoder import FittedEncoder

    from genorigin.models import resolve_model

    sys.path.insert(0, str(HERE))
    from common import evaluation_sets

    out: dict = {"capability": os.environ.get("ATEN_CPU_CAPABILITY", "native"), "threads": args.threads,
                 "models": {}}  # fmt: skip
    for name in args.models:
        resolved = resolve_model(name)
        gen = resolved.generator
        att = Attributor(gen, backend=TorchBackend(gen, threads=args.threads),
                         encoder=FittedEncoder.load(resolved.encoder_path))  # fmt: skip
        cal = att.calibrate(args.calibration)
        sets = evaluation_sets(name, args.n, seed=778, real_offset=140)
        labels = [k for k, v in sets.items() for _ in range(len(v))]
        images = np.concatenate(list(sets.values()))
        batched = att.attribute(images)
        alone = [att.attribute(images[i : i + 1])[0] for i in range(0, len(images), args.alone_every)]
        same = all(a.loss == batched[i * args.alone_every].loss and a.steps == batched[i * args.alone_every].steps
                   for i, a in enumerate(alone))  # fmt: skip
        out["models"][name] = {
            "band": cal.band, "threshold": cal.grubbs_threshold, "cal_scores": cal.scores, "labels": labels,
            "scores": [r.calibrated_loss for r in batched], "verdicts": [r.verdict for r in batched],
            "steps": [r.steps for r in batched], "alone_equals_batched": same, "alone_checked": len(alone),
        }  # fmt: skip
        if args.cost:
            out["models"][name]["cost"] = time_cost(att, images, args.rounds, torch)
    return out


def time_cost(att, images: np.ndarray, rounds: int, torch) -> dict:
    """Seconds per decision with batch invariance on and off, alternating rounds in this process."""
    import genorigin.runtime.loop.optimizers as optimizers

    backend = att.backend
    invariant_rows, invariant_dot, invariant_norm = backend.rows, optimizers.row_dot, optimizers.row_norm
    times: dict[str, list[float]] = {"invariant": [], "plain": [], "plain-1-thread": []}
    for _ in range(rounds):
        for mode in times:
            if mode != "invariant":  # batched evaluation on torch's own threads, reductions by tensor.sum
                backend.rows = None
                torch.set_num_threads(backend.threads if mode == "plain" else 1)
                optimizers.row_dot = lambda a, b: (a * b).sum(-1)
                optimizers.row_norm = lambda a: a.norm(dim=-1)
            start = time.perf_counter()
            att.attribute(images)
            times[mode].append((time.perf_counter() - start) / len(images))
            backend.rows, optimizers.row_dot, optimizers.row_norm = invariant_rows, invariant_dot, invariant_norm
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {
        "seconds_per_decision": med,
        "rounds": times,
        "overhead": med["invariant"] / med["plain"] - 1.0,
        "overhead_vs_1_thread": med["invariant"] / med["plain-1-thread"] - 1.0,
    }


def drive(args: argparse.Namespace, save) -> dict:
    """Each configuration in its own process; results saved after each (a long run can be read as it goes)."""
    runs: dict = {}
    for key in args.configs:
        config, threads = key.split("/")
        cmd = [sys.executable, __file__, "--worker", "--threads", threads, "--n", str(args.n),
               "--calibration", str(args.calibration), "--models", *args.models,
               "--alone-every", str(args.alone_every), "--rounds", str(args.rounds)]  # fmt: skip
        if key == "native/2":
            cmd.append("--cost")
        started = time.time()
        proc = subprocess.run(cmd, env={**os.environ, **CONFIGS[config]}, capture_output=True, text=True, check=True)
        runs[key] = json.loads(proc.stdout.strip().splitlines()[-1])
        runs[key]["seconds"], runs[key]["load_after"] = time.time() - started, os.getloadavg()
        print(f"{key}: {time.time() - started:.0f} s (load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)
        save({"runs": runs, "summary": summarise(runs)})
    return {"runs": runs, "summary": summarise(runs)}


def summarise(runs: dict) -> dict:
    ref = next(iter(runs.values()))["models"]
    summary: dict = {}
    for key, run in runs.items():
        for name, m in run["models"].items():
            r = ref[name]
            moves = [abs(math.log(a / b)) for a, b in zip(m["scores"], r["scores"]) if a > 0 and b > 0]
            flips = sum(a != b for a, b in zip(m["verdicts"], r["verdicts"]))
            summary.setdefault(name, {})[key] = {
                "identical_to_reference": m["scores"] == r["scores"] and m["cal_scores"] == r["cal_scores"],
                "max_log_move": max(moves), "median_log_move": float(np.median(moves)),
                "verdict_flips": flips, "uncertain": sum(v == "uncertain" for v in m["verdicts"]),
                "band": m["band"], "moves_within_band": sum(x <= m["band"] for x in moves), "images": len(moves),
                "threshold_log_move": abs(math.log(m["threshold"] / r["threshold"])),
                "alone_equals_batched": m["alone_equals_batched"], "cost": m.get("cost"),
            }  # fmt: skip
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--cost", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--models", nargs="+", default=["dcgan_a", "dcgan_b", "vae"])
    p.add_argument("--n", type=int, default=20, help="images per class")
    p.add_argument("--calibration", type=int, default=50, help="own samples per calibration")
    p.add_argument("--alone-every", type=int, default=4, help="attribute every k-th image alone too")
    p.add_argument("--rounds", type=int, default=3, help="alternating timing rounds (native/2 only)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "reproducibility.json")
    p.add_argument(
        "--configs",
        nargs="+",
        default=["native/1", "native/2", "avx2/1", "default/1"],
        help="CONFIG/THREADS to run (native, avx2, default); the first is the reference",
    )
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    sys.path.insert(0, str(HERE))
    from common import machine

    head = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save(part: dict) -> None:
        args.out.write_text(json.dumps({**head, **part}, indent=1))

    result = drive(args, save)
    print(json.dumps(result["summary"], indent=1))


if __name__ == "__main__":
    main()
