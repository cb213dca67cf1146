"""``genorigin attribute … --engine ray``: the options, and the job run from them (``attribute_dataset``).

Prints what ``genorigin attribute`` prints for inputs (``error:`` per unreadable input, ``note:`` for what the
scan passed over), a progress bar with images/s while rows arrive, then one summary line. Exit codes as
``genorigin attribute``: 0 every image has its row, 1 some were unreadable (their error rows are written) or
did not finish (a re-run does them), 2 nothing done.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genorigin.errors import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, CliError, print_problems
from genorigin.progress import Progress

if TYPE_CHECKING:
    from genorigin.scale.batch import ScaleSummary

SINGLE_PROCESS_OUTPUTS = ("report", "csv", "figure", "recon_dir", "json")


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scale-out on Ray Data (the [ray] extra; docs/scale.md)")
    g.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: this process; ray: a pool of Ray actors, rows streamed to --output, "
                   "resumable (default: %(default)s)")  # fmt: skip
    g.add_argument("--output", type=Path, help="--engine ray: results file, *.jsonl or *.parquet; a re-run skips "
                   "the images it already holds; --force starts over (default: none, required with "
                   "--engine ray)")  # fmt: skip
    g.add_argument("--ray-address", default=None, help="the cluster (default: $RAY_ADDRESS, else a `ray start` "
                   "cluster on this machine, else a new local one)")  # fmt: skip
    g.add_argument("--actors", type=int, default=None, help="actors in the pool (default: as many as the cluster "
                   "fits at --num-cpus/--num-gpus each)")  # fmt: skip
    g.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per actor, its torch threads unless --threads "
                   "(default: %(default)s)")  # fmt: skip
    g.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per actor (default: %(default)s)")
    g.add_argument("--ray-batch-size", type=int, default=None,
                   help="images per Ray batch (default: the calibration's loop batch size)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from genorigin.commands import args as common
    from genorigin.scale.actors import FAILED, UNREADABLE
    from genorigin.scale.batch import attribute_dataset

    given = [name for name in SINGLE_PROCESS_OUTPUTS if getattr(args, name)]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise CliError(f"{flags}: outputs of the single-process engine; --engine ray writes rows to --output")
    if args.output is None:
        raise CliError("--engine ray needs --output results.jsonl (or .parquet)")
    bar: list[Progress] = []

    def started(total: int) -> None:
        bar.append(Progress(total, "attributing", "images", quiet=args.quiet))

    def row(status: str, r: dict[str, Any] | None) -> None:
        if status in (UNREADABLE, FAILED) and r is not None:
            print(f"error: {r['error']}", file=sys.stderr, flush=True)
        bar[0].update()

    try:
        summary = attribute_dataset(
            args.inputs, args.model, args.output, calibration=args.calibration,
            choice=common.method_choice(args, args.threads, rule=args.rule), alpha=args.alpha,
            early_exit=not args.no_early_exit, convert=args.convert, ddim_steps=args.ddim_steps, actors=args.actors,
            num_cpus=args.num_cpus, num_gpus=args.num_gpus, batch_size=args.ray_batch_size,
            address=args.ray_address, force=args.force, on_start=started, on_row=row, quiet=args.quiet,
        )  # fmt: skip
    finally:
        if bar:
            bar[0].close()
    return report(summary)


def report(summary: ScaleSummary) -> int:
    """The job's errors and notes on stderr, its summary line on stdout; the exit code."""
    print_problems(summary.errors, summary.notes)
    for source in summary.missing:
        print(f"error: {source}: no result after {summary.passes} passes (a re-run retries it)", file=sys.stderr)
    if not summary.images:
        print("error: no image file in the inputs", file=sys.stderr)
        return EXIT_FAILED
    new = summary.attributed + summary.unreadable
    rate = new / summary.seconds if summary.seconds > 0 else 0.0
    not_done = len(summary.failed) + len(summary.missing)
    print(f"{summary.attributed} attributed ({summary.belonging} belonging), {summary.unreadable} unreadable, "
          f"{summary.already_done} already there, {not_done} not done; {summary.actors} actors, "
          f"{summary.seconds:.1f} s, {rate:.3g} images/s → {summary.output}")  # fmt: skip
    partial = summary.unreadable or summary.errors or not summary.complete
    return EXIT_PARTIAL if partial else EXIT_OK
