"""genorigin attribute: decide for each image whether the model generated it — or, with several ``--model``,
which of them did (each model's verdict and the decision across them: ``genorigin.across``).

The settings are the calibration's. Unreadable inputs are one ``error:`` line each on stderr (exit 1, the
others attributed), what the path expansion passed over a ``note:`` line. Every output file is checked
before the first inversion step, results are printed before any file is written, and each file is written
atomically.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from genorigin import __version__, across, workflow
from genorigin.commands import args as common
from genorigin.errors import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, CliError, print_problems
from genorigin.images import encode_png
from genorigin.models import MODEL_KINDS, named_specs, per_model
from genorigin.outputs import OutputPlan, unique_names, write_bytes, write_text
from genorigin.progress import Progress
from genorigin.runtime.decide.multimodel import RULE
from genorigin.runtime.methods.files import FileAttribution
from genorigin.tables import format_table, summary_line, to_csv


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns (PNG, JPEG, WebP; docs/inputs.md)")
    p.add_argument("--model", action="append", required=True, metavar="[NAME=]SPEC",
                   help=f"the model whose images to recognise: {'; '.join(MODEL_KINDS.values())}. Repeat it for "
                   "several models: each image gets every model's verdict and the decision across them (which of "
                   "them made it, or none; the service's rule)")  # fmt: skip
    common.add_calibration_choice(p)
    p.add_argument("--no-early-exit", action="store_true", help="spend the full step budget on every image")
    p.add_argument(
        "--convert",
        choices=["white", "black"],
        default=None,
        help="read greyscale, palette and transparent images as RGB on this background, recorded in each "
        "result (default: refuse them)",
    )
    g = p.add_argument_group("outputs (checked before any compute; never replaced without --force)")
    g.add_argument("--report", type=Path, help="write the JSON report here")
    g.add_argument("--csv", type=Path, help="write one CSV row per image here")
    g.add_argument("--figure", type=Path, help="write a PNG figure (reconstructions, loss curves, scores) here")
    g.add_argument("--recon-dir", type=Path, help="write each best reconstruction as <name>.recon.png here")
    g.add_argument("--force", action="store_true", help="allow replacing existing output files")
    g.add_argument("--json", action="store_true", help="print the JSON report instead of a table")
    g.add_argument("--quiet", action="store_true", help="no progress")
    common.add_method_options(p, attributing=True)
    from genorigin.commands import attribute_ray  # the options only: Ray is imported when a job starts

    attribute_ray.add_arguments(p)


def run(args: argparse.Namespace) -> int:
    specs = named_specs(args.model)
    calibrations = per_model(args.calibration, [name for name, _ in specs], "--calibration")
    if args.engine == "ray":
        from genorigin.commands import attribute_ray

        if len(specs) > 1:
            raise CliError("--engine ray attributes with one --model")
        args.model, args.calibration = specs[0][1], calibrations.get(specs[0][0])
        return attribute_ray.run(args)
    common.check_ranges(args)
    if len(specs) > 1:
        return run_several(args, specs, calibrations)
    name, spec = specs[0]
    files = {k: v for k, v in (("report", args.report), ("csv", args.csv), ("figure", args.figure)) if v}
    OutputPlan(files=files).check(args.force)  # before the model loads: a taken target costs nothing
    model, loaded = common.load_for_attribution(args, spec, calibrations.get(name), early_exit=not args.no_early_exit)
    images = workflow.read(model, args.inputs, args.convert, loaded.method.reader)
    print_problems(images.errors, images.skipped)
    if not images.sources:
        print("error: no image could be read", file=sys.stderr)
        return EXIT_FAILED
    plan = OutputPlan(files=files)
    if args.recon_dir:
        plan.folders["recon"] = args.recon_dir
        plan.recon = [args.recon_dir / n for n in unique_names(images.sources, ".recon.png")]
    plan.check(args.force)
    with Progress(len(images.sources), "attributing", "images", quiet=args.quiet) as bar:
        found = workflow.run(
            loaded.method,
            images,
            keep_reconstructions=bool(args.recon_dir or args.figure),
            on_done=lambda _: bar.update(),
        )
    report = workflow.build_report(model, loaded, found)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(format_table(found.results, loaded.method.accept_threshold(), loaded.calibration))
        print(summary_line(found.results, len(found.errors), len(found.skipped)))
        for r in found.results:  # outside what the calibration covers (runtime/robust/coverage.py); --json has them too
            if r.warning:
                print(f"warning: {r.source}: {r.warning}")
    sys.stdout.flush()
    write_outputs(plan, report, found, loaded)
    return EXIT_PARTIAL if found.errors else EXIT_OK


def run_several(args: argparse.Namespace, specs: list[tuple[str, str]], calibrations: dict[str, str]) -> int:
    """Every model on the same images; one row per image with each model's verdict and the decision across."""
    if args.figure or args.recon_dir or args.encoder:
        raise CliError("--figure, --recon-dir and --encoder are for one --model (each model's encoder is found "
                       "beside it, as its calibration pins it)")  # fmt: skip
    files = {k: v for k, v in (("report", args.report), ("csv", args.csv)) if v}
    OutputPlan(files=files).check(args.force)
    loaded = {name: common.load_for_attribution(args, spec, calibrations.get(name), early_exit=not args.no_early_exit)
              for name, spec in specs}  # fmt: skip
    reads = {name: workflow.read(model, args.inputs, args.convert, load.method.reader)
             for name, (model, load) in loaded.items()}  # fmt: skip
    found = {}
    with Progress(sum(len(r.sources) for r in reads.values()), "attributing", "images", quiet=args.quiet) as bar:
        for name, (_, load) in loaded.items():
            found[name] = workflow.run(load.method, reads[name], on_done=lambda _: bar.update())
    rows, errors, skipped = across.join(found)
    print_problems(errors, skipped)
    if not rows:
        print("error: no image could be read", file=sys.stderr)
        return EXIT_FAILED
    names = list(loaded)
    summary = across.summary(rows, names, len(errors), len(skipped))
    models = {name: _model_part(workflow.build_report(model, load, found[name])) for name, (model, load) in
              loaded.items()}  # fmt: skip
    report = {
        "genorigin_version": __version__,
        "models": models,
        "rule": RULE,
        "results": [row.to_dict() for row in rows],
        "errors": errors,
        "skipped": skipped,
        "summary": summary,
    }
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(across.format_table(rows, names))
        print(across.summary_line(summary))
        for row in rows:
            for name, r in row.results.items():
                if r.warning:
                    print(f"warning: {row.source} ({name}): {r.warning}")
    sys.stdout.flush()
    if "report" in files:
        write_text(files["report"], json.dumps(report, indent=1))
    if "csv" in files:
        write_text(files["csv"], across.to_csv(rows, names))
    return EXIT_PARTIAL if errors else EXIT_OK


def _model_part(report: dict[str, Any]) -> dict[str, Any]:
    """A one-model report without its images: what the model, method and calibration were."""
    return {k: v for k, v in report.items() if k not in ("genorigin_version", "results", "errors", "skipped",
                                                          "summary")}  # fmt: skip


def write_outputs(plan: OutputPlan, report: dict, found: FileAttribution, loaded: workflow.Loaded) -> None:
    """Each planned file, atomically (results are already on stdout if one fails)."""
    if "report" in plan.files:
        write_text(plan.files["report"], json.dumps(report, indent=1))
    if "csv" in plan.files:
        write_text(plan.files["csv"], to_csv(found.results))
    if "figure" in plan.files:
        from genorigin.report import figure_png

        write_bytes(
            plan.files["figure"],
            figure_png(found.results, found.images, loaded.calibration, threshold=loaded.method.accept_threshold()),
        )
    for result, target in zip(found.results, plan.recon):
        if result.reconstruction is not None:
            write_bytes(target, encode_png(result.reconstruction))
