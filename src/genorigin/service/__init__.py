"""The production attribution service: continuous batching over the shared loop, behind an ASGI app on uvicorn.

Modules, one job each: ``loading`` (a model spec + calibration → a checked Attributor), ``batching`` (the
model's worker: a live bounded queue feeding ``Attributor.stream``), ``admission`` (limits, deadlines,
reservations, token), ``uploads`` (bodies and multipart), ``flow`` (an attribution request's path, whatever
the protocol), ``attribute`` (``/v1/attribute``), ``v2_codec`` and ``v2_api`` (the Open Inference Protocol's
tensors and routes), ``responses`` (JSON), ``errors`` (the one error shape), ``core`` (state, warm-up,
readiness, draining), ``metrics`` (Prometheus), ``protocol`` (HTTP guards below the app), ``app`` (routes) and
``server`` (uvicorn, SIGTERM). ``docs/serving.md`` is the user's guide.
"""

from genorigin.service.admission import Limits
from genorigin.service.app import create_app
from genorigin.service.core import Service
from genorigin.service.loading import ServedModel, ServiceLoadError, load_served_model
from genorigin.service.server import ServiceThread, serve

__all__ = ["Limits", "ServedModel", "Service", "ServiceLoadError", "ServiceThread", "create_app",
           "load_served_model", "serve"]  # fmt: skip
