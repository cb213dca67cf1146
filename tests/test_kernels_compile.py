"""CI gate for the CUDA kernels on a machine without a GPU.

nvcc and NVRTC must compile every kernels/*.cu for sm_80 and sm_90 (a compile error fails here, not on a
user's GPU), every kernel name launch.py asks for must exist in the output, the NVRTC cache must work,
and the pure host-side launch logic (plans, parameter packing, validation) is checked without a driver.
Tests skip, with the reason, only when nvcc or cuda-python/NVRTC is absent.
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from genorigin.kernels import build, launch, plan, torch_launch

if TYPE_CHECKING:
    import torch

ARCHS = build.CI_ARCHS  # (80, 90)
CU_FILES = sorted(p.name for p in build.KERNEL_DIR.glob("*.cu"))

NVCC = build.find_nvcc()
NVRTC_OK, NVRTC_WHY = build.nvrtc_available()
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found (PATH, $CUDA_HOME, /usr/local/cuda)")
needs_nvrtc = pytest.mark.skipif(not NVRTC_OK, reason=f"NVRTC unavailable: {NVRTC_WHY}")


def test_every_cu_file_is_known_to_the_builder() -> None:
    """A new .cu must be registered in build.KERNELS, or it would never be compiled or launched."""
    assert sorted(build.SOURCES) == CU_FILES
    assert (build.KERNEL_DIR / "common.cuh").is_file()


@needs_nvcc
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", CU_FILES)
def test_nvcc_compiles_cubin(source: str, arch: int, tmp_path: Path) -> None:
    out = build.compile_nvcc(source, arch, tmp_path / f"{source}.sm_{arch}.cubin", NVCC)
    data = out.read_bytes()
    assert data[:4] == b"\x7fELF"
    for name in build.KERNELS[source]:
        assert name.encode() in data, f"{name} missing from the sm_{arch} cubin of {source}"


@needs_nvrtc
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", CU_FILES)
def test_nvrtc_compiles_ptx(source: str, arch: int) -> None:
    ptx = build.compile_nvrtc(source, arch, "ptx").decode()
    assert ptx.endswith("\0")
    assert re.search(rf"^\.target sm_{arch}\b", ptx, re.M)
    entries = set(re.findall(r"\.entry\s+(\w+)", ptx))
    assert set(build.KERNELS[source]) <= entries
    assert not re.search(r"\b(atom|red)\.", ptx), "no atomics: results must not depend on scheduling"


@needs_nvrtc
def test_compiling_leaves_python_shared_bytes_alone() -> None:
    """NVRTC writes into the bytes objects cuda-python hands it, and CPython shares every 1-byte bytes object:
    fetching an empty log (just its NUL) into ``b" " * 1`` once turned every b" " in the process into b"\0"."""
    build.compile_nvrtc("adam.cu", 90, "ptx")
    build.ptxas_info("adam.cu", 90)
    shared = bytes([32])  # built at run time: CPython hands out its cached 1-byte object (no constant folding)
    assert shared[0] == 32 and repr(shared) == "b' '", repr(shared)


@needs_nvrtc
def test_nvrtc_cubin_and_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """First call compiles and stores; the second reads the cache; another arch is another file."""
    monkeypatch.setenv("GENORIGIN_KERNEL_CACHE", str(tmp_path))
    image, cached = build.load_or_compile("adam.cu", 90, "cubin")
    assert not cached and image[:4] == b"\x7fELF"
    path = build.cache_path("adam.cu", 90, "cubin")
    assert path.is_relative_to(tmp_path) and path.name == "sm_90.cubin" and path.read_bytes() == image
    again, cached = build.load_or_compile("adam.cu", 90, "cubin")
    assert cached and again == image
    assert build.cache_path("adam.cu", 80, "cubin").parent == path.parent
    assert build.cache_path("loss.cu", 90, "cubin").parent != path.parent
    assert not list(tmp_path.rglob("*.tmp"))


def test_cache_dir_follows_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("GENORIGIN_KERNEL_CACHE", raising=False)
    monkeypatch.delenv("GENORIGIN_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert build.cache_dir() == tmp_path / "genorigin" / "kernels"
    monkeypatch.setenv("GENORIGIN_CACHE", str(tmp_path / "g"))  # the one genorigin cache moves kernels too
    assert build.cache_dir() == tmp_path / "g" / "kernels"
    monkeypatch.setenv("GENORIGIN_KERNEL_CACHE", str(tmp_path / "x"))
    assert build.cache_dir() == tmp_path / "x"


def test_cache_key_changes_with_options_and_compiler() -> None:
    k = build.cache_key("loss.cu", build.COMMON_OPTIONS, "nvrtc 13.0")
    assert k == build.cache_key("loss.cu", build.COMMON_OPTIONS, "nvrtc 13.0")
    assert k != build.cache_key("loss.cu", (*build.COMMON_OPTIONS, "-G"), "nvrtc 13.0")
    assert k != build.cache_key("loss.cu", build.COMMON_OPTIONS, "nvrtc 13.1")
    assert k != build.cache_key("adam.cu", build.COMMON_OPTIONS, "nvrtc 13.0")


def test_choose_target_prefers_cubins() -> None:
    """Issue 15.8: PTX needs a driver as new as NVRTC; a cubin does not. Cubins whenever SASS can run."""
    supported = (75, 80, 86, 89, 90)
    assert build.choose_target(90, supported) == (90, "cubin")
    assert build.choose_target(87, supported) == (86, "cubin")  # unknown minor: SASS of sm_86 runs on sm_87
    assert build.choose_target(88, (80, 90)) == (80, "cubin")
    assert build.choose_target(120, supported) == (90, "ptx")  # no SM of major 12 known: PTX, driver JITs it
    with pytest.raises(build.CompileError):
        build.choose_target(70, supported)


def test_ptx_needs_a_driver_as_new_as_nvrtc() -> None:
    assert build.ptx_driver_problem(13000, (13, 0)) is None
    assert build.ptx_driver_problem(13020, (13, 0)) is None
    why = build.ptx_driver_problem(12080, (13, 0))
    assert why is not None and "CUDA 12.8" in why and ">= 13.0" in why and "r580" in why and "gpu-cu12" in why
    assert build.ptx_driver_problem(12040, (12, 6)) is not None


@needs_nvrtc
@pytest.mark.parametrize("arch", ARCHS)
def test_runtime_compiles_cubins_for_ci_archs(arch: int) -> None:
    """What CudaKernels loads for sm_80/sm_90 with this NVRTC: an ELF cubin, never PTX."""
    target_arch, target = build.choose_target(arch, build.nvrtc_supported_archs())
    assert (target_arch, target) == (arch, "cubin")
    assert build.compile_nvrtc("adam.cu", arch, target)[:4] == b"\x7fELF"


def test_nvcc_command_shape() -> None:
    cmd = build.nvcc_command("loss.cu", 90, "/tmp/o.cubin", "nvcc")
    assert cmd[:3] == ["nvcc", "-cubin", "-arch=sm_90"]
    assert "--Werror" in cmd and str(build.KERNEL_DIR / "loss.cu") == cmd[-1]


def test_package_data_ships_the_sources() -> None:
    """pyproject's package-data must cover the .cu/.cuh files, or an installed wheel cannot compile."""
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert re.search(r'"genorigin\.kernels"\s*=\s*\[[^\]]*"\*\.cu"[^\]]*"\*\.cuh"', text)


def test_imports_without_cuda_python() -> None:
    """Importing the package, the builder and the launcher needs neither cuda-python nor a GPU."""
    code = (
        "import sys; sys.modules['cuda'] = None; sys.modules['cuda.bindings'] = None\n"
        "import genorigin.kernels as k\n"
        "from genorigin.kernels import build, launch, plan\n"
        "ok, why = build.nvrtc_available(); assert not ok and 'cuda-python' in why, why\n"
        "try:\n    k.CudaKernels()\nexcept k.KernelUnavailableError as e:\n    print('unavailable:', e)\n"
    )
    env = {**os.environ, "PYTHONWARNINGS": "error::DeprecationWarning:genorigin"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "unavailable:" in proc.stdout and "cuda-python" in proc.stdout


def test_no_driver_means_kernel_unavailable() -> None:
    """Without libcuda (a CPU machine) CudaKernels says so with KernelUnavailableError, never a raw crash."""
    try:
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is present here")
    except ImportError:
        pass
    with pytest.raises(launch.KernelUnavailableError):
        launch.CudaKernels(0)


# ---------------------------------------------------------------- host-side launch logic


def test_loss_kernel_names_exist() -> None:
    for y in plan.DTYPES:
        for x in ("float32", y):
            for g in ("float32", y):
                assert plan.loss_kernel_name(y, x, g) in build.KERNELS["loss.cu"]
    with pytest.raises(ValueError, match="x dtype"):
        plan.loss_kernel_name("float16", "bfloat16", "float32")
    with pytest.raises(ValueError, match="unsupported dtype"):
        plan.loss_kernel_name("float64", "float32", "float32")


def test_plan_loss_shapes() -> None:
    # small N, big images: many blocks per sample, a workspace, and the vector path when aligned
    p = plan.plan_loss(1, 3 * 1024 * 1024, sm_count=132, ptrs=(0, 4096, 8192))
    assert p.blocks_per_sample == 132 * plan.LOSS_BLOCKS_PER_SM and p.vec and p.workspace_bytes == 8 * p.grid
    assert p.c0 == np.float32(2.0 / (3 * 1024 * 1024))
    # many samples: one block each, no workspace
    p = plan.plan_loss(4096, 3 * 64 * 64, sm_count=132, kind="l1")
    assert p.blocks_per_sample == 1 and p.workspace_bytes == 0 and p.grid == 4096
    assert p.c0 == np.float32(1.0 / (3 * 64 * 64))
    # odd sizes / misaligned pointers fall back to the scalar path, never more blocks than work
    assert not plan.plan_loss(2, 3 * 255 * 255, sm_count=132).vec
    assert not plan.plan_loss(2, 1024, sm_count=132, ptrs=(0, 4, 0)).vec
    p = plan.plan_loss(1, 7, sm_count=132)
    assert p.blocks_per_sample == 1 and not p.vec
    p = plan.plan_loss(2, 3 * 255 * 255, sm_count=132, blocks_per_sample=3)
    assert p.blocks_per_sample == 3 and p.grid == 6
    # fp16 y: alignment is in elements (4 × 2 bytes)
    assert plan.plan_loss(2, 64, sm_count=1, y_dtype="float16", ptrs=(8, 16, 32)).vec
    with pytest.raises(ValueError):
        plan.plan_loss(0, 10, sm_count=1)
    with pytest.raises(ValueError, match="unknown loss kind"):
        plan.plan_loss(1, 10, sm_count=1, kind="huber")


def test_plan_is_deterministic_function_of_shape() -> None:
    a = plan.plan_loss(8, 3 * 512 * 512, sm_count=108, ptrs=(0, 0, 0))
    b = plan.plan_loss(8, 3 * 512 * 512, sm_count=108, ptrs=(256, 512, 1024))
    assert a == b


def test_plan_adam() -> None:
    p = plan.plan_adam(8, 512, sm_count=132)  # StyleGAN-size latents: one fused launch
    assert p.fused and p.blocks_per_sample == 1 and p.grid == 8 and p.best_grid == 0
    p = plan.plan_adam(32, 4 * 64 * 64, sm_count=132)  # diffusion latents: split + best_loss pass
    assert not p.fused and p.blocks_per_sample > 1 and p.best_grid == 1
    assert plan.plan_adam(2000, 4 * 64 * 64, sm_count=132).fused  # enough samples to fill the GPU


def test_packed_params_layout() -> None:
    """cuLaunchKernel reads argument i from *(params[i]); check what the driver would read."""
    lplan = plan.plan_loss(3, 1000, sm_count=4, kind="l1", ptrs=(0, 0, 0))
    packed = plan.loss_params(lplan, 0x1000, 0x2000, 0x3000, 0, 0x4000, 0x5000, 1000, "l1", 0.5)
    ptrs = (ctypes.c_void_p * 12).from_address(packed.address)
    read = [ctypes.c_void_p.from_address(ptrs[i]).value for i in range(6)]
    assert read == [0x1000, 0x2000, 0x3000, None, 0x4000, 0x5000]
    assert ctypes.c_longlong.from_address(ptrs[6]).value == 1000
    ints = [ctypes.c_int.from_address(ptrs[i]).value for i in (7, 8, 9)]
    assert ints == [lplan.blocks_per_sample, 1, int(lplan.vec)]
    assert ctypes.c_float.from_address(ptrs[10]).value == np.float32(1 / 1000)
    assert ctypes.c_float.from_address(ptrs[11]).value == 0.5

    aplan = plan.plan_adam(2, 16, sm_count=1)
    packed = plan.adam_params(aplan, range(1, 9), 16, 2, 0.01, 0.9, 0.999, 1e-8, None)
    ptrs = (ctypes.c_void_p * 18).from_address(packed.address)
    assert [ctypes.c_void_p.from_address(ptrs[i]).value for i in range(8)] == list(range(1, 9))
    assert ctypes.c_longlong.from_address(ptrs[8]).value == 16
    assert [ctypes.c_int.from_address(ptrs[i]).value for i in (9, 10)] == [1, 2]
    assert [ctypes.c_double.from_address(ptrs[i]).value for i in (11, 12, 13)] == [0.01, 0.9, 0.999]
    assert ctypes.c_float.from_address(ptrs[14]).value == np.float32(1e-8)
    assert [ctypes.c_int.from_address(ptrs[i]).value for i in (16, 17)] == [0, 1]


def test_kernel_signatures_match_packing() -> None:
    """The extern "C" parameter lists in the .cu files have as many parameters as the packers send."""

    def n_params(source: str, kernel: str) -> int:
        text = (build.KERNEL_DIR / source).read_text()
        m = re.search(rf"\b{re.escape(kernel)}\s*\(([^)]*)\)", text)
        assert m, kernel
        return len([p for p in m.group(1).split(",") if p.strip()])

    assert n_params("loss.cu", "genorigin_loss_##YN##_##XN##_##GN") == 12
    assert n_params("loss.cu", "genorigin_loss_finalize") == 4
    assert n_params("adam.cu", "genorigin_adam") == 18
    assert n_params("adam.cu", "genorigin_adam_best_loss") == 3


def test_torch_wrappers_validate_before_touching_the_gpu() -> None:
    torch = pytest.importorskip("torch")
    y = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="CUDA tensor"):
        torch_launch.loss_and_grad_cuda(y, y)
    z = torch.zeros(2, 8)
    with pytest.raises(ValueError, match="CUDA tensor"):
        torch_launch.adam_step_cuda_(z, z, z, z, torch.ones(2), torch.ones(2), torch.ones(2), z, lr=0.1)
    with pytest.raises(ValueError, match=r"torch\.Tensor"):
        torch_launch.loss_and_grad_cuda(np.zeros((2, 3)), y)  # type: ignore[arg-type]


@needs_nvrtc
def test_loss_kernel_uses_vector_loads() -> None:
    """Bandwidth guard: the fp32 loss kernel reads y and x with 16-byte read-only loads and writes gy 16 bytes
    at a time; a refactor that loses this would quietly halve throughput."""
    ptx = build.compile_nvrtc("loss.cu", 90, "ptx").decode()
    start = ptx.index(".entry genorigin_loss_f32_f32_f32")
    body = ptx[start : ptx.index(".entry", start + 10)]
    assert "ld.global.nc.v4.f32" in body and "st.global.v4.f32" in body


# ---------------------------------------------------------------- the real kernel code, run on the CPU
#
# Without a GPU, the kernels' index arithmetic, vector/scalar paths, block reductions, the partial+finalize
# pass and the fused/split best_loss logic still need checking. The harness below compiles loss.cu and
# adam.cu unchanged (only the two fp16 PTX conversions in common.cuh are swapped for _Float16) as host C++:
# one std::thread per CUDA thread, one block at a time, std::barrier for __syncthreads and warp shuffles.
# launch.py's own plans and packed parameters drive it, so the whole host path is exercised too.

EMU_HEADER = r"""
#include <barrier>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>
struct dim3_ { unsigned x = 0, y = 0, z = 0; };
thread_local dim3_ threadIdx, blockIdx;
dim3_ blockDim, gridDim;
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
static std::barrier<>* g_block_bar;
static std::barrier<>* g_warp_bar[32];
static double g_shfl[32][32];
inline void __syncthreads() { g_block_bar->arrive_and_wait(); }
inline double __shfl_down_sync(unsigned, double v, int off) {
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  g_shfl[w][lane] = v;
  g_warp_bar[w]->arrive_and_wait();
  double r = lane + off < 32 ? g_shfl[w][lane + off] : v;
  g_warp_bar[w]->arrive_and_wait();
  return r;
}
inline float __fmul_rn(float a, float b) { volatile float r = a * b; return r; }
inline float __fadd_rn(float a, float b) { volatile float r = a + b; return r; }
inline float __fsub_rn(float a, float b) { volatile float r = a - b; return r; }
inline float __fdiv_rn(float a, float b) { volatile float r = a / b; return r; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline float fabsf(float x) { return std::fabs(x); }
using std::pow; using std::sqrt;
"""

EMU_MAIN = r"""
#include "emu.h"
#include "loss.cu"
#include "adam.cu"
static void run_grid(int grid, int block, const std::function<void()>& body) {
  blockDim.x = block; gridDim.x = grid;
  for (int b = 0; b < grid; ++b) {
    std::barrier<> bb(block); g_block_bar = &bb;
    std::vector<std::unique_ptr<std::barrier<>>> wb;
    for (int w = 0; w < block / 32; ++w) {
      wb.push_back(std::make_unique<std::barrier<>>(32));
      g_warp_bar[w] = wb.back().get();
    }
    std::vector<std::thread> ts;
    for (int t = 0; t < block; ++t) ts.emplace_back([&, t, b] { threadIdx.x = t; blockIdx.x = b; body(); });
    for (auto& t : ts) t.join();
  }
}
#define P(i, T) (*(T*)p[i])
using LossFn = void (*)(const void*, const void*, void*, const float*, float*, double*, long long, int, int, int,
                        float, float);
#define E(n) {#n, n}
extern "C" int emu_launch(const char* name, int grid, int block, void** p) {
  static std::map<std::string, LossFn> loss = {
    E(genorigin_loss_f32_f32_f32), E(genorigin_loss_f16_f32_f32), E(genorigin_loss_f16_f16_f32),
    E(genorigin_loss_f16_f32_f16), E(genorigin_loss_f16_f16_f16), E(genorigin_loss_bf16_f32_f32),
    E(genorigin_loss_bf16_bf16_f32), E(genorigin_loss_bf16_f32_bf16), E(genorigin_loss_bf16_bf16_bf16)};
  std::string n(name);
  if (loss.count(n)) {
    auto f = loss.at(n);
    run_grid(grid, block, [&] { f(P(0, void*), P(1, void*), P(2, void*), P(3, float*), P(4, float*), P(5, double*),
                                  P(6, long long), P(7, int), P(8, int), P(9, int), P(10, float), P(11, float)); });
  } else if (n == "genorigin_loss_finalize") {
    run_grid(grid, block, [&] { genorigin_loss_finalize(P(0, double*), P(1, float*), P(2, long long), P(3, int)); });
  } else if (n == "genorigin_adam") {
    run_grid(grid, block, [&] { genorigin_adam(P(0, float*), P(1, float*), P(2, float*), P(3, float*), P(4, void*),
                                               P(5, float*), P(6, float*), P(7, float*), P(8, long long), P(9, int),
                                               P(10, int), P(11, double), P(12, double), P(13, double), P(14, float),
                                               P(15, float), P(16, int), P(17, int)); });
  } else if (n == "genorigin_adam_best_loss") {
    run_grid(grid, block, [&] { genorigin_adam_best_loss(P(0, float*), P(1, float*), P(2, long long)); });
  } else {
    return 1;
  }
  return 0;
}
"""

FP16_PTX = {
    'asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));': "_Float16 x; std::memcpy(&x, &h, 2); f = (float)x;",
    'asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));': "_Float16 x = (_Float16)f; std::memcpy(&h, &x, 2);",
}


def _cxx() -> str | None:
    import shutil

    return shutil.which("g++") or shutil.which("clang++")


@pytest.fixture(scope="module")
def emu_lib(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    cxx = _cxx()
    if cxx is None:
        pytest.skip("no host C++ compiler (g++/clang++) to run the kernels on the CPU")
    d = tmp_path_factory.mktemp("emu")
    probe = d / "probe.cpp"
    probe.write_text(
        "#include <barrier>\nint main() { std::barrier<> b(1); _Float16 h = 1.5f; return (int)(float)h - 1; }\n"
    )
    if subprocess.run([cxx, "-std=c++20", str(probe), "-o", str(d / "probe")], capture_output=True).returncode:
        pytest.skip(f"{cxx} lacks C++20 <barrier> or _Float16; cannot run the kernels on the CPU")
    common = (build.KERNEL_DIR / "common.cuh").read_text()
    for ptx, cpp in FP16_PTX.items():
        assert ptx in common, "common.cuh's fp16 conversion changed; update FP16_PTX"
        common = common.replace(ptx, cpp)
    (d / "common.cuh").write_text(common)
    for src in build.SOURCES:
        (d / src).write_text((build.KERNEL_DIR / src).read_text())
    (d / "emu.h").write_text(EMU_HEADER)
    (d / "main.cpp").write_text(EMU_MAIN)
    out = d / "libemu.so"
    cmd = [cxx, "-std=c++20", "-O1", "-ffp-contract=off", "-fPIC", "-shared", "-pthread", "-x", "c++"]
    proc = subprocess.run([*cmd, "-I", str(d), str(d / "main.cpp"), "-o", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lib = ctypes.CDLL(str(out))
    lib.emu_launch.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    return lib


class EmulatedKernels(launch.CudaKernels):
    """CudaKernels whose launches run the CPU build of the kernels on host pointers; no driver involved."""

    def __init__(self, lib: ctypes.CDLL, sm_count: int = 2) -> None:
        self.lib, self.sm_count, self.arch, self.target = lib, sm_count, 90, "cpu-emulation"
        self.launches: list[tuple[str, int]] = []
        self.buffers: dict[int, np.ndarray] = {}

    def _activate(self) -> None:
        pass

    def _alloc_async(self, nbytes: int, stream: int) -> int:
        buf = np.full(nbytes, 0xAB, np.uint8)  # garbage, as fresh device memory would hold
        self.buffers[buf.ctypes.data] = buf
        return buf.ctypes.data

    def _free_async(self, ptr: int, stream: int) -> None:
        del self.buffers[ptr]

    def _launch(self, name: str, grid: int, block: int, stream: int, params: plan.PackedParams) -> None:
        self.launches.append((name, grid))
        assert self.lib.emu_launch(name.encode(), grid, block, params.address) == 0, name


def _emu_loss(
    ks: EmulatedKernels,
    y: torch.Tensor,
    x: torch.Tensor,
    kind: str = "mse",
    weight: torch.Tensor | None = None,
    scale: float = 1.0,
    gy_dtype: torch.dtype | None = None,
    bps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    n, count = y.shape[0], y[0].numel()
    loss = torch.full((n,), float("nan"))
    gy = torch.full(y.shape, float("nan"), dtype=gy_dtype or torch.float32)
    ks.loss(
        y.data_ptr(), x.data_ptr(), loss.data_ptr(), gy.data_ptr(), n, count, kind=kind,
        weight_ptr=weight.data_ptr() if weight is not None else 0, scale=scale,
        y_dtype=str(y.dtype)[6:], x_dtype=str(x.dtype)[6:], gy_dtype=str(gy.dtype)[6:], blocks_per_sample=bps,
    )  # fmt: skip
    return loss, gy


@pytest.mark.parametrize("kind", ["mse", "l1"])
@pytest.mark.parametrize(
    "shape,bps",
    [((3, 3, 17, 19), 1), ((3, 3, 17, 19), 3), ((2, 3, 16, 16), 1), ((2, 3, 16, 16), 4), ((1, 1, 1, 1), None),
     ((5, 1, 1, 3), None), ((1, 3, 64, 64), None)],
    ids=str,
)  # fmt: skip
def test_emulated_loss_matches_reference(
    emu_lib: ctypes.CDLL, shape: tuple[int, ...], bps: int | None, kind: str
) -> None:
    torch = pytest.importorskip("torch")
    from genorigin.kernels import reference

    g = torch.Generator().manual_seed(sum(shape))
    y, x = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    weight = torch.rand(shape[0], generator=g) + 0.5
    ks = EmulatedKernels(emu_lib, sm_count=2)
    loss, gy = _emu_loss(ks, y, x, kind, weight, 0.25, bps=bps)
    ptrs = (y.data_ptr(), x.data_ptr(), gy.data_ptr())
    lplan = ks.loss_plan(shape[0], y[0].numel(), ptrs=ptrs, blocks_per_sample=bps)
    assert [n for n, _ in ks.launches] == [lplan.kernel] + ["genorigin_loss_finalize"] * (lplan.blocks_per_sample > 1)
    assert not ks.buffers  # the workspace was freed
    loss64, _ = reference.loss_and_grad(y.double().numpy(), x.double().numpy(), kind, weight.numpy(), 0.25)
    np.testing.assert_allclose(loss.numpy(), loss64, rtol=1e-6)
    _, gy32 = reference.loss_and_grad(y.numpy(), x.numpy(), kind, weight.numpy(), 0.25)
    np.testing.assert_array_equal(gy.numpy(), gy32)  # same two fp32 roundings: bit for bit
    again = _emu_loss(ks, y, x, kind, weight, 0.25, bps=bps)
    assert torch.equal(loss, again[0]) and torch.equal(gy, again[1])  # deterministic


@pytest.mark.parametrize("ydt", ["float16", "bfloat16"])
@pytest.mark.parametrize("same", [False, True], ids=["x32_gy32", "x_gy_same"])
@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (3, 1, 5, 7)], ids=str)
def test_emulated_half_precision(emu_lib: ctypes.CDLL, ydt: str, same: bool, shape: tuple[int, ...]) -> None:
    torch = pytest.importorskip("torch")
    from genorigin.kernels import reference

    dt = getattr(torch, ydt)
    g = torch.Generator().manual_seed(5)
    y = torch.randn(shape, generator=g).to(dt)
    x = torch.randn(shape, generator=g).to(dt if same else torch.float32)
    ks = EmulatedKernels(emu_lib)
    loss, gy = _emu_loss(ks, y, x, "mse", gy_dtype=dt if same else None, bps=2)
    loss64, _ = reference.loss_and_grad(y.double().numpy(), x.double().numpy(), "mse")
    np.testing.assert_allclose(loss.numpy(), loss64, rtol=1e-6)
    _, gy32 = reference.loss_and_grad(y.float(), x.float(), "mse")
    assert torch.equal(gy, gy32.to(gy.dtype))  # conversion in, fp32 math, round-to-nearest-even out


def test_emulated_misaligned_views_take_the_scalar_path(emu_lib: ctypes.CDLL) -> None:
    torch = pytest.importorskip("torch")
    from genorigin.kernels import reference

    base = torch.randn(2 * 2 * 3 * 8 * 8 + 1, generator=torch.Generator().manual_seed(2))
    y, x = base[1:385].view(2, 3, 8, 8), base[385:].view(2, 3, 8, 8)
    assert not EmulatedKernels(emu_lib).loss_plan(2, 192, ptrs=(y.data_ptr(), x.data_ptr(), 0)).vec
    loss, gy = _emu_loss(EmulatedKernels(emu_lib), y, x, bps=2)
    ref_loss, ref_gy = reference.loss_and_grad(y.numpy(), x.numpy())
    np.testing.assert_allclose(loss.numpy(), ref_loss, rtol=1e-6)
    np.testing.assert_array_equal(gy.numpy(), ref_gy)


@pytest.mark.parametrize("n,d,bps", [(4, 300, None), (3, 2048, 2), (2, 1, None)])
@pytest.mark.parametrize("t_dtype", ["int32", "int64", "float32", "float64"])
@pytest.mark.parametrize("clip", [None, 0.5])
def test_emulated_adam_matches_reference(
    emu_lib: ctypes.CDLL, n: int, d: int, bps: int | None, t_dtype: str, clip: float | None
) -> None:
    from genorigin.kernels import reference

    rng = np.random.default_rng(n * d)
    z = rng.standard_normal((n, d)).astype(np.float32)
    m = (rng.standard_normal((n, d)) * 0.1).astype(np.float32)
    v = (rng.random((n, d)) * 0.01).astype(np.float32)
    grad = (rng.standard_normal((n, d)) * np.logspace(-3, 2, d)).astype(np.float32)
    t = rng.integers(1, 500, n).astype(t_dtype)
    loss = rng.random(n).astype(np.float32)
    best_loss = np.where(np.arange(n) % 2 == 0, loss + 0.1, loss - 0.1).astype(np.float32)
    best_loss[-1] = loss[-1]  # equal: not an improvement
    best_z = np.full((n, d), -7.0, np.float32)
    hp = {"lr": 0.02, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "clip": clip}
    ref = reference.adam_step(z, m, v, grad, t, loss, best_loss, best_z, **hp)
    ks = EmulatedKernels(emu_lib)
    arrays = [z, m, v, grad, t, loss, best_loss, best_z]
    aplan = ks.adam(*(a.ctypes.data for a in arrays), n, d, t_dtype=t_dtype, blocks_per_sample=bps, **hp)
    assert aplan is not None
    assert [name for name, _ in ks.launches] == ["genorigin_adam"] + ["genorigin_adam_best_loss"] * (not aplan.fused)
    for name, got, want in zip(("z", "m", "v", "best_loss", "best_z"), (z, m, v, best_loss, best_z), ref):
        np.testing.assert_array_equal(got, want, err_msg=name)  # same op order, IEEE ops: bit for bit
