"""TensorRT API surface (issue 15.4): every TensorRT name genorigin uses exists in the pinned TensorRT versions.

TensorRT cannot be installed here, but its Python bindings wheels download from PyPI and their compiled
module holds every class, method and enum-member name as a string (what ``strings`` prints). The wheels
pinned in ``.ci/tensorrt-bindings.txt`` (.ci/run downloads them into .ci/cache/tensorrt-bindings) are
checked against:
- every ``trt.`` name and every attribute used on a TensorRT object in the TensorRT modules (by AST);
- the precision table: a version offers fp16/bf16 exactly when its BuilderFlag has FP16/BF16 (TensorRT 11
  removed them), and TF32 (which fp32 clears) everywhere;
- docs/deployment.md's precision table.
Skips, saying why, only when a wheel is neither cached nor downloadable (GENORIGIN_REQUIRE_NETWORK_CHECKS=1,
as .ci/run sets, turns that into a failure).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import zipfile
from functools import cache
from pathlib import Path

import pytest
from genorigin.runtime.backends.gpu import trt_env

ROOT = Path(__file__).resolve().parents[1]
PINNED = [ln.strip() for ln in (ROOT / ".ci/tensorrt-bindings.txt").read_text().splitlines()
          if ln.strip() and not ln.startswith("#")]  # fmt: skip
CACHE = Path(os.environ.get("GENORIGIN_TRT_BINDINGS_DIR", ROOT / ".ci/cache/tensorrt-bindings"))
TRT_MODULES = ["trt_env.py", "trt_build.py", "trt_load.py", "tensorrt.py"]
# variables that hold TensorRT objects in those modules; attributes read on them (and on what their methods
# return) are TensorRT API
TRT_OBJECTS = {"builder", "network", "parser", "config", "profile", "tensor", "runtime", "engine", "ctx",
               "contexts"}  # fmt: skip
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _wheel(requirement: str) -> Path:
    name, version = requirement.split("==")
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    found = sorted(CACHE.glob(pattern))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(CACHE), requirement]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        found = sorted(CACHE.glob(pattern))
        if not found:
            why = f"cannot download {requirement} ({proc.stderr.strip()[-300:] or 'no wheel'})"
            if os.environ.get("GENORIGIN_REQUIRE_NETWORK_CHECKS"):
                pytest.fail(why)
            pytest.skip(why)
    return found[-1]


@cache
def _runs(requirement: str) -> tuple[str, ...]:
    """The printable strings of the bindings' compiled module, in file order (as ``strings`` prints them)."""
    with zipfile.ZipFile(_wheel(requirement)) as z:
        so = next(n for n in z.namelist() if re.search(r"tensorrt[^/]*\.so$", n))
        data = z.read(so)
    return tuple(r.decode() for r in re.findall(rb"[\x20-\x7e]{3,}", data))


def _has_name(runs: tuple[str, ...], name: str) -> bool:
    """A name is compiled in as its own string or as the tail of a longer one (the linker merges tails)."""
    return any(r.endswith(name) and IDENT.fullmatch(r) for r in runs)


def builder_flags(runs: tuple[str, ...]) -> set[str]:
    """BuilderFlag member names: pybind11 registers an enum's members one after another, so they are the
    upper-case names around GPU_FALLBACK (a member since TensorRT 8)."""
    i = runs.index("GPU_FALLBACK")
    return {r for r in runs[max(0, i - 8) : i + 40] if re.fullmatch(r"[A-Z][A-Z0-9_]*", r)}


def used_names() -> dict[str, set[str]]:
    """TensorRT names used by each TensorRT module: ``trt.X.Y`` chains and attributes on TensorRT objects."""
    out: dict[str, set[str]] = {}
    for module in TRT_MODULES:
        tree = ast.parse((ROOT / "runtime/backends/gpu" / module).read_text())
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                names |= _chain_names(node)
        out[module] = {n for n in names if not n.startswith("__")}
    return out


def _chain_names(node: ast.expr) -> set[str]:
    """Attributes of a chain like ``trt.ILogger.Severity.ERROR`` or ``config.get_timing_cache().serialize``
    that follow the ``trt`` module or a TensorRT object."""
    parts: list[str] = []
    while True:
        if isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        elif isinstance(node, (ast.Call, ast.Subscript)):
            node = node.func if isinstance(node, ast.Call) else node.value
        else:
            break
    root = node.id if isinstance(node, ast.Name) else ""
    chain = [root, *reversed(parts)]
    start = next((i for i, p in enumerate(chain) if p == "trt" or p in TRT_OBJECTS), None)
    return set() if start is None else set(chain[start + 1 :])


@pytest.mark.parametrize("requirement", PINNED)
def test_every_tensorrt_name_used_exists(requirement: str) -> None:
    runs = _runs(requirement)
    used = used_names()
    assert sum(map(len, used.values())) > 30, "the AST walk found too few TensorRT names: check TRT_OBJECTS"
    missing = {m: sorted(n for n in names if not _has_name(runs, n)) for m, names in used.items()}
    missing = {m: n for m, n in missing.items() if n}
    assert not missing, f"{requirement} has no {missing}"


@pytest.mark.parametrize("requirement", PINNED)
def test_precisions_follow_the_builder_flags(requirement: str) -> None:
    flags = builder_flags(_runs(requirement))
    assert {"DEBUG", "TF32"} <= flags, f"BuilderFlag not found where expected in {requirement}: {sorted(flags)}"
    can = ("fp32", *(p for p, flag in trt_env.PRECISION_FLAGS.items() if flag in flags))
    version = requirement.split("==")[1]
    assert trt_env.precisions_for(version) == can, f"{requirement}: BuilderFlag allows {can}"
    for precision in trt_env.PRECISIONS:
        if precision in can:
            trt_env.check_precision(precision, version)
        else:
            with pytest.raises(ValueError, match=f"no BuilderFlag for {precision}"):
                trt_env.check_precision(precision, version)


def test_docs_and_benchmark_state_the_same_precisions() -> None:
    docs = (ROOT / "docs/deployment.md").read_text()
    for major, precisions in trt_env.PRECISIONS_BY_MAJOR.items():
        row = f"| TensorRT {major}.x | {', '.join(precisions)} |"
        assert row in docs, f"docs/deployment.md lacks the row {row!r}"
    bench = (ROOT / "benchmarks/bench_latency.py").read_text()
    assert "choices=PRECISIONS" in bench and "from genorigin.runtime.backends.gpu.trt_env import PRECISIONS" in bench


def test_ast_walk_finds_known_calls() -> None:
    """The collector sees the calls that matter (so an empty result cannot pass the surface test)."""
    used = set().union(*used_names().values())
    expected = {"execute_async_v3", "set_optimization_profile_async", "set_tensor_address", "BuilderFlag", "TF32",
                "create_network", "parse_from_file", "deserialize_cuda_engine", "get_tensor_profile_shape",
                "serialize", "WORKSPACE", "INTERNAL_ERROR"}  # fmt: skip
    assert expected <= used, sorted(expected - used)
