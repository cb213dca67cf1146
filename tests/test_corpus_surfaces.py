"""The bad-input corpus through every surface a user has: ``genorigin attribute`` (a folder, and each file by
its own path), the Python API (``Attributor.attribute_files``) and the HTTP service. Each must give the same
one-line errors naming the input, the documented exit code or status, attribute the good files, and change
nothing on disk (the corpus files, an existing report)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from corpus.build import CASES, write_corpus
from genorigin.runtime.decide.calibration import Calibration
from genorigin.runtime.loop.settings import InversionSettings
from genorigin.runtime.methods.attribution import Attributor
from service_helpers import post, write_tiny_dcgan

from genorigin.cli import main
from genorigin.errors import EXIT_FAILED, EXIT_PARTIAL
from genorigin.models import resolve_model
from genorigin.service import Service, ServiceThread, load_served_model

STEPS = ["--preset", "paper", "--steps", "20", "--check-every", "10", "--batch-size", "8"]
ACCEPTED = sorted(c.name for c in CASES if c.outcome == "accepted")
ERRORS = {c.name: c.expect_error for c in CASES if c.outcome == "error"}
SKIPPED = {c.name: c.expect_skip for c in CASES if c.outcome == "skipped"}


def _digest(folder: Path) -> dict[str, str]:
    """Content hash of every regular file under ``folder`` (links and pipes by their kind only)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_symlink() or not p.is_file():
            out[str(p)] = "link" if p.is_symlink() else ("dir" if p.is_dir() else "special")
        else:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _named(lines: list[str], prefix: str) -> dict[str, str]:
    """``prefix: <path>: reason`` lines → file name → line."""
    found = {}
    for line in lines:
        assert line.startswith(prefix), line
        found[line[len(prefix) :].split(": ")[0].rsplit("/", 1)[-1]] = line
    return found


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("surfaces")
    corpus = root / "corpus"
    write_corpus(corpus)
    model = write_tiny_dcgan(root / "tiny.pt", 3)
    cal = root / "tiny.calibration.json"
    assert main(["calibrate", "--model", str(model), "--samples", "4", "--out", str(cal), "--quiet", *STEPS]) == 0
    return corpus, model, cal


def test_the_command_line_over_the_corpus_folder(setup, tmp_path, capsys):
    corpus, model, cal = setup
    before = _digest(corpus)
    report = tmp_path / "report.json"
    code = main(["attribute", str(corpus), "--model", str(model), "--calibration", str(cal), "--json", "--quiet",
                 "--report", str(report)])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == EXIT_PARTIAL  # some inputs unreadable, the others attributed
    lines = err.strip().splitlines()
    errors = _named([ln for ln in lines if ln.startswith("error: ")], "error: ")
    notes = _named([ln for ln in lines if ln.startswith("note: ")], "note: ")
    assert len(errors) + len(notes) == len(lines)  # nothing but one line per error and per note (no traceback)
    assert set(errors) == set(ERRORS) and all(ERRORS[n] in errors[n] for n in ERRORS), errors
    assert set(notes) == set(SKIPPED) and all(SKIPPED[n] in notes[n] for n in SKIPPED), notes
    printed = json.loads(out)
    assert sorted(Path(r["source"]).name for r in printed["results"]) == ACCEPTED
    assert json.loads(report.read_text()) == printed
    assert _digest(corpus) == before


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_the_command_line_on_each_bad_file_alone(setup, tmp_path, capsys, name):
    corpus, model, cal = setup
    report = tmp_path / "report.json"
    report.write_text("kept")
    code = main(["attribute", str(corpus / name), "--model", str(model), "--calibration", str(cal), "--quiet",
                 "--report", str(report), "--force"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == EXIT_FAILED and out == ""
    lines = err.strip().splitlines()
    assert lines[0].startswith(f"error: {corpus / name}: ") and ERRORS[name] in lines[0]
    assert lines[1:] == ["error: no image could be read"]
    assert report.read_text() == "kept"  # nothing computed, nothing replaced


def test_the_python_api_gives_the_command_lines_lines(setup):
    corpus, model, cal = setup
    calibration = Calibration.load(cal)
    settings = InversionSettings.from_dict(calibration.settings)
    attributor = Attributor(resolve_model(str(model)).generator, settings=settings, calibration=calibration)
    found = attributor.attribute_files([str(corpus)])
    assert sorted(Path(r.source).name for r in found.results) == ACCEPTED
    assert set(_named([f"error: {e}" for e in found.errors], "error: ")) == set(ERRORS)
    assert set(_named([f"note: {s}" for s in found.skipped], "note: ")) == set(SKIPPED)
    assert all(r.input is not None and Path(r.input["source"]).name == Path(r.source).name for r in found.results)


def test_the_service_over_the_corpus_uploads(setup):
    corpus, model, cal = setup
    served = load_served_model(str(model), cal, name="tiny", schedule={"check_every": 10}, max_batch=8)
    with ServiceThread(Service([served])) as url:
        for case in (c for c in CASES if c.http_status is not None):
            status, _, body = post(url, (corpus / case.name).read_bytes(), "model=tiny", {"X-Image-Name": case.name})
            assert status == case.http_status, (case.name, status, body)
            if status == 200:
                assert body["verdict"] in ("belonging", "non-belonging") and body["input"]["source"] == case.name
            else:
                message = body["error"]["message"]
                assert case.name in message and case.expect_error in message and "\n" not in message
        assert post(url, (corpus / "rgb.png").read_bytes())[0] == 200  # still serving after every bad upload
