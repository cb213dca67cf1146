"""The default (fast) preset gives the same bits through `genorigin attribute`, the Python API and the HTTP
service (issue 21): an appeal re-run on another surface, alone or beside other requests, gets the same score.

The bundled dcgan_a with its shipped encoder, one calibration; the folder holds own samples and real crops.
The service answers each image alone and then all of them at once (several jobs in one running batch).
The Ray batch job is held to the same report in tests/test_scale.py.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from genorigin.export.bundled import real_images_dir
from genorigin.runtime.decide.calibration import quantize_8bit
from service_helpers import png, post

from genorigin.cli import main
from genorigin.models import resolve_model
from genorigin.service import Service, ServiceThread, load_served_model

pytestmark = pytest.mark.numeric
THREADS = ["--threads", "2"]  # two threads: eager PyTorch split batches of 3+ differently before (issue 21)
KEYS = ("verdict", "calibrated_loss", "loss", "steps", "stop_reason", "evaluations", "p_value", "trajectory")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("everywhere")
    cal = root / "dcgan_a.calibration.json"
    assert main(["calibrate", "--model", "dcgan_a", "--samples", "8", "--out", str(cal), "--quiet", *THREADS]) == 0
    images = root / "images"
    images.mkdir()
    for i, image in enumerate(quantize_8bit(resolve_model("dcgan_a").generator.sample(4, seed=21))):
        (images / f"own_{i}.png").write_bytes(png(image))
    for i, path in enumerate(sorted(real_images_dir().glob("*.png"))[50:53]):
        (images / f"real_{i}.png").write_bytes(path.read_bytes())
    report = root / "report.json"
    assert main(["attribute", str(images), "--model", "dcgan_a", "--calibration", str(cal), "--quiet",
                 "--report", str(report), *THREADS]) == 0  # fmt: skip
    cli = {r["source"].split("/")[-1]: r for r in json.loads(report.read_text())["results"]}
    return cal, images, cli


def _same(got: dict, want: dict) -> None:
    for k in KEYS:
        assert got[k] == want[k], (k, got[k], want[k])


def test_cli_alone_equals_cli_in_a_folder(folder, tmp_path):
    cal, images, cli = folder
    for path in sorted(images.iterdir())[:3]:
        report = tmp_path / f"{path.stem}.json"
        assert main(["attribute", str(path), "--model", "dcgan_a", "--calibration", str(cal), "--quiet",
                     "--report", str(report), *THREADS]) == 0  # fmt: skip
        (alone,) = json.loads(report.read_text())["results"]
        _same(alone, cli[path.name])


def test_service_alone_and_concurrent_equals_the_cli(folder):
    cal, images, cli = folder
    served = load_served_model("dcgan_a", cal, name="dcgan_a", max_batch=8, threads=2)
    paths = sorted(images.iterdir())
    with ServiceThread(Service([served])) as url:
        for path in paths[:2]:  # alone
            status, _, answer = post(url, path.read_bytes(), headers={"X-Image-Name": path.name})
            assert status == 200
            _same(answer["models"]["dcgan_a"], cli[path.name])
        with ThreadPoolExecutor(len(paths)) as pool:  # together: several jobs share the running batch
            answers = list(pool.map(lambda p: post(url, p.read_bytes(), headers={"X-Image-Name": p.name}), paths))
    for path, (status, _, answer) in zip(paths, answers):
        assert status == 200
        _same(answer["models"]["dcgan_a"], cli[path.name])
    assert {r["verdict"] for r in cli.values()} >= {"belonging", "non-belonging"}
    assert np.isfinite([r["calibrated_loss"] for r in cli.values()]).all()
