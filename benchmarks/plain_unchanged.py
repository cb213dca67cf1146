"""Is the plain mode what it was before the robust mode? A digest of its calibration and decisions.

Run the same file under two checkouts (each interpreter imports its own genorigin) and compare the printed
digests: equal digests mean the plain mode's scores, thresholds and verdicts are the same floats, so its
accuracy on unmodified PNGs is unchanged (docs/robustness.md):

    /path/to/main/.venv/bin/python benchmarks/plain_unchanged.py --model dcgan_a
    .venv/bin/python benchmarks/plain_unchanged.py --model dcgan_a

Self-contained on purpose (no ``common`` import): the file is read from one checkout, genorigin from the other.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import genorigin.runtime
import numpy as np
import torch
from genorigin.export.bundled import assets_dir, load_bundled, real_images_dir
from genorigin.runtime.decide.calibration import quantize_8bit
from genorigin.runtime.loop.settings import FAST_SCHEDULE, FAST_SETTINGS
from genorigin.runtime.methods.attribution import Attributor
from genorigin.runtime.methods.encoder import FittedEncoder

from genorigin.images import load_rgb8


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="dcgan_a")
    p.add_argument("--n", type=int, default=10, help="own and real images attributed")
    p.add_argument("--calibration-samples", type=int, default=20)
    p.add_argument("--seed", type=int, default=779, help="own samples (not a seed any choice was made on)")
    p.add_argument("--real-offset", type=int, default=200)
    args = p.parse_args()
    torch.set_num_threads(1)
    gen = load_bundled(args.model)
    encoder = FittedEncoder.load(assets_dir() / "models" / f"{args.model}.encoder.pt")
    att = Attributor(gen, settings=FAST_SETTINGS, schedule=FAST_SCHEDULE, encoder=encoder)
    cal = att.calibrate(n=args.calibration_samples)
    paths = sorted(real_images_dir().glob("*.png"))[args.real_offset : args.real_offset + args.n]
    real = np.stack([(load_rgb8(q).astype(np.float32) / 255.0).transpose(2, 0, 1) for q in paths])
    own = quantize_8bit(gen.sample(args.n, seed=args.seed))
    results = att.attribute(np.concatenate([own, real]))
    record = {
        "settings": cal.settings,
        "calibration_scores": [float(s) for s in cal.scores],
        "results": [[r.verdict, float(r.loss), float(r.calibrated_loss), int(r.steps), r.stop_reason] for r in results],
    }
    digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    accuracy = (sum(r.belonging for r in results[: args.n]) + sum(not r.belonging for r in results[args.n :])) / (
        2 * args.n
    )
    print(json.dumps({"genorigin": str(Path(genorigin.runtime.__file__).parent.parent), "digest": digest,
                      "accuracy": accuracy}))  # fmt: skip


if __name__ == "__main__":
    main()
