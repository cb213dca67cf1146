"""Merge what ``gpu_check.sh`` collected in OUT_DIR into one report: ``report.json`` and ``report.md``.

Inputs (each optional, missing ones are reported as missing): ``env.json`` (the machine), ``steps.tsv`` (each
part's exit status and seconds), ``pytest.xml`` (the GPU tests, JUnit XML), ``bench_kernels.json`` and
``bench_latency.json``, ``bench_fast_gpu.json``. Nothing here needs a GPU, so the report logic is tested on CPU.

    python benchmarks/gpu_report.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

TIMED_OUT = {124, 137}


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_steps(path: Path) -> list[dict[str, Any]]:
    """Rows of ``name<TAB>exit status<TAB>seconds<TAB>limit`` as gpu_check.sh writes them."""
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        name, rc, seconds, limit = line.split("\t")
        rc_i = int(rc)
        status = "ok" if rc_i == 0 else ("timed out" if rc_i in TIMED_OUT else f"exit {rc_i}")
        rows.append({"part": name, "status": status, "seconds": int(seconds), "limit_s": int(limit)})
    return rows


def read_junit(path: Path) -> dict[str, Any] | None:
    """Counts, every failure (test id and message) and the skip reasons (with counts) from pytest's JUnit XML."""
    if not path.is_file():
        return None
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    failures: list[dict[str, str]] = []
    skips: dict[str, int] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        skip = case.find("skipped")
        if bad is not None:
            counts["failed"] += 1
            test = f"{case.get('classname', '')}::{case.get('name', '')}"
            failures.append({"test": test, "message": (bad.get("message") or "")[:300]})
        elif skip is not None:
            counts["skipped"] += 1
            reason = (skip.get("message") or "").removeprefix("Skipped: ")[:200]
            skips[reason] = skips.get(reason, 0) + 1
        else:
            counts["passed"] += 1
    return {**counts, "failures": failures, "skip_reasons": skips}


def summarize_kernels(bench: dict[str, Any] | None) -> dict[str, Any] | None:
    if not bench:
        return None
    fields = ("shape", "kernel_ms", "torch_ms", "speedup_vs_torch", "kernel_gbs", "fraction_of_peak",
              "grad_max_rel_err_vs_torch")  # fmt: skip
    rows = [{k: r[k] for k in fields} for r in bench.get("rows", [])]
    keep = ("device", "arch", "target", "sm_count", "resident_blocks_per_sm", "peak_used_for_fraction_gbs",
            "all_meet_2x", "all_meet_70pct_peak")  # fmt: skip
    return {**{k: bench.get(k) for k in keep}, "rows": rows}


def summarize_latency(bench: dict[str, Any] | None) -> dict[str, Any] | None:
    if not bench:
        return None
    results = {
        name: {
            "kernels": r.get("describe", {}).get("kernels"),
            "cuda_graph": r.get("describe", {}).get("cuda_graph"),
            "p50_ms": r["loop"]["latency_ms"]["p50"],
            "images_per_s": r["loop"]["images_per_s"],
        }
        for name, r in bench.get("results", {}).items()
    }
    return {"meta": bench.get("meta"), "results": results, "skipped": bench.get("skipped"), "goals": bench.get("goals")}


def build_report(out: Path) -> dict[str, Any]:
    steps = read_steps(out / "steps.tsv")
    tests = read_junit(out / "pytest.xml")
    env = _json(out / "env.json")
    failed = any(s["status"] != "ok" for s in steps) or not tests or tests["failed"] > 0
    verdict = "DRY RUN (no GPU)" if env and not env.get("gpu") else ("FAIL" if failed else "PASS")
    return {
        "verdict": verdict,
        "environment": env,
        "steps": steps,
        "gpu_tests": tests,
        "kernels": summarize_kernels(_json(out / "bench_kernels.json")),
        "latency": summarize_latency(_json(out / "bench_latency.json")),
        "fast_preset": _json(out / "bench_fast_gpu.json"),
    }


def _cell(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(str(c) for c in r) + " |" for r in rows
    ]


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"] or {}
    lines = [f"# GPU check: {report['verdict']}", "", f"Machine: `{json.dumps(env, sort_keys=True)}`", ""]
    lines += _table(["part", "status", "seconds", "limit (s)"],
                    [[s["part"], s["status"], s["seconds"], s["limit_s"]] for s in report["steps"]])  # fmt: skip
    tests = report["gpu_tests"]
    lines += ["", "## GPU tests (`-m 'gpu or tensorrt'`)", ""]
    if tests is None:
        lines.append("No test results (pytest.xml missing).")
    else:
        lines.append(f"{tests['passed']} passed, {tests['failed']} failed, {tests['skipped']} skipped.")
        if tests["failures"]:
            lines += ["", *_table(["failed test", "message"],
                                  [[f["test"], _cell(f["message"])] for f in tests["failures"]])]  # fmt: skip
        if tests["skip_reasons"]:
            lines += ["", *_table(["skipped because", "tests"],
                                  [[_cell(r), n] for r, n in tests["skip_reasons"].items()])]  # fmt: skip
    kern = report["kernels"]
    lines += ["", "## Loss kernel vs torch (bench_kernels.py)", ""]
    if kern is None:
        lines.append("Not measured (bench_kernels.json missing).")
    else:
        peak = kern["peak_used_for_fraction_gbs"]
        lines.append(f"{kern['device']} sm_{kern['arch']} ({kern['target']}); resident blocks/SM "
                     f"{kern['resident_blocks_per_sm']}; peak {peak:.0f} GB/s.")  # fmt: skip
        lines += ["", *_table(["shape", "kernel ms", "torch ms", "speed-up", "GB/s", "% of peak"],
                              [["x".join(map(str, r["shape"])), f"{r['kernel_ms']:.4f}", f"{r['torch_ms']:.4f}",
                                f"{r['speedup_vs_torch']:.2f}", f"{r['kernel_gbs']:.0f}",
                                f"{100 * r['fraction_of_peak']:.1f}"] for r in kern["rows"]])]  # fmt: skip
    lat = report["latency"]
    lines += ["", "## Decision latency and throughput (bench_latency.py)", ""]
    if lat is None:
        lines.append("Not measured (bench_latency.json missing).")
    else:
        lines += _table(["backend", "kernels", "CUDA graph", "p50 ms/decision", "images/s by batch"],
                        [[n, r["kernels"], r["cuda_graph"], f"{r['p50_ms']:.1f}",
                          ", ".join(f"{b}: {v:.0f}" for b, v in r["images_per_s"].items())]
                         for n, r in lat["results"].items()])  # fmt: skip
        lines += ["", f"Skipped: {lat['skipped']}"]
    lines += ["", "## The fast preset on each GPU backend (bench_fast_gpu.py)", ""]
    fast = report.get("fast_preset")
    if not fast or "results" not in fast:
        lines.append(f"Not measured ({(fast or {}).get('skipped', 'bench_fast_gpu.json missing')}).")
    else:
        lines += _table(["backend", "p50 ms", "p99 ms", "images/s @64", "host syncs/step", "encoder ms/image",
                         "verdicts ≠ CPU", "max |log score ratio|"],
                        [[n, f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}", f"{r['images_per_s_batch64']:.0f}",
                          f"{r['host_syncs_per_step']:.2f}", f"{r['encoder_start_ms_per_image']:.2f}",
                          r["verdicts_differing_from_cpu"], f"{r['max_log_score_ratio_vs_cpu']:.2e}"]
                         for n, r in fast["results"].items()])  # fmt: skip
        lines += ["", f"Skipped: {fast['skipped']}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(args[0])
    report = build_report(out)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(markdown(report))
    print(f"gpu_check: {report['verdict']}; wrote {out / 'report.json'} and {out / 'report.md'}")
    return {"PASS": 0, "FAIL": 1}.get(report["verdict"], 2)


if __name__ == "__main__":
    sys.exit(main())
