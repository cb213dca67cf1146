"""A 64×64 DCGAN through the third-party ONNX route, with an encoder fitted from the ONNX forward alone.

The common DCGAN recipe (z: N×100×1×1, five transposed convolutions, tanh), trained here on CPU for a few
thousand steps on crops of the bundled training photos (seeded), then handled exactly as a user's
third-party generator would be:

1. ``torch.onnx.export`` (the legacy exporter, as most published ONNX generators were made) → ``dcgan64.onnx``;
2. ``genorigin export --onnx dcgan64.onnx --output-range=-1,1 --out dcgan64.pkg`` (CLI, subprocess);
3. everything after runs on the package alone (ONNX Runtime): the encoder is fitted on pairs rendered by the
   exported forward graph, calibration and attribution run on the ONNX Runtime backend.

Belonging: fresh own samples; non-belonging: 64×64 crops of the held-out photos, and near-copies (every
weight × (1 + ε·N(0, 1)), ε = 0.05 and 0.01). The fast preset is read per budget and with early exit off one
run (as ``eval_fast.py``); the paper's loop (Adam, 1500 steps, 2 starts) runs on a subset for reference.

    python benchmarks/eval_onnx64.py --work /tmp/genorigin-dcgan64 --out benchmarks/results/fast/onnx64.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import auc, machine, write
from eval_fast import NEAR_COPY_EPS, at_step, calibration_at, exit_reading, metrics
from genorigin.export.package import AttributionPackage
from genorigin.runtime.backends.ort import OrtBackend, package_generator
from genorigin.runtime.decide.calibration import quantize_8bit
from genorigin.runtime.decide.early_exit import TrajectoryStopRule
from genorigin.runtime.loop.restarts import StallDetector
from genorigin.runtime.loop.settings import (
    FAST_SCHEDULE,
    FAST_SETTINGS,
    PAPER_SETTINGS,
    FitSettings,
    InversionSettings,
    Schedule,
)
from genorigin.runtime.methods.attribution import Attributor, quantization_floor
from genorigin.runtime.methods.encoder import FittedEncoder, fit_generator_encoder
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from train_bundled_models import (
    HELDOUT_PHOTOS,
    TRAIN_PHOTOS,
    _dcgan_init,
    load_photo,
)

SIZE, NZ = 64, 100


class DCGAN64(nn.Module):
    """The common DCGAN generator for 64×64: z (N×100×1×1) → 4×4 → 8 → 16 → 32 → 64, BatchNorm + ReLU, tanh."""

    def __init__(self, ngf: int = 32) -> None:
        super().__init__()
        widths = [ngf * 8, ngf * 4, ngf * 2, ngf]
        layers: list[nn.Module] = [nn.ConvTranspose2d(NZ, widths[0], 4, 1, 0, bias=False)]
        for a, b in itertools.pairwise(widths):
            layers += [nn.BatchNorm2d(a), nn.ReLU(True), nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False)]
        layers += [nn.BatchNorm2d(widths[-1]), nn.ReLU(True), nn.ConvTranspose2d(widths[-1], 3, 4, 2, 1, bias=False),
                   nn.Tanh()]  # fmt: skip
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Critic64(nn.Module):
    def __init__(self, ndf: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1), nn.BatchNorm2d(ndf * 4), nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1), nn.BatchNorm2d(ndf * 8), nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * 8, 1, 4, 1, 0),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)


def crops64(photos: list[str], n: int, seed: int) -> np.ndarray:
    """n random square crops (96–256 px) of the named photos → 64×64 LANCZOS, as N×3×64×64 float in [0, 1]."""
    rng = np.random.default_rng(seed)
    images = [load_photo(p) for p in photos]
    out = []
    while len(out) < n:
        photo = images[len(out) % len(images)]
        h, w = photo.shape[:2]
        side = int(min(rng.integers(96, 257), h, w))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(photo[top : top + side, left : left + side]).resize((SIZE, SIZE), Image.LANCZOS)
        arr = np.asarray(crop, dtype=np.float32) / 255.0
        if arr.std() >= 0.03:
            out.append(arr.transpose(2, 0, 1))
    return np.stack(out)


def train(steps: int, seed: int, data: np.ndarray) -> DCGAN64:
    torch.manual_seed(seed)
    gen, critic = DCGAN64(), Critic64()
    gen.apply(_dcgan_init)
    critic.apply(_dcgan_init)
    opt_g = torch.optim.Adam(gen.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(critic.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    real = torch.from_numpy(data) * 2 - 1
    ones, zeros = torch.ones(64, 1), torch.zeros(64, 1)
    for step in range(1, steps + 1):
        x = real[torch.randint(0, len(real), (64,))]
        fake = gen(torch.randn(64, NZ, 1, 1))
        loss_d = bce(critic(x), ones * 0.9) + bce(critic(fake.detach()), zeros)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        loss_g = bce(critic(fake), ones)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        if step % 250 == 0:
            print(f"  train step {step}/{steps} D {loss_d.item():.3f} G {loss_g.item():.3f}", flush=True)
    with torch.no_grad():  # BatchNorm population statistics of the final weights
        for bn in (m for m in gen.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.reset_running_stats()
            bn.momentum = None
        gen.train()
        for _ in range(50):
            gen(torch.randn(64, NZ, 1, 1))
    return gen.eval()


def near_copy(module: DCGAN64, eps: float, seed: int = 0) -> DCGAN64:
    copy = DCGAN64()
    copy.load_state_dict(module.state_dict())
    rng = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in copy.parameters():
            p.mul_(1.0 + eps * torch.randn(p.shape, generator=rng))
    return copy.eval()


@torch.no_grad()
def samples(module: nn.Module, n: int, seed: int) -> np.ndarray:
    z = torch.from_numpy(np.random.default_rng(seed).standard_normal((n, NZ, 1, 1), dtype=np.float32))
    return quantize_8bit(((module(z) + 1) / 2).numpy())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/genorigin-dcgan64")
    p.add_argument("--train-steps", type=int, default=2000)
    p.add_argument("--fit-steps", type=int, default=3000)
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--calibration-samples", type=int, default=50)
    p.add_argument("--paper-n", type=int, default=16, help="images per class under the paper's loop")
    p.add_argument("--budgets", type=int, nargs="+", default=[10, 20, 50, 100, 200])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/fast/onnx64.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {"machine": machine(), "args": vars(args)}
    weights = work / "dcgan64.pt"
    t0 = time.perf_counter()
    if weights.exists():
        module = DCGAN64()
        module.load_state_dict(torch.load(weights, weights_only=True))
        module.eval()
    else:
        module = train(args.train_steps, 0, crops64(list(TRAIN_PHOTOS), 6000, seed=0))
        torch.save(module.state_dict(), weights)
    report["train_seconds"] = time.perf_counter() - t0
    onnx_path, pkg_path = work / "dcgan64.onnx", work / "dcgan64.pkg"
    torch.onnx.export(module, (torch.zeros(1, NZ, 1, 1),), str(onnx_path), input_names=["z"], output_names=["img"],
                      dynamic_axes={"z": {0: "n"}, "img": {0: "n"}}, dynamo=False)  # fmt: skip
    cli = [sys.executable, "-m", "genorigin", "export", "--onnx", str(onnx_path), "--output-range=-1,1",
           "--out", str(pkg_path), "--force", "--quiet"]  # fmt: skip
    subprocess.run(cli, check=True)
    pkg = AttributionPackage.load(pkg_path)
    gen = package_generator(pkg, threads=args.threads)
    backend = OrtBackend(pkg, threads=args.threads)
    t0 = time.perf_counter()
    encoder_file = work / f"dcgan64.encoder{args.fit_steps}.pt"  # a rerun reuses the fit (its time is recorded)
    if not encoder_file.exists():
        fitted = fit_generator_encoder(gen, FitSettings(steps=args.fit_steps))  # pairs from the ONNX forward only
        encoder_file.with_suffix(".json").write_text(json.dumps({"fit_seconds": time.perf_counter() - t0}))
        fitted.save(encoder_file)
    encoder = FittedEncoder.load(encoder_file)  # as stored, whether fitted now or before
    fit_seconds = json.loads(encoder_file.with_suffix(".json").read_text())["fit_seconds"]
    report["encoder"] = {"fit_seconds": fit_seconds, "steps": encoder.steps_done}
    sets = {"own": samples(module, args.n, 778), "real": crops64(list(HELDOUT_PHOTOS), args.n, seed=778)}
    for eps in NEAR_COPY_EPS:
        sets[f"near{eps}"] = samples(near_copy(module, eps), args.n, 778)
    names = list(sets)
    images = np.concatenate([sets[k] for k in names])
    settings = InversionSettings(**{**FAST_SETTINGS.to_dict(), "halve_starts_at": ()})
    att = Attributor(gen, backend=backend, settings=settings, encoder=encoder,
                     schedule=Schedule(batch_size=64, check_every=10, early_exit=False))  # fmt: skip
    t0 = time.perf_counter()
    cal = att.calibrate(args.calibration_samples)
    report["calibration"] = cal.to_dict()["summary"] | {"seconds": time.perf_counter() - t0, "restarted": cal.restarted}
    results = att.attribute(images)
    bounds = np.cumsum([0] + [len(sets[k]) for k in names])
    by_class = {k: results[bounds[i] : bounds[i + 1]] for i, k in enumerate(names)}
    report["budgets"] = {}
    for b in args.budgets:
        scores = {k: np.array([at_step(r, b) / r.complexity for r in v]) for k, v in by_class.items()}
        report["budgets"][b] = metrics(scores, calibration_at(cal, b)) | {"evaluations": b}
    stall = StallDetector(settings.stall_window, settings.stall_factor, quantization_floor(settings.loss))
    rule = TrajectoryStopRule(cal, "grubbs", margin=FAST_SCHEDULE.exit_margin,
                              min_step=FAST_SCHEDULE.exit_min_step)  # fmt: skip
    read = {k: [exit_reading(r, rule, settings, stall) for r in v] for k, v in by_class.items()}
    early = metrics({k: np.array([s for s, _ in v]) for k, v in read.items()}, cal)
    main_steps = np.concatenate([[n for _, n in read[k]] for k in ("own", "real")])
    report["early_exit"] = early | {"mean_evaluations": float(main_steps.mean()),
                                    "mean_steps_per_class": {k: float(np.mean([n for _, n in v]))
                                                             for k, v in read.items()}}  # fmt: skip
    # the paper's loop on a subset (AUC only: its cost is 1500 steps × 2 starts per image)
    paper = Attributor(gen, backend=backend, settings=PAPER_SETTINGS,
                       schedule=Schedule(batch_size=64, check_every=50, early_exit=False))  # fmt: skip
    paper.calibrate(3)
    sub = {k: v[: args.paper_n] for k, v in sets.items()}
    res = paper.attribute(np.concatenate(list(sub.values())))
    scores = {k: np.array([r.calibrated_loss for r in res[i * args.paper_n : (i + 1) * args.paper_n]])
              for i, k in enumerate(sub)}  # fmt: skip
    report["paper_subset"] = {"images_per_class": args.paper_n, "evaluations": PAPER_SETTINGS.start_steps(1500),
                              "auc": {k: auc(v, scores["own"]) for k, v in scores.items() if k != "own"}}  # fmt: skip
    write(args.out, json.dumps(report, indent=1, default=float))
    print(json.dumps({k: v for k, v in report.items() if k != "machine"}, indent=1, default=float)[:3000])


if __name__ == "__main__":
    main()
