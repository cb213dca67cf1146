"""The package's layout holds: each room imports only the rooms below it (docs/architecture.md, "Rooms and
import directions"), no module imports itself back through others, and no module is over 400 lines.

Imports are read with ``ast`` from every module of the installed package (src/genorigin, export/, runtime/,
kernels/), at any depth: module level, inside functions (lazy imports) and under ``TYPE_CHECKING`` alike.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# package → folder (pyproject.toml's package-dir)
FOLDERS = {"genorigin": ROOT / "src/genorigin", "genorigin.export": ROOT / "export",
           "genorigin.runtime": ROOT / "runtime", "genorigin.kernels": ROOT / "kernels"}  # fmt: skip
MAX_LINES = 400

# src/genorigin's own modules: the shared base every room may use (reading images, files, threads, errors) …
BASE = {"genorigin", "genorigin.errors", "genorigin.files", "genorigin.facts", "genorigin.threads",
        "genorigin.decode", "genorigin.inputs", "genorigin.images", "genorigin.jpeg", "genorigin.progress",
        "genorigin.client"}  # fmt: skip
# … and the jobs the front ends share (resolve a model, build a method, run it, report)
JOBS = {"genorigin.workflow", "genorigin.models", "genorigin.choices", "genorigin.across", "genorigin.demo",
        "genorigin.report", "genorigin.tables", "genorigin.outputs", "genorigin.robustness_eval"}  # fmt: skip
# module-name prefix → room (the longest prefix wins)
ROOMS = {
    "genorigin.kernels": "kernels",
    "genorigin.export": "export",
    "genorigin.runtime": "runtime",
    "genorigin.runtime.loop": "loop",
    "genorigin.runtime.backends": "backends",
    "genorigin.runtime.decide": "decide",
    "genorigin.runtime.robust": "robust",
    "genorigin.runtime.methods": "methods",
    "genorigin.service": "service",
    "genorigin.scale": "scale",
    "genorigin.scale.serve": "scale.serve",
    "genorigin.commands": "commands",
    "genorigin.cli": "commands",
    "genorigin.__main__": "commands",
    **dict.fromkeys(BASE, "base"),
    **dict.fromkeys(JOBS, "jobs"),
}
RUNTIME = {"runtime", "loop", "backends", "decide", "robust", "methods"}
# room → the rooms it may import besides itself (docs/architecture.md says why, room by room)
MAY_IMPORT = {
    "base": set(),
    "kernels": {"base"},
    "export": {"kernels", "base"},
    "runtime": set(),  # runtime/__init__.py: a docstring
    "loop": {"export", "kernels", "base"},
    "backends": {"loop", "export", "kernels", "base"},
    "decide": {"loop", "base"},
    "robust": {"decide", "loop", "kernels", "base"},
    "methods": {"robust", "decide", "backends", "loop", "export", "kernels", "base"},
    "jobs": RUNTIME | {"export", "kernels", "base"},
    "service": {"jobs"} | RUNTIME | {"export", "kernels", "base"},
    "scale": {"jobs"} | RUNTIME | {"export", "kernels", "base"},  # Ray Data: never the HTTP service
    "scale.serve": {"scale", "service", "jobs"} | RUNTIME | {"export", "kernels", "base"},
    "commands": {"scale", "scale.serve", "service", "jobs"} | RUNTIME | {"export", "kernels", "base"},
}


def package_modules() -> dict[str, Path]:
    """Every module of the package, by its import name."""
    out: dict[str, Path] = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if package == "genorigin" and parts[0] in ("export", "runtime", "kernels"):
                continue  # not a folder of src/genorigin (a stray build copy would be)
            name = ".".join([package, *(parts[:-1] if parts[-1] == "__init__" else parts)])
            out[name] = path
    return out


MODULES = package_modules()


def imports_of(name: str, path: Path) -> set[str]:
    """The package's modules that ``name`` imports, anywhere in its source."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for target in targets:
            while target and target not in MODULES and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in MODULES and target != name:
                found.add(target)
    return found


GRAPH = {name: imports_of(name, path) for name, path in MODULES.items()}


def room(name: str) -> str | None:
    best = max((p for p in ROOMS if name == p or name.startswith(p + ".")), key=len, default=None)
    return None if best is None else ROOMS[best]


def test_every_module_is_in_a_room():
    assert [n for n in MODULES if room(n) is None] == [], "add it to BASE, JOBS or ROOMS (and say so in the docs)"
    assert set(MAY_IMPORT) == set(ROOMS.values())


def test_each_room_imports_only_the_rooms_below_it():
    wrong = [
        f"{name} ({room(name)}) imports {target} ({room(target)})"
        for name, targets in sorted(GRAPH.items())
        for target in sorted(targets)
        if room(target) != room(name) and room(target) not in MAY_IMPORT[room(name)]
    ]
    assert wrong == []


def test_no_import_cycle():
    """Depth-first search for a back edge; the cycle found is named module by module."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for target in sorted(GRAPH[name]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[name] = 2
        return None

    for name in sorted(GRAPH):
        if name not in state and (cycle := visit(name)):
            pytest.fail("import cycle: " + " → ".join(cycle))


def test_no_module_over_400_lines():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}, "split by job, not in halves (docs/architecture.md)"


def test_the_rooms_are_packages_the_wheel_carries():
    """pyproject.toml lists every sub-package: one left out is missing from the installed wheel."""
    tomllib = pytest.importorskip("tomllib")  # Python ≥ 3.11
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {name for name, path in MODULES.items() if path.name == "__init__.py"}
    assert packages == listed


def test_the_settings_name_every_robust_family():
    """The loop's settings validate a robust mode by name without importing robust/; the names must agree."""
    from genorigin.runtime.loop.settings import ROBUST_MODES
    from genorigin.runtime.robust.transforms import ROBUST_FAMILIES

    assert tuple(ROBUST_FAMILIES) == ROBUST_MODES
