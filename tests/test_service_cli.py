"""`genorigin serve` against `genorigin attribute`: the same verdicts (and coverage warnings) bit for bit;
refusals at start-up; SIGTERM.

Two small real DCGAN model files (their step is batch-exact on the CPU: one image alone or in a batch gives
the same floats), calibrated and attributed by the command line, served by the service.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
from genorigin.export.adapters import load_generator_file
from genorigin.runtime.decide.calibration import Calibration
from genorigin.runtime.decide.multimodel import decide_across
from service_helpers import (
    CLI_SCHEDULE,
    CLI_STEPS,
    ReportEntry,
    budget_for,
    cli_models,
    cli_reports,
    cli_service,
    metric,
    png,
    post,
    request,
    wait_until,
)

from genorigin.cli import main
from genorigin.client import Client
from genorigin.service import ServiceLoadError, load_served_model

STEPS, SCHEDULE = CLI_STEPS, CLI_SCHEDULE


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return cli_models(tmp_path_factory.mktemp("serve"))


def test_multi_model_answers_equal_the_command_line_bit_for_bit(files, tmp_path, capsys):
    models, images = files
    cli = cli_reports(models, images, tmp_path)
    capsys.readouterr()
    st = cli_service(models)
    with st as url:
        st.wait_ready()
        for path in sorted(images.iterdir()):
            status, _, answer = post(url, path.read_bytes(), headers={"X-Image-Name": path.name})
            assert status == 200
            for name in models:
                want = cli[name][path.name]
                got = {k: answer["models"][name][k] for k in want if k not in ("source", "seconds")}
                got_input, want_input = got.pop("input"), dict(want["input"])
                assert got_input.pop("source") == path.name  # the upload's name where the CLI has its path
                assert want_input.pop("source") == str(path) and got_input == want_input
                kept = {k: v for k, v in want.items() if k not in ("source", "seconds", "input")}
                assert got == kept, (path.name, name)
                assert ("plain-mode calibration" in (want["warning"] or "")) == path.name.endswith(".jpg")
            decision = decide_across({n: ReportEntry(cli[n][path.name]) for n in models})
            assert answer["decision"] == decision.model and answer["accepting"] == list(decision.accepting)
        own = post(url, (images / "alpha_own.png").read_bytes(), "model=alpha")[2]
        assert own["verdict"] == "belonging" and own["model"] == "alpha"


def test_several_models_on_the_command_line_equal_the_services_decision(files, tmp_path, capsys):
    """`attribute --model A --model B`: one row per image with each model's verdict and the decision across
    them, equal to the service's model=all answer field by field (and in the table and the CSV)."""
    models, images = files
    report, table = tmp_path / "across.json", tmp_path / "across.csv"
    argv = ["attribute", str(images), "--quiet", "--report", str(report), "--csv", str(table), *STEPS]
    for name, (model, cal) in models.items():
        argv += ["--model", f"{name}={model}", "--calibration", f"{name}={cal}"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    cli = {r["source"].split("/")[-1]: r for r in json.loads(report.read_text())["results"]}
    rows = {line.split(",")[0].split("/")[-1]: line.split(",") for line in table.read_text().splitlines()[1:]}
    assert set(cli) == {p.name for p in images.iterdir()} == set(rows)
    st = cli_service(models)
    with st as url:
        st.wait_ready()
        for path in sorted(images.iterdir()):
            status, _, answer = post(url, path.read_bytes(), headers={"X-Image-Name": path.name})
            want = cli[path.name]
            assert status == 200
            for key in ("decision", "verdict", "accepting", "ambiguous", "rule"):
                assert want[key] == answer[key], (path.name, key)
            for name in models:
                skip = ("source", "seconds", "input", "timing")
                got = {k: v for k, v in answer["models"][name].items() if k not in skip}
                assert got == {k: v for k, v in want["models"][name].items() if k not in skip}, (path.name, name)
            assert rows[path.name][1] == (answer["decision"] or "")
            decided = answer["decision"] or "none"  # the table's row: image, decision (* when ambiguous), verdicts
            assert any(path.name in line and line.split()[1].rstrip("*") == decided for line in out.splitlines())
    assert {r["decision"] for r in cli.values()} >= {"alpha", "beta", None}  # each own sample, and noise


def test_serve_refuses_what_every_request_would_fail_on(files, tmp_path, capsys):
    models, _ = files
    model, cal = models["alpha"]
    data = json.loads(cal.read_text())
    bare = tmp_path / "no_checkpoints.json"
    bare.write_text(json.dumps(data | {"checkpoint_steps": [], "checkpoint_scores": []}))
    Calibration.load(bare)  # a valid calibration file, but early exit cannot run on it
    with pytest.raises(ServiceLoadError, match="no checkpoint scores"):
        load_served_model(str(model), bare)
    assert main(["serve", "--model", str(model), "--calibration", str(bare), "--port", "0"]) == 2
    assert "no checkpoint scores" in capsys.readouterr().err
    assert main(["serve", "--model", str(model), "--calibration", str(cal), "--host", "0.0.0.0"]) == 2
    assert "--token-file" in capsys.readouterr().err
    assert main(["serve", "--model", str(model), "--calibration", str(tmp_path / "missing.json")]) == 2
    assert "no calibration" in capsys.readouterr().err


def test_sigterm_drains_in_flight_requests_and_exits_0(files, tmp_path):
    models, _ = files
    model = models["alpha"][0]
    budget = budget_for(load_generator_file(model), 2.0, lr=0.1, least=100)  # a request stays in flight ~2 s
    cal = tmp_path / "long.calibration.json"
    steps = [*STEPS[:2], "--steps", str(budget), *STEPS[4:]]
    assert main(["calibrate", "--model", str(model), "--samples", "3", "--out", str(cal), "--quiet", *steps]) == 0
    cmd = [
        sys.executable,
        "-m",
        "genorigin",
        "serve",
        "--model",
        f"alpha={model}",
        "--calibration",
        str(cal),
        "--port",
        "0",
        "--max-batch",
        "4",
        "--max-queue",
        "4",
        "--check-every",
        "10",
        "--exit-margin",
        "1e9",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    try:
        url = proc.stdout.readline().split(" on ")[1].split()[0]
        client = Client(url)
        wait_until(client.ready, timeout=120, every=0.1)
        noise = np.random.default_rng(6).random((8, 3, 32, 32))
        answers: list = [None] * 8

        def send(i: int) -> None:
            answers[i] = post(url, png(noise[i]), "model=alpha")

        threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        wait_until(lambda: metric(url, "genorigin_jobs_in_flight", model="alpha") == 8, timeout=60)
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: request(url, "GET", "/readyz")[0] == 503, timeout=10)
        status, headers, body = post(url, png(noise[0]), "model=alpha")
        assert status == 503 and body["error"]["code"] == "draining" and headers["connection"] == "close"
        for t in threads:
            t.join(timeout=120)
        assert [a[0] for a in answers] == [200] * 8 and all(a[2]["steps"] == budget for a in answers)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        proc.wait()
    err = proc.stderr.read()
    assert err.count('"POST /v1/attribute?model=alpha"') == 9  # one access-log line per request
