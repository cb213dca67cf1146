"""TensorRT here: is it installed and usable, which GPU is this, and which engine precisions can it build.

Precisions per TensorRT major version. TensorRT 10 builds weakly typed networks and picks reduced-precision
kernels when ``BuilderFlag.FP16``/``BF16`` allow them. TensorRT 11 removed those flags (networks are strongly
typed: each tensor's type comes from the graph), so there fp16/bf16 engines need a graph whose tensors are
already fp16/bf16, which genorigin's exporter does not write. ``PRECISIONS_BY_MAJOR`` says what each major
offers; ``tests/test_tensorrt_api_surface.py`` checks it against the BuilderFlag names compiled into the
pinned TensorRT 10 and 11 Python bindings, and every ``trt.`` name this package uses against both.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "tf32", "fp16", "bf16")  # every precision an engine key may record
PRECISION_FLAGS = {"tf32": "TF32", "fp16": "FP16", "bf16": "BF16"}  # the BuilderFlag each one sets (fp32: none)
PRECISIONS_BY_MAJOR: dict[int, tuple[str, ...]] = {
    10: ("fp32", "tf32", "fp16", "bf16"),
    11: ("fp32", "tf32"),  # strongly typed only: BuilderFlag.FP16/BF16/INT8 are gone
}


class TensorRTUnavailableError(RuntimeError):
    """tensorrt (≥ 10) or a CUDA GPU is missing: engines cannot be built or run here."""


class EngineBuildError(RuntimeError):
    """TensorRT rejected a graph or a build configuration; the message carries its log."""


def major_of(version: str) -> int:
    return int(str(version).split(".")[0])


def precisions_for(version: str) -> tuple[str, ...]:
    """Engine precisions TensorRT ``version`` can build (a newer major than known: the newest known's)."""
    major = major_of(version)
    if major < min(PRECISIONS_BY_MAJOR):
        raise TensorRTUnavailableError(f"TensorRT {version} is too old; genorigin needs TensorRT ≥ 10")
    return PRECISIONS_BY_MAJOR[min(major, max(PRECISIONS_BY_MAJOR))]


def check_precision(precision: str, version: str | None = None) -> None:
    """ValueError when ``precision`` is unknown, or (given TensorRT's ``version``) cannot be built with it."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if version is None:
        return
    offered = precisions_for(version)
    if precision not in offered:
        raise ValueError(
            f"TensorRT {version} builds {', '.join(offered)} engines only: it has no BuilderFlag for {precision} "
            "(strongly typed networks); use precision='fp32' or 'tf32', or TensorRT 10 "
            "(pip install 'tensorrt-cu12<11' / 'tensorrt-cu13<11') for fp16/bf16"
        )


def import_tensorrt() -> Any:
    """The tensorrt module (≥ 10), or TensorRTUnavailableError saying what is missing."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise TensorRTUnavailableError(
            f"TensorRT is not installed ({e}); pip install 'genorigin[gpu-cu12]' or 'genorigin[gpu-cu13]' on a "
            "CUDA machine"
        ) from e
    except Exception as e:  # the wheel imports but cannot load libnvinfer (no driver / GPU)
        raise TensorRTUnavailableError(f"TensorRT could not be loaded ({type(e).__name__}: {e})") from e
    precisions_for(str(trt.__version__))  # refuses < 10
    return trt


def device_identity(device: int = 0) -> tuple[str, str]:
    """(compute capability 'major.minor', device name) of a CUDA device, via torch."""
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailableError("no CUDA GPU visible to torch; TensorRT engines need one")
    major, minor = torch.cuda.get_device_capability(device)
    return f"{major}.{minor}", torch.cuda.get_device_name(device)


def tensorrt_available() -> tuple[bool, str]:
    """(True, version) when TensorRT and a CUDA GPU are usable here, else (False, why): tests skip on it."""
    try:
        trt = import_tensorrt()
        device_identity(0)
    except (TensorRTUnavailableError, RuntimeError) as e:
        return False, str(e)
    return True, str(trt.__version__)


class TrtLogger:
    """A TensorRT logger that keeps errors for the exception message and forwards the rest to logging."""

    def __init__(self, trt: Any) -> None:
        outer = self
        self.errors: list[str] = []

        class Impl(trt.ILogger):  # type: ignore[misc, name-defined]
            def __init__(self) -> None:
                trt.ILogger.__init__(self)

            def log(self, severity: Any, msg: str) -> None:
                if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                    outer.errors.append(msg)
                    log.error("TensorRT: %s", msg)
                elif severity == trt.ILogger.Severity.WARNING:
                    log.warning("TensorRT: %s", msg)
                else:
                    log.debug("TensorRT: %s", msg)

        self.impl = Impl()
