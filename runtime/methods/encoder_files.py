"""The model's encoder file: read, written, or fitted once and written — for the Python API and every front end.

``Attributor.load_or_calibrate`` and ``genorigin.workflow`` (the commands, the demo, the Ray actors) give a
method its encoder through ``prepare_encoder``, so a fitted encoder is stored, and pinned by the calibration,
the same way whichever way in. A file that cannot be read or written is one ``EncoderFileError`` line naming it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from genorigin.runtime.loop.settings import FitSettings
from genorigin.runtime.methods.encoder import Encoder, FittedEncoder, OnnxEncoder, attach_encoder

from genorigin.files import atomic_write_bytes


class EncoderFileError(ValueError):
    """An encoder file that cannot be read or written (the message names it)."""


class TakesEncoder(Protocol):
    """What ``prepare_encoder`` needs of a method (``runtime.methods.registry.AttributionMethod``)."""

    @property
    def needs_encoder(self) -> bool: ...

    def use_encoder(self, encoder: Encoder) -> None: ...

    def fit_encoder(
        self, settings: FitSettings = ..., *, seconds: float | None = None,
        on_step: Callable[[int, dict[str, float]], None] | None = None,
    ) -> FittedEncoder: ...  # fmt: skip


def read_encoder(path: Path) -> Encoder:
    """A fitted torch encoder (``.pt``), or an encoder graph (``.onnx``, how a package carries it)."""
    try:
        return OnnxEncoder(path) if path.suffix == ".onnx" else FittedEncoder.load(path)
    except (ValueError, OSError) as exc:
        raise EncoderFileError(f"{path}: {exc}" if str(path) not in str(exc) else str(exc)) from exc


def write_encoder(fitted: FittedEncoder, path: Path) -> None:
    """Atomically: the weights (``.pt``), or the graph (``.onnx``; into a package's manifest when it is one)."""
    from genorigin.export.package import ENCODER_GRAPH, MANIFEST  # ONNX: only to write a graph

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix != ".onnx":
            fitted.save(path)
        elif path.name == ENCODER_GRAPH and (path.parent / MANIFEST).is_file():
            attach_encoder(path.parent, fitted)
        else:
            atomic_write_bytes(path, fitted.onnx_bytes())
    except OSError as exc:
        raise EncoderFileError(f"cannot write {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise EncoderFileError(f"{path}: {exc}") from exc


def prepare_encoder(
    method: TakesEncoder,
    path: Path,
    *,
    fit: FitSettings,
    seconds: float | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> bool:
    """Give ``method`` the encoder at ``path`` if it needs one: read if present, else fitted and written there
    (atomically). Returns whether one was fitted."""
    if not method.needs_encoder:
        return False
    if path.exists():
        method.use_encoder(read_encoder(path))
        return False
    fitted = method.fit_encoder(fit, seconds=seconds, on_step=on_step)
    write_encoder(fitted, path)
    method.use_encoder(read_encoder(path))  # the calibration pins the encoder as stored (a package's: its graph)
    return True
