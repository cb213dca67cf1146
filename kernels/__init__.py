"""genorigin.kernels: the loss and Adam step, as a NumPy/torch reference and as CUDA kernels.

The CUDA names load lazily (module ``__getattr__``): importing this package pulls in neither cuda-python,
torch, nor the launch/build modules, and ``python -m genorigin.kernels.build`` runs cleanly.
"""

from __future__ import annotations

import importlib
from typing import Any

from genorigin.kernels.reference import adam_step, loss_and_grad

# name → the module it loads from
_LAUNCH_NAMES = {
    "CudaKernels": "launch",
    "KernelUnavailableError": "launch",
    "get_kernels": "launch",
    "adam_step_cuda_": "torch_launch",
    "loss_and_grad_cuda": "torch_launch",
}

__all__ = ["adam_step", "loss_and_grad", *_LAUNCH_NAMES]


def __getattr__(name: str) -> Any:
    if name in _LAUNCH_NAMES:
        return getattr(importlib.import_module(f"genorigin.kernels.{_LAUNCH_NAMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
