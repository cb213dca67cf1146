"""How far from this CPU's limit one inversion step runs: achieved GFLOP/s of forward + VJP vs a GEMM peak.

* Peak: a large float32 matrix product (torch.mm, 2048²) at the same thread count — the best this CPU's
  BLAS reaches, the practical roof for convolution-heavy work.
* Work per step: the generator's multiply-adds, counted per layer (Conv/ConvTranspose/Linear, from their
  shapes); the VJP w.r.t. the latent costs one more pass of the same size (input gradients only, no weight
  gradients), so a step is 2 × 2 × MACs FLOPs per sample (elementwise work is left out: it is small).
* Achieved: the ONNX Runtime loss-and-gradient graph (one session call = one step) timed at several batch
  sizes, medians of repeated calls.

    python benchmarks/bench_roofline.py --out benchmarks/results/roofline.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from common import machine, write
from genorigin.export.bundled import BUNDLED_MODELS
from torch import nn

from genorigin.models import resolve_model


def forward_macs(module: nn.Module, latent_shape: tuple[int, ...]) -> int:
    """Multiply-adds of one sample's forward pass, summed over Conv, ConvTranspose and Linear layers."""
    total = 0

    def count(layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(layer, nn.Linear):
            total += layer.in_features * layer.out_features
        elif isinstance(layer, nn.ConvTranspose2d):
            x = inputs[0]
            k = layer.kernel_size[0] * layer.kernel_size[1]
            total += x.shape[1] * layer.out_channels // layer.groups * k * x.shape[2] * x.shape[3]
        elif isinstance(layer, nn.Conv2d):
            k = layer.kernel_size[0] * layer.kernel_size[1]
            total += layer.in_channels // layer.groups * layer.out_channels * k * output.shape[2] * output.shape[3]

    hooks = [m.register_forward_hook(count) for m in module.modules() if isinstance(m, nn.Linear | nn.Conv2d
             | nn.ConvTranspose2d)]  # fmt: skip
    with torch.no_grad():
        module(torch.zeros((1, *latent_shape)))
    for h in hooks:
        h.remove()
    return total


def median_seconds(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def gemm_peak(threads: int, n: int = 2048, dtype: torch.dtype = torch.float32) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / median_seconds(lambda: torch.mm(a, b), 5) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(BUNDLED_MODELS))
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64, 256])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--out", default="benchmarks/results/roofline.json")
    args = p.parse_args()
    report: dict = {"machine": machine(), "args": vars(args), "peak_gflops": {}, "models": {}}
    for t in args.threads:
        report["peak_gflops"][t] = gemm_peak(t)
    for name in args.models:
        model = resolve_model(name)
        gen = model.generator
        macs = forward_macs(gen.module, gen.latent.shape)
        flops_per_sample = 4 * macs  # forward + VJP, 2 FLOPs per multiply-add
        rows = []
        for t in args.threads:
            backend = model.backend("onnxruntime", threads=t)
            for b in args.batches:
                rng = np.random.default_rng(b)
                z = gen.latent.sample(b, rng)
                x = rng.random((b, gen.channels, *gen.image_size), dtype=np.float32)
                sec = median_seconds(lambda z=z, x=x, be=backend: be.loss_and_grad(z, x), args.repeat)
                gflops = flops_per_sample * b / sec / 1e9
                rows.append({"threads": t, "batch": b, "seconds_per_step": sec, "ms_per_sample_step": sec / b * 1e3,
                             "gflops": gflops, "of_peak": gflops / report["peak_gflops"][t]})  # fmt: skip
        report["models"][name] = {"forward_macs": macs, "flops_per_sample_step": flops_per_sample, "rows": rows}
        write(args.out, json.dumps(report, indent=1))
    print("| model | threads | batch | ms per sample-step | GFLOP/s | of GEMM peak |")
    print("|---|---|---|---|---|---|")
    for name, e in report["models"].items():
        for r in e["rows"]:
            print(f"| {name} | {r['threads']} | {r['batch']} | {r['ms_per_sample_step']:.3f} | {r['gflops']:.1f} | "
                  f"{r['of_peak']:.0%} |")  # fmt: skip
    print("peak GFLOP/s (torch.mm 2048²):", {t: round(v, 1) for t, v in report["peak_gflops"].items()})


if __name__ == "__main__":
    main()
