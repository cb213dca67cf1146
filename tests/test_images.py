import numpy as np
import pytest
from bad_images import write_bad_images
from helpers import tiny_generator
from PIL import Image

from genorigin.images import ImageError, expand_inputs, load_rgb8


def test_every_bad_file_gets_a_clear_error(tmp_path):
    expected = write_bad_images(tmp_path)
    for name, word in expected.items():
        with pytest.raises(ImageError) as info:
            load_rgb8(tmp_path / name)
        message = str(info.value)
        assert name in message and word in message and "\n" not in message


def test_good_formats_load_as_rgb8(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    for suffix, kwargs in ((".png", {}), (".jpg", {"quality": 95}), (".webp", {"lossless": True})):
        Image.fromarray(arr).save(tmp_path / f"a{suffix}", **kwargs)
        out = load_rgb8(tmp_path / f"a{suffix}")
        assert out.shape == (20, 30, 3) and out.dtype == np.uint8
        if suffix != ".jpg":
            assert np.array_equal(out, arr)


def test_expand_inputs_files_folders_globs(tmp_path):
    for n in ("b.png", "a.jpg", "c.txt"):
        (tmp_path / n).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.webp").write_bytes(b"x")
    paths, errors = expand_inputs([str(tmp_path), str(tmp_path / "sub" / "*.webp"), str(tmp_path / "nope.png")])
    assert [p.name for p in paths] == ["a.jpg", "b.png", "d.webp"]
    assert len(errors) == 1 and "nope.png" in errors[0]


def test_prepare_image_resizes_and_rejects_bad_arrays():
    gen = tiny_generator()
    big = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    out = gen.prepare_image(big)
    assert out.shape == (3, 8, 8) and out.dtype == np.float32 and 0 <= out.min() <= out.max() <= 1
    with pytest.raises(ValueError, match="H×W×3"):
        gen.prepare_image(big[:, :, :1])
    bad = np.full((8, 8, 3), np.nan)
    with pytest.raises(ValueError, match="NaN"):
        gen.prepare_image(bad)
