"""The results file of a job: one row per (content hash, path), appended as results arrive, resumable.

Rows are the per-image dicts of ``genorigin attribute --json`` (``AttributionResult.to_dict()`` with the
input's facts) plus ``content_sha256`` and ``error`` (a one-line reason for an unreadable file, else null).
Only the driver writes: each row is one ``write`` of a whole line to a file opened for appending, flushed as
each batch arrives and fsynced every few seconds, so a killed job leaves complete lines and at most one torn
last line, which the next run cuts off. The key (content hash, path) is checked before every append: a row a
retried Ray task delivers twice is written once, and a re-run skips what the file already holds.

``.jsonl`` is written in place. ``.parquet`` is written at the end, atomically, from the rows of an existing
Parquet file plus a JSON-lines journal (``<output>.partial.jsonl``) that carries the run until then; nested
fields (facts, tests, trajectory) are JSON text in Parquet. ``<output>.meta.json`` records what decided the
rows (model fingerprint, method, settings, calibration hash, rule, level); resuming with anything else is
refused, so one file never mixes two calibrations' verdicts.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from genorigin import __version__
from genorigin.files import atomic_write_text
from genorigin.outputs import OutputError, strict_json
from genorigin.runtime.decide.result import AttributionResult

SUFFIXES = (".jsonl", ".parquet")
UNREAD = "-"  # the resume token of a file whose bytes could not be read (no content hash)
FSYNC_SECONDS = 5.0
Key = tuple[str | None, str]


def result_row(result: AttributionResult, sha256: str) -> dict[str, Any]:
    """An attributed image: what ``genorigin attribute --json`` reports for it, plus its content hash."""
    d = result.to_dict()
    return {"source": d.pop("source"), "content_sha256": sha256, "error": None, **d}


def error_row(source: str, sha256: str | None, message: str) -> dict[str, Any]:
    """An image that could not be attributed: ``message`` is the one-line error ``genorigin attribute`` prints."""
    return {"source": source, "content_sha256": sha256, "error": message}


def row_key(row: dict[str, Any]) -> Key:
    return row.get("content_sha256"), str(row["source"])


def token(sha256: str | None) -> str:
    """How an entry carries a recorded hash to the actors (``UNREAD`` for none)."""
    return sha256 or UNREAD


def to_line(row: dict[str, Any]) -> str:
    """Strict JSON on one line (non-finite floats become null)."""
    return strict_json(row).decode()


@dataclass
class ResultsFile:
    """The output of one job; ``open`` loads what a previous run wrote, ``add`` appends new rows once."""

    path: Path
    keys: set[Key] = field(default_factory=set)
    recorded: dict[str, list[str]] = field(default_factory=dict)  # source → tokens of the rows it has
    resumed: int = 0  # rows a previous run wrote
    written: int = 0  # rows this run wrote
    dropped: int = 0  # rows offered twice (a retried task), not written again
    notes: list[str] = field(default_factory=list)
    _fh: BinaryIO | None = None
    _synced: float = 0.0

    @property
    def parquet(self) -> bool:
        return self.path.suffix.lower() == ".parquet"

    @property
    def journal(self) -> Path:
        """Where rows are appended: the output itself (JSON lines), or the journal of a Parquet output."""
        return self.path.with_name(self.path.name + ".partial.jsonl") if self.parquet else self.path

    @property
    def meta_path(self) -> Path:
        return self.path.with_name(self.path.name + ".meta.json")

    def open(self, identity: dict[str, Any], *, force: bool = False) -> None:
        """Check the target, load the rows already there (refusing another job's file), open for appending.

        ``force``: start over (the file, its journal and its meta are removed first).
        """
        if self.path.suffix.lower() not in SUFFIXES:
            raise OutputError(f"--output {self.path}: name it *.jsonl or *.parquet")
        if self.path.is_dir():
            raise OutputError(f"--output {self.path} is a folder")
        try:
            if force:
                for p in (self.path, self.journal, self.meta_path):
                    p.unlink(missing_ok=True)
            self._check_identity(identity)
            if self.parquet and self.path.exists():
                self._load_parquet()
            if self.journal.exists():
                self._load_lines()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.journal, "ab")  # noqa: SIM115  (held open for the job; closed by close())
            if not self.meta_path.exists():
                atomic_write_text(self.meta_path, json.dumps({"genorigin_version": __version__, **identity}, indent=1))
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        self.resumed = len(self.keys)
        self._synced = time.monotonic()

    def tokens(self, source: str) -> str:
        """The recorded hashes of ``source``'s rows, space-separated (what an actor compares its read with)."""
        return " ".join(self.recorded.get(source, ()))

    def add(self, row: dict[str, Any], line: str | None = None) -> bool:
        """Append ``row`` unless its key is already in the file; False if it was."""
        key = row_key(row)
        if key in self.keys:
            self.dropped += 1
            return False
        assert self._fh is not None, "open() first"
        self._fh.write(((line or to_line(row)) + "\n").encode())
        self._remember(key)
        self.written += 1
        return True

    def flush(self) -> None:
        """Make the rows so far visible; fsync at most every ``FSYNC_SECONDS`` (and on close)."""
        if self._fh is None:
            return
        self._fh.flush()
        if time.monotonic() - self._synced >= FSYNC_SECONDS:
            os.fsync(self._fh.fileno())
            self._synced = time.monotonic()

    def close(self, complete: bool = True) -> None:
        """Flush and close; a Parquet output is written (atomically) once the job is ``complete``."""
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None
        if self.parquet and complete:
            try:
                write_parquet(self.path, self.journal)
            except OSError as exc:
                raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    # ------------------------------------------------------------------------------------------ loading
    def _remember(self, key: Key) -> None:
        self.keys.add(key)
        self.recorded.setdefault(key[1], []).append(token(key[0]))

    def _check_identity(self, identity: dict[str, Any]) -> None:
        if not self.meta_path.exists():
            if self.path.exists() and self.path.stat().st_size:
                raise OutputError(f"{self.path} exists without {self.meta_path.name}: it was not written by a "
                                  "genorigin job; choose another --output, or --force to replace it")  # fmt: skip
            return
        try:
            meta = json.loads(self.meta_path.read_text())
        except ValueError as exc:
            raise OutputError(f"{self.meta_path}: not JSON ({exc}); --force starts over") from exc
        differ = [k for k, v in identity.items() if meta.get(k) != v]
        if differ:
            raise OutputError(f"{self.path} holds results of another job ({', '.join(differ)} differ): choose "
                              "another --output, or --force to start over")  # fmt: skip

    def _load_lines(self) -> None:
        """Rows of the JSON-lines file; a torn last line (a kill mid-write) is cut off and noted."""
        good = 0
        with open(self.journal, "rb") as f:
            for number, line in enumerate(f, 1):
                if not line.endswith(b"\n"):
                    break
                try:
                    row = json.loads(line)
                    key = row_key(row)
                except (ValueError, KeyError, TypeError) as exc:
                    raise OutputError(f"{self.journal}:{number}: not a result row ({exc}): the file is damaged; "
                                      "--force starts over") from exc  # fmt: skip
                self._remember(key)
                good += len(line)
        size = self.journal.stat().st_size
        if good < size:
            os.truncate(self.journal, good)
            self.notes.append(f"{self.journal}: cut off a partial last line ({size - good} bytes) a killed run left")

    def _load_parquet(self) -> None:
        import pyarrow.parquet as pq

        table = pq.read_table(self.path, columns=["source", "content_sha256"])
        for source, sha in zip(table.column("source").to_pylist(), table.column("content_sha256").to_pylist()):
            self._remember((sha, source))


def write_parquet(path: Path, journal: Path) -> None:
    """``path`` := its rows (if any) + the journal's, atomically; then the journal is removed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = pq.read_table(path).to_pylist() if path.exists() else []
    if journal.exists():
        with open(journal, "rb") as f:
            rows += [_flat(json.loads(line)) for line in f if line.endswith(b"\n")]
    columns: dict[str, list[Any]] = {"source": [], "content_sha256": [], "error": []}  # even with no rows
    for row in rows:
        for name in row:
            columns.setdefault(name, [])
    arrays = []
    for name in columns:
        arr = pa.array([row.get(name) for row in rows])
        arrays.append(arr.cast(pa.string()) if pa.types.is_null(arr.type) else arr)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(pa.Table.from_arrays(arrays, names=list(columns)), tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    journal.unlink(missing_ok=True)


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    """Nested fields as JSON text: one Parquet schema whatever the facts or tests hold."""
    return {k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in row.items()}
