"""Single process vs Ray Data with 1 and 2 actors: the same images, the same calibration, one run.

One command (a local Ray cluster on this machine; ~6 minutes on a 2-core CPU)::

    python benchmarks/bench_scale.py --out benchmarks/results/scale/bench_scale.json

Model: the bundled ``dcgan_a`` under the fast preset (its shipped encoder, per-slot L-BFGS, 200 steps, early
exit), calibrated once on ``--samples`` own samples. Images: ``--n`` PNG files, half fresh own samples, half
bundled real crops. Runs, in order, each from loading the model to the last result:

* ``single, 1 thread`` and ``single, 2 threads``: what ``genorigin attribute`` does (``workflow.read`` + the
  method's ``attribute``) in this process;
* ``ray, 1 actor`` and ``ray, 2 actors`` (1 CPU, 1 torch thread each): ``attribute_dataset`` on a cluster
  started once beforehand (``ray.init(num_cpus=2)``, timed apart), writing a fresh JSON-lines output.

Per run: wall seconds, images/s, seconds to the first result (model load, actor start), the steady rate after
it, and the loop's image-steps per second (what capacity planning in docs/scale.md scales). Ray's overhead, against
the single process with 1 thread: at the start (first result, seconds: paid once per job) and per image once
running (steady seconds per image per actor minus the single process's). Verdicts must agree across runs.
Last, the driver's writer alone: rows per second ``ResultsFile`` appends, and bytes per row.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import EVAL_SAMPLE_SEED, machine, real_crops
from genorigin.runtime.attribution import quantize_8bit

from genorigin import workflow
from genorigin.cli import main
from genorigin.images import save_png
from genorigin.threads import use_threads


def write_images(folder: Path, n: int) -> Path:
    """``n`` PNGs: fresh own samples of dcgan_a and bundled real crops, half each."""
    folder.mkdir(parents=True, exist_ok=True)
    own = quantize_8bit(workflow.resolve("dcgan_a").generator.sample(n - n // 2, seed=EVAL_SAMPLE_SEED))
    for i, image in enumerate(own):
        save_png(image, folder / f"own_{i:04d}.png")
    for i, image in enumerate(real_crops(n // 2)):
        save_png(image, folder / f"real_{i:04d}.png")
    return folder


def calibrate(work: Path, samples: int) -> Path:
    cal = work / "dcgan_a.fast.calibration.json"
    if not cal.exists():
        argv = ["calibrate", "--model", "dcgan_a", "--samples", str(samples), "--out", str(cal), "--quiet"]
        if main([*argv, "--threads", "2"]) != 0:
            raise SystemExit("calibration failed")
    return cal


class Clock:
    """Wall time of a run, and when its first and last results arrived."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.first: float | None = None
        self.done = 0

    def tick(self, *_: object) -> None:
        self.first = self.first or time.perf_counter() - self.t0
        self.done += 1

    def summary(self, n: int, image_steps: int) -> dict[str, Any]:
        seconds = time.perf_counter() - self.t0
        first = self.first or seconds
        return {"seconds": seconds, "images": n, "images_per_s": n / seconds, "first_result_s": first,
                "steady_images_per_s": (n - 1) / (seconds - first) if seconds > first else None,
                "image_steps": image_steps, "image_steps_per_s": image_steps / seconds}  # fmt: skip


def single(images: Path, cal: Path, threads: int) -> tuple[dict[str, Any], dict[str, str]]:
    clock = Clock()
    use_threads(threads)
    model = workflow.resolve("dcgan_a", threads=threads)
    loaded = workflow.method_for_attribution(model, workflow.MethodChoice(threads=threads), calibration=cal)
    read = workflow.read(model, [str(images)])
    found = workflow.run(loaded.method, read, on_done=clock.tick)
    verdicts = {r.source: r.verdict for r in found.results}
    return clock.summary(len(verdicts), sum(r.steps for r in found.results)), verdicts


def on_ray(images: Path, cal: Path, actors: int, out: Path) -> tuple[dict[str, Any], dict[str, str]]:
    from genorigin.scale import attribute_dataset

    clock = Clock()
    rows: list[dict[str, Any]] = []

    def row(status: str, r: dict[str, Any] | None) -> None:
        clock.tick()
        if r is not None:
            rows.append(r)

    summary = attribute_dataset([str(images)], "dcgan_a", out, calibration=cal, actors=actors, num_cpus=1,
                                force=True, on_row=row)  # fmt: skip
    if not summary.complete or summary.unreadable:
        raise SystemExit(f"the Ray job did not complete: {summary}")
    verdicts = {r["source"]: r["verdict"] for r in rows}
    result = clock.summary(len(verdicts), sum(r["steps"] for r in rows))
    return result | {"passes": summary.passes, "actor_starts": summary.actor_starts}, verdicts


def writer_rate(rows: Path, out: Path, n: int = 20_000) -> dict[str, float]:
    """The driver's side alone: rows/s ``ResultsFile`` appends (key check, one line, flush per 64 rows), and the
    mean row size, from the Ray run's own rows with fresh keys."""
    from genorigin.scale.output import ResultsFile, to_line

    sample = [json.loads(line) for line in rows.read_text().splitlines()]
    results = ResultsFile(out)
    results.open({"benchmark": "writer"}, force=True)
    t0 = time.perf_counter()
    for i in range(n):
        row = dict(sample[i % len(sample)], content_sha256=f"{i:064x}")
        results.add(row, to_line(row))
        if i % 64 == 63:
            results.flush()
    results.close()
    seconds = time.perf_counter() - t0
    return {"rows_per_s": n / seconds, "bytes_per_row": out.stat().st_size / n}


def table(runs: dict[str, dict[str, Any]]) -> str:
    head = ("| run | wall s | images/s | first result s | steady images/s | image-steps/s | start overhead s | "
            "steady overhead ms/image/actor |")  # fmt: skip
    lines = [head, "|" + "---|" * 8]

    def cell(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    for name, r in runs.items():
        lines.append(f"| {name} | {r['seconds']:.1f} | {r['images_per_s']:.2f} | {r['first_result_s']:.1f} | "
                     f"{cell(r['steady_images_per_s'], 2)} | {r['image_steps_per_s']:.0f} | "
                     f"{cell(r.get('start_overhead_s'), 1)} | "
                     f"{cell(r.get('steady_overhead_per_image_ms'), 0)} |")  # fmt: skip
    return "\n".join(lines)


def main_bench(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="images (half own samples, half real crops)")
    ap.add_argument("--samples", type=int, default=50, help="own samples the calibration inverts")
    ap.add_argument("--work", type=Path, default=Path("/tmp/genorigin-bench-scale"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/scale/bench_scale.json"))
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    images = write_images(args.work / f"images_{args.n}", args.n)
    cal = calibrate(args.work, args.samples)
    runs: dict[str, dict[str, Any]] = {}
    verdicts: dict[str, dict[str, str]] = {}

    def record(name: str, fn: Callable[[], tuple[dict[str, Any], dict[str, str]]]) -> None:
        runs[name], verdicts[name] = fn()
        print(f"{name}: {runs[name]['seconds']:.1f} s, {runs[name]['images_per_s']:.2f} images/s", flush=True)

    record("single, 1 thread", lambda: single(images, cal, 1))
    record("single, 2 threads", lambda: single(images, cal, 2))
    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    cluster_s = time.perf_counter() - t0
    record("ray, 1 actor", lambda: on_ray(images, cal, 1, args.work / "ray1.jsonl"))
    record("ray, 2 actors", lambda: on_ray(images, cal, 2, args.work / "ray2.jsonl"))
    ray.shutdown()
    writer = writer_rate(args.work / "ray2.jsonl", args.work / "writer.jsonl")
    base = runs["single, 1 thread"]
    for name, actors in (("ray, 1 actor", 1), ("ray, 2 actors", 2)):
        r = runs[name]
        r["start_overhead_s"] = r["first_result_s"] - base["first_result_s"]
        if r["steady_images_per_s"] and base["steady_images_per_s"]:
            per_actor = r["steady_images_per_s"] / actors
            r["steady_overhead_per_image_ms"] = 1000 * (1 / per_actor - 1 / base["steady_images_per_s"])
    reference = verdicts["single, 1 thread"]
    agree = {name: sum(v[s] == reference[s] for s in reference) for name, v in verdicts.items()}
    report = {"machine": machine() | {"load_average": os.getloadavg()}, "n": args.n, "calibration": str(cal),
              "ray_cluster_start_s": cluster_s, "runs": runs, "writer": writer,
              "verdicts_agreeing_with_single": agree}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(table(runs))
    print(f"writer: {writer['rows_per_s']:.0f} rows/s, {writer['bytes_per_row']:.0f} bytes per row")
    print(f"Ray cluster start: {cluster_s:.1f} s; verdicts agreeing with the single process: {agree}")


if __name__ == "__main__":
    main_bench()
