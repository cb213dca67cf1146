"""The bad-input corpus (tests/corpus/build.py) through the images layer: a folder of it, each file by its own
path, each file's bytes as an upload; without and with conversion."""

from __future__ import annotations

from pathlib import Path

import pytest
from corpus.build import CASES, CorpusCase, write_corpus
from helpers import tiny_generator

from genorigin.images import ImageError, decode_upload, read_images

UPLOADS = [c for c in CASES if isinstance(c.content, bytes)]


def _lines_naming(lines: list[str], name: str) -> list[str]:
    return [ln for ln in lines if ln.split(": ")[0].endswith("/" + name)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus") / "inputs"
    write_corpus(folder)
    return folder


@pytest.mark.parametrize("convert", [None, "white", "black"])
def test_a_folder_of_the_corpus(corpus, convert):
    result = read_images([str(corpus)], tiny_generator(), convert=convert)
    read = {Path(s).name for s in result.sources}
    for case in CASES:
        errors, notes = _lines_naming(result.errors, case.name), _lines_naming(result.skipped, case.name)
        if case.outcome == "skipped":
            assert len(notes) == 1 and case.expect_skip in notes[0] and not errors, (case.name, notes, errors)
        elif case.outcome == "accepted" or (convert and case.convert_ok):
            assert case.name in read and not errors and not notes, (case.name, errors)
        else:
            assert len(errors) == 1 and case.expect_error in errors[0] and not notes, (case.name, errors)
    assert all("\n" not in line for line in result.errors + result.skipped)
    assert len(result.errors) == sum(c.outcome == "error" and not (convert and c.convert_ok) for c in CASES)
    assert len(result.skipped) == sum(c.outcome == "skipped" for c in CASES)
    assert result.images.shape == (len(result.sources), 3, 8, 8) and len(result.facts) == len(result.sources)
    for facts in result.facts:
        case = next(c for c in CASES if c.name == Path(facts.source).name)
        assert (facts.conversion is not None) == (case.outcome == "error")  # converted exactly when refused as is


@pytest.mark.parametrize("case", UPLOADS, ids=lambda c: c.name)
def test_each_upload_gets_its_status_and_one_line(case: CorpusCase):
    gen = tiny_generator()
    for convert in (None, "white"):
        accepted = case.expect_error is None or (convert is not None and case.convert_ok)
        try:
            image, facts = decode_upload(case.content, f"upload/{case.name}", gen, convert=convert)
        except ImageError as exc:
            message = str(exc)
            assert not accepted, message
            assert message.startswith(f"upload/{case.name}: ") and case.expect_error in message
            assert "\n" not in message and exc.http_status == case.http_status
        else:
            assert accepted and image.shape == (3, 8, 8) and facts.source == f"upload/{case.name}"
            assert case.http_status == 200 or convert is not None


@pytest.mark.parametrize("case", UPLOADS, ids=lambda c: c.name)
def test_each_file_by_its_own_path_as_its_upload(corpus, case: CorpusCase):
    result = read_images([str(corpus / case.name)], tiny_generator())
    if case.expect_error is None:
        assert [Path(s).name for s in result.sources] == [case.name] and result.errors == []
    else:
        assert result.sources == [] and len(result.errors) == 1
        assert result.errors[0].startswith(str(corpus / case.name)) and case.expect_error in result.errors[0]


def test_path_only_cases_by_their_own_path(corpus):
    expected = {
        "broken.png": "broken symbolic link",
        "loop.png": "symlink loop",
        "pipe.png": "not a regular file",
    }
    result = read_images([str(corpus / name) for name in expected], tiny_generator())
    assert result.sources == [] and len(result.errors) == len(expected)
    for line, (name, reason) in zip(result.errors, expected.items()):
        assert line.startswith(str(corpus / name)) and reason in line
    inside = read_images([str(corpus / "folder.png"), str(corpus / "zz_alias.png")], tiny_generator())
    assert [Path(s).name for s in inside.sources] == ["inside.png", "zz_alias.png"] and inside.errors == []
