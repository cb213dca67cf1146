"""The fast preset's table in docs/accuracy.md, from eval_fast.py (and eval_onnx64.py) result files.

One row per budget (early exit off), one for early exit at the default budget, one for the paper's full-budget
loop on the same images; the paper's near-copy AUC comes from the run that measured it (``--paper-near``).

    python benchmarks/fast_table.py benchmarks/results/fast/validation_v2_*.json \\
        --paper-near benchmarks/results/fast/validation_dcgan_a.json benchmarks/results/fast/validation_vae_dcgan_b.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NEAR = ("near0.05", "near0.01")


def _auc(auc: dict[str, float], keys: list[str]) -> str:
    return ", ".join(f"{k} {auc[k]:.3f}" for k in keys if k in auc) or "—"


def _near(auc: dict[str, float]) -> str:
    return " / ".join(f"{auc[k]:.3f}" for k in NEAR if k in auc) or "—"


def rows(model: str, entry: dict, paper_near: dict[str, float]) -> list[str]:
    budgets = entry["budgets"]
    others = [k for k in next(iter(budgets.values()))["auc"] if k not in NEAR and k != "real"]
    out = []

    def row(label: str, evals: float, r: dict) -> str:
        g = r["grubbs"]
        return (f"| {model} | {label} | {evals:.1f} | {g['accuracy']:.4f} | {g['fpr_own_called_non_belonging']:.2f} | "
                f"{r['auc']['real']:.3f} | {_auc(r['auc'], others)} | {_near(r['auc'])} |")  # fmt: skip

    for b, r in budgets.items():
        out.append(row(f"fast, budget {b}", float(r.get("evaluations", b)), r))
    ee = entry["early_exit"]
    out.append(row("**fast, early exit (default)**", ee["mean_evaluations"], ee))
    paper = entry.get("paper_full_budget")
    if paper:
        out.append(row("paper, full budget", paper["evaluations"], {**paper, "auc": {**paper["auc"], **paper_near}}))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", type=Path)
    p.add_argument("--paper-near", nargs="*", type=Path, default=[], help="files with paper_near_copies entries")
    args = p.parse_args()
    paper_near: dict[str, dict[str, float]] = {}
    for f in args.paper_near:
        for model, entry in json.loads(f.read_text())["models"].items():
            if "paper_near_copies" in entry:
                paper_near[model] = entry["paper_near_copies"]["auc"]
    print("| inspected | loop | gradient evaluations / decision | accuracy (Grubbs) | FPR (own called non-belonging) "
          "| AUC vs real | AUC vs other models | AUC own vs near-copy ε = 0.05 / 0.01 |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for f in args.results:
        for model, entry in json.loads(f.read_text())["models"].items():
            print("\n".join(rows(model, entry, paper_near.get(model, {}))))


if __name__ == "__main__":
    main()
