"""The production attribution service: continuous batching over the shared loop, behind an ASGI app on uvicorn.

Modules, one job each: ``loading`` (a model spec + calibration → a checked Attributor), ``batching`` (the
served model's worker: the loop's live queue feeding ``Attributor.stream``, ``runtime.loop.live``),
``admission`` (limits, deadlines, reservations, token), ``uploads`` (bodies and multipart), ``flow`` (an
attribution request's path, whatever the protocol), ``attribute`` (``/v1/attribute``), ``v2_codec`` and
``v2_api`` (the Open Inference Protocol's tensors and routes), ``responses`` (JSON), ``errors`` (the one error
shape), ``core`` (state, warm-up, readiness, draining), ``metrics`` (Prometheus), ``protocol`` (HTTP guards
below the app), ``app`` (routes), ``server`` (uvicorn, SIGTERM) and ``options`` (the flags, and the one
``ServiceConfig`` they ask for: ``genorigin serve`` and the Ray Serve replicas). ``docs/serving.md`` is the
user's guide.

The names below load lazily (module ``__getattr__``): ``genorigin serve --help`` declares its options from
``options`` without importing the app, torch or uvicorn.
"""

from __future__ import annotations

import importlib
from typing import Any

# name → the module it loads from
_NAMES = {
    "Limits": "admission",
    "create_app": "app",
    "Service": "core",
    "ServedModel": "loading",
    "ServiceLoadError": "loading",
    "load_served_model": "loading",
    "ServiceThread": "server",
    "serve": "server",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(importlib.import_module(f"genorigin.service.{_NAMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
