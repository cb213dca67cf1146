"""The bfloat16 compute mode of the PyTorch backend: close to float32, float32 where the loop reads it."""

import numpy as np
import pytest
import torch
from genorigin.export.bundled import load_bundled
from genorigin.runtime.backends.eager import TorchBackend
from genorigin.runtime.backends.registry import GeneratorOnly, make_backend


def test_bfloat16_backend_is_close_to_float32_and_leaves_the_model_alone():
    gen = load_bundled("dcgan_a")
    fp32 = TorchBackend(gen)
    bf16 = make_backend(GeneratorOnly(gen), "torch-bf16")
    assert bf16.describe()["compute"] == "bfloat16" and next(bf16.module.parameters()).dtype == torch.bfloat16
    assert next(gen.module.parameters()).dtype == torch.float32  # the model itself stays float32
    rng = np.random.default_rng(0)
    z = torch.from_numpy(gen.latent.sample(4, rng))
    x = torch.from_numpy(rng.random((4, 3, 32, 32), dtype=np.float32))
    loss32, grad32 = fp32.loss_and_grad(z, x)
    loss16, grad16 = bf16.loss_and_grad(z, x)
    assert loss16.dtype == grad16.dtype == torch.float32  # what the loop and the optimiser read
    assert not torch.equal(grad16, grad32)  # it did run in bfloat16
    assert float(((loss16 - loss32).abs() / loss32).max()) < 1e-2
    assert float((grad16 - grad32).norm() / grad32.norm()) < 5e-2
    image = bf16.render(z.numpy())
    assert image.dtype == np.float32 and image.min() >= 0 and image.max() <= 1


def test_unknown_compute_is_refused():
    with pytest.raises(ValueError, match="compute must be one of float32, bfloat16"):
        TorchBackend(load_bundled("dcgan_a"), compute="float8")


def test_an_inversion_calibration_is_bound_to_the_arithmetic_it_was_made_in(tmp_path):
    """bfloat16 reconstructs own samples ~40× less closely: a float32 threshold would call them all non-belonging,
    so a calibration pins its arithmetic and a backend in the other one refuses it (both ways)."""
    from genorigin.runtime.decide.calibration import Calibration
    from genorigin.runtime.loop.settings import InversionSettings
    from genorigin.runtime.methods.attribution import Attributor

    gen = load_bundled("dcgan_a")
    settings = InversionSettings(steps=4, restarts=1)
    bf16 = Attributor(gen, backend="torch-bf16", settings=settings).calibrate(n=4)
    fp32 = Attributor(gen, backend="torch", settings=settings).calibrate(n=4)
    assert bf16.settings == {**settings.to_dict(), "compute": "bfloat16"}
    assert fp32.settings == settings.to_dict()  # float32 files are as before
    loaded = Calibration.load(bf16.save(tmp_path / "bf16.json"), fingerprint=gen.fingerprint())
    assert InversionSettings.from_dict(loaded.settings) == settings  # the file's settings still read back
    with pytest.raises(ValueError, match="made in bfloat16 arithmetic, this backend computes in float32"):
        Attributor(gen, backend="torch", settings=settings, calibration=loaded)
    with pytest.raises(ValueError, match="made in float32 arithmetic, this backend computes in bfloat16"):
        Attributor(gen, backend="torch-bf16", settings=settings, calibration=fp32)
    assert Attributor(gen, backend="torch-bf16", settings=settings, calibration=loaded).calibration is loaded
