"""The GPU install story: one CUDA major per extra (issue 15.7), a cuda-python with cuda.bindings (15.6).

- Each GPU extra's own requirements (not genorigin's base ones: torch stays whatever the user has) are
  resolved by pip against PyPI (``--dry-run --no-deps --report``, no download of the big wheels); every
  resolved package, and every CUDA library it declares, must belong to the extra's CUDA major. Needs the
  network: skips without it unless GENORIGIN_REQUIRE_NETWORK_CHECKS=1 (.ci/run sets it).
- cuda-python 12.0-12.6.0 has no ``cuda.bindings``; the extras must not allow it, and an old one must be named
  in the error, and ``kernels="auto"`` must warn when it falls back to torch ops.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tomllib
import torch
from genorigin.kernels import build, launch
from genorigin.runtime.backends.gpu.ops import KernelFallbackWarning, resolve_kernels
from packaging.requirements import Requirement
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
GPU_EXTRAS = {"gpu-cu12": 12, "gpu-cu13": 13}
CUDA_VERSIONED = {"cuda-python", "cuda-bindings", "nvidia-cuda-nvrtc", "nvidia-cuda-runtime"}  # version = CUDA's


def extra_requirements(extra: str) -> list[str]:
    """An extra's requirements, with ``genorigin[other]`` self-references expanded."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    out: list[str] = []
    for req in extras[extra]:
        r = Requirement(req)
        out += [x for e in sorted(r.extras) for x in extra_requirements(e)] if r.name == "genorigin" else [req]
    return out


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def cuda_majors(name: str, version: str | None, requires: list[str]) -> set[int]:
    """CUDA majors a package is built for: a -cuNN suffix, the version of a CUDA-versioned package, and the
    same for every requirement it declares (optional extras included: they name the CUDA libraries it needs)."""
    majors: set[int] = set()
    if m := re.search(r"-cu(\d+)$", _name(name)):
        majors.add(int(m.group(1)))
    elif _name(name) in CUDA_VERSIONED and version:
        majors.add(Version(version).major)
    for req in requires:
        r = Requirement(req)
        spec = next((s.version for s in r.specifier), None)
        if _name(r.name).startswith(("nvidia-", "tensorrt", "cuda-")):
            majors |= cuda_majors(r.name, spec, [])
    return majors


def resolve(requirements: list[str], tmp: Path) -> list[dict[str, Any]]:
    report = tmp / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps", "-q",
           "--report", str(report), *requirements]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0 or not report.is_file():
        why = f"pip could not resolve {requirements}: {proc.stderr.strip()[-400:]}"
        if os.environ.get("GENORIGIN_REQUIRE_NETWORK_CHECKS"):
            pytest.fail(why)
        pytest.skip(why)
    return [item["metadata"] for item in json.loads(report.read_text())["install"]]


@pytest.mark.slow
@pytest.mark.parametrize("extra", sorted(GPU_EXTRAS))
def test_gpu_extra_resolves_to_one_cuda_major(extra: str, tmp_path: Path) -> None:
    requirements = extra_requirements(extra)
    assert not any(Requirement(r).name == "torch" for r in requirements)  # torch stays the user's
    found = {}
    for meta in resolve(requirements, tmp_path):
        majors = cuda_majors(meta["name"], meta["version"], meta.get("requires_dist") or [])
        found[f"{meta['name']} {meta['version']}"] = majors
    unknown = [p for p, m in found.items() if not m]
    assert not unknown, f"cannot tell which CUDA major {unknown} are built for"
    assert all(m == {GPU_EXTRAS[extra]} for m in found.values()), f"{extra} mixes CUDA majors: {found}"
    assert extra_requirements("gpu") == extra_requirements("gpu-cu13")


def test_cuda_majors_classifier() -> None:
    """The classifier on metadata as PyPI serves it (and on the mixes the issue reported)."""
    assert cuda_majors("onnxruntime-gpu", "1.31.1", ['nvidia-cuda-runtime~=13.0; extra == "cuda"']) == {13}
    assert cuda_majors("onnxruntime-gpu", "1.26.0", ['nvidia-cudnn-cu12~=9.0; extra == "cudnn"']) == {12}
    assert cuda_majors("onnxruntime-gpu", "1.27.0", ['nvidia-cuda-runtime-cu13~=13.0; extra == "cuda"']) == {13}
    assert cuda_majors("tensorrt_cu13", "11.4.0", ["tensorrt_cu13_libs==11.4.0"]) == {13}
    assert cuda_majors("cuda-python", "12.9.10", ["cuda-bindings~=12.9.10"]) == {12}
    assert cuda_majors("nvidia-cuda-nvrtc", "13.5.37", []) == {13}
    assert cuda_majors("tensorrt", "11.4.0", []) == set()  # the meta package: which CUDA is not visible


@pytest.mark.parametrize("extra", ["gpu-cu12", "gpu-cu13", "dev"])
def test_cuda_python_floor_has_cuda_bindings(extra: str) -> None:
    reqs = [Requirement(r) for r in extra_requirements(extra) if Requirement(r).name == "cuda-python"]
    assert reqs, f"{extra} does not ask for cuda-python"
    floor = Version(".".join(map(str, build.CUDA_PYTHON_MIN)))
    for old in ("12.0.0", "12.5.0", "12.6.0"):
        assert not reqs[0].specifier.contains(old), f"{extra} allows cuda-python {old} (no cuda.bindings)"
    assert any(reqs[0].specifier.contains(v) for v in (str(floor), "12.9.10", "13.4.4"))


def test_old_cuda_python_is_named_and_auto_fallback_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    versions = {"cuda-python": "12.6.0"}
    monkeypatch.setattr(build, "_dist_version", versions.get)
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)  # as on cuda-python < 12.6.1
    with pytest.raises(launch.KernelUnavailableError, match=r"cuda-python 12\.6\.0 predates cuda\.bindings"):
        launch._driver()
    with pytest.raises(build.NvrtcUnavailableError, match=r"12\.6\.1"):
        build._nvrtc()

    def no_kernels(device: int = 0) -> Any:
        return launch._driver()

    monkeypatch.setattr(launch, "get_kernels", no_kernels)
    with pytest.warns(KernelFallbackWarning, match="predates cuda.bindings"):
        kernels, why = resolve_kernels("auto", torch.device("cuda", 0))
    assert kernels is None and why is not None and "12.6.0" in why
    with pytest.raises(launch.KernelUnavailableError):
        resolve_kernels("cuda", torch.device("cuda", 0))
    versions.clear()  # nothing installed at all: say so, with both extras
    with pytest.raises(launch.KernelUnavailableError, match=r"gpu-cu12.*gpu-cu13"):
        launch._driver()
