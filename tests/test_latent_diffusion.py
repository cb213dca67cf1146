"""AutoencoderKL decoder adapter, the three latent-diffusion methods, and the AEDR score parts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from genorigin.export.latent_diffusion import load_latent_diffusion  # noqa: E402
from genorigin.export.model_folders import load_model_path  # noqa: E402
from genorigin.runtime.backends.eager import TorchBackend  # noqa: E402
from genorigin.runtime.decide.calibration import (  # noqa: E402
    Calibration,
    CalibrationMismatch,
    quantize_8bit,
)
from genorigin.runtime.loop.inversion import invert  # noqa: E402
from genorigin.runtime.loop.settings import (  # noqa: E402
    TRACER_SETTINGS,
    InversionSettings,
    Schedule,
)
from genorigin.runtime.methods.aedr import (  # noqa: E402
    AEDRAttributor,
    aedr_scores,
    glcm,
    glcm_homogeneity,
    kde_threshold,
    quantize_grey,
)
from genorigin.runtime.methods.latent_tracer import EncoderInit, latent_tracer  # noqa: E402
from genorigin.runtime.methods.registry import make_attributor  # noqa: E402
from scipy import stats  # noqa: E402


def tiny_vae(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), layers_per_block=1,
        latent_channels=4, norm_num_groups=8, sample_size=16, scaling_factor=0.5,
    )  # fmt: skip


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ldm")
    tiny_vae(0).save_pretrained(root / "pipe" / "vae")  # a pipeline folder: model_index.json + vae/
    index = {"_class_name": "StableDiffusionPipeline", "vae": ["diffusers", "AutoencoderKL"]}
    (root / "pipe" / "model_index.json").write_text(json.dumps(index))
    tiny_vae(1).save_pretrained(root / "other")  # the autoencoder folder itself
    return {"pipe": root / "pipe", "other": root / "other"}


def _photo_like(n: int, seed: int) -> np.ndarray:
    """Smooth random colour fields plus fine noise: not made by either autoencoder."""
    rng = np.random.default_rng(seed)
    small = torch.from_numpy(rng.random((n, 3, 4, 4), dtype=np.float32))
    smooth = torch.nn.functional.interpolate(small, size=(16, 16), mode="bilinear", align_corners=False).numpy()
    return quantize_8bit(smooth + rng.normal(0, 0.04, smooth.shape).astype(np.float32))


def test_decoder_generator_handles_the_scaling_factor(folders: dict[str, Path]) -> None:
    model = load_latent_diffusion(folders["pipe"])
    gen = model.generator
    assert gen.latent.shape == (4, 8, 8) and gen.image_size == (16, 16) and gen.family == "latent-diffusion"
    assert load_model_path(folders["pipe"]).fingerprint() == gen.fingerprint()
    vae = diffusers.AutoencoderKL.from_pretrained(folders["pipe"] / "vae")
    z = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = (vae.decode(z / 0.5).sample + 1) / 2
        torch.testing.assert_close(gen.forward(z), ref)
        images = torch.rand((2, 3, 16, 16), generator=torch.Generator().manual_seed(1))
        mean = vae.encode(images * 2 - 1).latent_dist.mean * 0.5
    torch.testing.assert_close(torch.from_numpy(model.encode(images.numpy())), mean)
    starts = EncoderInit(model)(images[0].numpy(), 3)
    assert starts.shape == (3, 4, 8, 8)
    np.testing.assert_allclose(starts[0], mean[0].numpy(), atol=1e-6)
    assert not np.allclose(starts[1], starts[0])


def test_random_start_inversion_separates_own_samples(folders: dict[str, Path]) -> None:
    gen = load_latent_diffusion(folders["pipe"]).generator
    own = quantize_8bit(gen.sample(3, seed=4))
    others = np.concatenate([quantize_8bit(load_model_path(folders["other"]).sample(2, seed=4)), _photo_like(2, 0)])
    settings = InversionSettings(steps=150, lr=0.1)
    out = invert(TorchBackend(gen), np.concatenate([own, others]), gen.latent, settings, Schedule(check_every=150))
    loss = np.array([o.best_loss for o in out])
    assert loss[:3].max() * 10 < loss[3:].min(), loss  # measured: ~4e-4 vs ~2e-2


def test_encoder_init_tracer_calibration_round_trips(folders: dict[str, Path], tmp_path: Path) -> None:
    assert list(TRACER_SETTINGS.adam.lr_at(np.array([1, 50, 51, 100, 101]))) == [0.05, 0.05, 0.025, 0.025, 0.0125]
    model = load_latent_diffusion(folders["pipe"])
    settings = InversionSettings(steps=20, lr=0.05, lr_halve_every=10, init="encoder")
    tracer = latent_tracer(model, settings=settings, schedule=Schedule(check_every=10))
    cal = tracer.calibrate(4)
    assert cal.method == "inversion-encoder" and cal.settings["init"] == "encoder"
    path = cal.save(tmp_path / "cal.json")
    loaded = Calibration.load(path, fingerprint=model.generator.fingerprint(), settings=settings.to_dict(),
                              method="inversion-encoder")  # fmt: skip
    assert loaded.scores == cal.scores
    with pytest.raises(CalibrationMismatch):
        Calibration.load(path, method="aedr")
    with pytest.raises(ValueError, match="calibration method"):
        make_attributor(model, "inversion-random", settings=settings, calibration=loaded)
    results = latent_tracer(model, settings=settings, schedule=Schedule(check_every=10, early_exit=False),
                            calibration=loaded).attribute(_photo_like(2, 1))  # fmt: skip
    assert [r.steps for r in results] == [20, 20] and [r.verdict for r in results] == ["non-belonging"] * 2
    # the first start is the encoder's mean: step 1 already scores the encoder round trip
    start = EncoderInit(model)(_photo_like(1, 1)[0], 2)
    assert np.allclose(start[0], model.encode(_photo_like(1, 1))[0])


def test_glcm_matches_skimage() -> None:
    skimage_feature = pytest.importorskip("skimage.feature")
    grey = np.random.default_rng(0).integers(0, 32, (13, 17)).astype(np.uint8)
    for angle in (0.0, np.pi / 2, np.pi / 4):
        ref = skimage_feature.graycomatrix(grey, [1], [angle], levels=32)[:, :, 0, 0]
        np.testing.assert_array_equal(glcm(grey, 32, 1, angle), ref)
    image = np.random.default_rng(1).random((3, 16, 16)).astype(np.float32)
    P = skimage_feature.graycomatrix(quantize_grey(image, 32).astype(np.uint8), [1], [0.0], levels=32, normed=True)
    assert glcm_homogeneity(image) == pytest.approx(float(skimage_feature.graycoprops(P, "homogeneity")[0, 0]))
    assert glcm_homogeneity(np.full((3, 8, 8), 0.5, dtype=np.float32)) == 1.0


def test_kde_threshold_is_the_kde_quantile() -> None:
    scores = np.random.default_rng(2).normal(1.0, 0.2, 40)
    thr = kde_threshold(scores, 0.05)
    assert stats.gaussian_kde(scores).integrate_box_1d(-np.inf, thr) == pytest.approx(0.95, abs=1e-6)
    assert scores.mean() < thr < scores.max() + 0.5


def test_aedr_scores_own_images_lower_and_calibrates(folders: dict[str, Path], tmp_path: Path) -> None:
    model = load_latent_diffusion(folders["pipe"])
    photos = _photo_like(6, 3)
    made = quantize_8bit(np.concatenate([model.roundtrip(photos[:3]), model.generator.sample(3, seed=9)]))
    noise = np.random.default_rng(4).random((3, 3, 16, 16)).astype(np.float32)
    own, photo, white = (aedr_scores(model.roundtrip, x) for x in (made, photos[3:], noise))
    assert own.score.max() < photo.score.min(), (own.score, photo.score)
    # white noise: the ratio flags it, but its low GLCM homogeneity pulls the product down (see docs/families.md)
    assert own.ratio.max() < white.ratio.min(), (own.ratio, white.ratio)

    aedr = make_attributor(model, "aedr")
    assert isinstance(aedr, AEDRAttributor)
    cal = aedr.calibrate(20)
    assert cal.method == "aedr" and cal.settings["levels"] == 32
    loaded = Calibration.load(cal.save(tmp_path / "aedr.json"), fingerprint=model.generator.fingerprint(),
                              method="aedr")  # fmt: skip
    results = AEDRAttributor(model.generator, model.roundtrip, calibration=loaded).attribute(
        np.concatenate([made, photos[3:]])
    )
    assert all(r.rule == "aedr-kde" and r.critical_value == pytest.approx(aedr.threshold()) for r in results)
    assert [r.verdict for r in results[6:]] == ["non-belonging"] * 3
    assert sum(r.belonging for r in results[:6]) >= 4
    with pytest.raises(ValueError, match="method"):
        make_attributor(model, "inversion-random", calibration=loaded)


@pytest.mark.slow
def test_cli_on_a_diffusers_folder_with_each_method(folders: dict[str, Path], tmp_path: Path, capsys) -> None:
    from genorigin.cli import main
    from genorigin.images import save_png

    model = load_latent_diffusion(folders["pipe"])
    images = tmp_path / "images"
    images.mkdir()
    for i, img in enumerate(quantize_8bit(model.generator.sample(2, seed=5))):
        save_png(img, images / f"own_{i}.png")
    for i, img in enumerate(_photo_like(2, 7)):
        save_png(img, images / f"photo_{i}.png")
    pipe = str(folders["pipe"])
    for method, extra in (("aedr", []), ("inversion-encoder", []), ("inversion-random", ["--steps", "60"])):
        assert main(["calibrate", "--model", pipe, "--method", method, "--samples", "6", "--quiet", *extra]) == 0
        capsys.readouterr()
        assert main(["attribute", str(images), "--model", pipe, "--method", method, "--json", "--quiet", *extra]) == 0
        report = json.loads(capsys.readouterr().out)
        recorded = "inversion" if method == "inversion-random" else method  # the old name is accepted, recorded anew
        assert report["method"] == recorded and len(report["results"]) == 4
    written = sorted(p.name for p in folders["pipe"].glob("genorigin*.json"))
    assert written == [
        "genorigin.calibration.aedr.json",
        "genorigin.calibration.inversion-encoder.json",
        "genorigin.calibration.json",
    ]
    # a folder that is no model gets a message naming what is missing
    assert main(["calibrate", "--model", str(tmp_path / "images"), "--samples", "4"]) == 2
    assert "no model_index.json or config.json" in capsys.readouterr().err


def test_pickled_only_autoencoder_is_refused(tmp_path: Path) -> None:
    """diffusers would unpickle a .bin file (running its code); genorigin loads safetensors only."""
    tiny_vae(2).save_pretrained(tmp_path / "pickled", safe_serialization=False)
    assert not list((tmp_path / "pickled").glob("*.safetensors"))
    with pytest.raises(ValueError, match=r"pickled.*only pickled weights \(diffusion_pytorch_model\.bin\)") as info:
        load_latent_diffusion(tmp_path / "pickled")
    assert len(str(info.value).splitlines()) == 1
