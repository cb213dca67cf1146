"""The bad image files every input path must reject with a clear, one-line error: the corpus's error cases."""

from __future__ import annotations

from pathlib import Path

from corpus.build import CASES, write_corpus


def write_bad_images(folder: Path) -> dict[str, str]:
    """Write every corpus file refused without conversion, in ``folder``; file name → a substring of its error.

    A folder scan reads each of them (image suffixes, regular files), so each gives exactly one error line.
    """
    bad = tuple(c for c in CASES if c.outcome == "error")
    write_corpus(folder, bad)
    return {c.name: str(c.expect_error) for c in bad}
