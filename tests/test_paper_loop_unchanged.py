"""The paper's loop against an oracle computed on this machine: the plain eager loop, written out here.

Earlier this test compared with results recorded on another CPU, and failed on an AVX-512 machine (a
non-convex optimisation recorded on one CPU cannot be replayed bit for bit on another). The oracle below
runs each image alone, its R starts in one tensor, step after step for the whole budget with the reference
Adam step (``kernels/reference.py``) — no slots, no batching across images, no checkpoints, no refilling.
The shared loop, batching 5 images (3 with successive halving) and stopping early, must give every image
exactly the oracle's best-so-far loss at the step it stopped, its trajectory at every checkpoint, the
verdict of that score, and a calibration whose scores are the oracle's full-budget ones — bit for bit, on
whatever CPU the test runs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from genorigin.export.bundled import load_bundled
from genorigin.export.generator import Generator
from genorigin.kernels import reference
from genorigin.runtime.backends.eager import TorchBackend
from genorigin.runtime.decide.calibration import CALIBRATION_SAMPLE_SEED, quantize_8bit
from genorigin.runtime.decide.complexity import complexity
from genorigin.runtime.decide.result import band_readings
from genorigin.runtime.loop.invariant import exact_rows
from genorigin.runtime.loop.settings import InversionSettings, Schedule
from genorigin.runtime.loop.starts import initial_latents
from genorigin.runtime.methods.attribution import Attributor

RUNS = {
    "plain": (InversionSettings(steps=120, restarts=2), Schedule(batch_size=5, check_every=10)),
    "halve": (
        InversionSettings(steps=100, restarts=4, halve_starts_at=(15, 40)),
        Schedule(batch_size=3, check_every=25),
    ),
}

pytestmark = [pytest.mark.slow, pytest.mark.numeric]  # about a minute: see README for the quick subset


def oracle(gen: Generator, image: np.ndarray, settings: InversionSettings, seed: int) -> np.ndarray:
    """Best-so-far loss over the image's starts after each step 0..steps (index = step), one image alone."""
    backend = TorchBackend(gen, threads=1)
    z = torch.from_numpy(initial_latents(gen.latent, seed, image, settings.restarts))
    m, v = torch.zeros_like(z), torch.zeros_like(z)
    best_loss = torch.full((len(z),), float("inf"))
    best_z = z.clone()
    x = torch.from_numpy(np.repeat(image[None], len(z), axis=0))
    adam = settings.adam
    best = [np.inf]
    for step in range(1, settings.steps + 1):
        t = torch.full((len(z),), float(step))
        loss, grad = backend.loss_and_grad(z, x)
        z, m, v, best_loss, best_z = reference.adam_step(
            z, m, v, grad, t, loss, best_loss, best_z, adam.lr_at(t), adam.beta1, adam.beta2, adam.eps
        )
        best.append(min(best[-1], float(best_loss.min())))
        if step in settings.halve_starts_at:  # keep the better half of the starts (ties: the earlier start)
            keep = np.argsort(best_loss.numpy(), kind="stable")[: settings.starts_alive(step)]
            keep_t = torch.from_numpy(np.sort(keep))
            z, m, v, best_loss, best_z, x = (a[keep_t] for a in (z, m, v, best_loss, best_z, x))
    return np.array(best)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_paper_loop_equals_the_plain_eager_loop_on_this_machine(name: str) -> None:
    gen = load_bundled("dcgan_a")
    settings, schedule = RUNS[name]
    attributor = Attributor(gen, settings=settings, schedule=schedule)
    calibration = attributor.calibrate(8)
    with exact_rows():
        samples = quantize_8bit(gen.sample(8, seed=CALIBRATION_SAMPLE_SEED))
    want = [oracle(gen, s, settings, schedule.seed + 7)[-1] for s in samples] / complexity(samples)
    assert np.array(calibration.scores).tobytes() == np.asarray(want, dtype=np.float64).tobytes()

    images = np.concatenate(
        [quantize_8bit(gen.sample(6, seed=5)), quantize_8bit(load_bundled("dcgan_b").sample(6, seed=5))]
    )
    results = attributor.attribute(images)
    comp = complexity(images)
    stops = set()
    for image, result, c in zip(images, results, comp):
        best = oracle(gen, image, settings, schedule.seed)
        assert np.float64(result.loss).tobytes() == np.float64(best[result.steps]).tobytes()
        assert [s for s, _ in result.trajectory] == [*range(schedule.check_every, result.steps + 1,
                                                             schedule.check_every)]  # fmt: skip
        assert [v for _, v in result.trajectory] == [best[s] for s, _ in result.trajectory]
        assert result.verdict == band_readings(calibration, "grubbs", best[result.steps] / c)[0]
        stops.add(result.stop_reason)
    assert {"belonging", "non-belonging"} <= stops  # the early exit stopped images both ways
