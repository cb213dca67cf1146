"""genorigin demo: the whole job on bundled models and images (genorigin.demo), then a table, a summary, a
JSON report and a figure."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from genorigin.commands import args as common
from genorigin.errors import EXIT_OK, CliError
from genorigin.export.bundled import BUNDLED_MODELS
from genorigin.outputs import write_bytes, write_text
from genorigin.tables import format_table, summary_line


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="dcgan_a", choices=BUNDLED_MODELS, help="the inspected bundled model")
    p.add_argument("--out", type=Path, default=Path("genorigin-demo"), help="output folder")
    p.add_argument("--samples", type=int, default=50, help="calibration samples (50 keeps the demo quick)")
    p.add_argument("--per-class", type=int, default=12, help="images per class in the mix")
    p.add_argument("--alpha", type=float, default=0.05, help="test level")
    p.add_argument("--force", action="store_true", help="reuse a non-empty output folder")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of a table")
    p.add_argument("--quiet", action="store_true", help="no progress")
    p.set_defaults(method="inversion", backend=None, ddim_steps=50)
    common.add_inversion(p, attributing=False)
    common.add_fit(p)
    common.add_performance(p)


def run(args: argparse.Namespace) -> int:
    from genorigin import workflow
    from genorigin.demo import run_demo
    from genorigin.report import figure_png

    out: Path = args.out
    if out.exists() and any(out.iterdir()) and not args.force:
        raise CliError(f"{out} is not empty; pass --force or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    threads = common.configure_threads(args)
    demo = run_demo(
        args.model,
        out,
        common.method_choice(args, threads),
        samples=args.samples,
        per_class=args.per_class,
        alpha=args.alpha,
        fit=common.fit_settings(args),
        fit_seconds=args.fit_seconds,
        quiet=args.quiet,
    )
    report = workflow.build_report(demo.model, demo.loaded, demo.found)
    results = demo.found.results
    report["demo"] = {
        "labels": demo.labels,
        "per_class": demo.per_class(),
        "accuracy": demo.accuracy(),
        "encoder_fitted": demo.encoder_fitted,
        **{f"{k}_seconds": v for k, v in demo.seconds.items()},
    }
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(format_table(results, demo.loaded.method.accept_threshold(), demo.loaded.calibration, demo.labels))
        print()
        for c, d in demo.per_class().items():
            print(f"  {c:<16} {d['called_belonging']:>3}/{d['images']:<3} called belonging")
        t_attr = demo.seconds["attribution"]
        print(summary_line(results, len(demo.found.errors), len(demo.found.skipped)))
        print(
            f"accuracy {demo.accuracy():.1%} on {len(results)} images; calibration {demo.seconds['calibration']:.1f} s"
            f", attribution {t_attr:.1f} s ({t_attr / max(len(results), 1) * 1000:.0f} ms/image, mean "
            f"{report['summary']['mean_steps']:.0f} steps)"
        )
    write_text(out / "report.json", json.dumps(report, indent=1))
    write_bytes(
        out / "figure.png",
        figure_png(
            results,
            demo.found.images,
            demo.loaded.calibration,
            labels=demo.labels,
            threshold=demo.loaded.method.accept_threshold(),
        ),
    )
    if not args.json:
        print(f"wrote {out / 'report.json'}, {out / 'figure.png'}, {out / 'calibration.json'}")
    return EXIT_OK
