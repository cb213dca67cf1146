"""``genorigin robustness --model M``: where attribution of M's images breaks under platform transforms, and
whether the robust mode holds (issue 13) — a smaller run of benchmarks/eval_robustness.py for any model.

Own samples of M and non-belonging images (the bundled held-out real photos, or ``--negatives``) go through
JPEG, resizing, cropping, noise and WebP (runtime/robust/transforms.py); each mode is calibrated on M's own samples
and read per transform (src/genorigin/robustness_eval.py). Prints one row per transform × mode; ``--report`` writes
the JSON, ``--figure`` the AUC-vs-JPEG-quality plot.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from genorigin.errors import EXIT_FAILED, EXIT_OK
from genorigin.export.bundled import real_images_dir
from genorigin.images import load_rgb8, read_images
from genorigin.models import ResolvedModel, resolve_model
from genorigin.runtime.loop.settings import FAST_SCHEDULE, FAST_SETTINGS, InversionSettings, Schedule
from genorigin.runtime.robust.modes import EVALUATION_MODES as MODES
from genorigin.runtime.robust.transforms import TRANSFORMS

if TYPE_CHECKING:  # the loop (torch) is imported when the evaluation runs, not for --help
    from genorigin.runtime.methods.attribution import Attributor
    from genorigin.runtime.methods.encoder import Encoder

OWN_SEED = 777  # fresh own samples: not the calibration's seed
JPEG_AXIS = [("none", 100), ("jpeg95", 95), ("jpeg90", 90), ("jpeg80", 80), ("jpeg70", 70), ("jpeg50", 50)]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="bundled name, .pt model file or attribution package")
    p.add_argument("--modes", nargs="+", default=["plain", "robust"], choices=MODES)
    p.add_argument("--transforms", nargs="+", default=list(TRANSFORMS), choices=list(TRANSFORMS), metavar="T",
                   help=f"default: all of {', '.join(TRANSFORMS)}")  # fmt: skip
    p.add_argument("--n", type=int, default=20, help="own and non-belonging images per transform")
    p.add_argument("--samples", type=int, default=50, help="own samples each mode is calibrated on")
    p.add_argument("--negatives", nargs="+", help="non-belonging images (files, folders, patterns); default: "
                   "the bundled held-out real photos, resized to the model")  # fmt: skip
    p.add_argument("--encoder", help="fitted encoder (.pt) for the fast preset's starts; bundled models ship one")
    p.add_argument("--steps", type=int, default=FAST_SETTINGS.steps, help="step budget per image")
    p.add_argument("--backend", default=None, help="torch (PyTorch models) or onnxruntime (packages; default)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--report", help="write the JSON report here")
    p.add_argument("--figure", help="write the AUC-vs-JPEG-quality plot (PNG) here")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    p.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    from genorigin.robustness_eval import evaluate_robustness
    from genorigin.runtime.decide.calibration import quantize_8bit
    from genorigin.runtime.methods.attribution import Attributor

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        model = resolve_model(args.model)
        own = quantize_8bit(model.generator.sample(args.n, seed=OWN_SEED))
        sets = {"own": own, "non-belonging": negatives(model, args)}
        encoder = encoder_for(model, args)
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    backend = args.backend or ("torch" if model.generator.module is not None else "onnxruntime")

    def make(settings: InversionSettings, schedule: Schedule) -> Attributor:
        return Attributor(model.generator, backend=model.backend(backend, settings.loss, args.threads),
                          settings=settings, schedule=schedule, encoder=encoder)  # fmt: skip

    say = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    base = InversionSettings(**{**FAST_SETTINGS.to_dict(), "steps": args.steps})
    report = evaluate_robustness(make, sets, base=base, schedule=FAST_SCHEDULE, transforms=args.transforms,
                                 modes=args.modes, calibration_samples=args.samples, progress=say)  # fmt: skip
    report = {"model": model.source, "images_per_class": args.n, **report}
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=1, default=float))
    if args.figure:
        jpeg_figure({model.source: report}, args.figure)
    print(json.dumps(report, indent=1, default=float) if args.json else format_table(report))
    return EXIT_OK


def negatives(model: ResolvedModel, args: argparse.Namespace) -> np.ndarray:
    """``--negatives`` read for the model, or the bundled real crops prepared for it; ``args.n`` of them."""
    if args.negatives:
        read = read_images(args.negatives, model.generator)
        if len(read.images) < args.n:
            raise ValueError(f"--negatives gave {len(read.images)} readable images, --n asks for {args.n}")
        return read.images[: args.n]
    paths = sorted(real_images_dir().glob("*.png"))[: args.n]
    return np.stack([model.generator.prepare_image(load_rgb8(p)) for p in paths])


def encoder_for(model: ResolvedModel, args: argparse.Namespace) -> Encoder:
    """The encoder whose latents start every inversion: ``--encoder``, the bundled one, or one fitted now."""
    from genorigin.runtime.methods.attribution import Attributor
    from genorigin.runtime.methods.encoder import FittedEncoder

    if args.encoder:
        return FittedEncoder.load(args.encoder)
    if model.encoder_path.exists():
        return FittedEncoder.load(model.encoder_path)
    if not args.quiet:
        print("fitting an encoder for the fast preset's starts (pass --encoder to reuse one)", file=sys.stderr)
    return Attributor(model.generator, settings=FAST_SETTINGS).fit_encoder()


def format_table(report: dict[str, Any]) -> str:
    """One row per transform × mode: AUC of the full-budget scores, then the early exit's decisions."""
    head = f"{'transform':<12} {'mode':<17} {'AUC':>6} {'acc.':>6} {'FPR':>5} {'TPR':>5} {'steps':>6}"
    lines = [f"robustness of {report['model']} ({report['images_per_class']} images per class; AUC at the full "
             "budget, decisions at the early exit, Grubbs α = calibration's)", head, "-" * len(head)]  # fmt: skip
    for t, by_mode in report["transforms"].items():
        for mode, r in by_mode.items():
            f, e = r["full_budget"], r["early_exit"]
            lines.append(f"{t:<12} {mode:<17} {f['auc']['non-belonging']:6.3f} {e['accuracy']:6.3f} "
                         f"{e['fpr']:5.2f} {e['tpr']['non-belonging']:5.2f} {e['mean_steps']:6.0f}")  # fmt: skip
    return "\n".join(lines)


def jpeg_figure(reports: dict[str, dict[str, Any]], out: str | Path, against: str | None = None,
                modes: tuple[str, ...] = ("plain", "robust")) -> None:  # fmt: skip
    """AUC (full budget) vs JPEG quality, one line per mode of ``modes``, one panel per model; ``against``: the
    non-belonging class (default: each report's only or "real" class). AUC is threshold-free, so it depends
    on the loss only: ``calibration-only`` would hide under ``plain``, ``loss-only`` under ``robust``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(reports), figsize=(4.2 * len(reports), 3.4), sharey=True, squeeze=False)
    for ax, (name, report) in zip(axes[0], reports.items()):
        points = [(q, report["transforms"][t]) for t, q in JPEG_AXIS if t in report["transforms"]]
        for mode in modes:
            ys = [(q, _auc(r[mode], against)) for q, r in points if mode in r]
            if ys:
                ax.plot(*zip(*ys), marker="o", label=mode)
        ax.set_title(name)
        ax.set_xlabel("JPEG quality (100: the unmodified PNG)")
        ax.axhline(0.95, color="grey", lw=0.8, ls="--")
        ax.invert_xaxis()
    axes[0][0].set_ylabel(f"AUC, own vs {against or 'non-belonging'}")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _auc(reading: dict[str, Any], against: str | None) -> float:
    aucs = reading["full_budget"]["auc"]
    return aucs[against] if against else aucs.get("real", next(iter(aucs.values())))
