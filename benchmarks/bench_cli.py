"""The command line end to end: start-up, and `genorigin attribute` of 8 images against the RONAN-faithful loop on
the same 8 images, side by side in one run.

Set-up (not timed): a fresh cache folder ($GENORIGIN_CACHE), `genorigin calibrate --model dcgan_a` with the
default settings (fast preset, the shipped encoder), and 8 PNGs: 4 fresh own samples of dcgan_a and 4 held-out
real crops. Then, in alternating rounds, each a fresh process as a user starts it:

* `genorigin --help` and `genorigin attribute --help`: wall clock and CPU time;
* `genorigin attribute <the 8 PNGs> --model dcgan_a --threads 1 --quiet --json`: wall clock and CPU time;
* the RONAN-faithful loop (benchmarks/eval_accuracy.py: eager PyTorch, one image at a time, one random start,
  `torch.optim.Adam`, lr 0.1, 1500 steps, MSE) on the same 8 PNGs, 1 torch thread, in its own process: its
  loop time alone (what the ratio is conservatively taken against) and the whole process.

The ratios are the RONAN-faithful loop's time over `genorigin attribute`'s whole process (start-up included),
per round, then the median. The load average (`os.getloadavg`) is recorded around every measurement: the
development machine is shared.

    python benchmarks/bench_cli.py --out benchmarks/results/cli.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RONAN_CHILD = """
import sys, time
t0 = time.perf_counter()
import numpy as np, torch
from eval_accuracy import ronan_faithful_seconds
from genorigin.export.bundled import load_bundled
from genorigin.images import read_images
torch.set_num_threads(1)
images = read_images([sys.argv[1]], load_bundled("dcgan_a")).images
loop = ronan_faithful_seconds("dcgan_a", images, 1500, 0.1) * len(images)
print(f"{loop} {time.perf_counter() - t0} {len(images)}")
"""


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, subprocess.CompletedProcess]:
    """Wall clock and CPU time (user + system, children) of one fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def prepare(folder: Path, env: dict[str, str]) -> dict:
    """The calibration (default settings) and the 8 images: 4 own samples, 4 held-out real crops."""
    import numpy as np
    from common import EVAL_SAMPLE_SEED, real_crops
    from genorigin.export.bundled import load_bundled
    from genorigin.runtime.decide.calibration import quantize_8bit

    from genorigin.images import save_png

    own = quantize_8bit(load_bundled("dcgan_a").sample(4, seed=EVAL_SAMPLE_SEED))
    for i, image in enumerate(np.concatenate([own, real_crops(4)])):
        save_png(image, folder / f"{'own' if i < 4 else 'real'}_{i % 4}.png")
    t0 = time.perf_counter()
    timed([sys.executable, "-m", "genorigin", "calibrate", "--model", "dcgan_a", "--quiet"], env)
    return {"calibrate_seconds": round(time.perf_counter() - t0, 1), "images": sorted(p.name for p in folder.iterdir())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results/cli.json")
    args = p.parse_args()
    here = Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        env = {**os.environ, "GENORIGIN_CACHE": str(Path(tmp) / "cache"), "PYTHONPATH": str(here),
               "OMP_NUM_THREADS": "1"}  # fmt: skip
        setup = prepare(folder, env)
        genorigin = [sys.executable, "-m", "genorigin"]
        commands = {
            "help": [*genorigin, "--help"],
            "attribute_help": [*genorigin, "attribute", "--help"],
            "attribute_8": [
                *genorigin,
                "attribute",
                str(folder),
                "--model",
                "dcgan_a",
                "--threads",
                "1",
                "--quiet",
                "--json",
            ],
        }
        rounds = []
        for r in range(args.rounds):
            row: dict = {"round": r}
            for name, cmd in commands.items():
                before = load()
                wall, cpu, done = timed(cmd, env)
                row[name] = {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "load_before": before,
                             "load_after": load()}  # fmt: skip
                if name == "attribute_8":
                    report = json.loads(done.stdout)
                    row[name]["verdicts"] = {Path(x["source"]).name: x["verdict"] for x in report["results"]}
                    row[name]["steps"] = [x["steps"] for x in report["results"]]
            before = load()
            wall, cpu, done = timed([sys.executable, "-c", RONAN_CHILD, str(folder)], env)
            loop, in_process, n = done.stdout.split()
            row["ronan_faithful_8"] = {
                "loop_s": round(float(loop), 2),
                "process_wall_s": round(wall, 2),
                "process_after_start_s": round(float(in_process), 2),
                "cpu_s": round(cpu, 2),
                "images": int(n),
                "load_before": before,
                "load_after": load(),
            }
            e2e = row["attribute_8"]["wall_s"]
            row["ratio_loop_over_attribute"] = round(float(loop) / e2e, 2)
            row["ratio_process_over_attribute"] = round(wall / e2e, 2)
            rounds.append(row)
            print(json.dumps(row), flush=True)
    med = lambda key, field: statistics.median(r[key][field] for r in rounds)  # noqa: E731
    summary = {
        "help_wall_s": med("help", "wall_s"), "help_cpu_s": med("help", "cpu_s"),
        "attribute_help_wall_s": med("attribute_help", "wall_s"),
        "attribute_help_cpu_s": med("attribute_help", "cpu_s"),
        "attribute_8_wall_s": med("attribute_8", "wall_s"), "attribute_8_cpu_s": med("attribute_8", "cpu_s"),
        "ronan_faithful_8_loop_s": med("ronan_faithful_8", "loop_s"),
        "ratio_loop_over_attribute": statistics.median(r["ratio_loop_over_attribute"] for r in rounds),
        "ratio_range": [min(r["ratio_loop_over_attribute"] for r in rounds),
                        max(r["ratio_loop_over_attribute"] for r in rounds)],
    }  # fmt: skip
    from common import machine

    out = {"machine": machine(), "when": time.strftime("%Y-%m-%d %H:%M"), "args": vars(args), "setup": setup,
           "rounds": rounds, "summary": summary}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
