"""Default threads come from the CPUs this process may use, shared among the workers the user says run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from tiny_models import QUICK, write_own_pngs, write_tiny_dcgan

from genorigin.cli import main
from genorigin.threads import WORKERS_ENV, available_cpus, default_threads, workers_hint

affinity = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux CPU affinity")


def test_threads_are_the_cpus_shared_among_workers(monkeypatch):
    cpus = available_cpus()
    monkeypatch.delenv(WORKERS_ENV)
    assert workers_hint() == 1 and default_threads() == cpus
    assert default_threads(workers=cpus * 4) == 1 and default_threads(workers=1) == cpus
    monkeypatch.setenv(WORKERS_ENV, "2")
    assert workers_hint() == 2 and default_threads() == max(1, cpus // 2)
    monkeypatch.setenv(WORKERS_ENV, "two")
    with pytest.raises(ValueError, match="GENORIGIN_WORKERS must be a whole number"):
        default_threads()
    with pytest.raises(ValueError, match="workers must be ≥ 1"):
        default_threads(workers=0)


@affinity
def test_a_process_pinned_to_one_cpu_uses_one_thread(tmp_path, capsys):
    model = write_tiny_dcgan(tmp_path / "tiny.pt")
    assert main(["calibrate", "--model", str(model), "--samples", "4", "--quiet", *QUICK]) == 0
    image = write_own_pngs(model, tmp_path / "in", 1)[0]
    env = {k: v for k, v in os.environ.items() if k != WORKERS_ENV}
    cmd = [sys.executable, "-m", "genorigin", "attribute", str(image), "--model", str(model), "--json", "--quiet"]
    first_cpu = min(os.sched_getaffinity(0))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600,
                          preexec_fn=lambda: os.sched_setaffinity(0, {first_cpu}))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["backend"]["threads"] == 1  # os.cpu_count() would say every CPU
    done = subprocess.run([*cmd, "--workers", "1"], env=env, capture_output=True, text=True, timeout=600)
    assert json.loads(done.stdout)["backend"]["threads"] == available_cpus()
