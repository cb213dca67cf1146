"""genorigin.scale on a real local Ray cluster (2 CPUs, 127.0.0.1): Ray Data batch jobs and Ray Serve.

The bundled dcgan_a under a small paper-preset budget (its CPU step is batch-exact, docs/serving.md), one
cluster for the module. Rows must equal ``genorigin attribute``'s results field for field; a killed actor or a
killed job must leave every image in the output exactly once, and a re-run must process only what is missing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")
pytest.importorskip("ray.serve", reason="the [ray] extra is not installed")

from genorigin.runtime.decide.calibration import quantize_8bit  # noqa: E402
from service_helpers import png, post, request  # noqa: E402

from genorigin.cli import main  # noqa: E402
from genorigin.models import resolve_model  # noqa: E402
from genorigin.scale import attribute_dataset  # noqa: E402
from genorigin.service.config import ModelRequest, ServiceConfig  # noqa: E402

pytestmark = pytest.mark.timeout(600)  # a hang guard: a loaded 2-core machine took 185 s for one test
CALIBRATE = ["--samples", "6"]  # the default (fast) preset, with the shipped encoder
REAL = Path(__file__).resolve().parents[1] / "src" / "genorigin" / "assets" / "images" / "real"


@pytest.fixture(scope="module")
def cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A calibration of dcgan_a, a folder of own samples, real photos and one text file, and the command
    line's report on that folder (the reference every Ray answer is compared with)."""
    folder = tmp_path_factory.mktemp("scale")
    cal = folder / "dcgan_a.calibration.json"
    assert main(["calibrate", "--model", "dcgan_a", "--out", str(cal), "--quiet", *CALIBRATE]) == 0
    images = folder / "images"
    images.mkdir()
    own = quantize_8bit(resolve_model("dcgan_a").generator.sample(6, seed=11))
    for i, image in enumerate(own):
        (images / f"own_{i}.png").write_bytes(png(image))
    for i in range(6):
        (images / f"real_{i}.png").write_bytes((REAL / f"real_{i:03d}.png").read_bytes())
    (images / "broken.png").write_text("<html>not found</html>")
    report = folder / "report.json"
    assert (
        main(
            [
                "attribute",
                str(images),
                "--model",
                "dcgan_a",
                "--calibration",
                str(cal),
                "--quiet",
                "--report",
                str(report),
            ]
        )
        == 1
    )  # fmt: skip  (1: the text file is unreadable)
    reference = json.loads(report.read_text())
    return cal, images, reference


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def comparable(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "seconds"}


def test_rows_equal_genorigin_attribute(cluster, job, tmp_path):
    cal, images, reference = job
    out = tmp_path / "results.jsonl"
    summary = attribute_dataset([str(images)], "dcgan_a", out, calibration=cal, actors=2, batch_size=3)
    assert summary.complete and summary.attributed == 12 and summary.unreadable == 1
    got = {r["source"]: r for r in rows(out)}
    assert len(got) == 13
    for want in reference["results"]:
        row = got[want["source"]]
        assert row["error"] is None and len(row["content_sha256"]) == 64
        assert comparable({k: v for k, v in row.items() if k != "content_sha256"}) == comparable(want)  # error: None
    (line,) = reference["errors"]
    assert got[str(images / "broken.png")]["error"] == line
    assert sum(r["verdict"] == "belonging" for r in reference["results"]) == summary.belonging


def test_killed_actor_job_completes_with_every_image_once(cluster, job, tmp_path):
    cal, images, _ = job
    out = tmp_path / "results.jsonl"
    roster, killed = "test-roster", []

    def kill_one(status, row):
        if not killed:  # the first row is in: an actor is mid-job; kill one for good
            members = ray.get(ray.get_actor(roster).list.remote())
            ray.kill(members[0][0], no_restart=True)
            killed.append(members[0][1])

    summary = attribute_dataset([str(images)], "dcgan_a", out, calibration=cal, actors=2, batch_size=2,
                                roster=roster, on_row=kill_one)  # fmt: skip
    assert killed and summary.complete, summary
    counts = Counter(r["source"] for r in rows(out))
    assert len(counts) == 13 and set(counts.values()) == {1}
    assert summary.attributed + summary.unreadable == 13


def test_killed_job_rerun_processes_only_the_missing_images(cluster, job, tmp_path):
    cal, images, reference = job
    out = tmp_path / "results.jsonl"
    cmd = [sys.executable, "-m", "genorigin", "attribute", str(images), "--model", "dcgan_a", "--calibration",
           str(cal), "--engine", "ray", "--ray-address", cluster, "--output", str(out), "--actors", "1",
           "--ray-batch-size", "1", "--quiet"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        end = time.monotonic() + 180
        while not (out.exists() and out.read_bytes().count(b"\n") >= 3):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else proc.returncode
            assert time.monotonic() < end, "no rows after 180 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    before = rows(out)  # (a torn last line, if the kill cut one, is cut off by the re-run)
    done = len(before)
    assert 3 <= done < 13
    summary = attribute_dataset([str(images)], "dcgan_a", out, calibration=cal, actors=2, batch_size=3)
    assert summary.already_done == done
    assert summary.attributed + summary.unreadable == 13 - done  # only the missing ones were processed
    after = rows(out)
    assert after[:done] == before and Counter(r["source"] for r in after) == Counter(
        [r["source"] for r in reference["results"]] + [str(images / "broken.png")])  # fmt: skip


def test_ray_serve_answers_the_http_api_like_the_command_line(cluster, job):
    from ray import serve

    from genorigin.scale.serve import deploy

    cal, images, reference = job
    config = ServiceConfig((ModelRequest("dcgan_a", "dcgan_a", str(cal)),), max_batch=8, schedule={"check_every": 10})
    url = deploy(config, "127.0.0.1", 0, replicas=1)
    try:
        want = {Path(r["source"]).name: r for r in reference["results"]}
        for name in ("own_0.png", "real_0.png"):
            status, _, answer = post(url, (images / name).read_bytes(), "model=dcgan_a", {"X-Image-Name": name})
            assert status == 200 and answer["model"] == "dcgan_a"
            got = {k: answer[k] for k in want[name] if k not in ("source", "seconds", "input")}
            assert got == {k: v for k, v in want[name].items() if k not in ("source", "seconds", "input")}
        status, _, body = post(url, (images / "broken.png").read_bytes())
        assert status == 400 and body["error"]["code"] == "unreadable_image"
        status, _, body = request(url, "GET", "/v1/models")
        assert status == 200 and [m["name"] for m in body["models"]] == ["dcgan_a"]
    finally:
        serve.shutdown()
