"""What gpu_check.sh runs on: the GPU, driver, torch, cuda-python, NVRTC, TensorRT and ONNX Runtime.

    python benchmarks/gpu_env.py OUT.json     # writes the description; exits 1 when torch sees no CUDA GPU
    python benchmarks/gpu_env.py OUT.json --allow-cpu   # the same, but a CPU-only machine is described, not refused
    python benchmarks/gpu_env.py --missing    # prints the pip names of genorigin's missing dependencies

Only the standard library at module level, so it runs (and says what is wrong) in any Python.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import platform
import sys
from pathlib import Path
from typing import Any

# module → pip name, for what genorigin and its GPU tests import (torch is never installed by the check)
NEEDED = {"numpy": "numpy", "scipy": "scipy", "PIL": "pillow", "tqdm": "tqdm", "matplotlib": "matplotlib",
          "onnx": "onnx", "onnxscript": "onnxscript", "pytest": "pytest", "packaging": "packaging"}  # fmt: skip


def missing() -> list[str]:
    out = []
    for module, dist in NEEDED.items():
        try:
            importlib.import_module(module)
        except ImportError:
            out.append(dist)
    return out


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _optional(probe: Any) -> Any:
    try:
        return probe()
    except Exception as e:  # an optional part: say why it is unavailable
        return f"unavailable: {type(e).__name__}: {e}"[:300]


def describe(allow_cpu: bool = False) -> dict[str, Any]:
    """The machine; raises SystemExit with the reason when torch sees no CUDA GPU (unless ``allow_cpu``)."""
    try:
        import torch
    except ImportError as e:
        raise SystemExit(f"torch is not importable ({e})") from None
    if not torch.cuda.is_available():
        why = f"torch {torch.__version__} (CUDA build: {torch.version.cuda}) sees no CUDA GPU"
        if not allow_cpu:
            raise SystemExit(why)
        return {"gpu": None, "why": why, "torch": torch.__version__, "python": platform.python_version()}
    major, minor = torch.cuda.get_device_capability(0)

    def driver() -> str:
        from cuda.bindings import driver as drv

        drv.cuInit(0)
        _, v = drv.cuDriverGetVersion()
        return f"CUDA {v // 1000}.{v % 1000 // 10}"

    def nvrtc() -> str:
        from cuda.bindings import nvrtc as rtc

        _, major, minor = rtc.nvrtcVersion()
        return f"{major}.{minor}"

    def onnxruntime() -> list[str]:
        import onnxruntime as ort

        return [ort.__version__, *ort.get_available_providers()]

    def tensorrt() -> str:
        import tensorrt as trt

        return str(trt.__version__)

    return {
        "gpu": torch.cuda.get_device_name(0),
        "compute_capability": f"{major}.{minor}",
        "gpus": torch.cuda.device_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "driver": _optional(driver),
        "cuda_python": _version("cuda-python") or _version("cuda-bindings"),
        "nvrtc": _optional(nvrtc),
        "tensorrt": _optional(tensorrt),
        "onnxruntime": _optional(onnxruntime),
        "python": platform.python_version(),
    }


def main(argv: list[str]) -> int:
    if argv == ["--missing"]:
        print(" ".join(missing()))
        return 0
    allow_cpu = "--allow-cpu" in argv
    argv = [a for a in argv if a != "--allow-cpu"]
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    info = describe(allow_cpu)
    Path(argv[0]).write_text(json.dumps(info, indent=2))
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
