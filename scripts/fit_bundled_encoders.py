"""Fit the encoders shipped beside the bundled models (amortised inversion starts; see runtime/methods/encoder.py).

Seeded and deterministic (CPU, one torch thread)::

    python scripts/fit_bundled_encoders.py              # all three, ~5 min each on a quiet 2-core machine
    python scripts/fit_bundled_encoders.py --models vae
    python scripts/fit_bundled_encoders.py --platform   # the platform mode's encoders, from the shipped ones

Writes ``src/genorigin/assets/models/<name>.encoder.pt`` (float16 weights, loaded with weights_only=True), or
``<name>.platform-encoder.pt`` with ``--platform`` (runtime/methods/platform_encoder.py; 2,000 steps by default).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from genorigin.export.bundled import BUNDLED_MODELS, assets_dir, load_bundled
from genorigin.runtime.loop.settings import FitSettings
from genorigin.runtime.methods.encoder import FittedEncoder, fit_generator_encoder
from genorigin.runtime.methods.platform_encoder import PLATFORM_FIT, fit_platform_encoder, platform_encoder_path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(BUNDLED_MODELS), choices=BUNDLED_MODELS)
    p.add_argument("--steps", type=int, help="default: 3000, or 2000 with --platform")
    p.add_argument("--platform", action="store_true", help="fit the platform encoders (needs the shipped encoders)")
    p.add_argument("--out", type=Path, default=assets_dir() / "models")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        gen = load_bundled(name)
        t0 = time.perf_counter()
        path = args.out / f"{name}.encoder.pt"
        if args.platform:
            settings = PLATFORM_FIT if args.steps is None else FitSettings(steps=args.steps, lr=PLATFORM_FIT.lr)
            fitted = fit_platform_encoder(gen, FittedEncoder.load(assets_dir() / "models" / f"{name}.encoder.pt"),
                                          settings)  # fmt: skip
            path = platform_encoder_path(path)
        else:
            fitted = fit_generator_encoder(gen, FitSettings(steps=args.steps or FitSettings.steps))
        fitted.save(path)
        mse = fitted.history[-1]["latent_mse"]
        print(f"{name}: {fitted.steps_done} steps, {time.perf_counter() - t0:.0f} s, latent MSE {mse:.3f} → {path}")


if __name__ == "__main__":
    main()
