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

Per run: wall seconds and images/s; the start (until the method is loaded; for Ray, until the first actor
reported ready: driver checks, Ray Data planning, actor process, model load), then the busy part: images/s,
image-steps/s (what capacity planning in docs/scale.md scales) and milliseconds per image per worker (1 torch
thread each). Ray's overhead against the single process with 1 thread: the extra start (paid once per job)
and the extra busy milliseconds per image per worker. Verdicts must agree across runs.
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
from genorigin.runtime.decide.calibration import quantize_8bit

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


def measures(seconds: float, start_s: float, n: int, workers: int, image_steps: int) -> dict[str, Any]:
    """A run's figures: ``start_s`` until it could attribute (model and method loaded; for Ray: the first actor
    ready), the rest busy attributing with ``workers`` single-threaded workers."""
    busy = seconds - start_s
    return {"seconds": seconds, "images": n, "images_per_s": n / seconds, "start_s": start_s,
            "busy_images_per_s": n / busy, "busy_ms_per_image_per_worker": 1000 * busy * workers / n,
            "image_steps": image_steps, "busy_image_steps_per_s": image_steps / busy}  # fmt: skip


def single(images: Path, cal: Path, threads: int) -> tuple[dict[str, Any], dict[str, str]]:
    t0 = time.perf_counter()
    use_threads(threads)
    model = workflow.resolve("dcgan_a", threads=threads)
    loaded = workflow.method_for_attribution(model, workflow.MethodChoice(threads=threads), calibration=cal)
    start = time.perf_counter() - t0
    found = workflow.run(loaded.method, workflow.read(model, [str(images)]))
    seconds = time.perf_counter() - t0
    verdicts = {r.source: r.verdict for r in found.results}
    return measures(seconds, start, len(verdicts), threads, sum(r.steps for r in found.results)), verdicts


def on_ray(images: Path, cal: Path, actors: int, out: Path) -> tuple[dict[str, Any], dict[str, str]]:
    from genorigin.scale import attribute_dataset

    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    summary = attribute_dataset([str(images)], "dcgan_a", out, calibration=cal, actors=actors, num_cpus=1,
                                force=True, on_row=lambda _, r: rows.append(r) if r else None)  # fmt: skip
    seconds = time.perf_counter() - t0
    if not summary.complete or summary.unreadable or summary.ready_s is None:
        raise SystemExit(f"the Ray job did not complete: {summary}")
    verdicts = {r["source"]: r["verdict"] for r in rows}
    result = measures(seconds, summary.ready_s, len(verdicts), actors, sum(r["steps"] for r in rows))
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
    lines = ["| run | wall s | images/s | start s | busy images/s | busy image-steps/s | busy ms per image per "
             "worker | overhead: start s | overhead: ms per image per worker |", "|" + "---|" * 9]  # fmt: skip

    def cell(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    for name, r in runs.items():
        lines.append(f"| {name} | {r['seconds']:.1f} | {r['images_per_s']:.2f} | {r['start_s']:.1f} | "
                     f"{r['busy_images_per_s']:.2f} | {r['busy_image_steps_per_s']:.0f} | "
                     f"{r['busy_ms_per_image_per_worker']:.0f} | {cell(r.get('start_overhead_s'), 1)} | "
                     f"{cell(r.get('overhead_ms_per_image_per_worker'), 0)} |")  # fmt: skip
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
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    cluster_s = time.perf_counter() - t0
    record("ray, 1 actor", lambda: on_ray(images, cal, 1, args.work / "ray1.jsonl"))
    record("ray, 2 actors", lambda: on_ray(images, cal, 2, args.work / "ray2.jsonl"))
    ray.shutdown()
    writer = writer_rate(args.work / "ray2.jsonl", args.work / "writer.jsonl")
    base = runs["single, 1 thread"]
    for name in ("ray, 1 actor", "ray, 2 actors"):
        r = runs[name]
        r["start_overhead_s"] = r["start_s"] - base["start_s"]
        r["overhead_ms_per_image_per_worker"] = r["busy_ms_per_image_per_worker"] - base["busy_ms_per_image_per_worker"]
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
