"""``genorigin --version`` and ``--help`` answer at once: the CLI module imports nothing heavy, no command's
``--help`` imports torch, ONNX or SciPy, an attribution imports only what its path needs, every command is
registered from one table, every option's help shows its default, and OpenMP waits passively."""

from __future__ import annotations

import ast
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from service_helpers import png, write_tiny_dcgan

from genorigin import __version__
from genorigin.cli import COMMANDS, build_parser, main

HEAVY = ("torch", "onnx", "onnxruntime", "scipy", "matplotlib", "numpy", "PIL", "tqdm")
PROBE = f"""
import sys
from genorigin.cli import main
for argv in (["--help"], ["--version"]):
    try:
        main(argv)
    except SystemExit:
        pass
print("LOADED", sorted(m for m in {HEAVY!r} if m in sys.modules))
"""


NOT_FOR_HELP = ("torch", "onnx", "onnxruntime", "onnxscript", "scipy", "matplotlib", "ray", "fastapi")
COMMAND_PROBE = """
import sys
from genorigin.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("LOADED", sorted(m for m in {heavy!r} if m in sys.modules))
"""


def _loaded(argv: list[str], cwd: Path | None = None) -> tuple[list[str], str]:
    """The heavy modules a fresh interpreter has loaded after ``genorigin *argv``, and its output."""
    probe = COMMAND_PROBE.format(heavy=NOT_FOR_HELP)
    done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=300, cwd=cwd)
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("LOADED "), done.stdout
    return ast.literal_eval(last.removeprefix("LOADED ")), done.stdout


@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_of_every_command_imports_no_torch_onnx_or_scipy(name):
    """``genorigin attribute --help`` among them: the options are declared from plain data (runtime/loop/settings.py,
    the method and backend registries); each command imports its work when it runs."""
    loaded, out = _loaded([name, "--help"])
    assert loaded == [] and "usage: genorigin" in out, loaded


def test_attribute_imports_only_what_its_path_needs(tmp_path):
    """A .pt model on the torch backend: torch, but not ONNX (no package), SciPy (the Grubbs test has its own
    Student-t quantile) or matplotlib (no --figure)."""
    model = write_tiny_dcgan(tmp_path / "m.pt", seed=1)
    (tmp_path / "x.png").write_bytes(png(np.random.default_rng(0).random((3, 32, 32))))
    assert main(["calibrate", "--model", str(model), "--samples", "4", "--steps", "20", "--preset", "paper",
                 "--check-every", "10", "--quiet"]) == 0  # fmt: skip
    loaded, out = _loaded(["attribute", "x.png", "--model", "m.pt", "--quiet"], cwd=tmp_path)
    assert loaded == ["torch"] and "x.png" in out, loaded


def _child_cpu_seconds(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, subprocess.CompletedProcess]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), done


def test_help_and_version_import_nothing_heavy():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "LOADED []"
    assert "calibrate" in done.stdout and "fit-encoder" in done.stdout


def test_version_costs_well_under_a_second():
    """CPU time, not wall time: on a shared machine the wall clock measures the neighbours (importing torch
    alone costs ~1.5 s of CPU)."""
    for argv in (["--version"], ["--help"], ["attribute", "--help"]):
        cpu, done = _child_cpu_seconds([sys.executable, "-m", "genorigin", *argv])
        assert done.returncode == 0, done.stderr
        assert cpu < 0.5, (argv, cpu)
    assert done.stdout  # --help printed the command list
    cpu, done = _child_cpu_seconds([sys.executable, "-m", "genorigin", "--version"])
    assert done.stdout.strip() == f"genorigin {__version__}"


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_option_shows_its_default(name):
    parser = build_parser([name])
    sub = next(a for a in parser._actions if a.dest == "command").choices[name]
    formatter = sub._get_formatter()
    # flags (nargs 0) and required options have no default to show
    options = [a for a in sub._actions if a.option_strings and a.nargs != 0 and not a.required]
    assert options
    for action in options:
        assert "default" in formatter._expand_help(action), (name, action.option_strings)


def test_model_help_names_every_kind_of_model():
    parser = build_parser(["calibrate"])
    text = next(a for a in parser._actions if a.dest == "command").choices["calibrate"].format_help()
    flat = " ".join(text.split())
    for kind in ("bundled model name", ".pt model file", "attribution package", "diffusers folder"):
        assert kind in flat, kind
    assert "DDIM/DDPM pipeline folders only" in flat and "AutoencoderKL folders" in flat


def test_openmp_waits_passively_unless_the_user_chose():
    code = "import os, genorigin, torch; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip() == (
        "PASSIVE"
    )
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip() == (
        "ACTIVE"
    )
