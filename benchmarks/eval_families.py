"""Attribution quality and cost per model family: DDIM, consistency, StyleGAN-style, AutoencoderKL (3 methods).

Small models, all at 16×16 RGB so the whole run fits a few minutes of a 2-core CPU:

* ddim-trained: a tiny diffusers UNet2DModel (16, 32 channels) BRIEFLY TRAINED here as an epsilon-prediction
  DDPM on the even-numbered real crops (train split), sampled with K deterministic DDIM steps.
* ddim-random-x0: the same UNet with RANDOM weights and x0 ("sample") prediction, K DDIM steps.
* consistency: a tiny UNet2DModel with RANDOM weights used as a one-step consistency model.
* stylegan-z / stylegan-w: the small StyleGAN-style generator with RANDOM weights, inverted in z or w space.
* autoencoder-kl: a tiny AutoencoderKL BRIEFLY TRAINED here on the train split (scaling_factor set to 1/std of
  its latents, as latent diffusion does), with the three methods inversion-random, inversion-encoder, aedr.

Per family: calibration on ``--n-cal`` of the model's own samples, then ``--n-eval`` belonging images (own
samples, other seeds) against ``--n-eval`` non-belonging ones: half real crops from the odd-numbered (held-out)
PNGs in src/genorigin/assets/images/real, half samples of another model of the same family (other seed).
Reports AUC of the score, accuracy / TPR / TNR of the verdicts at α = 0.05, and seconds per decision.

    HF_HUB_OFFLINE=1 python benchmarks/eval_families.py --out families.json
    HF_HUB_OFFLINE=1 python benchmarks/eval_families.py --memory   # peak RSS of DDIM K=50 with/without checkpoint
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from PIL import Image

REAL_DIR = Path(__file__).resolve().parents[1] / "src" / "genorigin" / "assets" / "images" / "real"
SIZE = 16
FAMILIES = ("ddim", "consistency", "stylegan-z", "stylegan-w", "autoencoder-kl")


# --------------------------------------------------------------------------------------------- data
def real_crops(split: str) -> np.ndarray:
    """The bundled 32×32 real crops at 16×16 (N×3×16×16 in [0, 1]): even indices train, odd ones held out."""
    files = sorted(REAL_DIR.glob("real_*.png"))
    files = files[0::2] if split == "train" else files[1::2]
    out = []
    for f in files:
        img = Image.open(f).convert("RGB").resize((SIZE, SIZE), Image.Resampling.LANCZOS)
        out.append(np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0)
    return np.stack(out)


def auc(belonging: np.ndarray, other: np.ndarray) -> float:
    """P(non-belonging score > belonging score), ties counted half (Mann–Whitney U / n·m)."""
    b, o = np.asarray(belonging)[:, None], np.asarray(other)[None, :]
    return float(((o > b).sum() + 0.5 * (o == b).sum()) / (b.size * o.size))


# --------------------------------------------------------------------------------------------- models
def tiny_unet(seed: int) -> torch.nn.Module:
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=SIZE, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
        norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    )  # fmt: skip


def train_ddpm(seed: int, steps: int, data: np.ndarray) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A few hundred Adam steps of the DDPM epsilon loss: a crude but genuinely trained denoiser."""
    from diffusers import DDPMScheduler

    unet, sched = tiny_unet(seed), DDPMScheduler()
    x0 = torch.from_numpy(data) * 2 - 1
    opt = torch.optim.Adam(unet.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x0), (32,), generator=g)
        t = torch.randint(0, 1000, (32,), generator=g)
        noise = torch.randn(x0[idx].shape, generator=g)
        loss = torch.nn.functional.mse_loss(unet(sched.add_noise(x0[idx], noise, t), t).sample, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return unet.eval(), dict(sched.config)


def tiny_vae(seed: int) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), layers_per_block=1,
        latent_channels=4, norm_num_groups=8, sample_size=SIZE,
    )  # fmt: skip


def train_vae(seed: int, steps: int, data: np.ndarray) -> torch.nn.Module:
    """Reconstruction + 1e-4·KL for a few hundred steps, then scaling_factor = 1 / std of the latent means."""
    vae = tiny_vae(seed)
    x = torch.from_numpy(data) * 2 - 1
    opt = torch.optim.Adam(vae.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = x[torch.randint(0, len(x), (32,), generator=g)]
        post = vae.encode(batch).latent_dist
        loss = torch.nn.functional.mse_loss(vae.decode(post.sample(g)).sample, batch) + 1e-4 * post.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    vae.eval()
    with torch.no_grad():
        std = float(vae.encode(x).latent_dist.mean.std())
    vae.register_to_config(scaling_factor=1.0 / std)
    return vae


# --------------------------------------------------------------------------------------------- evaluation
def evaluate(
    attributor: Any, belonging: np.ndarray, non_belonging: np.ndarray, n_cal: int, alpha: float
) -> dict[str, Any]:
    """Calibrate, attribute both sets, and summarise quality and cost (non_belonging: real crops first)."""
    n_real = len(non_belonging) // 2
    t0 = time.perf_counter()
    attributor.calibrate(n_cal, alpha=alpha)
    t_cal = time.perf_counter() - t0
    t0 = time.perf_counter()
    results = attributor.attribute(np.concatenate([belonging, non_belonging]))
    t_att = time.perf_counter() - t0
    n_b, n_r = len(belonging), n_real
    score = np.array([r.calibrated_loss for r in results])
    verdict = np.array([r.belonging for r in results])
    truth = np.arange(len(results)) < n_b
    real, other = slice(n_b, n_b + n_r), slice(n_b + n_r, None)
    return {
        "auc": auc(score[:n_b], score[n_b:]),
        "accuracy": float((verdict == truth).mean()),
        "tpr": float(verdict[:n_b].mean()),
        "tnr": float((~verdict[n_b:]).mean()),
        "auc_real": auc(score[:n_b], score[real]),
        "auc_other_model": auc(score[:n_b], score[other]),
        "tnr_real": float((~verdict[real]).mean()),
        "tnr_other_model": float((~verdict[other]).mean()),
        "seconds_per_decision": t_att / len(results),
        "calibration_seconds": t_cal,
        "mean_steps": float(np.mean([r.steps for r in results])),
        "n_belonging": n_b,
        "n_non_belonging": len(non_belonging),
        "score_median_belonging": float(np.median(score[:n_b])),
        "score_median_non_belonging": float(np.median(score[n_b:])),
    }


def eval_sets(gen: Any, other: Any, held_out: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n own samples (seed 1) and n non-belonging: n//2 held-out real crops + the rest from the other model."""
    from genorigin.runtime.decide.calibration import quantize_8bit

    own = quantize_8bit(gen.sample(n, seed=1))
    n_real = n // 2
    if n_real > len(held_out):
        raise ValueError(f"only {len(held_out)} held-out real crops for {n_real} real non-belonging images")
    foreign = np.concatenate([quantize_8bit(held_out[:n_real]), quantize_8bit(other.sample(n - n_real, seed=2))])
    return own, foreign


def inversion_attributor(gen: Any, steps: int, lr: float, restarts: int) -> Any:
    from genorigin.runtime.loop.settings import InversionSettings, Schedule
    from genorigin.runtime.methods.attribution import Attributor

    settings = InversionSettings(steps=steps, lr=lr, restarts=restarts)
    return Attributor(gen, settings=settings, schedule=Schedule(batch_size=64, check_every=25))


def run_family(name: str, args: argparse.Namespace, train: np.ndarray, held: np.ndarray) -> dict[str, Any]:
    """All rows of one family: {row name: metrics}."""
    from genorigin.export.diffusion import consistency_from_unet, ddim_from_unet
    from genorigin.export.latent_diffusion import latent_diffusion_from_vae
    from genorigin.export.stylegan import StyleGANConfig, random_stylegan
    from genorigin.runtime.methods.aedr import AEDRAttributor
    from genorigin.runtime.methods.latent_tracer import latent_tracer

    t0 = time.perf_counter()
    rows: dict[str, Any] = {}
    if name == "ddim":
        # K is small here, so the per-call checkpointing (default on, for K = 50) is switched off to save time
        (u1, s1), (u2, s2) = (train_ddpm(seed, args.train_steps, train) for seed in (0, 1))
        gen = ddim_from_unet(u1, s1, num_steps=args.ddim_k, use_checkpoint=False, name="ddim-a")
        other = ddim_from_unet(u2, s2, num_steps=args.ddim_k, use_checkpoint=False, name="ddim-b")
        own, foreign = eval_sets(gen, other, held, args.n_eval)
        setup = time.perf_counter() - t0
        rows["ddim-trained"] = evaluate(
            inversion_attributor(gen, args.ddim_steps, 0.1, 1), own, foreign, args.n_cal, args.alpha
        )
        # random weights: an epsilon-UNet's DDIM output is nearly all clipped, so x0-prediction is used
        x0_sched = {**s1, "prediction_type": "sample"}
        gen = ddim_from_unet(tiny_unet(20), x0_sched, num_steps=args.ddim_k, use_checkpoint=False, name="ddim-r")
        other = ddim_from_unet(tiny_unet(21), x0_sched, num_steps=args.ddim_k, use_checkpoint=False)
        own, foreign = eval_sets(gen, other, held, args.n_eval)
        rows["ddim-random-x0"] = evaluate(
            inversion_attributor(gen, args.ddim_steps, 0.1, 1), own, foreign, args.n_cal, args.alpha
        )
    elif name == "consistency":
        gen, other = consistency_from_unet(tiny_unet(10)), consistency_from_unet(tiny_unet(11))
        own, foreign = eval_sets(gen, other, held, args.n_eval)
        setup = time.perf_counter() - t0
        rows["consistency"] = evaluate(
            inversion_attributor(gen, args.steps, 0.1, 1), own, foreign, args.n_cal, args.alpha
        )
    elif name in ("stylegan-z", "stylegan-w"):
        cfg = StyleGANConfig(image_size=SIZE, z_dim=32, w_dim=32, width=32)
        gen = random_stylegan(cfg, seed=0, space=name[-1])
        own, foreign = eval_sets(gen, random_stylegan(cfg, seed=1), held, args.n_eval)
        setup = time.perf_counter() - t0
        rows[name] = evaluate(inversion_attributor(gen, args.steps, 0.1, 1), own, foreign, args.n_cal, args.alpha)
    elif name == "autoencoder-kl":
        model = latent_diffusion_from_vae(train_vae(0, args.train_steps, train), name="vae-a")
        other = latent_diffusion_from_vae(train_vae(1, args.train_steps, train), name="vae-b")
        own, foreign = eval_sets(model.generator, other.generator, held, args.n_eval)
        setup = time.perf_counter() - t0
        methods: dict[str, Callable[[], Any]] = {
            "inversion-random": lambda: inversion_attributor(model.generator, args.steps, 0.1, 1),
            "inversion-encoder": lambda: latent_tracer(model),
            "aedr": lambda: AEDRAttributor(model.generator, model.roundtrip),
        }
        for method, make in methods.items():
            rows[f"autoencoder-kl/{method}"] = evaluate(make(), own, foreign, args.n_cal, args.alpha)
    else:
        raise ValueError(f"unknown family {name!r}")
    for row in rows.values():
        row["setup_seconds"] = setup
    return rows


# --------------------------------------------------------------------------------------------- memory
def _peak_rss_child(use_checkpoint: bool, k: int, size: int, batch: int) -> None:
    """In a fresh process: one forward + backward through K DDIM steps; prints the peak RSS in MiB."""
    from diffusers import DDIMScheduler, UNet2DModel
    from genorigin.export.diffusion import ddim_from_unet

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=size, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
        norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    )  # fmt: skip
    gen = ddim_from_unet(unet, DDIMScheduler().config, num_steps=k, use_checkpoint=use_checkpoint)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    z = torch.randn(batch, 3, size, size, requires_grad=True)
    t0 = time.perf_counter()
    gen.forward(z).square().sum().backward()
    secs = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"checkpoint": use_checkpoint, "peak_rss_mib": peak, "before_mib": before, "seconds": secs}))


def measure_memory(k: int, size: int, batch: int) -> list[dict[str, Any]]:
    """Peak RSS of one DDIM inversion step (forward + backward), with and without checkpointing."""
    out = []
    for flag in (True, False):
        here = str(Path(__file__).parent)
        code = (
            f"import sys, torch; torch.set_num_threads(1); sys.path.insert(0, {here!r}); import eval_families as e; "
            f"e._peak_rss_child({flag!r}, {k}, {size}, {batch})"
        )
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        row = json.loads(res.stdout.strip().splitlines()[-1])
        out.append({**row, "k": k, "image_size": size, "batch": batch})
    return out


# --------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    p.add_argument("--n-eval", type=int, default=50, help="belonging images, and as many non-belonging ones")
    p.add_argument("--n-cal", type=int, default=20, help="own samples in the calibration")
    p.add_argument("--steps", type=int, default=200, help="inversion budget (random-start methods)")
    p.add_argument("--ddim-k", type=int, default=2, help="DDIM steps K inside the generator (paper: 50)")
    p.add_argument("--ddim-steps", type=int, default=100, help="inversion budget for the DDIM rows")
    p.add_argument("--train-steps", type=int, default=150, help="training steps of the briefly trained models")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--memory", action="store_true", help="only measure DDIM peak RSS with/without checkpointing")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory:
        rows = measure_memory(50, SIZE, 8) + measure_memory(50, 32, 8)
        print(json.dumps(rows, indent=1))
        if args.out:
            args.out.write_text(json.dumps({"memory": rows}, indent=1))
        return 0
    train, held = real_crops("train"), real_crops("held-out")
    report: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": args.threads},
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "rows": {},
    }
    start = time.perf_counter()
    for fam in args.families:
        rows = run_family(fam, args, train, held)
        report["rows"].update(rows)
        for name, r in rows.items():
            print(
                f"{name:32s} AUC {r['auc']:.3f}  acc {r['accuracy']:.3f}  TPR {r['tpr']:.2f}  TNR {r['tnr']:.2f} "
                f"(real {r['tnr_real']:.2f}, other model {r['tnr_other_model']:.2f})  "
                f"{r['seconds_per_decision']:.3f} s/decision  (cal {r['calibration_seconds']:.0f} s, "
                f"setup {r['setup_seconds']:.0f} s)",
                flush=True,
            )
    report["total_seconds"] = time.perf_counter() - start
    print(f"total {report['total_seconds']:.0f} s")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
