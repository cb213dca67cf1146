"""The child processes of benchmarks/bench_large.py: each measures one thing in a fresh process (so one
backend's memory never sits under another's) and prints one JSON line.

    python benchmarks/large_workers.py --worker step --model sd15-256 --backend onnxruntime --pkg PKG --work DIR
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

MODELS = {"sd15-128": 128, "sd15-256": 256, "sd15-512": 512, "stylegan2f-256": 256}


def make_models(work: Path) -> dict[str, Path]:
    """Where each model lives: SD-1.5 AutoencoderKL folders (random weights, seed 0; made once); StyleGAN2
    config F is built from its seed when used."""
    return {name: sd_folder(work, size) for name, size in MODELS.items() if name.startswith("sd15")}


def generator(name: str, paths: dict[str, Path]) -> Any:
    if name.startswith("stylegan2f"):
        from genorigin.export.stylegan import StyleGANConfig, random_stylegan

        return random_stylegan(StyleGANConfig.config_f(MODELS[name]), seed=0, name=name)
    from genorigin.export.latent_diffusion import load_latent_diffusion

    return load_latent_diffusion(paths[name], name=name).generator


class EagerTorch:
    """Plain eager PyTorch autograd at torch's 2 intra-op threads: the reference ceiling. (The product's
    TorchBackend evaluates each row at one intra-op thread for batch invariance, runtime/loop/invariant.py, so at
    batch 1 it uses one core.)"""

    def __init__(self, gen: Any) -> None:
        self.gen = gen

    def loss_and_grad(self, z: Any, x: Any) -> tuple[Any, Any]:
        import torch
        from genorigin.kernels.reference import loss_and_grad

        z = z.detach().requires_grad_(True)
        y = self.gen.forward(z)
        loss, gy = loss_and_grad(y.detach(), x)
        (gz,) = torch.autograd.grad(y, z, gy)
        return loss, gz


def worker_step(name: str, backend: str, pkg_dir: Path, work: Path) -> dict[str, Any]:
    """Warm-up, then the best of timed loss-and-gradient steps at batch 1 with 2 threads."""
    import numpy as np
    import torch

    torch.set_num_threads(2)
    gen = generator(name, make_models(work))
    rng = np.random.default_rng(0)
    z = gen.latent.sample(1, rng)
    x = rng.random((1, gen.channels, *gen.image_size), dtype=np.float32)
    out: dict[str, Any] = {}
    args: tuple[Any, Any] = (torch.from_numpy(z), torch.from_numpy(x))
    if backend == "onnxruntime":
        from genorigin.export.package import AttributionPackage
        from genorigin.runtime.backends.ort import OrtBackend

        be: Any = OrtBackend(AttributionPackage.load(pkg_dir), threads=2)
        args = (z, x)
    elif backend == "eager-torch":
        be = EagerTorch(gen)
        out["flops_per_step"] = count_flops(gen, z)
    else:
        from genorigin.runtime.backends.eager import TorchBackend

        be = TorchBackend(gen, threads=2, compute="bfloat16" if backend == "torch-bf16" else "float32")
    loss, grad = be.loss_and_grad(*args)
    loss, grad = (np.asarray(a.detach() if hasattr(a, "detach") else a) for a in (loss, grad))
    np.savez(work / f"{name}-{backend}.npz", loss=loss, grad=grad)  # compared by the phase
    times = []
    for _ in range(2 if gen.image_size[0] < 512 else 1):  # a 512 px step takes a minute here
        t0 = time.perf_counter()
        be.loss_and_grad(*args)
        times.append(time.perf_counter() - t0)
    return {**out, "seconds": min(times)}


def count_flops(gen: Any, z: Any) -> int:
    """FLOPs of one step as torch counts them: forward, then the backward to the latent only."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    for p in gen.module.parameters():
        p.requires_grad_(False)
    zt = torch.from_numpy(z).requires_grad_(True)
    with FlopCounterMode(display=False) as counter:
        y = gen.module(zt)
        y.backward(torch.ones_like(y))  # parameters frozen: only the input gradients are computed
    return int(counter.get_total_flops())


def sd_folder(work: Path, size: int) -> Path:
    import torch
    from diffusers import AutoencoderKL

    """An AutoencoderKL with the Stable Diffusion 1.5 VAE configuration at ``size`` px, seed 0, saved once."""
    path = work / f"sd15-{size}"
    if not path.exists():
        torch.manual_seed(0)
        AutoencoderKL(down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                      block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4,
                      sample_size=size).save_pretrained(path)  # fmt: skip
    return path


def worker_memory(pkg_dir: Path) -> dict[str, Any]:
    """RSS growth of one ONNX Runtime loss-and-gradient step at batch 1 over the loaded session, the estimate."""
    import threading

    import numpy as np
    import onnx
    from genorigin.export.activation_memory import peak_activation
    from genorigin.export.memory import release_freed_memory, resident_mib
    from genorigin.export.package import AttributionPackage
    from genorigin.runtime.backends.ort import OrtBackend

    pkg = AttributionPackage.load(pkg_dir)
    be = OrtBackend(pkg, threads=2)
    img = pkg.manifest["image"]
    z = pkg.latent.sample(1, np.random.default_rng(0))
    x = np.zeros((1, img["channels"], img["height"], img["width"]), np.float32)
    peak, done = [0.0], threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], resident_mib())
            time.sleep(0.005)

    release_freed_memory()
    base = resident_mib()
    thread = threading.Thread(target=watch)
    thread.start()
    be.loss_and_grad(z, x)
    done.set()
    thread.join()
    estimate = peak_activation(onnx.load(str(pkg.graph_path("loss_mse")), load_external_data=False), 1).peak_bytes
    return {"rss_growth_bytes": int((peak[0] - base) * 2**20), "estimate_bytes": estimate}


def worker_aedr(name: str, compute: str, work: Path) -> dict[str, Any]:
    """AEDR's two round trips (encode + decode, twice) on 2 own samples, and one encode, per image."""
    import numpy as np
    import torch
    from genorigin.export.latent_diffusion import load_latent_diffusion
    from genorigin.runtime.methods.aedr import aedr_scores

    torch.set_num_threads(2)
    model = load_latent_diffusion(make_models(work)[name])
    images = model.generator.sample(2, seed=5)
    reference = aedr_scores(model.roundtrip, images).score
    roundtrip = model.roundtrip_in(compute)  # what --method aedr runs (--backend torch-bf16: bfloat16)
    roundtrip(images[:1])  # bfloat16 copies made, kernels warm
    t0 = time.perf_counter()
    scores = aedr_scores(roundtrip, images).score
    seconds = (time.perf_counter() - t0) / len(images)
    t0 = time.perf_counter()
    model.encode(images[:1])
    encode = time.perf_counter() - t0
    rel = np.abs(scores - reference) / np.abs(reference)
    return {"seconds_per_image": seconds, "encode_seconds": encode, "score_rel_change_vs_fp32": float(rel.max())}


def worker_export(name: str, pkg_dir: Path) -> dict[str, Any]:
    from genorigin.export.package import export_generator

    export_generator(generator(name, {}), pkg_dir)
    return {}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", required=True, choices=["step", "memory", "aedr", "export"])
    p.add_argument("--model")
    p.add_argument("--backend")
    p.add_argument("--compute", default="float32")
    p.add_argument("--pkg", type=Path)
    p.add_argument("--work", type=Path, default=Path("/tmp/genorigin-large"))
    args = p.parse_args()
    workers = {
        "step": lambda: worker_step(args.model, args.backend, args.pkg, args.work),
        "memory": lambda: worker_memory(args.pkg),
        "aedr": lambda: worker_aedr(args.model, args.compute, args.work),
        "export": lambda: worker_export(args.model, args.pkg),
    }
    print(json.dumps(workers[args.worker]()))


if __name__ == "__main__":
    main()
