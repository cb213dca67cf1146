"""DDIM and consistency adapters on tiny random-weight diffusers UNets saved to and loaded from local folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from genorigin.export.diffusion import (  # noqa: E402
    ConsistencyParams,
    alphas_cumprod_from_config,
    ddim_step,
    ddim_timesteps,
)
from genorigin.export.model_folders import load_model_path  # noqa: E402
from genorigin.runtime.backends.eager import TorchBackend  # noqa: E402
from genorigin.runtime.decide.calibration import Calibration, CalibrationMismatch, quantize_8bit  # noqa: E402
from genorigin.runtime.loop.inversion import invert  # noqa: E402
from genorigin.runtime.loop.settings import InversionSettings, Schedule  # noqa: E402
from genorigin.runtime.methods.attribution import Attributor  # noqa: E402


def tiny_unet(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(
        sample_size=16, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
        norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    )  # fmt: skip


def save_ddim(folder: Path, seed: int, ddpm: bool = False) -> Path:
    """A saved DDIMPipeline, or a DDPMPipeline with a DDPMScheduler (both load as DDIM)."""
    # x0-prediction: a random-weight epsilon-UNet's DDIM output is almost all clipped, so nearly flat in x_T
    if ddpm:
        pipe = diffusers.DDPMPipeline(unet=tiny_unet(seed), scheduler=diffusers.DDPMScheduler(prediction_type="sample"))
    else:
        pipe = diffusers.DDIMPipeline(unet=tiny_unet(seed), scheduler=diffusers.DDIMScheduler(prediction_type="sample"))
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("diffusion")
    out = {"ddim": save_ddim(root / "ddim", 0), "ddim_other": save_ddim(root / "ddim_other", 1, ddpm=True)}
    cm = diffusers.ConsistencyModelPipeline(unet=tiny_unet(2), scheduler=diffusers.CMStochasticIterativeScheduler())
    cm.save_pretrained(root / "cm")
    tiny_unet(3).save_pretrained(root / "bare_unet")
    out.update(cm=root / "cm", bare_unet=root / "bare_unet")
    return out


def _real_like(n: int, seed: int) -> np.ndarray:
    """Smooth random images: far from a random UNet's textures, like photos are."""
    rng = np.random.default_rng(seed)
    small = torch.from_numpy(rng.random((n, 3, 4, 4), dtype=np.float32))
    return torch.nn.functional.interpolate(small, size=(16, 16), mode="bilinear", align_corners=False).numpy()


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_ddim_update_matches_diffusers_scheduler(prediction_type: str, spacing: str) -> None:
    sched = diffusers.DDIMScheduler(prediction_type=prediction_type, timestep_spacing=spacing, steps_offset=1)
    sched.set_timesteps(7)
    ours = ddim_timesteps(sched.config, 7)
    assert ours == [int(t) for t in sched.timesteps]
    alphas, final = alphas_cumprod_from_config(sched.config)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 8, generator=g)
    for t in ours:
        out = torch.randn(2, 3, 8, 8, generator=g)
        prev = t - 1000 // 7
        a_prev = float(alphas[prev]) if prev >= 0 else final
        mine = ddim_step(out, x, float(alphas[t]), a_prev, prediction_type, clip_range=1.0)
        ref = sched.step(out, t, x, eta=0.0).prev_sample
        torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-5)
        x = ref


def test_ddim_generator_matches_the_diffusers_pipeline(folders: dict[str, Path]) -> None:
    gen = load_model_path(folders["ddim"], num_steps=4)
    assert gen.family == "diffusion" and gen.latent.shape == (3, 16, 16) and gen.image_size == (16, 16)
    pipe = diffusers.DDIMPipeline.from_pretrained(folders["ddim"], local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(batch_size=2, num_inference_steps=4, output_type="np", generator=torch.Generator().manual_seed(0))
    z = torch.randn((2, 3, 16, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = gen.forward(z).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(ours, ref.images, atol=1e-5)


def test_checkpointed_gradient_equals_plain_gradient(folders: dict[str, Path]) -> None:
    grads = []
    for use_checkpoint in (True, False):
        gen = load_model_path(folders["ddim"], num_steps=3, use_checkpoint=use_checkpoint)
        z = torch.randn((1, 3, 16, 16), generator=torch.Generator().manual_seed(1), requires_grad=True)
        gen.forward(z).square().sum().backward()
        grads.append(z.grad.clone())
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1])


def _own_vs_other(gen, other, steps: int, lr: float) -> tuple[np.ndarray, np.ndarray]:
    own = quantize_8bit(gen.sample(3, seed=5))
    others = np.concatenate([quantize_8bit(other.sample(2, seed=5)), _real_like(2, 0)])
    settings = InversionSettings(steps=steps, lr=lr)
    out = invert(TorchBackend(gen), np.concatenate([own, others]), gen.latent, settings, Schedule(check_every=steps))
    loss = np.array([o.best_loss for o in out])
    return loss[:3], loss[3:]


def test_ddim_own_samples_invert_far_better(folders: dict[str, Path]) -> None:
    gen = load_model_path(folders["ddim"], num_steps=2)
    own, other = _own_vs_other(gen, load_model_path(folders["ddim_other"], num_steps=2), steps=40, lr=0.2)
    assert own.max() * 2 < other.min(), (own, other)


def test_consistency_model_one_step(folders: dict[str, Path]) -> None:
    gen = load_model_path(folders["cm"])
    assert gen.config["architecture"] == "consistency-1step" and gen.config["sigma_max"] == 80.0
    p = ConsistencyParams()
    c_skip, c_out, c_in = p.scalings(p.sigma_max)
    sched = diffusers.CMStochasticIterativeScheduler()
    ref_skip, ref_out = sched.get_scalings_for_boundary_condition(torch.tensor(80.0))
    assert c_skip == pytest.approx(float(ref_skip)) and c_out == pytest.approx(float(ref_out))
    assert c_in == pytest.approx(1 / (80.0**2 + 0.25) ** 0.5)
    other = load_model_path(folders["bare_unet"], kind="consistency")
    own, others = _own_vs_other(gen, other, steps=80, lr=0.1)
    assert own.max() * 3 < others.min(), (own, others)


def test_calibration_round_trip_records_the_method(folders: dict[str, Path], tmp_path: Path) -> None:
    gen = load_model_path(folders["cm"])
    settings = InversionSettings(steps=20, lr=0.1)
    cal = Attributor(gen, settings=settings, schedule=Schedule(check_every=10)).calibrate(4)
    path = cal.save(tmp_path / "cal.json")
    moved = shutil.copytree(folders["cm"], tmp_path / "moved")
    again = load_model_path(moved)  # a fresh load from another place has the same fingerprint
    loaded = Calibration.load(path, fingerprint=again.fingerprint(), settings=settings.to_dict(), method=cal.method)
    assert loaded.method == "inversion" and loaded.scores == cal.scores
    with pytest.raises(CalibrationMismatch):
        Calibration.load(path, fingerprint=load_model_path(folders["bare_unet"], kind="consistency").fingerprint())
    assert (
        load_model_path(folders["ddim"], num_steps=2).fingerprint()
        != load_model_path(folders["ddim"], num_steps=3).fingerprint()
    )


def test_unsupported_folders_name_what_is_missing(folders: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no model_index\.json or config\.json"):
        load_model_path(tmp_path)
    (tmp_path / "unet").mkdir()
    (tmp_path / "scheduler").mkdir()
    with pytest.raises(ValueError, match=r"scheduler_config\.json"):
        load_model_path(tmp_path)
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps({"_class_name": "DDIMScheduler"}))
    with pytest.raises(ValueError, match=r"unet/ has no config\.json"):
        load_model_path(tmp_path)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FancyPipeline", "unet": ["x", "Y"]}))
    with pytest.raises(ValueError, match="unsupported _class_name 'FancyPipeline'"):
        load_model_path(tmp_path)
    with pytest.raises(ValueError, match="bare UNet2DModel has no scheduler"):
        load_model_path(folders["bare_unet"])
    with pytest.raises(ValueError, match="not a folder"):
        load_model_path(tmp_path / "missing")


def test_pickled_only_unet_is_refused(tmp_path: Path) -> None:
    """diffusers would unpickle a .bin file (running its code); genorigin loads safetensors only."""
    pipe = diffusers.DDIMPipeline(unet=tiny_unet(4), scheduler=diffusers.DDIMScheduler(prediction_type="sample"))
    pipe.save_pretrained(tmp_path / "ddim", safe_serialization=False)
    with pytest.raises(ValueError, match=r"unet: holds only pickled weights \(diffusion_pytorch_model\.bin\)") as info:
        load_model_path(tmp_path / "ddim", num_steps=2)
    assert len(str(info.value).splitlines()) == 1
