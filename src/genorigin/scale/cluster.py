"""Ray, imported only when asked for, connected once, and kept quiet on the command line.

Without the ``[ray]`` extra, ``--engine ray`` is one line naming it (exit 2), never a traceback; the base
install and ``genorigin --help`` never import Ray.
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import Any

from genorigin.errors import GenoriginError

EXTRA_HINT = "pip install 'genorigin[ray]'"


def require_ray() -> ModuleType:
    """The ``ray`` module, or a GenoriginError naming the extra."""
    try:
        import ray
        import ray.data
        import ray.serve
    except ImportError as exc:
        raise GenoriginError(f"--engine ray needs Ray Data and Ray Serve: {EXTRA_HINT} ({exc})") from exc
    return ray


def connect(address: str | None = None, *, quiet: bool = False, **init: Any) -> ModuleType:
    """Connect to the cluster at ``address`` (None: ``$RAY_ADDRESS``, else the latest ``ray start`` cluster
    on this machine, else a new local one; ``local``: always a new one), unless already connected.

    Ray's own progress bars and per-dataset log lines are switched off: the job prints one progress line.
    """
    ray = require_ray()
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
                     log_to_driver=not quiet, configure_logging=True, **init)  # fmt: skip
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise GenoriginError(f"cannot reach the Ray cluster at {address or 'auto'}: {exc}") from exc
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR if quiet else logging.WARNING)
    return ray
