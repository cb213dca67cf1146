"""``attribute_dataset``: batch attribution on Ray Data, streamed to a resumable results file.

The driver validates everything a user can get wrong before any actor starts (model, calibration, encoder,
settings, the output), lists the inputs, and skips nothing itself: each entry carries the content hashes its
path already has in the output, and the actor that reads the file says ``skipped`` when the hash matches, so a
file whose content changed is attributed again under its new hash. Rows reach the driver as the actors'
loops finish images and are written at once (``output.ResultsFile``).

Exactly once, whatever dies. Ray Data restarts a killed actor and retries its task (``max_restarts`` and
``max_task_retries`` default to infinite for actor pools); a retried task can deliver rows twice, which the
writer drops by key. An actor killed for good (``ray.kill``), or a task that keeps failing, loses its block:
the dataset is told to carry on (``max_errored_blocks=-1``) and a further pass, on a fresh pool, takes the
entries no row came back for, up to ``MAX_PASSES`` passes. Entries still missing after that are reported.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from genorigin import workflow
from genorigin.decode import Background
from genorigin.files import sha256_file
from genorigin.models import portable_spec
from genorigin.scale.actors import CALLS_PER_ACTOR, FAILED, OK, SKIPPED, UNREADABLE, AttributionActor, JobSpec, Roster
from genorigin.scale.cluster import connect
from genorigin.scale.inputs import Entry, Listing, list_inputs
from genorigin.scale.output import ResultsFile

MAX_PASSES = 3
# Ray Data gathers what a task yields into blocks up to this size before they leave the actor: ~12 rows of
# ~1.3 kB, so rows reach the output in small groups as the loop finishes them, not only at the end of a batch
ROW_BLOCK_BYTES = 16 * 1024
RowCallback = Callable[[str, dict[str, Any] | None], None]  # (status, row: None for skipped)


@dataclass
class ScaleSummary:
    """What a job did; ``complete``: every listed image has its row in the output."""

    output: str
    images: int = 0  # image files the inputs named
    attributed: int = 0  # result rows this run wrote
    belonging: int = 0
    unreadable: int = 0  # error rows this run wrote
    already_done: int = 0  # images whose (content hash, path) the output already held
    duplicates: int = 0  # rows a retried task delivered again, not written
    failed: list[str] = field(default_factory=list)  # inversions that raised: not written, a re-run retries them
    missing: list[str] = field(default_factory=list)  # images no pass brought back
    errors: list[str] = field(default_factory=list)  # inputs that named no image file
    notes: list[str] = field(default_factory=list)
    passes: int = 0
    actors: int = 0
    actor_starts: int = 0  # actors started over all passes (restarts included)
    ready_s: float | None = None  # from the call to the first actor ready (method built): the job's start-up
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return not self.failed and not self.missing

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"complete": self.complete}


@dataclass
class Plan:
    """A validated job: what the actors build, where rows go, the pool's shape."""

    job: JobSpec
    listing: Listing
    results: ResultsFile
    batch_size: int
    identity: dict[str, Any]


def attribute_dataset(
    inputs: Sequence[str] | str,
    model: str,
    output: str | Path,
    *,
    calibration: str | Path | None = None,
    choice: workflow.MethodChoice | None = None,
    alpha: float | None = None,
    early_exit: bool = True,
    convert: Background | None = None,
    ddim_steps: int = 50,
    actors: int | None = None,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    batch_size: int | None = None,
    address: str | None = None,
    force: bool = False,
    roster: str | None = None,
    on_start: Callable[[int], None] | None = None,
    on_row: RowCallback | None = None,
    quiet: bool = True,
) -> ScaleSummary:
    """Attribute every image ``inputs`` name (files, folders, globs, ``.txt`` list files) on a Ray cluster,
        appending one row per image to ``output`` (``.jsonl`` or ``.parquet``); a re-run resumes.

        ``actors``: the pool size (default: as many as the cluster's CPUs, or GPUs, hold at ``num_cpus`` /
        ``num_gpus`` each); ``batch_size``: images per Ray batch (default: the schedule's loop batch size);
        ``address``: the cluster (``ray.init``'s rules; ignored when Ray is already initialised); ``roster``: a name
        for the actor the pool reports to (``Roster``); ``on_start`` is told how many image files the inputs named
    (before any actor starts); ``on_row`` sees each row as it is written or skipped.
        Raises GenoriginError (one line) for what can be fixed before any compute.
    """
    t0, started = time.perf_counter(), time.time()
    specs = [inputs] if isinstance(inputs, str) else list(inputs)
    plan = prepare(specs, model, Path(output), calibration=calibration, choice=choice, alpha=alpha,
                   early_exit=early_exit, convert=convert, ddim_steps=ddim_steps, num_cpus=num_cpus,
                   batch_size=batch_size, force=force)  # fmt: skip
    summary = ScaleSummary(str(output), len(plan.listing.entries), errors=list(plan.listing.errors),
                           notes=list(plan.listing.notes) + plan.results.notes)  # fmt: skip
    complete = False
    if on_start is not None:
        on_start(len(plan.listing.entries))
    try:
        if plan.listing.entries:
            run(plan, summary, started, actors=actors, num_cpus=num_cpus, num_gpus=num_gpus, address=address,
                roster=roster, on_row=on_row, quiet=quiet)  # fmt: skip
        complete = summary.complete
    finally:
        plan.results.close(complete=complete)
        summary.duplicates = plan.results.dropped
        summary.seconds = time.perf_counter() - t0
    return summary


def prepare(specs: Sequence[str], model: str, output: Path, *, calibration: str | Path | None,
            choice: workflow.MethodChoice | None, alpha: float | None, early_exit: bool,
            convert: Background | None, ddim_steps: int, num_cpus: float, batch_size: int | None,
            force: bool) -> Plan:  # fmt: skip
    """Load the method here once (every refusal is one line before Ray starts), list inputs, open the output.

    The driver loads it on the model's default backend: a GPU backend (``choice.backend``) is built by the
    actors, which hold the GPUs; the driver may have none.
    """
    choice = choice or workflow.MethodChoice()
    threads = choice.threads or max(1, int(num_cpus))
    resolved = workflow.resolve(model, ddim_steps, threads)
    loaded = workflow.method_for_attribution(resolved, replace(choice, backend=None),
                                             calibration=Path(calibration) if calibration else None, alpha=alpha,
                                             early_exit=early_exit)  # fmt: skip
    if loaded.method.settings.to_dict().get("robust") == "platform":
        raise workflow.WorkflowError("a platform-mode calibration (--robust platform) inverts each input size "
                                     "in its own loop; the Ray engine's live loop takes one: use the local "
                                     "engine")  # fmt: skip
    encoder = choice.encoder.resolve() if choice.encoder else None
    job = JobSpec(portable_spec(model),
                  replace(choice, encoder=encoder, threads=None), str(loaded.calibration_path.resolve()), alpha,
                  early_exit, ddim_steps, convert, threads)  # fmt: skip
    described = loaded.method.describe()
    schedule = {k: v for k, v in (described.get("schedule") or {}).items() if k != "batch_size"}
    identity = {"model_fingerprint": resolved.generator.fingerprint(), "method": described.get("method"),
                "settings": described.get("settings"), "schedule": schedule, "rule": described.get("rule"),
                "encoder": described.get("encoder"), "alpha": loaded.calibration.alpha,
                "calibration_sha256": sha256_file(loaded.calibration_path), "convert": convert}  # fmt: skip
    listing = list_inputs(specs)
    results = ResultsFile(output)
    results.open(identity, force=force)
    loop_batch = loaded.method.schedule.batch_size if loaded.method.schedule is not None else 32
    return Plan(job, listing, results, batch_size or loop_batch, identity)


def run(plan: Plan, summary: ScaleSummary, started: float, *, actors: int | None, num_cpus: float, num_gpus: float,
        address: str | None, roster: str | None, on_row: RowCallback | None, quiet: bool) -> None:  # fmt: skip
    """The passes: each runs the entries no row came back for yet on a fresh actor pool."""
    ray = connect(address, quiet=quiet)
    summary.actors = actors or default_actors(ray.cluster_resources(), num_cpus, num_gpus)
    name = roster or f"genorigin-roster-{time.time_ns()}"
    keeper = ray.remote(Roster).options(name=name, num_cpus=0).remote()
    pending = list(plan.listing.entries)
    try:
        for number in range(1, MAX_PASSES + 1):
            summary.passes = number
            seen = run_pass(ray, plan, pending, summary, name, num_cpus, num_gpus, on_row)
            pending = [e for e in pending if e.source not in seen]
            if not pending:
                break
        summary.missing = [e.source for e in pending]
        members = ray.get(keeper.list.remote())
        summary.actor_starts = len(members)
        summary.ready_s = min((m[3] for m in members), default=started) - started
    finally:
        ray.kill(keeper)


def run_pass(ray: Any, plan: Plan, entries: Sequence[Entry], summary: ScaleSummary, roster: str,
             num_cpus: float, num_gpus: float, on_row: RowCallback | None) -> set[str]:  # fmt: skip
    """One Ray Data execution over ``entries``; the sources a row came back for."""
    from ray.data import ActorPoolStrategy

    items = [{"source": e.source, "path": e.path, "done": plan.results.tokens(e.source)} for e in entries]
    blocks = max(1, math.ceil(len(items) / plan.batch_size))
    pool = ActorPoolStrategy(size=max(1, min(summary.actors, blocks)), max_concurrent_calls_per_actor=CALLS_PER_ACTOR,
                             enable_true_multi_threading=True)  # fmt: skip
    mapped = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
        AttributionActor, fn_constructor_args=(plan.job, roster), batch_size=plan.batch_size, compute=pool,
        num_cpus=num_cpus, num_gpus=num_gpus or None,
    )  # fmt: skip
    mapped.context.max_errored_blocks = -1  # a lost block is retried by the next pass, not fatal
    mapped.context.target_max_block_size = ROW_BLOCK_BYTES  # rows leave an actor in small blocks, not per batch
    seen: set[str] = set()
    for block in mapped.iter_batches(batch_size=None, batch_format="numpy"):
        for source, status, line in zip(block["source"], block["status"], block["row"]):
            seen.add(str(source))
            record(plan.results, summary, str(source), str(status), str(line), on_row)
        plan.results.flush()
    return seen


def record(results: ResultsFile, summary: ScaleSummary, source: str, status: str, line: str,
           on_row: RowCallback | None) -> None:  # fmt: skip
    """One row from an actor: written (once), counted, or reported."""
    row = json.loads(line) if line else None
    if status == SKIPPED:
        summary.already_done += 1
    elif status == FAILED:
        assert row is not None
        if row["error"] in summary.failed:
            return  # a retried task's second report
        summary.failed.append(str(row["error"]))
    elif row is None or not results.add(row, line):
        return  # a retried task's second delivery: written once
    elif status == OK:
        summary.attributed += 1
        summary.belonging += row.get("verdict") == "belonging"
    elif status == UNREADABLE:
        summary.unreadable += 1
    if on_row is not None:
        on_row(status, row)


def default_actors(resources: dict[str, float], num_cpus: float, num_gpus: float) -> int:
    """As many actors as the cluster holds at the asked resources each (at least one)."""
    if num_gpus > 0:
        return max(1, int(resources.get("GPU", 0) // num_gpus))
    return max(1, int(resources.get("CPU", 1) // max(num_cpus, 1e-9)))
