"""benchmarks/gpu_check.sh and its report, on CPU: it stops without a GPU, and the report reads every part.

The GPU parts themselves need a GPU; what can fail here is the plumbing: the early stop, the exit status,
and how gpu_report.py turns logs, JUnit XML and benchmark JSON into a verdict.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_report  # noqa: E402

JUNIT = """<testsuites><testsuite>
<testcase classname="tests.test_kernels_gpu" name="test_a"/>
<testcase classname="tests.test_kernels_gpu" name="test_b"><skipped message="needs TensorRT &gt;= 10: none"/></testcase>
<testcase classname="tests.test_gpu_runtime" name="test_c">{failure}</testcase>
</testsuite></testsuites>"""
LATENCY = {"results": {"cudagraph": {"describe": {"kernels": "cuda", "cuda_graph": True},
                                     "loop": {"latency_ms": {"p50": 12.5}, "images_per_s": {"8": 900.0}}}},
           "skipped": {"tensorrt": "TensorRT is not installed"}}  # fmt: skip
FAST = {"results": {"torch-cuda-graph": {"p50_ms": 8.25, "p99_ms": 19.5, "images_per_s_batch64": 2400.0,
                                         "host_syncs_per_step": 0.0, "encoder_start_ms_per_image": 0.31,
                                         "verdicts_differing_from_cpu": 0, "max_log_score_ratio_vs_cpu": 0.012}},
        "skipped": {"tensorrt": "TensorRT is not installed"}}  # fmt: skip


def _outputs(tmp: Path, *, fail_test: bool, step_rc: int = 0) -> Path:
    (tmp / "env.json").write_text(json.dumps({"gpu": "NVIDIA H100", "compute_capability": "9.0"}))
    (tmp / "steps.tsv").write_text(f"environment\t0\t3\t20\ngpu_tests\t{step_rc}\t40\t170\n")
    failure = '<failure message="AssertionError: 5 blocks/SM, plan 6"/>' if fail_test else ""
    (tmp / "pytest.xml").write_text(JUNIT.format(failure=failure))
    (tmp / "bench_latency.json").write_text(json.dumps(LATENCY))
    (tmp / "bench_fast_gpu.json").write_text(json.dumps(FAST))
    return tmp


def test_report_passes_when_every_part_and_test_passes(tmp_path: Path) -> None:
    assert gpu_report.main([str(_outputs(tmp_path, fail_test=False))]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["verdict"] == "PASS" and report["gpu_tests"]["passed"] == 2
    assert report["gpu_tests"]["skip_reasons"] == {"needs TensorRT >= 10: none": 1}
    md = (tmp_path / "report.md").read_text()
    assert "| cudagraph | cuda | True | 12.5 | 8: 900 |" in md and "Not measured (bench_kernels.json missing)" in md
    assert "| torch-cuda-graph | 8.2 | 19.5 | 2400 | 0.00 | 0.31 | 0 | 1.20e-02 |" in md  # the fast preset


@pytest.mark.parametrize(("fail_test", "step_rc"), [(True, 0), (False, 124)])
def test_report_fails_on_a_failed_test_or_a_timed_out_part(tmp_path: Path, fail_test: bool, step_rc: int) -> None:
    assert gpu_report.main([str(_outputs(tmp_path, fail_test=fail_test, step_rc=step_rc))]) == 1
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["verdict"] == "FAIL"
    assert (report["gpu_tests"]["failed"] == 1) == fail_test
    assert report["steps"][1]["status"] == ("timed out" if step_rc == 124 else "ok")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the check would run for real")
def test_gpu_check_stops_early_without_a_gpu(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("GPU_CHECK_DRY_RUN", None)
    proc = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_check.sh"), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 2
    assert "no usable CUDA GPU" in proc.stderr and "nothing was run" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["environment.log", "steps.tsv"]
