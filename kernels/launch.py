"""Launch the CUDA loss and Adam kernels on raw device pointers (TensorRT runtime; torch: ``torch_launch``).

``CudaKernels`` owns one device: it retains the device's primary context (the one torch and TensorRT use,
so pointers from either are valid), loads the NVRTC-compiled modules (see build.py) and launches with the
driver API on the stream it is given. Launch plans come from plan.py (pure, tested on CPU); grids are sized
from the driver's occupancy figure for each kernel. cuda-python and torch are imported lazily: this module
imports on a machine with neither GPU nor cuda-python.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
from genorigin.kernels import build
from genorigin.kernels.plan import (
    ADAM_BLOCK,
    LOSS_BLOCK,
    STEP_KINDS,
    AdamPlan,
    LossPlan,
    PackedParams,
    adam_params,
    block_size,
    loss_kernel_name,
    loss_params,
    plan_adam,
    plan_loss,
    planned_blocks_per_sm,
)

log = logging.getLogger(__name__)


class KernelUnavailableError(RuntimeError):
    """cuda-python, NVRTC, the CUDA driver or a GPU is missing: the CUDA kernels cannot run here."""


class CudaError(RuntimeError):
    """A CUDA driver call failed."""


def _driver() -> Any:
    try:
        from cuda.bindings import driver
    except ImportError as e:
        raise KernelUnavailableError(build.cuda_python_problem(e)) from e
    return driver


def _check(result: Any, what: str = "CUDA driver call") -> Any:
    """Unpack cuda-python's (CUresult, *values) tuples; raise CudaError on failure."""
    driver = _driver()
    err, *rest = result if isinstance(result, tuple) else (result,)
    if err != driver.CUresult.CUDA_SUCCESS:
        _, name = driver.cuGetErrorName(err)
        _, desc = driver.cuGetErrorString(err)
        dec = [s.decode() if isinstance(s, bytes) else str(s) for s in (name, desc)]
        raise CudaError(f"{what}: {dec[0]} ({dec[1]})")
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else tuple(rest)


def _stream_handle(stream: Any) -> int:
    """int handle of a stream given as int, CUstream, torch.cuda.Stream (``cuda_stream``) or None (0)."""
    if stream is None:
        return 0
    if hasattr(stream, "cuda_stream"):
        return int(stream.cuda_stream)
    return int(stream)


class CudaKernels:
    """The loss and Adam kernels loaded on one GPU; launches take raw device pointers and a stream."""

    # Blocks of each kernel that fit on one SM at once: the driver's figure after __init__; the compile-time
    # assumption (plan.py, checked by the occupancy gate) for subclasses that skip __init__ (the CPU harness).
    resident: ClassVar[Mapping[str, int]] = MappingProxyType({})

    def __init__(self, device: int = 0) -> None:
        driver = _driver()
        try:
            _check(driver.cuInit(0), "cuInit")
        except KernelUnavailableError:
            raise
        except CudaError as e:
            raise KernelUnavailableError(f"no usable CUDA GPU: {e}") from e
        except Exception as e:  # cuda-pathfinder raises when libcuda.so (the driver) is absent
            raise KernelUnavailableError(f"the CUDA driver could not be loaded: {e}") from e
        self._driver = driver
        self.device = device
        self._dev = _check(driver.cuDeviceGet(device), "cuDeviceGet")
        self._ctx = _check(driver.cuDevicePrimaryCtxRetain(self._dev), "cuDevicePrimaryCtxRetain")
        self._activate()
        major, minor = self.attribute("COMPUTE_CAPABILITY_MAJOR"), self.attribute("COMPUTE_CAPABILITY_MINOR")
        self.arch = major * 10 + minor
        self.sm_count = self.attribute("MULTIPROCESSOR_COUNT")
        try:
            target_arch, target = build.choose_target(self.arch, build.nvrtc_supported_archs())
            nvrtc = build.nvrtc_version()
        except build.NvrtcUnavailableError as e:
            raise KernelUnavailableError(str(e)) from e
        self.target = f"{'sm' if target == 'cubin' else 'compute'}_{target_arch}"
        self.driver_version = int(_check(driver.cuDriverGetVersion(), "cuDriverGetVersion"))
        if target == "ptx":  # only when NVRTC knows no SM of this GPU's major: the driver must JIT the PTX
            problem = build.ptx_driver_problem(self.driver_version, nvrtc)
            if problem is not None:
                raise KernelUnavailableError(f"sm_{self.arch}: {problem}")
            log.warning("NVRTC %s does not know sm_%d; loading PTX for %s (JIT by the driver)",
                        ".".join(map(str, nvrtc)), self.arch, self.target)  # fmt: skip
        self._modules: list[Any] = []
        self._functions: dict[str, Any] = {}
        for source, names in build.KERNELS.items():
            image, _ = build.load_or_compile(source, target_arch, target)
            try:
                module = _check(driver.cuModuleLoadData(image), f"cuModuleLoadData({source}, {self.target})")
            except CudaError as e:
                _, version = driver.cuDriverGetVersion()
                raise CudaError(
                    f"{e}; the driver supports CUDA {version // 1000}.{version % 1000 // 10} and NVRTC is "
                    f"{'.'.join(map(str, build.nvrtc_version()))}: install the NVRTC / cuda-python major "
                    "matching the driver"
                ) from e
            self._modules.append(module)
            for name in names:
                self._functions[name] = _check(driver.cuModuleGetFunction(module, name.encode()), name)
        self.resident = MappingProxyType({name: self._occupancy(name) for name in self._functions})

    def _occupancy(self, name: str) -> int:
        occ = self._driver.cuOccupancyMaxActiveBlocksPerMultiprocessor(self._functions[name], block_size(name), 0)
        return int(_check(occ, f"occupancy of {name}"))

    def blocks_per_sm(self, kernel: str) -> int:
        """Resident blocks per SM the grid of ``kernel`` is sized for."""
        return max(1, int(self.resident.get(kernel) or planned_blocks_per_sm(kernel) or 1))

    def attribute(self, name: str) -> int:
        """cuDeviceGetAttribute(CU_DEVICE_ATTRIBUTE_<name>) for this device."""
        attr = getattr(self._driver.CUdevice_attribute, f"CU_DEVICE_ATTRIBUTE_{name}")
        return int(_check(self._driver.cuDeviceGetAttribute(attr, self._dev), name))

    def _activate(self) -> None:
        """Bind the primary context to this thread (torch binds the same one, so this is harmless)."""
        _check(self._driver.cuCtxSetCurrent(self._ctx), "cuCtxSetCurrent")

    def _alloc_async(self, nbytes: int, stream: int) -> int:
        """Stream-ordered scratch memory (valid under CUDA graph capture too)."""
        d = self._driver
        return int(_check(d.cuMemAllocAsync(nbytes, d.CUstream(stream)), "cuMemAllocAsync"))

    def _free_async(self, ptr: int, stream: int) -> None:
        d = self._driver
        _check(d.cuMemFreeAsync(d.CUdeviceptr(ptr), d.CUstream(stream)), "cuMemFreeAsync")

    def _launch(self, name: str, grid: int, block: int, stream: int, params: PackedParams) -> None:
        _check(
            self._driver.cuLaunchKernel(
                self._functions[name], grid, 1, 1, block, 1, 1, 0,
                self._driver.CUstream(stream), params.address, 0,
            ),
            f"cuLaunchKernel({name})",
        )  # fmt: skip

    def loss_plan(self, n: int, count: int, **kw: Any) -> LossPlan:
        kernel = loss_kernel_name(kw.get("y_dtype", "float32"), kw.get("x_dtype", "float32"),
                                  kw.get("gy_dtype", "float32"))  # fmt: skip
        return plan_loss(n, count, sm_count=self.sm_count, blocks_per_sm=self.blocks_per_sm(kernel), **kw)

    def loss_workspace_bytes(self, n: int, count: int, **kw: Any) -> int:
        """Bytes of scratch a loss launch needs (0 when each sample fits one block); pass it as workspace."""
        return self.loss_plan(n, count, **kw).workspace_bytes if n else 0

    def loss(
        self,
        y_ptr: int,
        x_ptr: int,
        loss_ptr: int,
        gy_ptr: int,
        n: int,
        count: int,
        *,
        kind: str = "mse",
        weight_ptr: int = 0,
        scale: float = 1.0,
        y_dtype: str = "float32",
        x_dtype: str = "float32",
        gy_dtype: str = "float32",
        stream: Any = 0,
        workspace_ptr: int = 0,
        blocks_per_sample: int | None = None,
    ) -> LossPlan | None:
        """loss[n] and gy for N contiguous samples of ``count`` elements (reference.loss_and_grad).

        ``weight_ptr``: optional (N,) float32; ``loss_ptr``: (N,) float32 out; ``gy_ptr``: like y, gy_dtype.
        Without ``workspace_ptr`` a needed workspace is allocated stream-ordered (cuMemAllocAsync).
        """
        if n == 0:
            return None
        plan = self.loss_plan(
            n, count, kind=kind, y_dtype=y_dtype, x_dtype=x_dtype, gy_dtype=gy_dtype, ptrs=(y_ptr, x_ptr, gy_ptr),
            blocks_per_sample=blocks_per_sample,
        )  # fmt: skip
        self._activate()
        s = _stream_handle(stream)
        workspace, owned = int(workspace_ptr), False
        if plan.workspace_bytes and not workspace:
            workspace, owned = self._alloc_async(plan.workspace_bytes, s), True
        try:
            scale32 = float(np.float32(scale))
            params = loss_params(plan, y_ptr, x_ptr, gy_ptr, weight_ptr, loss_ptr, workspace, count, kind, scale32)
            self._launch(plan.kernel, plan.grid, plan.block, s, params)
            if plan.blocks_per_sample > 1:
                fin = PackedParams([
                    ctypes.c_void_p(workspace), ctypes.c_void_p(loss_ptr), ctypes.c_longlong(count),
                    ctypes.c_int(plan.blocks_per_sample),
                ])  # fmt: skip
                self._launch("genorigin_loss_finalize", n, LOSS_BLOCK, s, fin)
        finally:
            if owned:
                self._free_async(workspace, s)
        return plan

    def adam(
        self,
        z_ptr: int,
        m_ptr: int,
        v_ptr: int,
        grad_ptr: int,
        t_ptr: int,
        loss_ptr: int,
        best_loss_ptr: int,
        best_z_ptr: int,
        n: int,
        d: int,
        *,
        lr: float,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        clip: float | None = None,
        t_dtype: str = "float32",
        stream: Any = 0,
        blocks_per_sample: int | None = None,
    ) -> AdamPlan | None:
        """In-place Adam step plus best-so-far bookkeeping on N×D float32 arrays (reference.adam_step).

        ``t_ptr``: (N,) per-sample step count (after this step) of ``t_dtype``; loss/best_loss: (N,) float32.
        """
        if n == 0:
            return None
        if t_dtype not in STEP_KINDS:
            raise ValueError(f"t dtype must be one of {sorted(STEP_KINDS)}, got {t_dtype!r}")
        if clip is not None and not clip > 0:
            raise ValueError(f"clip must be positive or None, got {clip}")
        plan = plan_adam(
            n, d, sm_count=self.sm_count, blocks_per_sample=blocks_per_sample,
            blocks_per_sm=self.blocks_per_sm("genorigin_adam"),
        )  # fmt: skip
        self._activate()
        s = _stream_handle(stream)
        ptrs = (z_ptr, m_ptr, v_ptr, grad_ptr, t_ptr, loss_ptr, best_loss_ptr, best_z_ptr)
        params = adam_params(plan, ptrs, d, STEP_KINDS[t_dtype], lr, beta1, beta2, eps, clip)
        self._launch("genorigin_adam", plan.grid, plan.block, s, params)
        if not plan.fused:
            vp = ctypes.c_void_p
            best = PackedParams([vp(loss_ptr), vp(best_loss_ptr), ctypes.c_longlong(n)])
            self._launch("genorigin_adam_best_loss", plan.best_grid, ADAM_BLOCK, s, best)
        return plan

    def close(self) -> None:
        """Unload the modules and release the primary context (torch's own retain keeps it alive)."""
        if getattr(self, "_ctx", None) is None:
            return
        self._activate()
        for module in self._modules:
            self._driver.cuModuleUnload(module)
        self._modules.clear()
        self._functions.clear()
        self._driver.cuDevicePrimaryCtxRelease(self._dev)
        self._ctx = None


_KERNELS: dict[int, CudaKernels] = {}
_KERNELS_LOCK = threading.Lock()


def get_kernels(device: int = 0) -> CudaKernels:
    """The process-wide CudaKernels for a device, created (and compiled or loaded from cache) once."""
    with _KERNELS_LOCK:
        if device not in _KERNELS:
            _KERNELS[device] = CudaKernels(device)
        return _KERNELS[device]
