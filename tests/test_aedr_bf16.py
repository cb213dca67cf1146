"""AEDR in bfloat16 (``--backend torch-bf16``): forward passes on bfloat16 copies, recorded in the calibration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from genorigin.export.latent_diffusion import latent_diffusion_from_vae  # noqa: E402
from genorigin.runtime.methods.aedr import aedr_scores  # noqa: E402
from genorigin.runtime.methods.registry import make_attributor  # noqa: E402


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), layers_per_block=1,
        latent_channels=4, norm_num_groups=8, sample_size=16,
    )  # fmt: skip
    return latent_diffusion_from_vae(vae)


def test_bfloat16_round_trip_is_close_and_leaves_the_model_float32(model):
    images = model.generator.sample(4, seed=3)
    fp32, bf16 = model.roundtrip(images), model.roundtrip_in("bfloat16")(images)
    assert bf16.dtype == np.float32 and bf16.shape == fp32.shape and not np.array_equal(bf16, fp32)
    assert np.abs(bf16 - fp32).max() < 0.05
    assert next(model.encoder.parameters()).dtype == torch.float32  # copies, not the model
    scores32 = aedr_scores(model.roundtrip, images).score
    scores16 = aedr_scores(model.roundtrip_in("bfloat16"), images).score
    assert np.all(np.isfinite(scores16)) and not np.array_equal(scores16, scores32)


def test_bfloat16_aedr_calibration_is_its_own(model):
    bf16 = make_attributor(model, "aedr", backend="torch-bf16")
    assert bf16.settings.compute == "bfloat16"
    cal = bf16.calibrate(5)
    assert cal.settings["compute"] == "bfloat16"
    fp32 = make_attributor(model, "aedr")
    assert "compute" not in fp32.settings.to_dict()  # float32 calibrations read as before the field existed
    with pytest.raises(ValueError, match="other AEDR settings"):
        fp32.use_calibration(cal)
    with pytest.raises(ValueError, match="compute must be float32 or bfloat16"):
        model.roundtrip_in("float8")
