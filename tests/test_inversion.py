import numpy as np
import pytest
import torch
from genorigin.runtime.backends.eager import TorchBackend
from genorigin.runtime.decide.calibration import quantize_8bit
from genorigin.runtime.loop.inversion import invert
from genorigin.runtime.loop.settings import InversionSettings, Schedule
from genorigin.runtime.loop.starts import initial_latents
from genorigin.runtime.methods.attribution import Attributor
from helpers import tiny_generator

SETTINGS = InversionSettings(steps=300, lr=0.05, restarts=2)


def _real_like(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, 8, 8)).astype(np.float32)


def test_own_samples_invert_far_below_other_images():
    gen = tiny_generator()
    own = quantize_8bit(gen.sample(6, seed=3))
    other = np.concatenate([_real_like(3, 1), quantize_8bit(tiny_generator(seed=5).sample(3, seed=3))])
    out = invert(TorchBackend(gen), np.concatenate([own, other]), gen.latent, SETTINGS, Schedule(batch_size=4))
    own_loss = np.array([o.best_loss for o in out[:6]])
    other_loss = np.array([o.best_loss for o in out[6:]])
    assert own_loss.max() * 20 < other_loss.min()
    assert all(o.steps == SETTINGS.steps and o.stop_reason == "budget" for o in out)


def test_results_do_not_depend_on_batching():
    gen = tiny_generator()
    targets = np.concatenate([quantize_8bit(gen.sample(3, seed=3)), _real_like(3, 2)])
    a = invert(TorchBackend(gen), targets, gen.latent, SETTINGS, Schedule(batch_size=6, check_every=300))
    b = invert(TorchBackend(gen), targets, gen.latent, SETTINGS, Schedule(batch_size=1, check_every=7))
    for x, y in zip(a, b):
        assert x.best_loss == pytest.approx(y.best_loss, rel=1e-4, abs=1e-9)


def test_best_so_far_is_monotone_and_matches_the_returned_latent():
    gen = tiny_generator()
    targets = _real_like(2, 4)
    out = invert(TorchBackend(gen), targets, gen.latent, SETTINGS, Schedule(check_every=25))
    for o, x in zip(out, targets):
        values = [v for _, v in o.trajectory]
        assert values == sorted(values, reverse=True)
        with torch.no_grad():
            y = gen.forward(torch.from_numpy(o.best_z[None])).numpy()
        assert float(((y - x) ** 2).mean()) == pytest.approx(o.best_loss, rel=1e-4)


def test_restarts_are_seeded_per_image():
    gen = tiny_generator()
    x, y = _real_like(2, 9)
    a = initial_latents(gen.latent, 0, x, 3)
    assert np.array_equal(a, initial_latents(gen.latent, 0, x.copy(), 3))
    assert not np.array_equal(a, initial_latents(gen.latent, 0, y, 3))
    assert not np.array_equal(a, initial_latents(gen.latent, 1, x, 3))
    assert not np.array_equal(a[0], a[1])


def test_refilling_queue_returns_results_in_input_order():
    gen = tiny_generator()
    own = quantize_8bit(gen.sample(4, seed=11))
    real = _real_like(4, 12)
    mixed = np.stack([real[0], own[0], real[1], own[1], real[2], own[2], real[3], own[3]])
    attributor = Attributor(gen, settings=SETTINGS, schedule=Schedule(batch_size=2, check_every=25))
    attributor.calibrate(n=12)
    finished: list[int] = []
    results = attributor.attribute(mixed, on_done=finished.append)
    assert [r.source for r in results] == [f"image[{i}]" for i in range(8)]
    alone = [attributor.attribute(mixed[i : i + 1])[0] for i in range(8)]
    assert [r.loss for r in results] == pytest.approx([r.loss for r in alone], rel=1e-4)
    assert [r.verdict for r in results] == [r.verdict for r in alone]
    assert sum(r.belonging for r in results[0::2]) == 0  # noise images
    assert sorted(finished) == list(range(8)) and finished != list(range(8))  # finished out of order


def test_early_exit_decides_both_ways_and_no_early_exit_reproduces_fixed_budget():
    gen = tiny_generator()
    attributor = Attributor(gen, settings=SETTINGS, schedule=Schedule(batch_size=4, check_every=25))
    cal = attributor.calibrate(n=12)
    images = np.concatenate([quantize_8bit(gen.sample(2, seed=21)), _real_like(2, 22)])
    early = attributor.attribute(images)
    assert early[0].stop_reason == "belonging" and early[0].steps < SETTINGS.steps
    assert early[2].stop_reason == "non-belonging" and early[2].steps < SETTINGS.steps
    fixed = Attributor(
        gen,
        settings=SETTINGS,
        schedule=Schedule(batch_size=4, check_every=25, early_exit=False),
        calibration=cal,
    ).attribute(images)
    reference = invert(
        TorchBackend(gen),
        images,
        gen.latent,
        SETTINGS,
        Schedule(batch_size=4, check_every=25, early_exit=False),
    )
    assert all(r.steps == SETTINGS.steps and r.stop_reason == "budget" for r in fixed)
    assert [r.loss for r in fixed] == [o.best_loss for o in reference]
    assert [r.verdict for r in fixed] == [r.verdict for r in early]


def test_settings_validation():
    with pytest.raises(ValueError):
        InversionSettings(steps=0)
    with pytest.raises(ValueError):
        InversionSettings(loss="ssim")
    with pytest.raises(ValueError):
        Schedule(batch_size=0)
    for bad in ((100, 50), (0,), (50, 50)):
        with pytest.raises(ValueError, match="halve_starts_at"):
            InversionSettings(halve_starts_at=bad)


class _SlotCountingBackend(TorchBackend):
    """The real torch backend, recording how many slots each step optimised."""

    def __init__(self, gen) -> None:
        super().__init__(gen)
        self.slots: list[int] = []

    def step(self, state, adam) -> None:
        self.slots.append(len(state.z))
        super().step(state, adam)


@pytest.mark.parametrize("check_every", [1, 7, 1000])
def test_successive_halving_keeps_the_best_half_at_exact_steps(check_every: int):
    gen = tiny_generator()
    settings = InversionSettings(steps=20, lr=0.05, restarts=4, halve_starts_at=(5, 10))
    backend = _SlotCountingBackend(gen)
    out = invert(backend, _real_like(1, 3), gen.latent, settings, Schedule(check_every=check_every))
    assert backend.slots == [4] * 5 + [2] * 5 + [1] * 10  # halving does not wait for a checkpoint
    assert sum(backend.slots) == settings.start_steps(20) == 4 * 5 + 2 * 5 + 1 * 10
    kept = invert(TorchBackend(gen), _real_like(1, 3), gen.latent, InversionSettings(
        steps=20, lr=0.05, restarts=4, halve_starts_at=()), Schedule(check_every=5))[0]  # fmt: skip
    # the start that survives is the best at step 10, and no start is lost before its own best at step 5
    assert out[0].trajectory[-1][1] >= kept.trajectory[-1][1]
    assert [s for s, _ in out[0].trajectory][-1] == 20


def test_settings_round_trip_through_json_unchanged():
    import json

    settings = InversionSettings(restarts=4, halve_starts_at=(50, 100))
    assert json.loads(json.dumps(settings.to_dict())) == settings.to_dict()
    assert InversionSettings.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings
    assert settings.to_dict()["halve_starts_at"] == [50, 100]
    assert settings.start_steps(1500) == 4 * 50 + 2 * 50 + 1400
    assert InversionSettings().start_steps(1500) == 2 * 1500  # the default keeps both starts to the end
    assert InversionSettings(restarts=3, halve_starts_at=(50,)).starts_alive(49) == 3
    assert InversionSettings(restarts=3, halve_starts_at=(50,)).starts_alive(50) == 2
