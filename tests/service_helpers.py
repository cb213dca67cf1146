"""What the service tests share: real models and calibrations, PNG bytes, HTTP at the socket and client level."""

from __future__ import annotations

import dataclasses
import http.client
import io
import json
import socket
import time
import urllib.parse
from pathlib import Path

import numpy as np
import torch
from genorigin.export.adapters import BUNDLED_FORMAT
from genorigin.export.architectures import DCGANConfig, DCGANGenerator
from genorigin.export.generator import Generator
from genorigin.runtime.backends.eager import TorchBackend
from genorigin.runtime.decide.calibration import quantize_8bit
from genorigin.runtime.loop.inversion import invert
from genorigin.runtime.loop.settings import InversionSettings, Schedule
from genorigin.runtime.methods.attribution import Attributor
from helpers import tiny_generator
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from genorigin.service import Limits, ServedModel, Service, ServiceThread

TINY_DCGAN = DCGANConfig(latent_dim=8, width=4)
FAST_SCHEDULE = Schedule(check_every=10, batch_size=4)
# the command line's settings for the model files of ``cli_models``; the service's schedule is the paper preset's
# with this grid (``load_served_model(..., schedule=CLI_SCHEDULE, max_batch=8)``)
CLI_STEPS = ["--preset", "paper", "--steps", "150", "--lr", "0.1", "--check-every", "10", "--batch-size", "8"]
CLI_SCHEDULE = {"check_every": 10}


def write_tiny_dcgan(path: Path, seed: int) -> Path:
    """A real (untrained) DCGAN model file the command line loads like any other .pt model."""
    torch.manual_seed(seed)
    net = DCGANGenerator(TINY_DCGAN).eval()
    torch.save({"format": BUNDLED_FORMAT, "kind": "dcgan", "name": path.stem, "config": TINY_DCGAN.to_dict(),
                "state_dict": net.state_dict()}, path)  # fmt: skip
    return path


def cli_models(folder: Path) -> tuple[dict[str, tuple[Path, Path]], Path]:
    """Two small real DCGAN model files (their step is batch-exact on the CPU: one image alone or in a batch
    gives the same floats), calibrated by the command line, and a folder of images: each model's own sample,
    noise, and a JPEG of beta's sample (outside a plain calibration: a coverage warning)."""
    from genorigin.export.adapters import load_generator_file

    from genorigin.cli import main

    models = {}
    for name, seed in (("alpha", 1), ("beta", 2)):
        model = write_tiny_dcgan(folder / f"{name}.pt", seed)
        cal = folder / f"{name}.calibration.json"
        assert main(["calibrate", "--model", str(model), "--samples", "6", "--out", str(cal), "--quiet",
                     *CLI_STEPS]) == 0  # fmt: skip
        models[name] = (model, cal)
    images = folder / "images"
    images.mkdir()
    for name, (model, _) in models.items():
        (images / f"{name}_own.png").write_bytes(png(quantize_8bit(load_generator_file(model).sample(1, seed=9))[0]))
    (images / "noise.png").write_bytes(png(np.random.default_rng(5).random((3, 32, 32))))
    own = np.round(quantize_8bit(load_generator_file(models["beta"][0]).sample(1, seed=9))[0] * 255).astype(np.uint8)
    Image.fromarray(own.transpose(1, 2, 0)).save(images / "beta_own_q85.jpg", quality=85)
    return models, images


def cli_reports(models: dict[str, tuple[Path, Path]], images: Path, folder: Path) -> dict[str, dict[str, dict]]:
    """``genorigin attribute`` of the images folder with each of ``cli_models``' models alone: model → file
    name → its report entry."""
    from genorigin.cli import main

    reports = {}
    for name, (model, cal) in models.items():
        report = folder / f"{name}.report.json"
        assert main(["attribute", str(images), "--model", str(model), "--calibration", str(cal), "--quiet",
                     "--report", str(report), *CLI_STEPS]) == 0  # fmt: skip
        reports[name] = {r["source"].split("/")[-1]: r for r in json.loads(report.read_text())["results"]}
    return reports


def cli_service(models: dict[str, tuple[Path, Path]]) -> ServiceThread:
    """The service over ``cli_models``' files with the command line's schedule (``with`` it, ``wait_ready()``)."""
    from genorigin.service import load_served_model

    served = [load_served_model(str(m), c, name=n, schedule=CLI_SCHEDULE, max_batch=8) for n, (m, c) in models.items()]
    return ServiceThread(Service(served))


class ReportEntry:
    """A command line report entry as the cross-model rule (``decide_across``) reads it."""

    def __init__(self, d: dict) -> None:
        self.belonging = d["verdict"] == "belonging"
        self.p_value, self.calibrated_loss = d["p_value"], d["calibrated_loss"]
        self.statistic, self.critical_value = d["statistic"], d["critical_value"]


def png(image_chw: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.round(np.asarray(image_chw).transpose(1, 2, 0) * 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def variant(attributor: Attributor, **schedule: object) -> Attributor:
    """The same model and calibration under another schedule (batch size, exit margin …)."""
    return Attributor(attributor.generator, settings=attributor.settings, calibration=attributor.calibration,
                      schedule=dataclasses.replace(attributor.schedule, **schedule))  # fmt: skip


def running(attributors: dict[str, Attributor], limits: Limits = Limits(), **kwargs: object) -> ServiceThread:
    """A ServiceThread over these attributors (name → attributor); ``with`` it, then ``wait_ready()``."""
    models = [ServedModel(name, f"test:{name}", a) for name, a in attributors.items()]
    return ServiceThread(Service(models, limits, **kwargs))  # type: ignore[arg-type]


def request(url: str, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
            timeout: float = 120.0) -> tuple[int, dict[str, str], dict]:  # fmt: skip
    """One HTTP exchange: status, headers (lower-case names), JSON body ({} when empty or not JSON)."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read()
        hdrs = {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()
    try:
        payload = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        payload = {}
    return resp.status, hdrs, payload


def post(url: str, body: bytes, query: str = "", headers: dict[str, str] | None = None) -> tuple[int, dict, dict]:
    return request(url, "POST", "/v1/attribute" + (f"?{query}" if query else ""), body, headers)


def raw_exchange(url: str, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes, read until the server closes (or ``timeout``): for requests no HTTP library would send."""
    u = urllib.parse.urlsplit(url)
    with socket.create_connection((u.hostname, u.port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
    return b"".join(chunks)


def split_response(raw: bytes) -> tuple[int, dict[str, str], dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, json.loads(body) if body else {}


def metric(url: str, name: str, token: str | None = None, **labels: str) -> float:
    """The sum of a metric's samples matching ``labels`` (0 if none)."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {token}"} if token else {})
    text = conn.getresponse().read().decode()
    conn.close()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def wait_until(predicate, timeout: float = 60.0, every: float = 0.01) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError("condition not reached")
        time.sleep(every)


def budget_for(generator: Generator, seconds: float, lr: float = 0.05, least: int = 600) -> int:
    """A step budget that one image takes about ``seconds`` to spend on this machine now (``least`` … 20,000):
    long requests stay in flight long enough to be overtaken, interrupted or drained, fast machine or slow."""
    target = np.random.default_rng(0).random((1, generator.channels, *generator.image_size)).astype(np.float32)
    t0 = time.perf_counter()
    invert(TorchBackend(generator), target, generator.latent, InversionSettings(steps=100, lr=lr),
           Schedule(early_exit=False))  # fmt: skip
    steps = int(100 / (time.perf_counter() - t0) * seconds)
    return int(np.clip(steps // 10 * 10, least, 20_000))


def calibrated_tiny(seconds: float = 2.0) -> Attributor:
    """The tiny test model, calibrated with a budget of about ``seconds`` per image (``budget_for``)."""
    gen = tiny_generator()
    attributor = Attributor(gen, settings=InversionSettings(steps=budget_for(gen, seconds), lr=0.05),
                            schedule=FAST_SCHEDULE)  # fmt: skip
    attributor.calibrate(n=4)
    return attributor


LONG = {"exit_margin": 1e9}  # no non-belonging early exit: a non-belonging image runs its whole budget
