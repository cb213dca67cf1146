"""The platform mode (runtime/methods/platform.py): images at their own size, inverted through T_θ ∘ M; the window
it finds, its calibration through the platform family, files read at their own size."""

import json
from dataclasses import replace

import numpy as np
import pytest
from genorigin.export.bundled import assets_dir, load_bundled
from genorigin.runtime.decide.calibration import Calibration, quantize_8bit
from genorigin.runtime.loop.settings import FAST_SETTINGS, PRESETS, FitSettings, InversionSettings, Schedule
from genorigin.runtime.methods.attribution import Attributor
from genorigin.runtime.methods.encoder import FittedEncoder
from genorigin.runtime.methods.platform import PlatformAttributor
from genorigin.runtime.methods.platform_encoder import platform_encoder_path
from genorigin.runtime.robust.modes import quantization_floor, robust_settings
from genorigin.runtime.robust.transforms import ROBUST_FAMILIES, TRANSFORMS, apply_transform
from helpers import tiny_generator
from PIL import Image

from genorigin.choices import InversionChoices
from genorigin.cli import build_parser

TINY = robust_settings(InversionSettings(steps=30, restarts=1, init="encoder", optimizer="lbfgs", fresh_starts=1),
                       "platform")  # fmt: skip
SCHEDULE = Schedule(batch_size=8, check_every=10, exit_min_step=10)


@pytest.fixture(scope="module")
def tiny():
    """A tiny generator, its platform encoder (a short fit) and a platform calibration of 6 own samples."""
    gen = tiny_generator()
    att = PlatformAttributor(gen, settings=TINY, schedule=SCHEDULE)
    att.fit_encoder(FitSettings(steps=20, batch=16))
    cal = att.calibrate(n=6)
    return gen, att, cal


def test_the_platform_mode_is_a_robust_mode_with_two_starts():
    s = robust_settings(FAST_SETTINGS, "platform")
    assert (s.robust, s.loss, s.restarts, s.halve_starts_at) == ("platform", "mse-dct8", 2, (10,))
    assert s.to_dict()["robust"] == "platform" and InversionSettings.from_dict(s.to_dict()) == s
    args = build_parser(["calibrate"]).parse_args(["calibrate", "--model", "dcgan_a", "--robust", "platform"])
    assert InversionChoices.from_namespace(vars(args)).for_calibration(PRESETS, "fast")[0] == s


def test_the_calibration_records_the_mode_its_draws_and_floor(tiny):
    gen, _, cal = tiny
    assert cal.settings["robust"] == "platform" and cal.settings["loss"] == "mse-dct8"
    family = ROBUST_FAMILIES["platform"]
    samples = quantize_8bit(gen.sample(6, seed=cal.sample_seed))
    assert cal.transforms == family.apply(samples, cal.sample_seed)[1]
    assert any("→" in name for name in cal.transforms)  # some were served at another size or window
    assert cal.stall_floor > quantization_floor("mse-dct8", 3)


def test_the_mode_is_checked_against_the_calibration(tiny):
    gen, _, cal = tiny
    plain = replace(TINY, robust="none", loss="mse", restarts=1, halve_starts_at=())
    with pytest.raises(ValueError, match="robust mode 'platform'"):
        Attributor(gen, settings=plain, calibration=cal)
    with pytest.raises(ValueError, match="platform mode"):
        PlatformAttributor(gen, settings=plain)
    other = PlatformAttributor(gen, settings=TINY).fit_encoder(FitSettings(steps=3, seed=1))
    with pytest.raises(ValueError, match="calibration was made with encoder"):
        PlatformAttributor(gen, settings=TINY, schedule=SCHEDULE, calibration=cal, encoder=other)


def _sized(gen, seed: int = 0) -> list[np.ndarray]:
    own = quantize_8bit(gen.sample(4, seed=seed))  # 8×8, 6×8, 8×8, 16×16: two share a size (one loop)
    return [own[0], own[1][:, 1:7, :], own[3], apply_transform(TRANSFORMS["up2"], own[2:3])[0]]


@pytest.mark.numeric
def test_results_do_not_depend_on_the_batch_or_the_other_sizes_in_it(tiny):
    gen, att, cal = tiny
    att.use_calibration(cal)
    images = _sized(gen)
    together = att.attribute(images, keep_reconstructions=True)
    alone = [att.attribute([img])[0] for img in reversed(images)][::-1]
    for a, b, img in zip(together, alone, images):
        assert (a.loss, a.verdict, a.steps, a.geometry) == (b.loss, b.verdict, b.steps, b.geometry)
        assert a.reconstruction.shape == img.shape  # T_θ(M(z)) as served, at the image's own size
        assert (a.geometry["out_height"], a.geometry["out_width"]) == img.shape[1:]
    assert "geometry" in json.loads(json.dumps(together[0].to_dict()))


def test_inputs_outside_the_family_are_refused_in_one_line(tiny):
    _, att, _ = tiny
    with pytest.raises(ValueError, match="image 1: 40×40 is outside the sizes the platform mode inverts"):
        att.attribute([np.zeros((3, 8, 8), np.float32), np.zeros((3, 40, 40), np.float32)])
    with pytest.raises(ValueError, match=r"image 0: expected 3×H×W"):
        att.attribute([np.zeros((1, 8, 8), np.float32)])
    with pytest.raises(ValueError, match="the live queue"):
        att.work_item("k", np.zeros((3, 8, 8), np.float32))


def test_files_are_read_at_their_own_size(tiny, tmp_path):
    """A file keeps its size (one larger than the family's is brought inside it, one smaller refused alone),
    the facts say so, and only an aspect ratio beyond the family's is warned about."""
    _, att, cal = tiny
    att.use_calibration(cal)
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a.png": (6, 8), "big.png": (20, 40), "tiny.png": (3, 3)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / name)
    found = att.attribute_files([str(tmp_path / "*.png")])
    assert len(found.errors) == 1 and "tiny.png" in found.errors[0]
    assert "3×3 is smaller than the platform mode inverts" in found.errors[0]
    by_name = {r.source.rsplit("/", 1)[-1]: r for r in found.results}
    assert (by_name["a.png"].geometry["out_height"], by_name["a.png"].geometry["out_width"]) == (6, 8)
    assert by_name["a.png"].input["scale"] == [1.0, 1.0] and by_name["a.png"].warning is None
    big = by_name["big.png"]
    assert (big.geometry["out_height"], big.geometry["out_width"]) == (8, 16)  # 2 × 8 at most, aspect kept
    assert big.input["scale"] == [0.4, 0.4]
    assert "aspect ratio 2.00, beyond the platform calibration's" in big.warning


@pytest.fixture(scope="module")
def dcgan():
    gen = load_bundled("dcgan_a")
    encoder = FittedEncoder.load(platform_encoder_path(assets_dir() / "models" / "dcgan_a.encoder.pt"))
    settings = replace(robust_settings(FAST_SETTINGS, "platform"), steps=80)
    att = PlatformAttributor(gen, settings=settings, schedule=replace(SCHEDULE, early_exit=False), encoder=encoder)
    cal = Calibration("dcgan_a", gen.fingerprint(), settings.to_dict(), scores=[1e-6, 2e-6, 3e-6],
                      encoder=encoder.digest())  # fmt: skip
    att.use_calibration(cal)
    return gen, att


@pytest.mark.numeric
@pytest.mark.parametrize("left, top", [(2, 4), (5, 1), (1, 2)])
def test_a_crop_of_an_own_sample_recovers_its_offset_within_a_pixel(dcgan, left, top):
    """An 80 % cut (26×26 of 32×32) of an own sample, kept at its size, up to 5 px from the centred cut's
    place: the search puts the window where the cut was (and at its size) within a pixel. (Cuts at the
    frame's corners are placed less reliably: docs/robustness.md measures how often.)"""
    gen, att = dcgan
    own = quantize_8bit(gen.sample(1, seed=100 + left + 10 * top))[0]
    cut = own[:, top : top + 26, left : left + 26]
    (r,) = att.attribute([cut])
    g = r.geometry
    assert abs(g["left"] - left) < 1.0 and abs(g["top"] - top) < 1.0, g
    assert abs(g["width"] - 26) < 1.0 and abs(g["height"] - 26) < 1.0, g
    assert r.loss < 1e-3  # matched (real photos served alike end near 6e-4 on average, docs/robustness.md)


def test_the_geometry_transforms_serve_the_sizes_platforms_do():
    images = quantize_8bit(load_bundled("dcgan_a").sample(2, seed=1))
    sizes = {"cut0.9": (29, 29), "cut0.8": (26, 26), "cut0.8-offset": (26, 26), "cut4:3": (24, 32),
             "down0.75": (24, 24), "down0.5": (16, 16), "up2": (64, 64)}  # fmt: skip
    for name, size in sizes.items():
        assert apply_transform(name, images).shape[2:] == size
        assert apply_transform(f"{name}+jpeg80", images).shape[2:] == size
    centre = apply_transform("cut0.8", images)
    assert np.array_equal(centre, images[:, :, 3:29, 3:29])  # a cut is the pixels themselves
    wide = apply_transform("down0.5", images)[0].transpose(1, 2, 0)
    pixels = np.round(images[0].transpose(1, 2, 0) * 255).astype(np.uint8)
    assert np.array_equal(np.round(wide * 255), np.asarray(Image.fromarray(pixels).resize((16, 16), Image.BICUBIC)))


def test_the_platform_familys_draws_are_seeded_and_in_range():
    family = ROBUST_FAMILIES["platform"]
    images = np.repeat(quantize_8bit(load_bundled("dcgan_a").sample(1, seed=2)), 1000, axis=0)
    draws = family.draws(images, seed=9)
    assert [d.name for d in draws] == [d.name for d in family.draws(images, seed=9)]
    assert [d.name for d in draws] != [d.name for d in family.draws(images, seed=10)]
    for d in draws:
        top, left, height, width = d.window
        assert top >= 0 and left >= 0 and top + height <= 32 + 1e-9 and left + width <= 32 + 1e-9
        assert min(height, width) >= 0.75 * 32 - 1e-9
        assert all(8 <= s <= 64 for s in d.out_size)
    whole = sum(d.window == (0.0, 0.0, 32.0, 32.0) and d.out_size == (32, 32) for d in draws) / len(draws)
    assert whole == pytest.approx(family.identity_share, abs=0.04)  # 3σ at 1000 draws
    assert sum(d.quality is None for d in draws) / len(draws) == pytest.approx(family.keep_png, abs=0.04)
    served, names = family.apply(images[:3], seed=9)
    assert names == [d.name for d in draws[:3]] and [s.shape[1:] for s in served] == [d.out_size for d in draws[:3]]


def test_the_command_line_calibrates_and_attributes_in_the_platform_mode(tmp_path, capsys):
    """``--robust platform`` at calibration; ``attribute`` follows it: files read at their own size, the
    shipped platform encoder pinned, the window found in ``--json``, another mode's flag refused; ``serve``
    and the Ray engine refuse the calibration in one line (their live loop takes one size)."""
    from genorigin.cli import main

    cal = tmp_path / "cal.json"
    fast = ["--steps", "30", "--batch-size", "8"]
    assert main(["calibrate", "--model", "dcgan_a", "--robust", "platform", "--samples", "4", "--out", str(cal),
                 "--quiet", *fast]) == 0  # fmt: skip
    recorded = json.loads(cal.read_text())
    assert recorded["settings"]["robust"] == "platform" and len(recorded["transforms"]) == 4
    shipped = platform_encoder_path(assets_dir() / "models" / "dcgan_a.encoder.pt")
    assert recorded["encoder"] == FittedEncoder.load(shipped).digest()
    own = quantize_8bit(load_bundled("dcgan_a").sample(1, seed=5))[0]
    pixels = np.round(own[:, 3:29, 1:31].transpose(1, 2, 0) * 255).astype(np.uint8)  # a 26×30 cut
    Image.fromarray(pixels).save(tmp_path / "cut.png")
    capsys.readouterr()
    assert main(["attribute", str(tmp_path / "cut.png"), "--model", "dcgan_a", "--calibration", str(cal),
                 "--json", "--quiet"]) == 0  # fmt: skip
    (result,) = json.loads(capsys.readouterr().out)["results"]
    assert (result["geometry"]["out_height"], result["geometry"]["out_width"]) == (26, 30)
    assert result["input"]["scale"] == [1.0, 1.0] and result["warning"] is None
    assert main(["attribute", str(tmp_path / "cut.png"), "--model", "dcgan_a", "--calibration", str(cal),
                 "--robust", "jpeg", "--quiet"]) == 2  # fmt: skip
    assert "--robust jpeg contradicts the calibration, made with --robust platform" in capsys.readouterr().err
    assert main(["serve", "--model", "dcgan_a", "--calibration", str(cal), "--port", "0"]) == 2
    assert "the service's continuous batching cannot serve it yet" in capsys.readouterr().err
    from genorigin.scale.batch import prepare
    from genorigin.workflow import WorkflowError

    with pytest.raises(WorkflowError, match="the Ray engine's live loop takes one"):  # before Ray starts
        prepare(
            [str(tmp_path / "cut.png")],
            "dcgan_a",
            tmp_path / "rows.jsonl",
            calibration=cal,
            choice=None,
            alpha=None,
            early_exit=True,
            convert=None,
            ddim_steps=50,
            num_cpus=1,
            batch_size=None,
            force=False,
        )


@pytest.mark.slow
def test_onnx_runtime_runs_the_platform_mode_as_torch_does(dcgan):
    """--backend onnxruntime: each view is exported once (its VJP graph validated against autograd) and runs
    on ONNX Runtime; 20 steps of the same search land where PyTorch's do."""
    from genorigin.models import resolve_model

    gen, torch_att = dcgan
    settings = replace(torch_att.settings, steps=20)
    cuts = [img[:, 2:28, 3:29] for img in quantize_8bit(gen.sample(2, seed=3))]
    results = {}
    for name in ("torch", "onnxruntime"):
        att = PlatformAttributor(gen, backend=resolve_model("dcgan_a").backend(name, settings.loss), settings=settings,
                                 schedule=torch_att.schedule, encoder=torch_att.encoder)  # fmt: skip
        att.use_calibration(replace(torch_att.calibration, settings=settings.to_dict()))
        results[name] = att.attribute(cuts)
        assert name == "torch" or att.views.get((26, 26))[1].name == "onnxruntime"
    for a, b in zip(results["torch"], results["onnxruntime"]):
        assert b.loss == pytest.approx(a.loss, rel=0.05)
        assert b.geometry["left"] == pytest.approx(a.geometry["left"], abs=0.2)
        assert b.geometry["top"] == pytest.approx(a.geometry["top"], abs=0.2)
