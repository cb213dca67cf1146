"""Compatibility: ``genorigin.cli`` imports ``build_engines`` from here; it lives in ``runtime/gpu/trt_build.py``.

Remove once cli.py imports ``genorigin.runtime.gpu.trt_build`` (the GPU runtime moved to ``runtime/gpu/``).
"""

from genorigin.runtime.gpu.trt_build import build_engines

__all__ = ["build_engines"]
