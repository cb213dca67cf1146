"""README's own snippets, run as written: every command line of the "Use" block that a CPU can run (with
small budgets where the defaults take minutes), and the Python API block verbatim (``GENORIGIN_QUICK=1``), so a
documented command or call cannot break unseen."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import torch
from genorigin.export.bundled import load_bundled, real_images_dir
from genorigin.runtime.decide.calibration import quantize_8bit
from tiny_models import write_tiny_dcgan

from genorigin.images import save_png

README = Path(__file__).resolve().parents[1] / "README.md"
GPU_ONLY = ("build-engine",)
# small budgets: (pattern in the line → replacement) and flags added per command
REPLACE = {"--ddim-steps 50": "--ddim-steps 2", "--steps 3000": "--steps 3", "--port 8080": "--port 0"}
ADD = {
    "calibrate": ["--samples", "4", "--threads", "1", "--quiet"],
    "attribute": ["--threads", "1", "--quiet"],
    "fit-encoder": ["--quiet"],
    "export": ["--quiet"],
    "serve": ["--threads", "1"],
}
INVERSION_BUDGET = ["--steps", "20", "--fit-steps", "3"]

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript")]


def block(title: str, language: str) -> str:
    """The first ``language`` code block after the heading or paragraph starting with ``title``."""
    text = README.read_text()
    start = text.index(title)
    match = re.search(rf"```{language}\n(.*?)```", text[start:], re.DOTALL)
    assert match, f"no {language} block after {title!r}"
    return match.group(1)


def use_lines() -> list[list[str]]:
    """Every ``genorigin`` line of the "Use" section's blocks (the commands, then the serve block)."""
    text = block("## Use", "bash") + block("Serve (", "bash")
    return [shlex.split(ln, comments=True) for ln in text.splitlines() if ln.startswith("genorigin ")]


def genorigin() -> list[str]:
    script = Path(sys.executable).parent / "genorigin"
    return [str(script)] if script.exists() else [sys.executable, "-m", "genorigin"]


def _fixtures(cwd: Path, models: bool = True) -> None:
    """The files README's commands name: images, and (``models``) a model file, an ONNX generator and two
    diffusers folders."""
    own = quantize_8bit(load_bundled("dcgan_a").sample(3, seed=31))
    reals = sorted(real_images_dir().glob("*.png"))
    for folder in ("photos", "uploads"):
        (cwd / folder).mkdir()
    save_png(own[0], cwd / "photos" / "cat.png")
    (cwd / "photos" / "dog.png").write_bytes(reals[0].read_bytes())
    save_png(own[1], cwd / "uploads" / "a.png")
    (cwd / "uploads" / "b.png").write_bytes(reals[1].read_bytes())
    save_png(own[2], cwd / "img.png")
    if not models:
        return
    write_tiny_dcgan(cwd / "my_gan.pt")
    torch.manual_seed(0)
    # a third party's generator: z (N×8×1×1) → tanh image in [-1, 1], exported with the legacy exporter
    module = torch.nn.Sequential(torch.nn.ConvTranspose2d(8, 3, 8), torch.nn.Tanh())
    torch.onnx.export(
        module.eval(),
        (torch.zeros(2, 8, 1, 1),),
        str(cwd / "third_party_generator.onnx"),
        input_names=["z"],
        output_names=["image"],
        dynamic_axes={"z": {0: "n"}, "image": {0: "n"}},
        dynamo=False,
    )
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownBlock2D",) * 2,
        up_block_types=("UpBlock2D",) * 2,
    )
    pipe = diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler(prediction_type="sample"))
    pipe.save_pretrained(cwd / "my-ddim-pipeline")
    diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    ).save_pretrained(cwd / "sd-vae")


def _small(args: list[str]) -> list[str]:
    line = " ".join(args)
    for old, new in REPLACE.items():
        line = line.replace(old, new)
    args = shlex.split(line)
    extra = ADD.get(args[1], [])
    if args[1] == "calibrate" and "aedr" not in args:
        extra = [*extra, *INVERSION_BUDGET]
    return [*args[1:], *extra]


def _serve(cmd: list[str], cwd: Path, env: dict[str, str]) -> None:
    """Start the service, wait for its address, ask /healthz and /v1/model, stop it."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = re.search(r"on (http://\S+) ", line)
        assert url, (line, proc.stderr.read() if proc.poll() is not None else "")
        with urllib.request.urlopen(url.group(1) + "/healthz", timeout=60) as r:
            assert json.loads(r.read()) == {"status": "ok"}
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_every_cpu_command_of_the_use_block(tmp_path):
    _fixtures(tmp_path)
    env = dict(os.environ, GENORIGIN_PROGRESS_SECONDS="600")
    ran = []
    for args in use_lines():
        assert args[0] == "genorigin"
        if args[1] in GPU_ONLY:
            continue
        cmd = [*genorigin(), *_small(args)]
        if args[1] == "serve":
            _serve(cmd, tmp_path, env)
        else:
            done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
            assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-3000:])
        ran.append(args[1])
    assert ran.count("calibrate") >= 4 and {"attribute", "fit-encoder", "export", "serve"} <= set(ran)
    for output in (
        "report.json",
        "fig.png",
        "results.csv",
        "dcgan_a.pkg/calibration.json",
        "tp.pkg/manifest.json",
        "my_gan.pt.encoder.pt",
        "my-ddim-pipeline/genorigin.ddim2.calibration.json",
        "sd-vae/genorigin.calibration.aedr.json",
    ):
        assert (tmp_path / output).exists(), output
    assert len(list((tmp_path / "recon").glob("*.recon.png"))) == 2
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["summary"]["images"] == 4 and report["settings"]["steps"] == 20


def test_the_python_api_block_verbatim(tmp_path):
    _fixtures(tmp_path, models=False)
    (tmp_path / "block.py").write_text(block("Python API:", "python"))
    env = dict(os.environ, GENORIGIN_QUICK="1")

    def run():
        return subprocess.run(
            [sys.executable, "block.py"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )

    first = run()
    assert first.returncode == 0, first.stderr[-3000:]
    made = (tmp_path / "dcgan_a.calibration.json").read_bytes()
    lines = first.stdout.splitlines()
    by_source = {ln.split()[0]: ln.split() for ln in lines[:-1]}
    assert set(by_source) == {"photos/cat.png", "photos/dog.png", "uploads/a.png", "uploads/b.png"}
    assert all(v[1] in ("belonging", "non-belonging") and v[-1] == "PNG" for v in by_source.values())
    assert by_source["photos/dog.png"][1] == "non-belonging" and lines[-1] in ("belonging", "non-belonging")
    cal = json.loads(made)
    assert cal["settings"]["init"] == "encoder" and len(cal["scores"]) == 8 and cal["encoder"]
    second = run()  # loads the calibration the first run made: same file, same answers
    assert second.returncode == 0 and second.stdout == first.stdout, second.stderr[-3000:]
    assert (tmp_path / "dcgan_a.calibration.json").read_bytes() == made
