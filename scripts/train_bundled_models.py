"""Train the small generators bundled with genorigin and cut the held-out real crops.

Everything comes from photos that ship with the installed libraries (no downloads):
scikit-image's sample data, scikit-learn's sample images and matplotlib's sample data.
The photos are split by SOURCE PHOTO: the training photos (``TRAIN_PHOTOS``) feed the
generators, the held-out photos (``HELDOUT_PHOTOS``) only ever become the real images in
``src/genorigin/assets/images/real/``.

Outputs (under ``--out``, the repository root by default):

* ``src/genorigin/assets/models/{dcgan_a,dcgan_b,vae}.pt`` — plain-dict payloads
  (``format: genorigin-bundled-v1``) loadable with ``torch.load(path, weights_only=True)``;
* ``src/genorigin/assets/images/real/real_000.png`` … ``real_239.png`` and ``SOURCES.txt``;
* ``docs/img/samples_<name>.png`` (8×8 samples, ×3 nearest) and ``docs/img/real_heldout.png``.

The defaults reproduce the shipped weights (CPU, ``torch.set_num_threads(2)``)::

    python scripts/train_bundled_models.py

``dcgan_a`` and ``dcgan_b`` differ only in their seed (``--seed`` and ``--seed + 1``); the
VAE uses ``--seed + 2``. The training crops depend on ``--data-seed`` only.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from genorigin.export.architectures import (
    DCGANConfig,
    DCGANDiscriminator,
    DCGANGenerator,
    VAEConfig,
    VAEDecoder,
    VAEEncoder,
)
from PIL import Image
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
FORMAT = "genorigin-bundled-v1"
SCRIPT = "scripts/train_bundled_models.py"

# Split by source photo; the two lists are disjoint and both mix people, animals/nature,
# objects and scientific imagery.
TRAIN_PHOTOS: tuple[str, ...] = (
    "astronaut",
    "coffee",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
    "motorcycle",
    "china",
)
HELDOUT_PHOTOS: tuple[str, ...] = ("chelsea", "flower", "grace_hopper")

CROP_MIN, CROP_MAX, IMAGE_SIZE = 48, 128, 32
N_TRAIN_CROPS = 6000
N_REAL = 240
FLAT_STD = 0.03  # crops flatter than this (std of [0, 1] pixels) are redrawn: black borders, sky


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        if name == "motorcycle":
            return skimage.data.stereo_motorcycle()[0]
        return getattr(skimage.data, name)()

    return load


def _sklearn(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{name}.jpg")

    return load


def _matplotlib(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from matplotlib import cbook

        with cbook.get_sample_data(filename) as fh:
            return np.asarray(Image.open(fh).convert("RGB"))

    return load


PHOTO_SOURCES: dict[str, tuple[str, Callable[[], np.ndarray]]] = {
    "astronaut": ("skimage.data.astronaut()", _skimage("astronaut")),
    "coffee": ("skimage.data.coffee()", _skimage("coffee")),
    "rocket": ("skimage.data.rocket()", _skimage("rocket")),
    "immunohistochemistry": ("skimage.data.immunohistochemistry()", _skimage("immunohistochemistry")),
    "hubble_deep_field": ("skimage.data.hubble_deep_field()", _skimage("hubble_deep_field")),
    "retina": ("skimage.data.retina()", _skimage("retina")),
    "motorcycle": ("skimage.data.stereo_motorcycle()[0] (left view)", _skimage("motorcycle")),
    "china": ("sklearn.datasets.load_sample_image('china.jpg')", _sklearn("china")),
    "chelsea": ("skimage.data.chelsea()", _skimage("chelsea")),
    "flower": ("sklearn.datasets.load_sample_image('flower.jpg')", _sklearn("flower")),
    "grace_hopper": ("matplotlib.cbook.get_sample_data('grace_hopper.jpg')", _matplotlib("grace_hopper.jpg")),
}


def load_photo(name: str) -> np.ndarray:
    """One source photo as an H×W×3 uint8 array."""
    img = np.asarray(PHOTO_SOURCES[name][1]())
    if img.ndim != 3 or img.shape[2] < 3:
        raise ValueError(f"{name}: expected an RGB photo, got shape {img.shape}")
    return np.ascontiguousarray(img[..., :3].astype(np.uint8))


def random_crops(photos: list[np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    """n random square crops (48–128 px, clipped to the photo) → 32×32 LANCZOS, random h-flip.

    Photos are drawn round-robin so each contributes equally. Returns N×32×32×3 uint8.
    """
    out = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    i = 0
    while i < n:
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        size = int(min(rng.integers(CROP_MIN, CROP_MAX + 1), h, w))
        top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        crop = Image.fromarray(photo[top : top + size, left : left + size])
        small = np.asarray(crop.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS))
        if rng.random() < 0.5:
            small = small[:, ::-1]
        if small.std() / 255.0 < FLAT_STD:
            continue
        out[i] = small
        i += 1
    return out


def to_tensor(crops: np.ndarray) -> torch.Tensor:
    """N×H×W×3 uint8 → N×3×H×W float in [0, 1]."""
    return torch.from_numpy(crops).permute(0, 3, 1, 2).float().div(255.0).contiguous()


def save_grid(images: torch.Tensor, path: Path, nrow: int = 8, scale: int = 3, pad: int = 1) -> None:
    """Save N×3×32×32 images in [0, 1] as an nrow-wide grid, upscaled ×scale (nearest)."""
    arr = (images.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    n, h, w, _ = arr.shape
    rows = (n + nrow - 1) // nrow
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for k in range(n):
        r, c = divmod(k, nrow)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = arr[k]
    img = Image.fromarray(grid)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST).save(path)


def _dcgan_init(module: nn.Module) -> None:
    """DCGAN initialisation: conv weights N(0, 0.02), BatchNorm weights N(1, 0.02)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


@torch.no_grad()
def recalibrate_batchnorm(generator: DCGANGenerator, latent_dim: int, batches: int = 100) -> None:
    """Replace BatchNorm running stats by exact population stats of the final weights (prior z)."""
    bns = [m for m in generator.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
    generator.train()
    for _ in range(batches):
        generator(torch.randn(64, latent_dim, 1, 1))
    for bn in bns:
        bn.momentum = 0.1
    generator.eval()


def train_dcgan(data: torch.Tensor, seed: int, steps: int, batch: int = 64) -> tuple[DCGANGenerator, dict]:
    """Standard DCGAN (BCE-with-logits, Adam 2e-4 / (0.5, 0.999)) on images in [0, 1]."""
    torch.manual_seed(seed)
    cfg = DCGANConfig()
    gen, disc = DCGANGenerator(cfg), DCGANDiscriminator(cfg)
    gen.apply(_dcgan_init)
    disc.apply(_dcgan_init)
    opt_g = torch.optim.Adam(gen.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    real_x = data * 2.0 - 1.0
    ones, zeros = torch.ones(batch, 1), torch.zeros(batch, 1)
    gen.train()
    disc.train()
    hist_d: list[float] = []
    hist_g: list[float] = []
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        idx = torch.randint(0, real_x.shape[0], (batch,))
        x = real_x[idx]
        fake = gen(torch.randn(batch, cfg.latent_dim, 1, 1))
        loss_d = bce(disc(x), ones * 0.9) + bce(disc(fake.detach()), zeros)  # one-sided label smoothing
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        loss_g = bce(disc(fake), ones)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        hist_d.append(loss_d.item())
        hist_g.append(loss_g.item())
        if step % 250 == 0 or step == steps:
            print(
                f"  [dcgan seed={seed}] step {step}/{steps}  D {np.mean(hist_d[-250:]):.3f}"
                f"  G {np.mean(hist_g[-250:]):.3f}  ({time.perf_counter() - t0:.0f}s)",
                flush=True,
            )
    recalibrate_batchnorm(gen, cfg.latent_dim)
    stats = {
        "wall_s": round(time.perf_counter() - t0, 1),
        "final_loss_d": round(float(np.mean(hist_d[-100:])), 4),
        "final_loss_g": round(float(np.mean(hist_g[-100:])), 4),
    }
    return gen, stats


def train_vae(
    data: torch.Tensor, seed: int, steps: int, batch: int = 64, sigma: float = 0.1
) -> tuple[VAEEncoder, VAEDecoder, dict]:
    """VAE with a Gaussian decoder of fixed std ``sigma`` (scaled MSE) + KL; Adam 1e-3, cosine decay."""
    torch.manual_seed(seed)
    cfg = VAEConfig()
    enc, dec = VAEEncoder(cfg), VAEDecoder(cfg)
    params = list(enc.parameters()) + list(dec.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=1e-4)
    hist_rec: list[float] = []
    hist_kl: list[float] = []
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        x = data[torch.randint(0, data.shape[0], (batch,))]
        mean, logvar = enc(x)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        recon = dec(z)
        sse = F.mse_loss(recon, x, reduction="sum") / batch
        kl = (-0.5 * (1 + logvar - mean.pow(2) - logvar.exp())).sum() / batch
        loss = sse / (2 * sigma**2) + kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        hist_rec.append(sse.item() / x[0].numel())
        hist_kl.append(kl.item())
        if step % 500 == 0 or step == steps:
            print(
                f"  [vae seed={seed}] step {step}/{steps}  MSE/pixel {np.mean(hist_rec[-500:]):.5f}"
                f"  KL {np.mean(hist_kl[-500:]):.2f}  ({time.perf_counter() - t0:.0f}s)",
                flush=True,
            )
    enc.eval()
    dec.eval()
    stats = {
        "wall_s": round(time.perf_counter() - t0, 1),
        "final_mse_per_pixel": round(float(np.mean(hist_rec[-100:])), 6),
        "final_kl": round(float(np.mean(hist_kl[-100:])), 3),
        "sigma": sigma,
    }
    return enc, dec, stats


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}


def save_payload(path: Path, payload: dict) -> None:
    """torch.save a plain dict and check that it round-trips with weights_only=True."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    torch.load(path, weights_only=True)
    print(f"  wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


def write_real_crops(out_dir: Path, docs_dir: Path, data_seed: int) -> np.ndarray:
    """Cut N_REAL held-out crops (equal share per held-out photo) and write the PNGs + SOURCES.txt."""
    rng = np.random.default_rng(data_seed + 1000)
    photos = {name: load_photo(name) for name in HELDOUT_PHOTOS}
    crops = random_crops(list(photos.values()), N_REAL, rng)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("real_*.png"):
        old.unlink()
    for k, crop in enumerate(crops):
        Image.fromarray(crop).save(out_dir / f"real_{k:03d}.png")
    lines = [
        "Held-out real images for genorigin (32x32 RGB PNG), written by scripts/train_bundled_models.py.",
        "These photos were NEVER used to train the bundled generators (dcgan_a, dcgan_b, vae).",
        "",
        "Source photos (held out):",
        *[f"  {name}: {PHOTO_SOURCES[name][0]}, {p.shape[1]}x{p.shape[0]}" for name, p in photos.items()],
        "",
        "Training photos (for reference, NOT in this folder):",
        *[f"  {name}: {PHOTO_SOURCES[name][0]}" for name in TRAIN_PHOTOS],
        "",
        "Crop procedure:",
        f"  {N_REAL} crops, photos taken round-robin (real_000 from {HELDOUT_PHOTOS[0]}, real_001 from"
        f" {HELDOUT_PHOTOS[1]}, ...);",
        f"  square crop, side uniform in [{CROP_MIN}, {CROP_MAX}] px (clipped to photo), uniform position;",
        f"  downscaled to {IMAGE_SIZE}x{IMAGE_SIZE} with Pillow LANCZOS; horizontal flip with p=0.5;",
        f"  crops with pixel std < {FLAT_STD} (of [0,1]) redrawn; numpy default_rng({data_seed + 1000}).",
        "",
        "Licences: chelsea: CC0 (Stefan van der Walt, scikit-image sample data); flower.jpg: CC-BY 2.0",
        "(flickr user vultilion, scikit-learn sample images); grace_hopper.jpg: public-domain US Navy",
        "portrait (matplotlib sample data).",
    ]
    (out_dir / "SOURCES.txt").write_text("\n".join(lines) + "\n")
    save_grid(to_tensor(crops[:64]), docs_dir / "real_heldout.png")
    print(f"  wrote {len(crops)} held-out crops to {out_dir}")
    return crops


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT, help="root to write under (default: repo root)")
    parser.add_argument("--steps", type=int, default=2000, help="DCGAN training steps (batch 64)")
    parser.add_argument("--vae-steps", type=int, default=3000, help="VAE training steps (batch 64)")
    parser.add_argument("--seed", type=int, default=1, help="dcgan_a seed; dcgan_b = seed+1, vae = seed+2")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the training/held-out crops")
    parser.add_argument(
        "--models", nargs="+", default=["dcgan_a", "dcgan_b", "vae"], choices=["dcgan_a", "dcgan_b", "vae"]
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(2)
    assert not set(TRAIN_PHOTOS) & set(HELDOUT_PHOTOS)
    models_dir = args.out / "src/genorigin/assets/models"
    real_dir = args.out / "src/genorigin/assets/images/real"
    docs_dir = args.out / "docs/img"

    t0 = time.perf_counter()
    write_real_crops(real_dir, docs_dir, args.data_seed)
    train_crops = random_crops(
        [load_photo(n) for n in TRAIN_PHOTOS], N_TRAIN_CROPS, np.random.default_rng(args.data_seed)
    )
    data = to_tensor(train_crops)
    print(f"training set: {len(data)} crops from {len(TRAIN_PHOTOS)} photos ({time.perf_counter() - t0:.1f}s)")

    common = {"train_photos": list(TRAIN_PHOTOS), "heldout_photos": list(HELDOUT_PHOTOS), "script": SCRIPT}
    common["data"] = {"n_crops": N_TRAIN_CROPS, "crop_px": [CROP_MIN, CROP_MAX], "data_seed": args.data_seed}
    summary: dict[str, dict] = {}
    preview_z = torch.Generator().manual_seed(1234)

    for name, offset in (("dcgan_a", 0), ("dcgan_b", 1)):
        if name not in args.models:
            continue
        seed = args.seed + offset
        print(f"training {name} (seed {seed}, {args.steps} steps)")
        gen, stats = train_dcgan(data, seed, args.steps)
        cfg = gen.config
        training = {"seed": seed, "steps": args.steps, **common, **stats}
        payload = {
            "format": FORMAT,
            "name": name,
            "kind": "dcgan",
            "config": cfg.to_dict(),
            "state_dict": _state(gen),
            "training": training,
        }
        save_payload(models_dir / f"{name}.pt", payload)
        with torch.no_grad():
            z = torch.randn(64, cfg.latent_dim, 1, 1, generator=preview_z.manual_seed(1234))
            save_grid((gen(z) + 1) / 2, docs_dir / f"samples_{name}.png")
        summary[name] = stats

    if "vae" in args.models:
        seed = args.seed + 2
        print(f"training vae (seed {seed}, {args.vae_steps} steps)")
        enc, dec, stats = train_vae(data, seed, args.vae_steps)
        payload = {
            "format": FORMAT,
            "name": "vae",
            "kind": "vae",
            "config": dec.config.to_dict(),
            "state_dict": _state(dec),
            "encoder_state_dict": _state(enc),
            "training": {"seed": seed, "steps": args.vae_steps, **common, **stats},
        }
        save_payload(models_dir / "vae.pt", payload)
        with torch.no_grad():
            z = torch.randn(64, dec.config.latent_dim, generator=preview_z.manual_seed(1234))
            save_grid(dec(z), docs_dir / "samples_vae.png")
        summary["vae"] = stats

    print(json.dumps({"total_wall_s": round(time.perf_counter() - t0, 1), **summary}, indent=2))


if __name__ == "__main__":
    main()
