"""The service's worker: the loop's live worker (``runtime.loop.live``) for one served model."""

from __future__ import annotations

from collections.abc import Callable

from genorigin.runtime.decide.result import AttributionResult
from genorigin.runtime.loop.live import BatchingMode, Job, LiveWorker
from genorigin.service.loading import ServedModel


class ModelWorker(LiveWorker):
    """The live worker of one served model: its Attributor's loop, and the model it serves (``served``)."""

    def __init__(self, served: ServedModel, *, max_queue: int, mode: BatchingMode = "continuous",
                 max_wait_ms: float = 5.0,
                 on_done: Callable[[Job, AttributionResult | None], None] | None = None) -> None:  # fmt: skip
        super().__init__(served.attributor, served.name, max_queue=max_queue, mode=mode, max_wait_ms=max_wait_ms,
                         on_done=on_done)  # fmt: skip
        self.served = served
