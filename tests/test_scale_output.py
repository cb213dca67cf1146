"""The Ray job's results file and command-line refusals, without a cluster: resume keys, a torn last line,
another job's file, Parquet; `--engine ray` options that cannot work; the Serve config entry point."""

from __future__ import annotations

import json

import pytest

from genorigin.cli import main
from genorigin.outputs import OutputError
from genorigin.scale.output import ResultsFile, error_row

IDENTITY = {"model_fingerprint": "abc", "method": "inversion", "calibration_sha256": "123"}


def row(source: str, sha: str, verdict: str = "belonging") -> dict:
    return {"source": source, "content_sha256": sha, "error": None, "verdict": verdict, "input": {"format": "PNG"},
            "trajectory": [[10, 0.5]]}  # fmt: skip


def test_rows_are_written_once_by_key_and_a_reopened_file_resumes(tmp_path):
    out = ResultsFile(tmp_path / "r.jsonl")
    out.open(IDENTITY)
    assert out.add(row("a.png", "1")) and out.add(row("b.png", "2")) and out.add(error_row("c.png", None, "c: gone"))
    assert not out.add(row("a.png", "1"))  # a retried task's second delivery
    assert out.add(row("a.png", "9"))  # same path, new content: a new row
    out.close()
    again = ResultsFile(tmp_path / "r.jsonl")
    again.open(IDENTITY)
    assert again.resumed == 4 and again.tokens("a.png") == "1 9" and again.tokens("c.png") == "-"
    again.close()


def test_a_torn_last_line_is_cut_off(tmp_path):
    path = tmp_path / "r.jsonl"
    out = ResultsFile(path)
    out.open(IDENTITY)
    out.add(row("a.png", "1"))
    out.close()
    with open(path, "ab") as f:
        f.write(b'{"source": "b.png", "content_sha')  # a kill mid-write
    again = ResultsFile(path)
    again.open(IDENTITY)
    assert again.resumed == 1 and any("partial last line" in n for n in again.notes)
    again.close()
    assert [json.loads(line)["source"] for line in path.read_text().splitlines()] == ["a.png"]


def test_another_jobs_file_is_refused_unless_forced(tmp_path):
    out = ResultsFile(tmp_path / "r.jsonl")
    out.open(IDENTITY)
    out.add(row("a.png", "1"))
    out.close()
    with pytest.raises(OutputError, match="calibration_sha256 differ"):
        ResultsFile(tmp_path / "r.jsonl").open(IDENTITY | {"calibration_sha256": "other"})
    forced = ResultsFile(tmp_path / "r.jsonl")
    forced.open(IDENTITY | {"calibration_sha256": "other"}, force=True)
    assert forced.resumed == 0
    forced.close()


def test_parquet_is_written_at_the_end_and_resumes(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow comes with the [ray] extra")
    path = tmp_path / "r.parquet"
    out = ResultsFile(path)
    out.open(IDENTITY)
    out.add(row("a.png", "1"))
    out.add(error_row("b.png", "2", "b.png: not an image"))
    out.close(complete=False)  # an unfinished job leaves its journal, no Parquet
    assert not path.exists() and out.journal.exists()
    again = ResultsFile(path)
    again.open(IDENTITY)
    assert again.resumed == 2
    again.add(row("c.png", "3", "non-belonging"))
    again.close()
    table = pq.read_table(path).to_pylist()
    assert [r["source"] for r in table] == ["a.png", "b.png", "c.png"] and not again.journal.exists()
    assert json.loads(table[0]["input"]) == {"format": "PNG"} and table[1]["error"] == "b.png: not an image"
    third = ResultsFile(path)
    third.open(IDENTITY)
    assert third.resumed == 3
    third.close()


@pytest.mark.parametrize("extra", [["--report", "r.json"], ["--json"], []])
def test_engine_ray_refuses_single_process_outputs_and_needs_output(extra, capsys, tmp_path):
    argv = ["attribute", str(tmp_path), "--model", "dcgan_a", "--engine", "ray", *extra]
    if extra:
        argv += ["--output", str(tmp_path / "r.jsonl")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert ("single-process engine" in err) if extra else ("needs --output" in err)


def test_serve_config_entry_point_parses_genorigin_serve_flags(tmp_path):
    pytest.importorskip("ray.serve", reason="the [ray] extra is not installed")
    from genorigin.scale.serve import build_app

    cal = tmp_path / "m.calibration.json"
    app = build_app({"model": ["dcgan_a"], "calibration": [str(cal)], "max_batch": 4, "replicas": 3,
                     "num_cpus": 2, "check_every": 20})  # fmt: skip
    deployment = app._bound_deployment  # what serve.run deploys (Ray keeps no public accessor for it)
    (config,) = deployment.init_args
    assert deployment.num_replicas == 3 and deployment.ray_actor_options["num_cpus"] == 2
    assert config.max_batch == 4 and config.threads == 2 and config.schedule["check_every"] == 20
    assert config.models[0].calibration == str(cal.resolve()) and config.models[0].spec == "dcgan_a"
