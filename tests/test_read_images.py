"""read_images / decode_upload on real files: facts, the model's pixel limit, JPEG draft decoding, the decode
gate, and --convert."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
import torch
from corpus.build import encode, rgba, uniform_png
from genorigin.export.adapters import from_module
from genorigin.export.generator import Generator
from helpers import tiny_generator
from PIL import Image
from torch import nn

from genorigin.images import (
    DECODE_GATE,
    ImageError,
    ImageTooLarge,
    UnsupportedImage,
    decode_upload,
    load_rgb8,
    pixel_limit,
    read_images,
    set_max_concurrent_decodes,
)


def _generator(channels: int = 3, side: int | tuple[int, int] = 8) -> Generator:
    """A real (untrained) generator of channels×H×W images (``side``: H = W, or (H, W)): reading needs its size."""
    torch.manual_seed(0)
    size = (side, side) if isinstance(side, int) else side
    module = nn.Sequential(nn.Linear(8, channels * 4 * 4), nn.Unflatten(1, (channels, 4, 4)),
                           nn.Upsample(size=size), nn.Sigmoid())  # fmt: skip
    return from_module(module, (8,), output_range=(0.0, 1.0), name=f"g{channels}x{size}")


def _smooth(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Photo-like 8-bit RGB: low-frequency colour fields, the content JPEG and LANCZOS are made for."""
    coarse = np.random.default_rng(seed).integers(0, 256, (height // 64 + 2, width // 64 + 2, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))


@pytest.fixture()
def gate_limit():
    before = DECODE_GATE.limit
    yield
    set_max_concurrent_decodes(before)


def test_pixel_limit_rule():
    assert pixel_limit((8, 8)) == pixel_limit((32, 32)) == 16 * 2**20  # floor: a 16 MP photo reads for any model
    assert pixel_limit((160, 160)) == 1024 * 160 * 160  # 32× the model's side
    assert pixel_limit((1024, 1024)) == 64 * 2**20  # hard cap


def test_a_6000px_png_is_refused_from_its_header_for_a_small_model_and_read_for_a_large_one(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(uniform_png(6000, 6000))  # ~120 KB, 108 MB decoded
    assert path.stat().st_size < 200_000
    before = Image.core.get_stats()["new_count"]  # Pillow's count of image buffers ever allocated
    small = read_images([str(path)], tiny_generator())
    assert Image.core.get_stats()["new_count"] == before  # refused without allocating (so decoding) anything
    assert small.sources == [] and len(small.errors) == 1
    assert "big.png" in small.errors[0] and "36.0 megapixels" in small.errors[0] and "16.8" in small.errors[0]
    with pytest.raises(ImageTooLarge) as info:
        decode_upload(path.read_bytes(), "big.png", tiny_generator())
    assert info.value.http_status == 413

    large = read_images([str(path)], _generator(side=256))
    assert Image.core.get_stats()["new_count"] > before and large.errors == []
    assert large.images.shape == (1, 3, 256, 256)
    np.testing.assert_allclose(large.images[0, :, 128, 128], np.array([10, 20, 30]) / 255.0, atol=1e-6)
    facts = large.facts[0]
    assert (facts.width, facts.height, facts.decoded_size) == (6000, 6000, (6000, 6000))
    assert facts.crop_box == (0, 0, 6000, 6000) and facts.scale == (256 / 6000, 256 / 6000)
    refused = read_images([str(path)], _generator(side=256), max_pixels=30_000_000)  # explicit override
    assert "exceeds the limit of 30.0 megapixels" in refused.errors[0]


@pytest.mark.parametrize("model_size", [(8, 8), (8, 16)])
def test_facts_report_the_crop_and_scale_prepare_image_applies(tmp_path, model_size):
    gen = _generator(side=model_size)
    pixels = np.random.default_rng(0).integers(0, 256, (20, 31, 3), dtype=np.uint8)  # H×W: wide, odd margin
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    result = read_images([str(tmp_path / "wide.png")], gen)
    facts = result.facts[0]
    assert facts.crop_box == (5, 0, 25, 20) and facts.scale == (model_size[1] / 20, model_size[0] / 20)
    assert (facts.format, facts.mode, facts.bit_depth, facts.conversion) == ("PNG", "RGB", 8, None)
    assert not facts.is_jpeg
    left, top, right, bottom = facts.crop_box
    size = (round(20 * facts.scale[0]), round(20 * facts.scale[1]))
    by_hand = Image.fromarray(pixels[top:bottom, left:right]).resize(size, Image.Resampling.LANCZOS)
    np.testing.assert_array_equal(result.images[0], np.asarray(by_hand).transpose(2, 0, 1) / np.float32(255))
    as_json = facts.to_dict()
    assert as_json["crop_box"] == [5, 0, 25, 20] and as_json["is_jpeg"] is False


def test_errors_are_one_line_whatever_the_name():
    for name, shown in (("evil\nname.png", "evil name.png"), ("\x1b[31mred.png", "\\x1b[31mred.png")):
        with pytest.raises(ImageError) as info:
            decode_upload(b"", name, tiny_generator())
        assert str(info.value) == f"{shown}: empty file (0 bytes)"


def test_jpeg_quality_is_exact_for_libjpeg_files_at_every_quality_10_to_100():
    gen = tiny_generator()
    pixels = _smooth(64, 64)
    misses = []
    for quality in range(10, 101):
        _, facts = decode_upload(encode(Image.fromarray(pixels), "JPEG", quality=quality), f"q{quality}.jpg", gen)
        if (facts.jpeg_quality, facts.jpeg_quality_error) != (quality, 0.0):
            misses.append((quality, facts.jpeg_quality, facts.jpeg_quality_error))
    assert misses == []  # 91 of 91 exact: docs/inputs.md


def test_every_ijg_quality_1_to_100_inverts_exactly():
    from genorigin.jpeg import estimate_quality, ijg_table

    assert [estimate_quality(ijg_table(q)).quality for q in range(1, 101)] == list(range(1, 101))
    assert all(estimate_quality(ijg_table(q)).exact for q in range(1, 101))
    with pytest.raises(ValueError, match="64 entries"):
        estimate_quality([1] * 63)


def test_jpeg_quality_of_a_non_libjpeg_table_is_the_nearest_with_its_error():
    from genorigin.jpeg import ijg_table

    table = np.clip(np.round(ijg_table(70) * 1.15 + 1), 1, 255).astype(int).tolist()  # some other encoder's table
    data = encode(Image.fromarray(_smooth(64, 64)), "JPEG", qtables=[table, table])
    _, facts = decode_upload(data, "camera.jpg", tiny_generator())
    assert 62 <= facts.jpeg_quality <= 68 and 0.3 < facts.jpeg_quality_error < 1  # measured: 65, 0.60
    _, png = decode_upload(encode(Image.fromarray(_smooth(64, 64)), "PNG"), "a.png", tiny_generator())
    assert png.jpeg_quality is None and png.jpeg_quality_error is None


def test_large_jpegs_decode_at_reduced_scale_with_almost_the_same_model_input(tmp_path):
    gen = tiny_generator()  # 8×8: DCT scaling to 1/8 keeps the short side at 96 ≥ 2 × 8
    pixels = _smooth(1024, 768)
    (tmp_path / "photo.jpg").write_bytes(encode(Image.fromarray(pixels), "JPEG", quality=92))
    result = read_images([str(tmp_path / "photo.jpg")], gen)
    facts = result.facts[0]
    assert (facts.width, facts.height, facts.decoded_size) == (1024, 768, (128, 96))
    assert facts.crop_box == (16, 0, 112, 96) and facts.scale == (8 / 96, 8 / 96)
    assert (facts.jpeg_quality, facts.jpeg_quality_error) == (92, 0.0)
    full = gen.prepare_image(load_rgb8(tmp_path / "photo.jpg"))  # decoded at full size
    assert np.abs(result.images[0] - full).max() < 0.01  # measured: 1/255
    big_model = read_images([str(tmp_path / "photo.jpg")], _generator(side=256))  # 768 < 4 × 256: no scaling
    assert big_model.facts[0].decoded_size == (1024, 768)


def test_concurrent_decodes_are_bounded_by_the_gate(tmp_path, gate_limit):
    for i in range(6):
        (tmp_path / f"{i}.png").write_bytes(uniform_png(3000, 3000, (i, i, i)))
    set_max_concurrent_decodes(2)
    DECODE_GATE.reset_peak()
    result = read_images([str(tmp_path)], tiny_generator(), max_workers=6)
    assert len(result.sources) == 6 and DECODE_GATE.in_flight == 0
    assert DECODE_GATE.peak == 2  # 6 threads, 2 decodes at a time
    uploads = [threading.Thread(target=decode_upload, args=(uniform_png(3000, 3000), "u.png", tiny_generator()))
               for _ in range(4)]  # fmt: skip
    DECODE_GATE.reset_peak()
    set_max_concurrent_decodes(1)
    for t in uploads:
        t.start()
    for t in uploads:
        t.join()
    assert DECODE_GATE.peak == 1
    with pytest.raises(ValueError, match="≥ 1"):
        set_max_concurrent_decodes(0)


def test_convert_composites_alpha_on_the_chosen_background():
    gen = _generator(side=16)
    data = encode(rgba(16), "PNG")  # alpha 0 in column 0 … 255 in column 15
    with pytest.raises(UnsupportedImage, match="alpha channel"):
        decode_upload(data, "a.png", gen)
    source = np.asarray(rgba(16)).astype(np.float64)
    expected_alpha = source[..., 3:] / 255
    for background, value in (("white", 255.0), ("black", 0.0)):
        image, facts = decode_upload(data, "a.png", gen, convert=background)
        assert facts.conversion == f"RGBA→RGB, alpha on {background}" and facts.mode == "RGBA"
        expected = source[..., :3] * expected_alpha + value * (1 - expected_alpha)
        np.testing.assert_allclose(image.transpose(1, 2, 0) * 255, expected, atol=1.01)
        assert np.all(image[:, :, 0] == value / 255)  # fully transparent column: the background


def test_convert_palette_and_greyscale_to_rgb(tmp_path):
    gen = _generator(side=16)
    grey = np.random.default_rng(1).integers(0, 256, (16, 16), dtype=np.uint8)
    image, facts = decode_upload(encode(Image.fromarray(grey), "PNG"), "g.png", gen, convert="black")
    assert facts.conversion == "L→RGB"
    np.testing.assert_array_equal(image * 255, np.stack([grey] * 3).astype(np.float32))
    palette = Image.fromarray(np.zeros((16, 16), np.uint8), "P")
    palette.putpalette([200, 100, 50] + [0, 0, 0] * 255)
    image, facts = decode_upload(encode(palette, "PNG"), "p.png", gen, convert="white")
    assert facts.conversion == "P→RGB" and np.allclose(image[:, 0, 0] * 255, [200, 100, 50])
    image, facts = decode_upload(encode(palette, "PNG", transparency=0), "t.png", gen, convert="black")
    assert facts.conversion == "P+transparency→RGB, alpha on black" and image.max() == 0
    with pytest.raises(ValueError, match="'white' or 'black'"):
        decode_upload(encode(palette, "PNG"), "p.png", gen, convert="grey")
    with pytest.raises(ValueError, match="'white' or 'black'"):
        read_images([str(tmp_path / "nothing here")], gen, convert="grey")
    with pytest.raises(ValueError, match="1- or 3-channel"):
        read_images([str(tmp_path / "nothing here")], _generator(channels=2))


def test_one_channel_models_take_greyscale_as_stored_and_rgb_only_converted():
    gen = _generator(channels=1, side=16)
    grey = np.random.default_rng(2).integers(0, 256, (16, 16), dtype=np.uint8)
    image, facts = decode_upload(encode(Image.fromarray(grey), "PNG"), "g.png", gen)
    assert image.shape == (1, 16, 16) and facts.conversion is None
    np.testing.assert_array_equal(image[0] * 255, grey.astype(np.float32))
    rgb = encode(Image.fromarray(_smooth(16, 16)), "PNG")
    with pytest.raises(UnsupportedImage, match=r"greyscale \(mode L\)"):
        decode_upload(rgb, "c.png", gen)
    image, facts = decode_upload(rgb, "c.png", gen, convert="white")
    expected = np.asarray(Image.open(io.BytesIO(rgb)).convert("L"))
    assert facts.conversion == "RGB→L" and np.array_equal(image[0] * 255, expected.astype(np.float32))
