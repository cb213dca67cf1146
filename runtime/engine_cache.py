"""Compatibility: ``genorigin.cli`` imports ``PRECISIONS`` and ``parse_profile`` from here.

They live in ``runtime/gpu/trt_env.py`` and ``runtime/gpu/profiles.py``; the engine cache itself is
``runtime/gpu/engine_cache.py``. Remove once cli.py imports those modules.
"""

from genorigin.runtime.gpu.profiles import parse_profile
from genorigin.runtime.gpu.trt_env import PRECISIONS

__all__ = ["PRECISIONS", "parse_profile"]
