"""The small StyleGAN-style generator: z and w spaces, fixed noise, state-dict adapter, invertibility."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from genorigin.export.stylegan import (
    StyleGANConfig,
    StyleGANGenerator,
    random_stylegan,
    stylegan_from_state_dict,
    stylegan_generator,
)
from genorigin.runtime.backends.eager import TorchBackend
from genorigin.runtime.decide.calibration import quantize_8bit
from genorigin.runtime.loop.inversion import invert
from genorigin.runtime.loop.settings import InversionSettings, Schedule
from genorigin.runtime.methods.attribution import Attributor

CFG = StyleGANConfig(image_size=16, z_dim=32, w_dim=32, width=32)


def test_shapes_and_determinism() -> None:
    gen = random_stylegan(CFG, seed=0)
    assert gen.latent.shape == (32,) and gen.image_size == (16, 16) and gen.family == "gan"
    a, b = gen.sample(4, seed=1), gen.sample(4, seed=1)
    assert a.shape == (4, 3, 16, 16) and np.array_equal(a, b)
    assert a.std(axis=0).mean() > 0.05  # different z, different images
    assert ((a <= 0) | (a >= 1)).mean() < 0.05  # output_scale keeps random weights mostly inside [0, 1]
    assert random_stylegan(CFG, seed=0).fingerprint() == gen.fingerprint()
    assert random_stylegan(CFG, seed=1).fingerprint() != gen.fingerprint()


def test_w_space_has_the_same_own_samples() -> None:
    z_gen, w_gen = random_stylegan(CFG, seed=0), random_stylegan(CFG, seed=0, space="w")
    assert w_gen.latent.shape == (32,) and w_gen.config["space"] == "w"
    np.testing.assert_allclose(w_gen.sample(3, seed=2), z_gen.sample(3, seed=2), atol=1e-5)
    assert w_gen.fingerprint() != z_gen.fingerprint()


def test_noise_is_off_by_default_and_fixed_when_on() -> None:
    torch.manual_seed(0)
    net = StyleGANGenerator(StyleGANConfig(image_size=8, z_dim=8, w_dim=8, width=8, use_noise=True))
    for layer in net.synthesis.layers:
        layer.noise_strength.data.fill_(0.5)
    z = torch.randn(2, 8)
    with torch.no_grad():
        noisy = net(z)
        assert torch.equal(noisy, net(z))  # fixed buffers: deterministic
        for layer in net.synthesis.layers:
            layer.use_noise = False
        assert not torch.allclose(noisy, net(z))


def test_state_dict_adapter_round_trip() -> None:
    torch.manual_seed(3)
    net = StyleGANGenerator(CFG)
    gen = stylegan_from_state_dict(net.state_dict(), CFG.to_dict(), name="sg")
    assert gen.fingerprint() == stylegan_generator(net, name="sg").fingerprint()
    with torch.no_grad():
        z = torch.randn(2, 32)
        torch.testing.assert_close(gen.forward(z), (net(z) + 1) / 2)
    with pytest.raises(ValueError, match="does not match"):
        stylegan_from_state_dict(net.state_dict(), {**CFG.to_dict(), "width": 16})
    with pytest.raises(ValueError, match="space"):
        stylegan_generator(net, space="x")  # type: ignore[arg-type]


@pytest.mark.parametrize("space", ["z", "w"])
def test_own_samples_invert_far_better(space: str) -> None:
    gen, other = random_stylegan(CFG, seed=0, space=space), random_stylegan(CFG, seed=1)
    own = quantize_8bit(gen.sample(3, seed=5))
    smooth = torch.nn.functional.interpolate(torch.rand((2, 3, 4, 4), generator=torch.Generator().manual_seed(0)),
                                             size=(16, 16), mode="bilinear", align_corners=False).numpy()  # fmt: skip
    targets = np.concatenate([own, quantize_8bit(other.sample(2, seed=5)), smooth])
    settings = InversionSettings(steps=200, lr=0.1)
    out = invert(TorchBackend(gen), targets, gen.latent, settings, Schedule(check_every=200))
    loss = np.array([o.best_loss for o in out])
    assert loss[:3].max() * 5 < loss[3:].min(), loss


def test_calibration_in_w_space_uses_true_samples() -> None:
    gen = random_stylegan(CFG, seed=0, space="w")
    settings = InversionSettings(steps=30, lr=0.1)
    cal = Attributor(gen, settings=settings, schedule=Schedule(check_every=10)).calibrate(4)
    assert cal.method == "inversion" and cal.n == 4 and cal.model_fingerprint == gen.fingerprint()
