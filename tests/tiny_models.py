"""A genorigin model file small enough for command-line tests: a real DCGAN (random weights, width 4, 8-d
latent) saved in the bundled format, and PNG files of its own samples."""

from __future__ import annotations

from pathlib import Path

import torch
from genorigin.export.adapters import BUNDLED_FORMAT, load_generator_file
from genorigin.export.architectures import DCGANConfig, DCGANGenerator
from genorigin.runtime.decide.calibration import quantize_8bit

from genorigin.images import save_png

# calibrate/attribute quickly: random starts and Adam, 20 steps, checkpoints every 10 (no encoder to fit)
QUICK = ["--preset", "paper", "--steps", "20", "--check-every", "10", "--batch-size", "8", "--threads", "1"]


def write_tiny_dcgan(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    cfg = DCGANConfig(latent_dim=8, width=4)
    payload = {
        "format": BUNDLED_FORMAT,
        "name": path.stem,
        "kind": "dcgan",
        "config": cfg.to_dict(),
        "state_dict": DCGANGenerator(cfg).state_dict(),
    }
    torch.save(payload, path)
    return path


def write_own_pngs(model: Path, folder: Path, n: int, seed: int = 5, prefix: str = "own") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    images = quantize_8bit(load_generator_file(model).sample(n, seed=seed))
    paths = [folder / f"{prefix}_{i}.png" for i in range(n)]
    for img, p in zip(images, paths):
        save_png(img, p)
    return paths
