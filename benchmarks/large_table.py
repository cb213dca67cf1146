"""docs/large_models.md's tables, printed from benchmarks/results/large_models.json (bench_large.py).

python benchmarks/large_table.py [benchmarks/results/large_models.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

GB, GIB, MB = 1e9, 2**30, 1e6


def _load(entry: dict[str, Any]) -> str:
    values = [entry.get("load_before", {}).get("load1"), entry.get("load_after", {}).get("load1")]
    return "–".join(f"{v:.1f}" for v in values if v is not None)


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def export_rows(report: dict[str, Any]) -> list[str]:
    head = ["model", "weights (M fp32 values)", "package MB v1 layout → v2", "×fp32 weights", "export s", "peak RSS GB",
            "max grad error vs autograd", "remat segments", "load (1 min)"]  # fmt: skip
    rows = [_row(head), _row(["---"] * len(head))]
    for name, e in report.get("export", {}).items():
        params = e["weights_bytes"] / 4
        v = e["validation"]
        seg = e["activations"]["segments"]
        rows.append(
            f"| {name} | {params / 1e6:.1f} M | {e['v1_layout_bytes'] / MB:.0f} → {e['package_bytes'] / MB:.0f} | "
            f"{e['package_bytes'] / e['weights_bytes']:.3f} | {e['seconds']:.0f} | {e['peak_rss_bytes'] / GB:.2f} | "
            f"{v['max_grad_error']:.1e} | vjp {seg['vjp']}, loss {seg['loss_mse']} | {_load(e)} |"
        )
    return rows


def step_rows(report: dict[str, Any]) -> list[str]:
    peak = report.get("gemm_peak_gflops_2_threads", float("nan"))
    head = ["model", "GFLOP per step", "backend", "s per step (median)", "GFLOP/s", "% of GEMM peak",
            "grad error vs eager fp32", "peak RSS GB", "load (1 min)"]  # fmt: skip
    steps = report.get("steps", {})
    peaks = {}  # each step run measured its own peak; the report keeps the last one
    for name, e in steps.items():
        rows_of = [b for b in e.values() if isinstance(b, dict) and "of_gemm_peak" in b]
        peaks[name] = rows_of[0]["gflops"] / rows_of[0]["of_gemm_peak"] if rows_of else peak
    runs = ", ".join(f"{name} {value:.0f}" for name, value in peaks.items())
    rows = [f"GEMM peak, 2 threads, torch.mm 2048², measured in each model's run (GFLOP/s): {runs}", "", _row(head)]
    rows.append(_row(["---"] * len(head)))
    notes = []
    for name, e in report.get("steps", {}).items():
        loads = [entry["load1"] for entry in e.get("loads", [])]
        load = f"{min(loads):.1f}–{max(loads):.1f}" if loads else ""
        for backend in ("eager-torch", "torch", "onnxruntime", "torch-bf16"):
            if backend not in e:  # a model measured before the backend joined the benchmark
                continue
            b = e[backend]
            mark = ""
            if "note" in b:
                notes.append(b["note"])
                mark = f" [{len(notes)}]"
            cells = [name, f"{e['flops_per_step'] / 1e9:.0f}", backend + mark, f"{b['median_seconds']:.2f}",
                     f"{b['gflops']:.0f}", f"{b['of_gemm_peak']:.0%}", f"{b['grad_error_vs_torch_fp32']:.1e}",
                     f"{b['peak_rss_bytes'] / GB:.2f}", load]  # fmt: skip
            rows.append(_row(cells))
    rows += [""] + [f"[{i}] {note}" for i, note in enumerate(notes, 1)]
    return rows


def projection_rows(report: dict[str, Any]) -> list[str]:
    steps = report.get("steps", {})
    gpus = next(iter(steps.values()), {}).get("projected_ms_per_step", {})
    rows = ["| model | " + " | ".join(gpus) + " |", "|---|" + "---|" * len(gpus)]
    for name, e in steps.items():
        rows.append(f"| {name} | " + " | ".join(f"{ms:.0f} ms" for ms in e["projected_ms_per_step"].values()) + " |")
    return rows


def activation_rows(report: dict[str, Any]) -> list[str]:
    act = report.get("activations", {})
    est = act.get("estimated_per_image_bytes", {})
    rows = ["| size | plain | 4 segments | 8 segments | 16 segments |", "|---|---|---|---|---|"]
    for size, e in est.items():
        rows.append(
            f"| {size} px | "
            + " | ".join(f"{e[k] / GIB:.2f} GiB" for k in ("plain", "remat4", "remat8", "remat16"))
            + " |"
        )
    for name, m in act.get("measured", {}).items():
        grew, est = m["rss_growth_bytes"], m["estimate_bytes"]
        rows.append(f"\n{name}: one ORT step grew the process by {grew / GIB:.2f} GiB for an estimate of "
                    f"{est / GIB:.2f} GiB ({grew / est:.2f}×)")  # fmt: skip
    return rows


def aedr_rows(report: dict[str, Any]) -> list[str]:
    a = report.get("aedr", {})
    rows = []
    if "flops_per_image" in a:
        one = a["flops_one_pass"]
        rows.append(f"AEDR per image: {a['flops_per_image'] / 1e12:.2f} TFLOP (encode {one['encode'] / 1e12:.2f}, "
                    f"decode {one['decode'] / 1e12:.2f}, each twice)")  # fmt: skip
    for compute in ("float32", "bfloat16"):
        if compute in a:
            e = a[compute]
            rows.append(f"AEDR {compute}: {e['seconds_per_image']:.1f} s per image, peak RSS "
                        f"{e['peak_rss_bytes'] / GB:.2f} GB, {e.get('gflops', float('nan')):.0f} GFLOP/s, "
                        f"score change vs float32 "
                        f"{e['score_rel_change_vs_fp32']:.1e} (load {_load(e)})")  # fmt: skip
    if "inversion_encoder_seconds_per_image" in a:
        rows.append(f"inversion-encoder: {a['inversion_encoder_seconds_per_image']:.0f} s per image "
                    f"({a['inversion_encoder_steps']} steps at the measured step time, plus the encoding)")  # fmt: skip
    return rows


def main(argv: list[str]) -> None:
    path = Path(argv[0] if argv else Path(__file__).parent / "results" / "large_models.json")
    report = json.loads(path.read_text())
    print("machine:", report.get("machine"))
    for title, rows in (("export", export_rows), ("steps", step_rows), ("projection", projection_rows),
                        ("activations", activation_rows), ("aedr", aedr_rows)):  # fmt: skip
        print(f"\n## {title}\n")
        print("\n".join(rows(report)))


if __name__ == "__main__":
    main(sys.argv[1:])
