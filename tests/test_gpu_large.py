"""benchmarks/gpu_large.sh on CPU: it stops without a GPU, and its dry run walks the whole pipeline (a 64 px
decoder exported and stepped on the CPU backends) so that what runs on the first GPU is not its first run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("diffusers")
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the script would run for real")


def _run(out: Path, dry: bool) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("GPU_CHECK_DRY_RUN", None)
    if dry:
        env["GPU_CHECK_DRY_RUN"] = "1"
    return subprocess.run(["bash", str(ROOT / "benchmarks/gpu_large.sh"), str(out)], env=env, capture_output=True,
                          text=True, timeout=600, check=False)  # fmt: skip


def test_gpu_large_stops_without_a_gpu(tmp_path: Path) -> None:
    proc = _run(tmp_path, dry=False)
    assert proc.returncode == 2
    assert "no CUDA GPU" in (tmp_path / "large.log").read_text()
    assert not (tmp_path / "large.json").exists()


@pytest.mark.slow
def test_gpu_large_dry_run_walks_the_pipeline(tmp_path: Path) -> None:
    proc = _run(tmp_path, dry=True)
    assert proc.returncode == 0, (tmp_path / "large.log").read_text()[-2000:]
    report = json.loads((tmp_path / "large.json").read_text())
    assert report["size"] == 64 and report["device"] == "cpu" and report["export_seconds"] > 0
    assert report["package"]["validation"]["max_grad_error"] < 1e-4
    for name in ("torch", "onnxruntime"):
        rows = report["backends"][name]["rows"]
        assert [r["batch"] for r in rows] == [1, 4] and all(r["ms_per_step"] > 0 for r in rows)
    assert all(r["grad_error_vs_first"] < 1e-4 for r in report["backends"]["onnxruntime"]["rows"])
