"""The attribution service under open-loop load: batch-to-completion vs continuous batching, in one run.

One command (127.0.0.1 only; bounded in requests and time; ~8 minutes on a loaded 2-core machine)::

    python benchmarks/bench_service.py --out benchmarks/results/service.json

Model: the bundled ``dcgan_a`` with the default (fast) settings: encoder starts, per-slot L-BFGS, 200 steps,
checkpoints every 10. The shipped encoder (``assets/models/dcgan_a.encoder.pt``) is used when it exists; else
an encoder is fitted once (``--encoder-steps``) and cached in ``--work`` with its calibration. Images: fresh
own samples and held-out real crops, half and half, as PNG uploads.

A ``genorigin serve`` process runs for each worker (``--batching complete``, the old one, and ``continuous``),
both at once, measured in interleaved phases (a load change on a shared machine hits both): the lone latency
of each image (one request at a time), then Poisson arrivals at each ``--rates`` multiple of the capacity
(answered requests per second of the continuous server under an open-loop overload of ``--probe-rate``).
Per rate: throughput, latency percentiles of the answered requests, the slowdown of each request against its
image's lone latency, 503s (and how fast they came), other errors, lost requests (a connection that got no
answer), and the server's RSS. The goals of issue 12 are checked at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

HOST = "127.0.0.1"


@dataclass
class Sample:
    image: int
    sent: float  # seconds since the phase started
    latency: float
    status: int  # 0: no answer (connection error or timeout): lost
    steps: int = 0  # what the server reports for an answered request
    queue_ms: float = 0.0
    inversion_ms: float = 0.0


# ------------------------------------------------------------------------------------------------ setup
def prepare(work: Path, encoder_steps: int, cal_samples: int) -> dict:
    """Calibration (and encoder, when none is shipped) for dcgan_a's default settings, cached in ``work``."""
    import torch
    from genorigin.export.bundled import assets_dir, load_bundled
    from genorigin.runtime.loop.settings import FitSettings
    from genorigin.runtime.methods.attribution import Attributor
    from genorigin.runtime.methods.encoder import FittedEncoder

    torch.set_num_threads(1)
    work.mkdir(parents=True, exist_ok=True)
    shipped = assets_dir() / "models" / "dcgan_a.encoder.pt"
    enc_path = shipped if shipped.exists() else work / f"dcgan_a.fit{encoder_steps}.encoder.pt"
    gen = load_bundled("dcgan_a")
    attributor = Attributor(gen)  # the default settings
    if enc_path.exists():
        attributor.use_encoder(FittedEncoder.load(enc_path))
    else:
        print(f"fitting an encoder ({encoder_steps} steps, once) → {enc_path}", flush=True)
        attributor.fit_encoder(FitSettings(steps=encoder_steps)).save(enc_path)
    cal_path = work / f"dcgan_a.{str(attributor.encoder_digest)[:12]}.n{cal_samples}.calibration.json"
    if not cal_path.exists():
        print(f"calibrating on {cal_samples} own samples → {cal_path}", flush=True)
        attributor.calibrate(cal_samples).save(cal_path)
    return {"encoder": str(enc_path), "encoder_shipped": enc_path == shipped, "calibration": str(cal_path),
            "settings": attributor.settings.to_dict()}  # fmt: skip


def upload_bodies(n: int) -> list[bytes]:
    """``n`` PNG uploads: fresh own samples and held-out real crops, alternating."""
    import io

    from genorigin.export.bundled import load_bundled, real_images_dir
    from genorigin.runtime.decide.calibration import quantize_8bit
    from PIL import Image

    own = quantize_8bit(load_bundled("dcgan_a").sample(n // 2, seed=4242))
    bodies = []
    for x in own:
        buf = io.BytesIO()
        Image.fromarray(np.round(x.transpose(1, 2, 0) * 255).astype(np.uint8)).save(buf, "PNG")
        bodies.append(buf.getvalue())
    real = [p.read_bytes() for p in sorted(real_images_dir().glob("*.png"))[: n - len(bodies)]]
    return [b for pair in zip(bodies, real) for b in pair]


# ------------------------------------------------------------------------------------------------ server
class Server:
    """A ``genorigin serve`` process on a free port."""

    def __init__(self, setup: dict, batching: str, max_batch: int, log: Path) -> None:
        cmd = [sys.executable, "-m", "genorigin", "serve", "--model", "dcgan_a", "--calibration",
               setup["calibration"], "--encoder", setup["encoder"], "--port", "0", "--threads", "1",
               "--max-batch", str(max_batch), "--batching", batching, "--log-level", "warning"]  # fmt: skip
        self.log = log.open("w")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if " on http://" not in line:
            raise RuntimeError(f"the server did not start: {line!r} (log: {log})")
        self.url = line.split(" on ")[1].split()[0]
        self.port = int(self.url.rsplit(":", 1)[1])
        end = time.monotonic() + 300
        while not self._ready():
            if time.monotonic() > end or self.proc.poll() is not None:
                raise RuntimeError(f"the server did not get ready (log: {log})")
            time.sleep(0.2)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=5) as r:
                return r.status == 200
        except OSError:
            return False

    def rss_mb(self) -> tuple[float, float]:
        """(current, peak) resident set size in MB."""
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines())
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=120)
        self.log.close()
        return code


# ------------------------------------------------------------------------------------------------ client
async def one(port: int, bodies: list[bytes], i: int, t0: float, timeout: float = 120.0) -> Sample:
    body = bodies[i % len(bodies)]
    sent = time.monotonic()
    head = (f"POST /v1/attribute HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: image/png\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()  # fmt: skip
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(head + body)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout)
        writer.close()
        status = int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.1 ") else 0
    except (OSError, asyncio.TimeoutError, ValueError, IndexError):
        status, raw = 0, b""
    sample = Sample(i % len(bodies), sent - t0, time.monotonic() - sent, status)
    if status == 200:
        answer = json.loads(raw.partition(b"\r\n\r\n")[2])
        model = answer["models"]["dcgan_a"]
        sample.steps, sample.queue_ms = model["steps"], model["timing"]["queue_ms"]
        sample.inversion_ms = model["timing"]["inversion_ms"]
    return sample


async def open_loop(port: int, bodies: list[bytes], rate: float, seconds: float, seed: int,
                    server: Server) -> tuple[list[Sample], list[float]]:  # fmt: skip
    """Poisson arrivals at ``rate`` for ``seconds`` (at most rate × seconds requests); every answer awaited."""
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.exponential(1.0 / rate, int(rate * seconds * 1.5) + 1))
    times = times[times < seconds]
    t0 = time.monotonic()
    tasks, rss = [], []
    next_rss = 0.0
    for i, at in enumerate(times):
        now = time.monotonic() - t0
        if now >= next_rss:
            rss.append(server.rss_mb()[0])
            next_rss = now + 0.5
        if at > now:
            await asyncio.sleep(at - now)
        tasks.append(asyncio.create_task(one(port, bodies, i, t0)))
    while not all(t.done() for t in tasks):
        rss.append(server.rss_mb()[0])
        await asyncio.sleep(0.5)
    return [t.result() for t in tasks], rss


def capacity_of(samples: list[Sample], skip: float, seconds: float) -> float:
    """Answered requests per second under overload, counted in [skip, skip + seconds) of the phase: what the
    server sustains for this mix (a closed loop would favour the images that finish fast)."""
    return sum(s.status == 200 and skip <= s.sent + s.latency < skip + seconds for s in samples) / seconds


def lone(port: int, bodies: list[bytes], first: int = 0) -> list[Sample]:
    """Each image once, one request at a time: each image's own latency (``first``: the first image's index)."""

    async def run() -> list[Sample]:
        out = [await one(port, bodies, i, time.monotonic()) for i in range(len(bodies))]
        for s in out:
            s.image += first
        return out

    return asyncio.run(run())


# ------------------------------------------------------------------------------------------------ report
def _pct(a: np.ndarray, q: float, scale: float = 1000.0) -> float | None:
    return float(np.percentile(a, q)) * scale if len(a) else None


def summarize(samples: list[Sample], offered: float, rss: list[float], alone: dict[int, float]) -> dict:
    """One phase: ``alone`` is each image's lone latency (s), for the per-request slowdown."""
    answered = [s for s in samples if s.status == 200]
    ok = np.array([s.latency for s in answered])
    slowdown = np.array([s.latency / alone[s.image] for s in answered])
    refused = np.array([s.latency for s in samples if s.status == 503])
    span = max((s.sent + s.latency for s in answered), default=1.0) - min((s.sent for s in samples), default=0.0)
    return {
        "offered_per_s": offered,
        "sent": len(samples),
        "answered": len(ok),
        "throughput_per_s": len(ok) / span,
        "p50_ms": _pct(ok, 50), "p95_ms": _pct(ok, 95), "p99_ms": _pct(ok, 99),
        "slowdown_p50": _pct(slowdown, 50, 1.0), "slowdown_p99": _pct(slowdown, 99, 1.0),
        "queue_ms_p50": _pct(np.array([s.queue_ms for s in answered]), 50, 1.0),
        "queue_ms_p99": _pct(np.array([s.queue_ms for s in answered]), 99, 1.0),
        "refused_503": len(refused), "refused_p99_ms": _pct(refused, 99),
        "errors": sum(s.status not in (0, 200, 503) for s in samples),
        "lost": sum(s.status == 0 for s in samples),
        "rss_mb_mean": float(np.mean(rss)) if rss else None, "rss_mb_max": float(np.max(rss)) if rss else None,
    }  # fmt: skip


def table(result: dict) -> str:
    head = ("| worker | offered /s | throughput /s | p50 ms | p95 ms | p99 ms | slowdown p50 / p99 | 503s (p99 ms) "
            "| errors | lost | RSS MB |")  # fmt: skip
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|---|"]
    f = lambda v: "–" if v is None else f"{v:.0f}"  # noqa: E731
    for mode, r in result["modes"].items():
        lone = f"{f(r['lone_p50_ms'])} | – | {f(r['lone_p99_ms'])}"
        lines.append(f"| {mode}: lone request (one at a time) | – | – | {lone} | 1 / 1 | – | – | – | – |")
        for row in r["rates"]:
            slow = "–" if row["slowdown_p50"] is None else f"{row['slowdown_p50']:.2f} / {row['slowdown_p99']:.2f}"
            lines.append(
                f"| {mode} | {row['offered_per_s']:.1f} | {row['throughput_per_s']:.1f} | {f(row['p50_ms'])} | "
                f"{f(row['p95_ms'])} | {f(row['p99_ms'])} | {slow} | {row['refused_503']} ({f(row['refused_p99_ms'])}) "
                f"| {row['errors']} | {row['lost']} | {f(row['rss_mb_max'])} |"
            )
        lines.append(f"| {mode}: server peak RSS | | | | | | | | | | {f(r['peak_rss_mb'])} |")
    return "\n".join(lines)


def goals(result: dict, factors: list[float]) -> dict:
    """Issue 12's goals, "the lone-request latency" read two ways: the lone median, and the same percentile of
    the lone latencies of the same images (the mix has fast and slow images alone too)."""
    cont, comp = result["modes"]["continuous"], result["modes"]["complete"]
    out = {}
    if 0.5 in factors:
        half, old = cont["rates"][factors.index(0.5)], comp["rates"][factors.index(0.5)]
        if half["p50_ms"] is not None and old["p99_ms"] is not None:
            out["half: p50 <= 1.5 x lone p50"] = half["p50_ms"] <= 1.5 * cont["lone_p50_ms"]
            out["half: p99 <= 3 x lone p50"] = half["p99_ms"] <= 3 * cont["lone_p50_ms"]
            out["half: p99 <= 3 x lone p99"] = half["p99_ms"] <= 3 * cont["lone_p99_ms"]
            out["half: p99 3x better than complete"] = 3 * half["p99_ms"] <= old["p99_ms"]
    if 2.0 in factors and 0.5 in factors:
        two, half = cont["rates"][factors.index(2.0)], cont["rates"][factors.index(0.5)]
        out["2x: 0 lost"] = two["lost"] == 0
        out["2x: 503 p99 < 50 ms"] = two["refused_p99_ms"] is not None and two["refused_p99_ms"] < 50
        out["2x: RSS within 20 % of half"] = two["rss_mb_max"] <= 1.2 * half["rss_mb_mean"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="write the JSON result here")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "genorigin-bench-service")
    p.add_argument("--rates", default="0.5,1,2", help="offered rates as multiples of the measured capacity")
    p.add_argument("--seconds", type=float, default=30.0, help="length of each open-loop phase")
    p.add_argument("--capacity-seconds", type=float, default=15.0)
    p.add_argument("--probe-rate", type=float, default=40.0, help="offered rate that measures the capacity")
    p.add_argument("--max-batch", type=int, default=32, help="genorigin serve --max-batch (its default)")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--encoder-steps", type=int, default=600, help="only when no encoder is shipped")
    p.add_argument("--cal-samples", type=int, default=50)
    args = p.parse_args()
    factors = [float(v) for v in args.rates.split(",")]
    setup = prepare(args.work, args.encoder_steps, args.cal_samples)
    bodies = upload_bodies(args.images)
    result: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                                "load_avg_at_start": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M")},
                    "setup": setup, "args": {k: str(v) for k, v in vars(args).items()}, "modes": {}}  # fmt: skip
    modes = ("complete", "continuous")
    servers = {m: Server(setup, m, args.max_batch, args.work / f"server-{m}.log") for m in modes}
    try:  # both servers up at once, their phases interleaved: a load change on a shared machine hits both
        alone = {m: [] for m in modes}
        for i in range(len(bodies)):
            for m in modes:
                alone[m] += lone(servers[m].port, bodies[i : i + 1], first=i)
        r = {m: {"lone_p50_ms": _pct(np.array([s.latency for s in alone[m]]), 50),
                 "lone_p99_ms": _pct(np.array([s.latency for s in alone[m]]), 99),
                 "lone": [asdict(s) for s in alone[m]], "rates": []} for m in modes}  # fmt: skip
        probe, _ = asyncio.run(open_loop(servers["continuous"].port, bodies, args.probe_rate,
                                         args.capacity_seconds + 3, 99, servers["continuous"]))  # fmt: skip
        capacity = capacity_of(probe, 3.0, args.capacity_seconds)
        result["capacity_per_s"] = capacity
        print(f"capacity (continuous, {args.probe_rate}/s offered): {capacity:.1f} requests/s", flush=True)
        for k, f in enumerate(factors):
            for m in modes if k % 2 == 0 else modes[::-1]:
                samples, rss = asyncio.run(open_loop(servers[m].port, bodies, f * capacity, args.seconds, k,
                                                     servers[m]))  # fmt: skip
                row = summarize(samples, f * capacity, rss, {s.image: s.latency for s in alone[m]})
                r[m]["rates"].append(row | {"factor": f, "samples": [asdict(s) for s in samples]})
                print(m, json.dumps(row | {"factor": f}), flush=True)
        for m in modes:
            r[m]["peak_rss_mb"] = servers[m].rss_mb()[1]
    finally:
        codes = {m: server.stop() for m, server in servers.items()}
    for m in modes:
        result["modes"][m] = r[m] | {"exit_code": codes[m]}
    result["goals"] = goals(result, factors)
    result["table"] = table(result)
    print(result["table"])
    print(json.dumps(result["goals"], indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1, default=lambda o: asdict(o)))


if __name__ == "__main__":
    main()
