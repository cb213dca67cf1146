"""`genorigin demo`: the whole job on bundled models and images, no downloads.

Calibrates the inspected bundled model, writes a mix of its own samples, a sibling model's samples, another
family's samples and held-out real photos as PNG files, attributes those files, prints a table, and writes a
JSON report and a PNG figure.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from genorigin.export.bundled import BUNDLED_MODELS, load_bundled, real_images_dir
from genorigin.images import save_png

DEMO_SAMPLE_SEED = 2024


def add_demo_parser(sub: argparse._SubParsersAction) -> None:
    from genorigin.cli import _add_inversion_args

    p = sub.add_parser("demo", help="calibrate a bundled model and attribute a bundled mix of images")
    p.add_argument("--model", default="dcgan_a", choices=BUNDLED_MODELS, help="the inspected model")
    p.add_argument("--out", default="genorigin-demo", help="output folder")
    p.add_argument("--samples", type=int, default=50, help="calibration samples (the demo uses 50 to stay quick)")
    p.add_argument("--per-class", type=int, default=12, help="images per class in the mix")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--force", action="store_true", help="reuse a non-empty output folder")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of a table")
    p.add_argument("--quiet", action="store_true")
    _add_inversion_args(p)
    p.set_defaults(func=cmd_demo)


def write_mix(inspected: str, folder: Path, per_class: int) -> list[str]:
    """PNG files of four classes; returns the class label of each file in sorted-path order."""
    classes: dict[str, list[np.ndarray]] = {}
    classes[f"own-{inspected}"] = list(load_bundled(inspected).sample(per_class, seed=DEMO_SAMPLE_SEED))
    for other in BUNDLED_MODELS:
        if other != inspected:
            classes[f"other-{other}"] = list(load_bundled(other).sample(per_class, seed=DEMO_SAMPLE_SEED))
    reals = sorted(real_images_dir().glob("*.png"))[:per_class]
    for label, images in classes.items():
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(images):
            save_png(img, folder / label / f"{label}_{i:03d}.png")
    (folder / "real").mkdir(parents=True, exist_ok=True)
    for p in reals:
        shutil.copyfile(p, folder / "real" / p.name)
    return [*sorted(classes), "real"]


def cmd_demo(args: argparse.Namespace) -> int:
    from genorigin.cli import (
        EXIT_OK,
        CliError,
        _progress,
        _read_images,
        _report,
        _resolve,
        _set_threads,
        format_table,
        make_attributor,
        run_attribution,
    )
    from genorigin.report import attribution_figure

    _set_threads(args.threads)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise CliError(f"{out} is not empty; pass --force or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = _resolve(args.model)
    attributor = make_attributor(model, args, early_exit=False)
    with _progress(args.samples, f"calibrating {args.model}", args.quiet) as bar:
        cal = attributor.calibrate(args.samples, alpha=args.alpha, on_done=lambda _: bar.update())
    cal.save(out / "calibration.json", overwrite=True)
    t_cal = time.perf_counter() - t0

    classes = write_mix(args.model, out / "images", args.per_class)
    specs = [str(out / "images" / c) for c in classes]
    sources, images, errors = _read_images(specs, model)
    labels = [Path(s).parent.name for s in sources]
    attributor = make_attributor(model, args, early_exit=True)
    attributor.use_calibration(cal)
    t1 = time.perf_counter()
    results = run_attribution(attributor, sources, images, args.quiet, keep_recon=True)
    t_attr = time.perf_counter() - t1

    report = _report(model, cal, attributor, results, errors)
    truth = [lab.startswith("own-") for lab in labels]
    per_class = {
        c: {
            "images": labels.count(c),
            "called_belonging": sum(r.belonging for r, lab in zip(results, labels) if lab == c),
        }
        for c in classes
    }
    accuracy = float(np.mean([r.belonging == t for r, t in zip(results, truth)]))
    report["demo"] = {
        "labels": labels,
        "per_class": per_class,
        "accuracy": accuracy,
        "calibration_seconds": t_cal,
        "attribution_seconds": t_attr,
    }
    (out / "report.json").write_text(json.dumps(report, indent=1))
    attribution_figure(results, images, cal, out / "figure.png", labels=labels)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(format_table(results, labels))
        print()
        for c, d in per_class.items():
            print(f"  {c:<16} {d['called_belonging']:>3}/{d['images']:<3} called belonging")
        print(
            f"accuracy {accuracy:.1%} on {len(results)} images; calibration {t_cal:.1f} s, "
            f"attribution {t_attr:.1f} s ({t_attr / max(len(results), 1) * 1000:.0f} ms/image, "
            f"mean {report['summary']['mean_steps']:.0f} steps)"
        )
        print(f"wrote {out / 'report.json'}, {out / 'figure.png'}, {out / 'calibration.json'}")
    return EXIT_OK
