"""Threads and OpenMP wait policy on a quiet and a loaded machine: the evidence behind genorigin's defaults.

For each OpenMP wait policy (PASSIVE, genorigin's default, and ACTIVE, OpenMP's) a child process times one
inversion step (loss and gradient at batch ``--batch``) of the bundled model on eager PyTorch and on ONNX
Runtime, with 1, 2 and N threads (N: the CPUs this process may use), first on a quiet machine, then while a
second process keeps every core busy (torch matrix products on N threads: another job on the same host).

    python benchmarks/bench_threads.py                      # ~1-2 min on a quiet machine
    python benchmarks/bench_threads.py --steps 5 --repeats 1   # a smoke run

Prints a table and writes JSON (``--out``). Run it on a quiet machine: the "quiet" rows assume nothing else
is running. The policy must be set before torch loads, hence one child process per policy.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

POLICIES = ("PASSIVE", "ACTIVE")
LOAD = """
import torch, time
torch.set_num_threads({n})
a = torch.randn(384, 384)
end = time.monotonic() + {seconds}
while time.monotonic() < end:
    a = torch.tanh(a @ a)
"""


def cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@contextlib.contextmanager
def busy_machine(n: int, seconds: float) -> Iterator[None]:
    """A second process keeping ``n`` cores busy (spinning OpenMP, as a neighbour job would) for the body."""
    env = dict(os.environ, OMP_WAIT_POLICY="ACTIVE")
    proc = subprocess.Popen([sys.executable, "-c", LOAD.format(n=n, seconds=seconds)], env=env)
    try:
        time.sleep(1.0)  # let it start spinning
        yield
    finally:
        proc.kill()
        proc.wait()


def time_steps(step: Callable[[], object], steps: int, repeats: int) -> float:
    """Median seconds per step over ``repeats`` runs of ``steps`` steps (after two warm-up steps)."""
    step()
    step()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        runs.append((time.perf_counter() - t0) / steps)
    return sorted(runs)[len(runs) // 2]


def child(args: argparse.Namespace) -> None:
    """Measure under the wait policy this process was started with; print JSON rows."""
    import numpy as np
    import torch
    from genorigin.runtime.backends.eager import TorchBackend
    from genorigin.runtime.backends.ort import OrtBackend

    from genorigin.models import resolve_model

    model = resolve_model(args.model)
    gen, package = model.generator, model.package()
    rng = np.random.default_rng(0)
    z = gen.latent.sample(args.batch, rng)
    x = np.clip(rng.random((args.batch, gen.channels, *gen.image_size), dtype=np.float32), 0, 1)
    n = cpus()
    rows = []
    for load in ("quiet", "loaded"):
        ctx = busy_machine(n, 600) if load == "loaded" else contextlib.nullcontext()
        with ctx:
            for threads in sorted({1, 2, n}):
                torch.set_num_threads(threads)
                tb = TorchBackend(gen)
                zt, xt = tb.asarray(z), tb.asarray(x)
                ob = OrtBackend(package, threads=threads)
                for name, backend, zz, xx in (("torch", tb, zt, xt), ("onnxruntime", ob, z, x)):
                    sec = time_steps(lambda b=backend, a=zz, c=xx: b.loss_and_grad(a, c), args.steps, args.repeats)
                    rows.append(
                        {
                            "policy": os.environ.get("OMP_WAIT_POLICY"),
                            "load": load,
                            "backend": name,
                            "threads": threads,
                            "ms_per_step": sec * 1000.0,
                        }
                    )
    print(json.dumps(rows))


def table(rows: list[dict]) -> str:
    lines = [f"{'policy':<8} {'load':<7} {'backend':<12} {'threads':>7} {'ms/step':>9} {'vs 1 thread':>11}"]
    base = {(r["policy"], r["load"], r["backend"]): r["ms_per_step"] for r in rows if r["threads"] == 1}
    for r in rows:
        speedup = base[(r["policy"], r["load"], r["backend"])] / r["ms_per_step"]
        lines.append(
            f"{r['policy']:<8} {r['load']:<7} {r['backend']:<12} {r['threads']:>7} "
            f"{r['ms_per_step']:>9.2f} {speedup:>10.2f}×"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="dcgan_a")
    p.add_argument("--batch", type=int, default=32, help="slots per step (images × starts)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per run")
    p.add_argument("--repeats", type=int, default=3, help="runs per configuration (the median counts)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "threads.json")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    t0 = time.perf_counter()
    rows: list[dict] = []
    for policy in POLICIES:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            "--model",
            args.model,
            "--batch",
            str(args.batch),
            "--steps",
            str(args.steps),
            "--repeats",
            str(args.repeats),
        ]
        out = subprocess.run(
            cmd, env=dict(os.environ, OMP_WAIT_POLICY=policy), check=True, capture_output=True, text=True
        ).stdout
        rows += json.loads(out.strip().splitlines()[-1])
    import onnxruntime
    import torch

    result = {
        "machine": {
            "cpus_available": cpus(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "settings": {"model": args.model, "batch": args.batch, "steps": args.steps, "repeats": args.repeats},
        "seconds": time.perf_counter() - t0,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(table(rows))
    print(f"{result['seconds']:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
