"""Attribution from files: read with ``genorigin.images.read_images``, attribute, keep each input's facts.

Shared by every method (``attribute_files``) and by the command line, so a folder, a glob or a list of paths
gives the same results, the same one-line errors and the same notes in Python and on the command line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
from genorigin.runtime.robust.coverage import record_input

from genorigin.images import Preparer, ReadResult, read_images

if TYPE_CHECKING:
    from genorigin.export.generator import Generator
    from genorigin.runtime.decide.calibration import Calibration
    from genorigin.runtime.decide.result import AttributionResult

    from genorigin.decode import Background


@dataclass
class FileAttribution:
    """What ``attribute_files`` found: a result per readable image, one line per unreadable input."""

    results: list[AttributionResult]
    errors: list[str]  # one line per input that gave no image, naming it
    skipped: list[str] = field(default_factory=list)  # notes: what the path expansion passed over, and why
    images: np.ndarray | list[np.ndarray] | None = None  # the prepared inputs in [0, 1] (for figures; a list of
    # C×H×W when their sizes differ: the platform mode)


class Attributes(Protocol):
    """What attributing files needs of a method: what reads its inputs (``reader``: the generator, which
    brings them to its size, or the platform mode's, which keeps their own), its calibration (what an input
    is compared with: ``coverage_warning``) and ``attribute``."""

    generator: Generator
    calibration: Calibration | None

    @property
    def reader(self) -> Preparer: ...

    def attribute(
        self,
        images: np.ndarray,
        sources: Sequence[str] | None = None,
        *,
        keep_reconstructions: bool = False,
        on_done: Callable[[int], None] | None = None,
    ) -> list[AttributionResult]: ...


def attribute_read(
    method: Attributes,
    read: ReadResult,
    *,
    keep_reconstructions: bool = False,
    on_done: Callable[[int], None] | None = None,
) -> FileAttribution:
    """Attribute images already read; each result carries its input's facts (``result.input``) and, when the
    input lies outside what the method's calibration covers, a warning (``result.warning``)."""
    results: list[AttributionResult] = []
    if read.sources:
        results = method.attribute(
            read.images, read.sources, keep_reconstructions=keep_reconstructions, on_done=on_done
        )
        for r, facts in zip(results, read.facts):
            record_input(r, facts, method.calibration)
    errors = list(read.errors) + [f"{r.source}: {r.error}" for r in results if r.error is not None]
    images = read.images
    if len(errors) > len(read.errors):  # an image no decision was made for is an error line, not a result
        kept = [i for i, r in enumerate(results) if r.error is None]
        results = [results[i] for i in kept]
        images = images[kept] if isinstance(images, np.ndarray) else [images[i] for i in kept]  # a list: own sizes
    return FileAttribution(results, errors, list(read.skipped), images)


class AttributesFiles:
    """Mixin: ``attribute_files(paths)`` for any method that has ``generator`` and ``attribute``."""

    @property
    def reader(self: Attributes) -> Preparer:
        """What brings a decoded file to this method's input: the generator (its size)."""
        return self.generator

    def attribute_files(
        self: Attributes,
        specs: Iterable[str],
        *,
        convert: Background | None = None,
        keep_reconstructions: bool = False,
        on_done: Callable[[int], None] | None = None,
    ) -> FileAttribution:
        """Attribute image files, folders and glob patterns; unreadable inputs become ``errors``, not exceptions.

        ``convert="white"|"black"`` reads greyscale, palette and alpha images as RGB on that background (the
        conversion is recorded in each result's ``input``); by default they are refused.
        """
        read = read_images(list(specs), self.reader, convert=convert)
        return attribute_read(self, read, keep_reconstructions=keep_reconstructions, on_done=on_done)
