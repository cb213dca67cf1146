"""The robust mode's two choices, made from explore_robust_loss.py's scores on the FIRST evaluation set only:
which projection the loss keeps, and which JPEG qualities the calibration family draws.

For each (loss, family), a calibration is simulated from the own scores the exploration measured: each of N
draws picks the family's transform (unmodified with the family's share, else JPEG at a quality drawn
uniformly from the measured ones inside its range) and an own image's score under it. Against its Grubbs
threshold (α = 0.05), read per transform the FPR on own images and the TPR on real photos, averaged over
``--repeats`` simulated calibrations. Own scores used for the calibration and for the FPR are the same 32
images per transform, so FPRs are optimistic; the choice is by the worst real TPR at JPEG quality ≥ 80 with
the FPR as the tie-breaker, and the validation set (eval_robustness.py) is where the numbers are reported.

    python benchmarks/choose_robust.py benchmarks/results/robust/explore_loss.json \
        --sibling benchmarks/results/robust/explore_sibling.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from genorigin.runtime.decide.decision import grubbs_critical_value

FAMILIES = {"q50-95, 25 % unmodified": (0.25, 50, 95), "q70-95, 25 % unmodified": (0.25, 70, 95),
            "q50-95, none unmodified": (0.0, 50, 95)}  # fmt: skip


def simulate(data: dict, loss: str, family: tuple[float, int, int], n: int, rng: np.random.Generator) -> float:
    share, lo, hi = family
    qualities = [t for t in {k.split("/")[0] for k in data} if t.startswith("jpeg") and lo <= int(t[4:]) <= hi]
    picks = [("none" if rng.random() < share else qualities[rng.integers(len(qualities))]) for _ in range(n)]
    scores = np.array([data[f"{t}/{loss}"]["own"][rng.integers(len(data[f"{t}/{loss}"]["own"]))] for t in picks])
    return float(scores.mean() + grubbs_critical_value(n, 0.05) * scores.std(ddof=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("results")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--sibling", help="explore_robust_loss.py --sibling results: AUC vs real and vs the sibling")
    args = p.parse_args()
    models = json.loads(Path(args.results).read_text())["models"]
    losses = sorted({k.split("/")[1] for entry in models.values() for k in entry})
    transforms = sorted({k.split("/")[0] for entry in models.values() for k in entry},
                        key=lambda t: -1 if t == "none" else -int(t[4:]))  # fmt: skip
    print("| loss | family | model | " + " | ".join(f"{t} FPR / TPR" for t in transforms) + " | worst TPR q≥80 |")
    print("|---" * (4 + len(transforms)) + "|")
    for loss in losses:
        for fname, fam in FAMILIES.items():
            for model, data in models.items():
                rng = np.random.default_rng(0)
                thresholds = [simulate(data, loss, fam, args.n, rng) for _ in range(args.repeats)]
                cells, worst = [], 1.0
                for t in transforms:
                    own, real = np.array(data[f"{t}/{loss}"]["own"]), np.array(data[f"{t}/{loss}"]["real"])
                    fpr = np.mean([(own > th).mean() for th in thresholds])
                    tpr = np.mean([(real > th).mean() for th in thresholds])
                    cells.append(f"{fpr:.2f} / {tpr:.2f}")
                    if t == "none" or int(t[4:]) >= 80:
                        worst = min(worst, tpr)
                print(f"| {loss} | {fname} | {model} | " + " | ".join(cells) + f" | {worst:.2f} |")
    if args.sibling:
        sibling = json.loads(Path(args.sibling).read_text())["models"]
        keys = sorted(next(iter(sibling.values())))
        print("\n| model | " + " | ".join(f"{k} AUC real / sibling" for k in keys) + " |")
        for model, data in sibling.items():
            print(f"| {model} | " + " | ".join(f"{data[k]['auc_real']:.3f} / {data[k]['auc_sibling']:.3f}"
                                              for k in keys) + " |")  # fmt: skip


if __name__ == "__main__":
    main()
