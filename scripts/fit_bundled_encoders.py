"""Fit the encoders shipped beside the bundled models (amortised inversion starts; see runtime/encoder.py).

Seeded and deterministic (CPU, one torch thread)::

    python scripts/fit_bundled_encoders.py              # all three, ~5 min each on a quiet 2-core machine
    python scripts/fit_bundled_encoders.py --models vae

Writes ``src/genorigin/assets/models/<name>.encoder.pt`` (float16 weights, loaded with weights_only=True).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from genorigin.export.bundled import BUNDLED_MODELS, assets_dir, load_bundled
from genorigin.runtime.encoder import FitSettings, fit_generator_encoder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(BUNDLED_MODELS), choices=BUNDLED_MODELS)
    p.add_argument("--steps", type=int, default=FitSettings.steps)
    p.add_argument("--out", type=Path, default=assets_dir() / "models")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    for name in args.models:
        gen = load_bundled(name)
        t0 = time.perf_counter()
        fitted = fit_generator_encoder(gen, FitSettings(steps=args.steps))
        path = fitted.save(args.out / f"{name}.encoder.pt")
        mse = fitted.history[-1]["latent_mse"]
        print(f"{name}: {fitted.steps_done} steps, {time.perf_counter() - t0:.0f} s, latent MSE {mse:.3f} → {path}")


if __name__ == "__main__":
    main()
