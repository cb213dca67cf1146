"""What the shared loop guarantees besides its arithmetic (issues 21 and 23), each found by reading the code:

- one image whose inversion never yields a finite loss is that image's error; the others are answered;
- a budget that ends between checkpoints touches only the image whose budget it is;
- ``invert`` never returns fewer outcomes than inputs (callers pair them by position);
- the slots never exceed what the backend holds (adaptive restarts included), and restarts never wait;
- the fast preset's steps read nothing back from the device between checkpoints (``no_host_sync``), and the
  L-BFGS update traces whole under ``torch.compile(fullgraph=True)`` (a proxy for CUDA-graph capture).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from genorigin.export.adapters import from_module
from genorigin.runtime.backends.eager import TorchBackend
from genorigin.runtime.decide.calibration import Calibration
from genorigin.runtime.loop.inversion import InversionLoop, images_in_flight, invert
from genorigin.runtime.loop.optimizers import LBFGS
from genorigin.runtime.loop.settings import FAST_SETTINGS, InversionSettings, Schedule
from genorigin.runtime.methods.attribution import Attributor
from helpers import TinyDecoder, tiny_generator
from service_helpers import png
from torch import nn
from torch.overrides import TorchFunctionMode

pytestmark = pytest.mark.numeric


class NanAboveTwo(nn.Module):
    """TinyDecoder, but NaN wherever the first latent coordinate exceeds 2 (a model that overflows)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inner = TinyDecoder()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        y = self.inner(z)
        return torch.where((z[:, :1] > 2).reshape(-1, 1, 1, 1), torch.full_like(y, float("nan")), y)


def _bright_starts_in_the_nan_region(image: np.ndarray, restarts: int, rng: np.random.Generator) -> np.ndarray:
    z = rng.standard_normal((restarts, 8)).astype(np.float32) * 0.1
    z[:, 0] = 3.0 if image.mean() > 0.5 else 0.0
    return z


def test_an_image_without_a_finite_loss_is_its_own_error_and_the_others_are_answered(tmp_path):
    gen = from_module(NanAboveTwo(), (8,), output_range=(0.0, 1.0), name="nan-above-two")
    settings = InversionSettings(steps=30, restarts=1, init="encoder", optimizer="lbfgs")
    att = Attributor(gen, settings=settings, schedule=Schedule(check_every=10),
                     initializer=_bright_starts_in_the_nan_region)  # fmt: skip
    att.use_calibration(Calibration(model_name=gen.name, model_fingerprint=gen.fingerprint(),
                                    settings=settings.to_dict(), scores=[1e-4, 2e-4, 3e-4, 4e-4]))  # fmt: skip
    dark, bright = np.full((3, 8, 8), 0.2, np.float32), np.full((3, 8, 8), 0.8, np.float32)
    results = att.attribute(np.stack([dark, bright, dark * 0.5]))
    assert [r.verdict for r in results] == ["non-belonging", "error", "non-belonging"]
    assert "no finite loss" in results[1].error and np.isfinite(results[0].calibrated_loss)
    # through files: the failed image is an error line naming it, the others are results
    for name, image in (("dark.png", dark), ("bright.png", bright)):
        (tmp_path / name).write_bytes(png(image))
    found = att.attribute_files([str(tmp_path)])
    assert [r.source.split("/")[-1] for r in found.results] == ["dark.png"]
    assert len(found.errors) == 1 and found.errors[0].startswith(str(tmp_path / "bright.png"))


def _signature(o) -> tuple:
    return (o.steps, o.stop_reason, np.float64(o.best_loss).tobytes(), tuple(o.trajectory), o.evaluations)


def test_a_budget_ending_between_checkpoints_touches_only_its_own_image():
    """steps=25 with checkpoints every 10: image 0 stops at step 10, image 2 takes its place, and image 1's
    budget ends at step 25 — image 2's step 15. That sync must not record, decide or restart anything for
    image 2 (it would add a trajectory point at a step image 2 never has alone)."""
    gen = tiny_generator()
    rng = np.random.default_rng(4)
    targets = rng.random((3, 3, 8, 8)).astype(np.float32)
    settings = InversionSettings(steps=25, restarts=1, optimizer="lbfgs", init="prior")
    ids = np.array([1.0, 2.0, 3.0])  # passed as the complexity, so the rule can tell the images apart

    class FirstStopsAtTen:
        def check(self, step, best_loss, complexity):
            return np.where((complexity == 1.0) & (step == 10), 1, 0)

    backend = TorchBackend(gen)
    alone = [invert(backend, targets[i : i + 1], gen.latent, settings, Schedule(check_every=10),
                    complexity=ids[i : i + 1], stop_rule=FirstStopsAtTen())[0] for i in range(3)]  # fmt: skip
    together = invert(backend, targets, gen.latent, settings, Schedule(batch_size=2, check_every=10),
                      complexity=ids, stop_rule=FirstStopsAtTen())  # fmt: skip
    assert [o.stop_reason for o in together] == ["belonging", "budget", "budget"]
    for a, b in zip(alone, together):
        assert _signature(a) == _signature(b)
        assert all(s % 10 == 0 or s == 25 for s, _ in b.trajectory)


def test_invert_refuses_to_return_fewer_outcomes_than_inputs():
    gen = tiny_generator()

    class DropsOne(InversionLoop):
        def run(self, source, on_done):
            super().run(source, lambda item, o: None if item.key == 1 else on_done(item, o))

    loop = DropsOne(TorchBackend(gen), gen.latent, InversionSettings(steps=10, restarts=1))
    with pytest.raises(RuntimeError, match=r"without an outcome for inputs \[1\]"):
        loop.invert(np.random.default_rng(0).random((3, 3, 8, 8)).astype(np.float32))


class SmallBackend(TorchBackend):
    """A backend that holds at most ``max_slots`` slots per step and raises past it, as TensorRT's engines do."""

    max_slots = 3
    largest = 0

    def loss_and_grad(self, z, x):
        SmallBackend.largest = max(SmallBackend.largest, len(z))
        if len(z) > self.max_slots:
            raise ValueError(f"{len(z)} slots exceed the largest batch the engines were built for ({self.max_slots})")
        return super().loss_and_grad(z, x)


def test_adaptive_restarts_stay_within_the_backend_capacity_and_never_wait():
    gen = tiny_generator()
    targets = np.random.default_rng(1).random((4, 3, 8, 8)).astype(np.float32)  # far from the model: they stall
    settings = InversionSettings(steps=60, restarts=1, optimizer="lbfgs", fresh_starts=1, stall_window=10)
    schedule = Schedule(batch_size=8, check_every=10, early_exit=False)
    out = invert(SmallBackend(gen), targets, gen.latent, settings, schedule)
    assert any(o.fresh_starts for o in out), "the test needs stalled images that get fresh starts"
    assert SmallBackend.largest <= 3
    alone = [invert(TorchBackend(gen), targets[i : i + 1], gen.latent, settings, schedule)[0] for i in range(4)]
    assert [_signature(o) for o in out] == [_signature(o) for o in alone]  # a restart never waited for room
    assert images_in_flight(8, 2, 3) == 1 and images_in_flight(8, 2, None) == 8
    with pytest.raises(ValueError, match=r"need 2 slots"):
        images_in_flight(8, 2, 1)


class CountHostReads(TorchFunctionMode):
    """Counts the tensor calls that read device memory on the host (each a GPU→CPU synchronisation)."""

    READS = frozenset({
        torch.Tensor.item, torch.Tensor.__bool__, torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.tolist,
        torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__, torch.Tensor.__array__,
        torch.Tensor.nonzero, torch.Tensor.any, torch.Tensor.all,
    })  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []
        self.active = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if self.active and func in self.READS:
            self.reads.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def test_fast_preset_steps_between_checkpoints_have_no_host_sync():
    """Every optimiser step of the fast preset (loss, gradient, L-BFGS update with its line search) reads
    nothing back: host reads happen only at checkpoints."""
    gen = tiny_generator()
    targets = np.random.default_rng(2).random((3, 3, 8, 8)).astype(np.float32)
    settings = InversionSettings(**{**FAST_SETTINGS.__dict__, "init": "prior", "steps": 40})
    loop = InversionLoop(TorchBackend(gen), gen.latent, settings, Schedule(check_every=10, early_exit=False))
    counter = CountHostReads()
    step = loop.optimizer.step
    steps = []

    def counted_step(backend, state):
        counter.active = True
        try:
            step(backend, state)
        finally:
            counter.active = False
        steps.append(1)

    object.__setattr__(
        loop,
        "optimizer",
        type("Counted", (), {"step": staticmethod(counted_step), "fresh_slots": loop.optimizer.fresh_slots})(),
    )
    with counter:
        loop.invert(targets)
    assert len(steps) == 40 and counter.reads == []


def test_the_lbfgs_update_traces_whole_under_torch_compile():
    """fullgraph=True fails on any graph break (a data-dependent branch, a host read)."""
    opt = LBFGS()
    n, d = 3, 20
    e = {k: torch.from_numpy(v) for k, v in opt.fresh_slots(np.zeros((n, d), np.float32)).items()}
    ref = {k: v.clone() for k, v in e.items()}
    compiled = torch.compile(opt.update, fullgraph=True, backend="eager")
    z = zr = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    for _ in range(4):
        r, rr = z.double() - 1.0, zr.double() - 1.0
        z = compiled(z, (r * r).sum(1).float(), (2 * r).float(), e)
        zr = opt.update(zr, (rr * rr).sum(1).float(), (2 * rr).float(), ref)
    assert torch.equal(z, zr)
