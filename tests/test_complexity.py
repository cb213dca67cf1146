import numpy as np
import pytest
from genorigin.runtime.decide.complexity import MIN_COMPLEXITY, complexity, entropy_2d, to_grey8


def brute_force_entropy(image: np.ndarray) -> float:
    """Loop-by-loop definition: (centre, floor(mean of 8 neighbours)) pairs, edges replicated, / pixel count."""
    r, g, b = image
    grey = np.clip(np.round((0.299 * r + 0.587 * g + 0.114 * b) * 255), 0, 255).astype(int)
    h, w = grey.shape
    counts: dict[tuple[int, int], int] = {}
    for y in range(h):
        for x in range(w):
            total = 0
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    if dy or dx:
                        total += grey[min(max(y + dy, 0), h - 1), min(max(x + dx, 0), w - 1)]
            key = (int(grey[y, x]), total // 8)
            counts[key] = counts.get(key, 0) + 1
    p = np.array(list(counts.values()), dtype=float) / (h * w)
    return float(-(p * np.log2(p)).sum())


@pytest.mark.parametrize("shape", [(3, 32, 32), (3, 17, 23), (3, 5, 4)])
def test_entropy_matches_brute_force(rng, shape):
    for _ in range(3):
        img = rng.random(shape).astype(np.float32)
        smooth = (img + np.roll(img, 1, axis=1) + np.roll(img, 1, axis=2)) / 3
        for case in (img, smooth):
            assert entropy_2d(case) == pytest.approx(brute_force_entropy(case), abs=1e-9)


def test_entropy_of_flat_image_is_zero_and_floored():
    flat = np.full((3, 32, 32), 0.5, dtype=np.float32)
    assert entropy_2d(flat) == 0.0
    assert complexity(flat[None])[0] == MIN_COMPLEXITY


def test_entropy_bounds_and_order(rng):
    noise = rng.random((3, 32, 32))
    gradient = np.broadcast_to(np.linspace(0, 1, 32)[None, None, :], (3, 32, 32))
    assert 0 < entropy_2d(gradient) < entropy_2d(noise) <= np.log2(32 * 32)


def test_grey_uses_rgb_weights_not_bgr():
    red = np.zeros((3, 4, 4))
    red[0] = 1.0
    assert to_grey8(red)[0, 0] == round(0.299 * 255)
