"""Compile the CUDA kernels: NVRTC at run time (cached per GPU architecture), nvcc command lines for CI.

Run time uses NVRTC through cuda-python (``cuda.bindings.nvrtc``) rather than nvcc or pycuda: NVRTC ships as
a pip wheel (``nvidia-cuda-nvrtc``) and needs no CUDA toolkit, compiler or headers on the user's machine, and
it compiles without a GPU, so CI can prove the sources build. The kernels include only ``common.cuh``,
which is handed to NVRTC as an in-memory header. cuda-python is imported lazily: this module imports on
machines without it.

Cache: ``$GENORIGIN_KERNEL_CACHE`` if set, else genorigin's cache (``genorigin.files.cache_dir("kernels")``:
``$GENORIGIN_CACHE/kernels``, ``$XDG_CACHE_HOME/genorigin/kernels`` or ``~/.cache/genorigin/kernels``), one
folder per SHA-256 of (source, headers, options, NVRTC version), one file per target: ``sm_90.cubin`` or, only
for a GPU whose SM major NVRTC does not know, ``compute_90.ptx``. Cubins need no driver JIT, so a driver older
than NVRTC's CUDA version can still load them; PTX needs a driver that supports NVRTC's CUDA version.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from genorigin import files

KERNEL_DIR = Path(__file__).resolve().parent
HEADERS: tuple[str, ...] = ("common.cuh",)
Target = Literal["cubin", "ptx"]

# Every extern "C" kernel each source defines; launch.py looks kernels up by these names and the compile
# tests check each one is present in the compiled output.
LOSS_DTYPES: tuple[tuple[str, str, str], ...] = (
    ("f32", "f32", "f32"),
    ("f16", "f32", "f32"),
    ("f16", "f16", "f32"),
    ("f16", "f32", "f16"),
    ("f16", "f16", "f16"),
    ("bf16", "f32", "f32"),
    ("bf16", "bf16", "f32"),
    ("bf16", "f32", "bf16"),
    ("bf16", "bf16", "bf16"),
)
KERNELS: dict[str, tuple[str, ...]] = {
    "loss.cu": (*(f"genorigin_loss_{y}_{x}_{g}" for y, x, g in LOSS_DTYPES), "genorigin_loss_finalize"),
    "adam.cu": ("genorigin_adam", "genorigin_adam_best_loss"),
}
SOURCES: tuple[str, ...] = tuple(KERNELS)

# Same options for NVRTC and nvcc. No fast math: the kernels rely on IEEE sqrt/div and explicit _rn ops.
COMMON_OPTIONS: tuple[str, ...] = ("-std=c++17", "--fmad=true")
CI_ARCHS: tuple[int, ...] = (80, 90)


class CompileError(RuntimeError):
    """NVRTC or nvcc rejected a kernel source; the message carries the compiler log."""


class NvrtcUnavailableError(RuntimeError):
    """cuda-python or the NVRTC shared library is missing."""


def source_text(name: str) -> str:
    return (KERNEL_DIR / name).read_text(encoding="utf-8")


def header_texts() -> dict[str, str]:
    return {h: source_text(h) for h in HEADERS}


# ---------------------------------------------------------------- NVRTC


CUDA_PYTHON_MIN = (12, 6, 1)  # the first cuda-python with the cuda.bindings modules this package imports


def _dist_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _release(version: str) -> tuple[int, ...]:
    parts = []
    for p in version.split(".")[:3]:
        digits = "".join(c for c in p if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def cuda_python_problem(error: ImportError) -> str:
    """Why ``cuda.bindings`` did not import, naming the installed cuda-python when it is too old for it."""
    found = {d: v for d in ("cuda-python", "cuda-bindings") if (v := _dist_version(d))}
    fix = "pip install 'genorigin[gpu-cu12]' or 'genorigin[gpu-cu13]' (the CUDA major of your driver)"
    floor = ".".join(map(str, CUDA_PYTHON_MIN))
    if found and all(_release(v) < CUDA_PYTHON_MIN for v in found.values()):
        have = ", ".join(f"{d} {v}" for d, v in found.items())
        return f"{have} predates cuda.bindings (cuda-python >= {floor} has it); {fix}"
    return f"cuda-python (>= {floor}) is not installed or broken ({error}); {fix}"


def _nvrtc() -> Any:
    """Import cuda.bindings.nvrtc and load libnvrtc, or say what is missing (lazy: optional dependency)."""
    try:
        from cuda.bindings import nvrtc
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise NvrtcUnavailableError(cuda_python_problem(e)) from e
    try:
        err, _major, _minor = nvrtc.nvrtcVersion()
    except Exception as e:  # cuda-pathfinder raises when libnvrtc.so is nowhere to be found
        raise NvrtcUnavailableError(
            f"the NVRTC library could not be loaded ({type(e).__name__}: {e}); install nvidia-cuda-nvrtc "
            "(CUDA 13) or nvidia-cuda-nvrtc-cu12 (CUDA 12): the [gpu-cu13] / [gpu-cu12] extras do"
        ) from e
    _check_nvrtc(nvrtc, err, "nvrtcVersion")
    return nvrtc


def nvrtc_available() -> tuple[bool, str]:
    """(True, version) when NVRTC can compile here, else (False, why): tests skip on the reason."""
    try:
        return True, ".".join(map(str, nvrtc_version()))
    except NvrtcUnavailableError as e:
        return False, str(e)


def nvrtc_version() -> tuple[int, int]:
    nvrtc = _nvrtc()
    err, major, minor = nvrtc.nvrtcVersion()
    _check_nvrtc(nvrtc, err, "nvrtcVersion")
    return int(major), int(minor)


def nvrtc_supported_archs() -> tuple[int, ...]:
    """SM versions this NVRTC can emit cubins for (e.g. 75, 80, 86, 89, 90, ...)."""
    nvrtc = _nvrtc()
    err, archs = nvrtc.nvrtcGetSupportedArchs()
    _check_nvrtc(nvrtc, err, "nvrtcGetSupportedArchs")
    return tuple(int(a) for a in archs)


def _check_nvrtc(nvrtc: Any, err: Any, what: str) -> None:
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        _, msg = nvrtc.nvrtcGetErrorString(err)
        raise CompileError(f"{what} failed: {msg.decode() if isinstance(msg, bytes) else msg}")


def nvrtc_options(arch: int, target: Target) -> tuple[str, ...]:
    prefix = "sm" if target == "cubin" else "compute"
    return (f"--gpu-architecture={prefix}_{arch}", *COMMON_OPTIONS)


def compile_nvrtc(source: str, arch: int, target: Target = "cubin") -> bytes:
    """Compile kernels/<source> for one architecture; returns the cubin, or NUL-terminated PTX."""
    return _compile_nvrtc(source, arch, target, ())[0]


def _program_log(nvrtc: Any, prog: Any) -> str:
    """NVRTC's log ('' when empty). NVRTC writes into the bytes object it is given, and CPython shares every
    1-byte bytes object, so an empty log (just its NUL) must not be fetched into ``b" " * 1``."""
    _, size = nvrtc.nvrtcGetProgramLogSize(prog)
    if size <= 1:
        return ""
    log = b" " * size
    nvrtc.nvrtcGetProgramLog(prog, log)
    return log.rstrip(b"\0").decode(errors="replace")


def _compile_nvrtc(source: str, arch: int, target: Target, extra: Sequence[str]) -> tuple[bytes, str]:
    """(image, compiler log) for one source, architecture and target, with ``extra`` NVRTC options."""
    nvrtc = _nvrtc()
    headers = header_texts()
    err, prog = nvrtc.nvrtcCreateProgram(
        source_text(source).encode(),
        source.encode(),
        len(headers),
        [t.encode() for t in headers.values()],
        [n.encode() for n in headers],
    )
    _check_nvrtc(nvrtc, err, "nvrtcCreateProgram")
    try:
        options = [o.encode() for o in (*nvrtc_options(arch, target), *extra)]
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(options), options)
        log = _program_log(nvrtc, prog)
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise CompileError(f"NVRTC failed to compile {source} for {target} arch {arch}:\n{log}")
        if target == "cubin":
            err, size = nvrtc.nvrtcGetCUBINSize(prog)
            _check_nvrtc(nvrtc, err, "nvrtcGetCUBINSize")
            image = b" " * size
            (err,) = nvrtc.nvrtcGetCUBIN(prog, image)
            _check_nvrtc(nvrtc, err, "nvrtcGetCUBIN")
        else:
            err, size = nvrtc.nvrtcGetPTXSize(prog)
            _check_nvrtc(nvrtc, err, "nvrtcGetPTXSize")
            image = b" " * size
            (err,) = nvrtc.nvrtcGetPTX(prog, image)
            _check_nvrtc(nvrtc, err, "nvrtcGetPTX")
            if not image.endswith(b"\0"):  # cuModuleLoadData needs NUL-terminated PTX
                image += b"\0"
        if not image.strip(b"\0 "):
            raise CompileError(f"NVRTC produced an empty {target} for {source} arch {arch}")
        return image, log
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


# ---------------------------------------------------------------- cache


def cache_dir() -> Path:
    """Where compiled kernels are kept: $GENORIGIN_KERNEL_CACHE, else genorigin's cache folder ``kernels``."""
    explicit = os.environ.get("GENORIGIN_KERNEL_CACHE")
    return Path(explicit) if explicit else files.cache_dir("kernels")


def cache_key(source: str, options: Sequence[str], compiler: str) -> str:
    """SHA-256 of everything that changes the output, so a stale binary is never loaded."""
    h = hashlib.sha256()
    for part in (source, source_text(source), *(f"{n}\n{t}" for n, t in header_texts().items())):
        h.update(part.encode())
        h.update(b"\0")
    h.update("\0".join(options).encode())
    h.update(compiler.encode())
    return h.hexdigest()


def cache_path(source: str, arch: int, target: Target) -> Path:
    """Cache file for one source, arch and target; the folder name hashes everything but the arch."""
    major, minor = nvrtc_version()
    key = cache_key(source, COMMON_OPTIONS, f"nvrtc {major}.{minor}")
    name = f"sm_{arch}.cubin" if target == "cubin" else f"compute_{arch}.ptx"
    return cache_dir() / f"{Path(source).stem}-{key[:24]}" / name


def load_or_compile(source: str, arch: int, target: Target = "cubin") -> tuple[bytes, bool]:
    """(image, from_cache): read the cached binary or compile it with NVRTC and store it atomically."""
    path = cache_path(source, arch, target)
    try:
        data = path.read_bytes()
        if data:
            return data, True
    except OSError:
        pass
    image = compile_nvrtc(source, arch, target)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        files.atomic_write_bytes(path, image)  # concurrent processes never read half a file
    except OSError:
        pass  # a read-only cache only costs a recompile next time
    return image, False


def choose_target(device_arch: int, supported: Sequence[int]) -> tuple[int, Target]:
    """Prefer a cubin: for the device's SM, else for the newest older SM of the same major (SASS runs on later
    minors of its major: sm_80 on sm_86/87/89). PTX for the newest older SM only when NVRTC knows no SM of
    the device's major; then the driver must JIT it (see ptx_driver_problem)."""
    if device_arch in supported:
        return device_arch, "cubin"
    same_major = [a for a in supported if a // 10 == device_arch // 10 and a < device_arch]
    if same_major:
        return max(same_major), "cubin"
    older = [a for a in supported if a <= device_arch]
    if not older:
        raise CompileError(f"this NVRTC supports SM {sorted(supported)}; the GPU is sm_{device_arch}, which is older")
    return max(older), "ptx"


def ptx_driver_problem(driver_version: int, nvrtc_version: tuple[int, int]) -> str | None:
    """Why a driver (``cuDriverGetVersion``: 12040 = CUDA 12.4) cannot JIT PTX from this NVRTC, or None.

    PTX carries its ISA version; a driver JIT-compiles only PTX from CUDA versions it supports, whatever the
    GPU. (Cubins, which genorigin prefers, need no JIT.)
    """
    need = nvrtc_version[0] * 1000 + nvrtc_version[1] * 10
    if driver_version >= need:
        return None
    have = f"{driver_version // 1000}.{driver_version % 1000 // 10}"
    want = f"{nvrtc_version[0]}.{nvrtc_version[1]}"
    return (
        f"the kernels are PTX from NVRTC {want}, and this driver supports CUDA {have}: PTX JIT needs a driver "
        f"for CUDA >= {want} (CUDA 13.x: driver branch r580 or newer). Upgrade the driver, or install the "
        f"NVRTC/cuda-python of the driver's CUDA major ('genorigin[gpu-cu{driver_version // 1000}]')"
    )


def ptxas_info(source: str, arch: int, compiler: Literal["nvrtc", "nvcc"] = "nvrtc") -> str:
    """ptxas's resource report (``-Xptxas -v``: registers, spills, shared memory per kernel) for a sm_<arch>
    cubin, from NVRTC (what runs) or nvcc (CI); the occupancy gate parses it."""
    if compiler == "nvrtc":
        return _compile_nvrtc(source, arch, "cubin", ("-Xptxas", "-v"))[1]
    exe = find_nvcc()
    if exe is None:
        raise CompileError("nvcc not found (PATH, $CUDA_HOME, /usr/local/cuda)")
    cmd = [*nvcc_command(source, arch, os.devnull, exe), "-Xptxas", "-v"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise CompileError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc.stdout + proc.stderr


# ---------------------------------------------------------------- nvcc (CI)


def find_nvcc() -> str | None:
    """nvcc on PATH, else under $CUDA_HOME / $CUDA_PATH / /usr/local/cuda."""
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return str(Path(root) / "bin" / "nvcc")
    return None


def nvcc_command(source: str | Path, arch: int, output: str | Path, nvcc: str = "nvcc") -> list[str]:
    """nvcc line that builds one source to a cubin for sm_<arch>; any warning is an error (CI gate)."""
    src = Path(source)
    if not src.is_absolute():
        src = KERNEL_DIR / src
    return [
        nvcc,
        "-cubin",
        f"-arch=sm_{arch}",
        *COMMON_OPTIONS,
        "--Werror",
        "all-warnings",
        "-I",
        str(KERNEL_DIR),
        "-o",
        str(output),
        str(src),
    ]


def compile_nvcc(source: str, arch: int, output: str | Path, nvcc: str | None = None) -> Path:
    """Run nvcc_command; raise CompileError with nvcc's output when it fails."""
    exe = nvcc or find_nvcc()
    if exe is None:
        raise CompileError("nvcc not found (PATH, $CUDA_HOME, /usr/local/cuda)")
    cmd = nvcc_command(source, arch, output, exe)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise CompileError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return Path(output)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI for CI and users: compile every kernel source with nvcc and/or NVRTC."""
    p = argparse.ArgumentParser(prog="python -m genorigin.kernels.build", description=main.__doc__)
    p.add_argument("--arch", type=int, nargs="+", default=list(CI_ARCHS), help="SM versions, e.g. 80 90")
    p.add_argument("--nvcc", action="store_true", help="compile with nvcc to cubins in --out")
    p.add_argument("--nvrtc", action="store_true", help="compile with NVRTC into the cache")
    p.add_argument("--out", type=Path, default=Path("build/kernels"), help="folder for nvcc cubins")
    args = p.parse_args(argv)
    if not (args.nvcc or args.nvrtc):
        args.nvcc = args.nvrtc = True
    for source in SOURCES:
        for arch in args.arch:
            if args.nvcc:
                args.out.mkdir(parents=True, exist_ok=True)
                out = compile_nvcc(source, arch, args.out / f"{Path(source).stem}.sm_{arch}.cubin")
                print(f"nvcc  {source} sm_{arch} -> {out}")
            if args.nvrtc:
                _, cached = load_or_compile(source, arch, "cubin")
                print(f"nvrtc {source} sm_{arch} -> {cache_path(source, arch, 'cubin')}{' (cached)' * cached}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
