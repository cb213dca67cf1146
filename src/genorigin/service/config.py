"""What a service is built from, as plain picklable data: which models, their calibrations, and the knobs.

``genorigin serve`` turns its flags into one ``ServiceConfig`` and builds the ``Service`` in its own process;
with ``--engine ray`` every Ray Serve replica builds its own from the same config (``genorigin.scale.serve``),
so a replica serves exactly what the single process would. Paths are made absolute (``resolved``) before a
config leaves the process that parsed them: a replica's working folder is not the user's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genorigin.models import portable_spec
from genorigin.runtime.decide.result import DecisionRule
from genorigin.runtime.loop.live import BatchingMode
from genorigin.service.admission import Limits
from genorigin.service.core import Service
from genorigin.service.loading import ServedModel, load_served_model


@dataclass(frozen=True)
class ModelRequest:
    """One model to serve under ``name``: its spec, and optionally its calibration and encoder files."""

    name: str
    spec: str
    calibration: str | None = None
    encoder: str | None = None


@dataclass(frozen=True)
class ServiceConfig:
    """Everything ``Service`` needs besides the network: models, how they decide, batching and limits."""

    models: tuple[ModelRequest, ...]
    limits: Limits = field(default_factory=Limits)
    backend: str | None = None
    threads: int | None = None
    alpha: float | None = None
    rule: DecisionRule = "grubbs"
    max_batch: int | None = None
    schedule: Mapping[str, Any] = field(default_factory=dict)  # genorigin.service.loading.SCHEDULE_KEYS
    max_queue: int | None = None
    batching: BatchingMode = "continuous"
    max_wait_ms: float = 5.0

    def load(self) -> list[ServedModel]:
        """Each model loaded and checked as ``genorigin attribute`` would load it (ServiceLoadError: one line)."""
        return [load_served_model(m.spec, m.calibration, self.backend, self.threads, self.alpha, name=m.name,
                                  rule=self.rule, encoder=m.encoder, max_batch=self.max_batch,
                                  schedule=self.schedule) for m in self.models]  # fmt: skip

    def build(self) -> Service:
        return Service(self.load(), self.limits, max_queue=self.max_queue, batching=self.batching,
                       max_wait_ms=self.max_wait_ms)  # fmt: skip

    @property
    def capacity(self) -> int:
        """Jobs one model admits at once (batch + queue): the requests a process holds before answering 503.

        Without ``max_batch`` the calibration's batch size decides; this is then the schedule default's (32).
        """
        batch = self.max_batch or 32
        return batch + (self.max_queue if self.max_queue is not None else batch)

    def resolved(self) -> ServiceConfig:
        """The same config with every file path absolute (bundled names stay names)."""
        models = tuple(dataclasses.replace(m, spec=portable_spec(m.spec), calibration=_absolute(m.calibration),
                                           encoder=_absolute(m.encoder)) for m in self.models)  # fmt: skip
        return dataclasses.replace(self, models=models)


def _absolute(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())
