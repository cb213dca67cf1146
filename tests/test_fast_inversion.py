"""The fast preset's parts: encoder starts, per-slot L-BFGS, adaptive restarts, and the loop's bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from genorigin.export.package import export_generator
from genorigin.export.stylegan import StyleGANConfig, random_stylegan
from genorigin.runtime.backends.eager import TorchBackend
from genorigin.runtime.decide.calibration import quantize_8bit
from genorigin.runtime.loop.backend import SlotState
from genorigin.runtime.loop.inversion import invert
from genorigin.runtime.loop.optimizers import LBFGS, LBFGSConfig
from genorigin.runtime.loop.restarts import StallDetector
from genorigin.runtime.loop.settings import FAST_SETTINGS, FitSettings, InversionSettings, Schedule
from genorigin.runtime.methods.attribution import Attributor
from genorigin.runtime.methods.encoder import EncoderStarts, FittedEncoder, fit_generator_encoder
from helpers import tiny_generator

QUICK_FIT = FitSettings(steps=60, batch=32)
FAST = InversionSettings(**{**FAST_SETTINGS.to_dict(), "steps": 60, "halve_starts_at": ()})


def _real_like(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, 8, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def fitted():
    gen = tiny_generator()
    return gen, fit_generator_encoder(gen, QUICK_FIT)


# ------------------------------------------------------------------------------------------------- encoder
def test_encoder_fit_is_deterministic_from_its_seed(fitted, tmp_path):
    gen, enc = fitted
    again = fit_generator_encoder(gen, QUICK_FIT)
    assert again.digest() == enc.digest()
    other = fit_generator_encoder(gen, FitSettings(steps=60, batch=32, seed=1))
    assert other.digest() != enc.digest()
    loaded = FittedEncoder.load(enc.save(tmp_path / "e.pt"))
    assert loaded.digest() == enc.digest()
    x = quantize_8bit(gen.sample(3, seed=2))
    np.testing.assert_array_equal(loaded.encode(x), enc.encode(x))


def test_encoder_starts_beat_random_starts(fitted):
    gen, enc = fitted
    own = quantize_8bit(gen.sample(16, seed=9))
    backend = TorchBackend(gen)
    rand = gen.latent.sample(16, np.random.default_rng(0))
    loss_enc, _ = backend.loss_and_grad(torch.from_numpy(enc.encode(own)), torch.from_numpy(own))
    loss_rand, _ = backend.loss_and_grad(torch.from_numpy(rand), torch.from_numpy(own))
    assert float(loss_enc.median()) < 0.5 * float(loss_rand.median())
    starts = EncoderStarts.from_fitted(enc, gen.latent)(own[0], 3, np.random.default_rng(1))
    assert starts.shape == (3, 8) and np.array_equal(starts[0], enc.encode(own[:1])[0])


def test_tampered_encoder_file_is_refused(fitted, tmp_path):
    _, enc = fitted
    path = enc.save(tmp_path / "e.pt")
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["head.2.bias"] += 1
    torch.save(payload, path)
    with pytest.raises(ValueError, match="do not match their recorded digest"):
        FittedEncoder.load(path)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a loadable genorigin encoder"):
        FittedEncoder.load(tmp_path / "junk.pt")


def test_calibration_pins_the_encoder(fitted):
    gen, enc = fitted
    cal = Attributor(gen, settings=FAST, encoder=enc).calibrate(6)
    assert cal.encoder == enc.digest()
    other = fit_generator_encoder(gen, FitSettings(steps=60, batch=32, seed=3))
    with pytest.raises(ValueError, match="recalibrate with this encoder"):
        Attributor(gen, settings=FAST, encoder=other, calibration=cal)
    Attributor(gen, settings=FAST, encoder=enc, calibration=cal)  # the same encoder is accepted


def test_calibrate_fits_a_missing_encoder_and_attribute_refuses_without_one():
    gen = tiny_generator(seed=4)
    att = Attributor(gen, settings=FAST)
    with pytest.raises(RuntimeError, match="need an encoder"):
        att._loop(att.schedule, None)
    att.fit_encoder(QUICK_FIT)
    cal = att.calibrate(5)
    assert cal.encoder == att.encoder.digest() and att.encoder.steps_done == QUICK_FIT.steps


def test_encoder_fits_from_an_exported_graph_alone(tmp_path):
    """A package has no torch module: the pairs come from the ONNX forward run by ONNX Runtime."""
    from genorigin.export.package import AttributionPackage
    from genorigin.runtime.backends.ort import package_generator

    gen = tiny_generator()
    pkg = AttributionPackage.load(export_generator(gen, tmp_path / "p"))
    onnx_gen = package_generator(pkg)
    assert onnx_gen.module is None
    a = fit_generator_encoder(onnx_gen, FitSettings(steps=20, batch=16))
    b = fit_generator_encoder(gen, FitSettings(steps=20, batch=16))
    x = quantize_8bit(gen.sample(4, seed=1))
    np.testing.assert_allclose(a.encode(x), b.encode(x), atol=1e-3)  # same pairs up to ORT rounding


@pytest.mark.parametrize("space", ["z", "w"])
def test_encoder_fits_stylegan_in_z_and_w(space: str):
    gen = random_stylegan(StyleGANConfig(image_size=16, z_dim=16, w_dim=16, width=16), seed=0, space=space)
    enc = fit_generator_encoder(gen, FitSettings(steps=40, batch=16))
    assert enc.encode(gen.sample(2, seed=1)).shape == (2, 16)


# ------------------------------------------------------------------------------------------------- L-BFGS
def _drive(optimizer, backend, z0, x, steps):
    state = SlotState(
        z=torch.from_numpy(z0.copy()), m=torch.zeros_like(torch.from_numpy(z0)), v=torch.zeros(z0.shape),
        best_z=torch.from_numpy(z0.copy()), best_loss=torch.full((len(z0),), np.inf), x=torch.from_numpy(x),
        t=torch.zeros(len(z0)), extra={k: torch.from_numpy(v) for k, v in optimizer.fresh_slots(z0).items()},
    )  # fmt: skip
    for _ in range(steps):
        optimizer.step(backend, state)
    return state


def test_lbfgs_solves_an_exact_preimage_far_faster_than_adam():
    gen = tiny_generator()
    z_true = gen.latent.sample(4, np.random.default_rng(5))
    x = gen.render_latents(z_true).astype(np.float32)  # not quantised: an exact preimage exists
    z0 = z_true + 0.3 * np.random.default_rng(6).standard_normal(z_true.shape).astype(np.float32)
    backend = TorchBackend(gen)
    lbfgs = _drive(LBFGS(), backend, z0, x, 60)
    adam = _drive(FAST.__class__(optimizer="adam", lr=0.05).make_optimizer(), backend, z0, x, 60)
    assert float(lbfgs.best_loss.max()) < 1e-9
    assert float(lbfgs.best_loss.max()) < 1e-3 * float(adam.best_loss.min())
    assert float(lbfgs.t[0]) == 60  # one evaluation per step, counted like Adam's


def test_lbfgs_slots_are_independent():
    """Each slot keeps its own history and step length: a slot's path does not depend on its neighbours."""
    gen = tiny_generator()
    x = _real_like(3, 1)
    z0 = gen.latent.sample(3, np.random.default_rng(2))
    together = _drive(LBFGS(), TorchBackend(gen), z0, x, 25)
    alone = _drive(LBFGS(), TorchBackend(gen), z0[1:2], x[1:2], 25)
    np.testing.assert_allclose(together.best_loss[1:2].numpy(), alone.best_loss.numpy(), rtol=1e-5)


def test_lbfgs_settings_are_validated():
    with pytest.raises(ValueError):
        LBFGSConfig(memory=0)
    with pytest.raises(ValueError):
        InversionSettings(optimizer="sgd")


# ------------------------------------------------------------------------------------------------- restarts
def test_stall_detector_fires_on_a_stuck_trajectory_not_on_a_slow_one():
    detector = StallDetector(window=50, factor=1.5, floor=2 * (1 / 255) ** 2 / 12)
    stuck = [(s, 1e-3 if s >= 30 else 1e-2) for s in range(10, 201, 10)]  # flat since step 30
    slow = [(s, 1e-2 * 0.8 ** (s / 10)) for s in range(10, 201, 10)]  # falls ×3 per 50 steps, steadily
    converged = [(s, 1.2e-6) for s in range(10, 201, 10)]  # at the 8-bit noise floor: done, not stuck
    assert detector.stalled(stuck, since=0)
    assert not detector.stalled(slow, since=0)
    assert not detector.stalled(converged, since=0)
    assert not detector.stalled(stuck[:4], since=0)  # too early to tell
    assert not detector.stalled(stuck, since=180)  # a fresh start gets a whole window


def test_a_stalled_image_gets_a_fresh_start_and_an_exact_one_does_not(fitted):
    gen, enc = fitted
    own = quantize_8bit(gen.sample(1, seed=4))
    settings = InversionSettings(**{**FAST.to_dict(), "steps": 150, "stall_window": 30})
    planted = gen.latent.sample(1, np.random.default_rng(0)) * 0 + 6.0  # a start far in the prior's tail

    def stuck_start(image, restarts, rng):
        return planted if image is stuck_image else np.concatenate([enc.encode(image[None])])

    stuck_image = _real_like(1, 3)[0]
    out = invert(TorchBackend(gen), np.stack([stuck_image, own[0]]), gen.latent, settings,
                 Schedule(check_every=10, early_exit=False), initializer=stuck_start,
                 stall_floor=2 * (1 / 255) ** 2 / 12)  # fmt: skip
    assert out[0].fresh_starts == 1 and out[0].restart_steps[0] >= 30
    assert out[1].fresh_starts == 0


# ------------------------------------------------------------------------------------------------- the loop
class _Recording(TorchBackend):
    """The real torch backend, recording each step's incoming latents and outgoing best losses."""

    def __init__(self, gen) -> None:
        super().__init__(gen)
        self.z_in: list[np.ndarray] = []
        self.best_out: list[np.ndarray] = []
        self.z_out: list[np.ndarray] = []

    def step(self, state, adam) -> None:
        self.z_in.append(state.z.numpy().copy())
        super().step(state, adam)
        self.best_out.append(state.best_loss.numpy().copy())
        self.z_out.append(state.z.numpy().copy())


def test_returned_latent_is_the_best_not_the_last():
    """A loop returning the current latent instead of the best one fails here (Adam with a huge lr oscillates)."""
    gen = tiny_generator()
    x = _real_like(2, 7)
    settings = InversionSettings(steps=40, lr=3.0, restarts=1)
    out = invert(TorchBackend(gen), x, gen.latent, settings, Schedule(check_every=40))
    for o, target in zip(out, x):
        with torch.no_grad():
            y = gen.forward(torch.from_numpy(o.best_z[None])).numpy()
        assert float(((y - target) ** 2).mean()) == pytest.approx(o.best_loss, rel=1e-5)


def test_halving_keeps_the_best_starts():
    """At a halving step the two starts kept are the two with the lowest best loss (keeping the worst fails)."""
    gen = tiny_generator()
    backend = _Recording(gen)
    settings = InversionSettings(steps=20, lr=0.05, restarts=4, halve_starts_at=(10,))
    invert(backend, _real_like(1, 11), gen.latent, settings, Schedule(check_every=10))
    assert [len(z) for z in backend.z_in] == [4] * 10 + [2] * 10
    after_10 = backend.best_out[9]  # the four starts' best losses when the halving decides
    z_11 = backend.z_in[10]  # the latents the two kept starts continue from
    kept = [i for i in range(4) if any(np.array_equal(backend.z_out[9][i], z) for z in z_11)]
    assert sorted(kept) == sorted(np.argsort(after_10)[:2].tolist())


def test_evaluations_count_every_start_step():
    gen = tiny_generator()
    x = _real_like(2, 1)
    out = invert(TorchBackend(gen), x, gen.latent, InversionSettings(steps=30, lr=0.05, restarts=4,
                 halve_starts_at=(10, 20)), Schedule(check_every=10))  # fmt: skip
    assert all(o.evaluations == 4 * 10 + 2 * 10 + 1 * 10 for o in out)


def test_encoder_travels_in_a_package_and_ort_runs_it(fitted, tmp_path):
    """encoder.onnx in the package gives the torch encoder's starts; the package identity does not change."""
    from genorigin.export.package import AttributionPackage, PackageError
    from genorigin.runtime.backends.ort import OrtBackend, package_generator
    from genorigin.runtime.methods.encoder import OnnxEncoder, attach_encoder

    gen, enc = fitted
    root = export_generator(gen, tmp_path / "p")
    before = AttributionPackage.load(root).fingerprint
    path = attach_encoder(root, enc)
    pkg = AttributionPackage.load(root)
    assert pkg.fingerprint == before and pkg.attachment("encoder") == path
    onnx_enc = OnnxEncoder(path)
    x = quantize_8bit(gen.sample(3, seed=8))
    np.testing.assert_allclose(onnx_enc.encode(x), enc.encode(x), rtol=1e-4, atol=1e-5)
    att = Attributor(package_generator(pkg), backend=OrtBackend(pkg), settings=FAST, encoder=onnx_enc)
    cal = att.calibrate(4)
    assert cal.encoder == onnx_enc.digest()
    path.write_bytes(path.read_bytes() + b"\0")  # a changed encoder graph is refused at load
    with pytest.raises(PackageError, match="does not match the manifest"):
        AttributionPackage.load(root)
