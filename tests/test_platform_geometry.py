"""T_θ ∘ M (export/geometry.py): Pillow's crop-and-resample, θ's gradient, its exported VJP, the window maths."""

import numpy as np
import pytest
import torch
from genorigin.export.geometry import (
    GeometryUnits,
    PlatformView,
    implied_window,
    resample_matrix,
    theta_for,
    to_frame,
    viewed_generator,
)
from helpers import tiny_generator
from PIL import Image

pytestmark = pytest.mark.numeric  # must hold on any CPU (.ci/run repeats them under other instruction sets)

# (left, top, right, bottom) boxes in a 32×32 frame and the (W, H) each is served at
BOXES = [
    ((3.3, 2.7, 28.9, 30.1), (20, 17)),  # a sub-pixel crop, shrunk
    ((0.0, 0.0, 32.0, 32.0), (64, 64)),  # upscale ×2
    ((0.0, 0.0, 32.0, 32.0), (16, 16)),  # downscale ×0.5 (the filter stretched: antialiased)
    ((1.5, 4.0, 30.0, 26.4), (29, 24)),  # an aspect change
    ((3.0, 3.0, 29.0, 29.0), (26, 26)),  # an integer cut kept at its size: a plain copy
]


def _apply(image: np.ndarray, box: tuple[float, ...], out: tuple[int, int], filter: str) -> np.ndarray:
    left, top, right, bottom = box
    t = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    rows = resample_matrix(t(top), t(bottom - top), out[1], image.shape[0], filter)[0]
    cols = resample_matrix(t(left), t(right - left), out[0], image.shape[1], filter)[0]
    return (rows @ torch.from_numpy(image).double() @ cols.T).numpy()


@pytest.mark.parametrize("filter, pillow", [("bicubic", Image.Resampling.BICUBIC),
                                            ("bilinear", Image.Resampling.BILINEAR)])  # fmt: skip
@pytest.mark.parametrize("box, out", BOXES)
def test_the_resample_is_pillows_resize_with_a_box(filter, pillow, box, out):
    image = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    want = np.asarray(Image.fromarray(image, mode="F").resize(out, pillow, box=box))
    assert np.abs(_apply(image, box, out, filter) - want).max() < 1e-5


def test_an_integer_cut_at_its_own_size_is_a_copy():
    image = np.random.default_rng(1).random((32, 32))
    assert np.abs(_apply(image, (3.0, 5.0, 29.0, 29.0), (26, 24), "bicubic") - image[5:29, 3:29]).max() < 1e-12


def _view64(out_size=(6, 7)) -> PlatformView:
    gen = tiny_generator()
    view = PlatformView(gen.module.double(), gen.latent.shape, gen.image_size, out_size)
    return view


def test_thetas_gradient_matches_finite_differences():
    """The gradient the loop follows w.r.t. θ (autograd through the resample matrices) against central
    differences of the forward, in float64, for windows that shrink, grow and move."""
    view = _view64()
    rng = np.random.default_rng(2)
    latent = torch.tensor(rng.standard_normal((3, 8 + 4)), dtype=torch.float64)
    latent[:, 8:] = torch.tensor([[0.3, -0.4, -1.5, 0.2], [-1.0, 0.8, 0.5, -0.7], [0.1, 0.0, -3.0, 1.0]])
    weight = torch.tensor(rng.standard_normal((3, 3, 6, 7)), dtype=torch.float64)
    latent.requires_grad_(True)
    (grad,) = torch.autograd.grad((view(latent) * weight).sum(), latent)
    eps = 1e-6
    numeric = np.zeros((3, 4))
    for k in range(4):
        step = torch.zeros_like(latent)
        step[:, 8 + k] = eps
        with torch.no_grad():
            up = (view(latent + step) * weight).flatten(1).sum(1)
            down = (view(latent - step) * weight).flatten(1).sum(1)
        numeric[:, k] = ((up - down) / (2 * eps)).numpy()
    assert np.abs(numeric).max(0).min() > 1e-2  # every coordinate of θ moves the image
    np.testing.assert_allclose(grad[:, 8:].numpy(), numeric, rtol=1e-6, atol=1e-9)


def test_the_exported_vjp_of_the_view_matches_autograd(tmp_path):
    """The exporter's standard rules (MatMul, the cubic's pointwise ops, ReduceSum, Where) differentiate the
    view: θ's part of the VJP graph's g_z against torch.autograd, besides the package's own validation."""
    import onnxruntime as ort
    from genorigin.export.package import AttributionPackage, export_generator

    gen = tiny_generator()
    view = viewed_generator(gen, (6, 7))
    package = AttributionPackage.load(export_generator(view, tmp_path / "pkg"))
    assert package.manifest["validation"]["max_vjp_error"] < 1e-4  # float32 graphs against float32 autograd
    rng = np.random.default_rng(3)
    z = rng.standard_normal((2, 12)).astype(np.float32)
    z[:, 8:] = [[0.5, -1.0, -2.0, 0.4], [-0.3, 0.2, 1.0, -1.2]]
    g_image = rng.standard_normal((2, 3, 6, 7)).astype(np.float32)
    session = ort.InferenceSession(str(package.root / "vjp.onnx"), providers=["CPUExecutionProvider"])
    (g_z,) = session.run(["g_z"], {"z": z, "g_image": g_image})
    latent = torch.from_numpy(z).requires_grad_(True)
    (want,) = torch.autograd.grad(view.forward(latent), latent, torch.from_numpy(g_image))
    np.testing.assert_allclose(g_z[:, 8:], want[:, 8:].numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("out_size", [(26, 26), (24, 32), (16, 16), (64, 48)])
def test_theta_for_inverts_the_window(out_size):
    view = PlatformView(tiny_generator().module, (8,), (32, 32), out_size, units=GeometryUnits())
    rng = np.random.default_rng(4)
    for _ in range(5):
        height, width = rng.uniform(20, 32, 2)
        window = (rng.uniform(0, 32 - height), rng.uniform(0, 32 - width), height, width)
        theta = theta_for(window, out_size, (32, 32))
        got = [float(v) for v in view.window(torch.tensor(theta, dtype=torch.float64)[None])]
        np.testing.assert_allclose(got, window, rtol=1e-5)


def test_theta_zero_is_the_largest_window_of_the_images_aspect():
    assert implied_window((26, 26), (32, 32)) == (32, 32)
    assert implied_window((24, 32), (32, 32)) == (24, 32)
    assert implied_window((64, 32), (32, 32)) == (32, 16)


def test_to_frame_keeps_a_model_size_image_and_extends_borders():
    image = np.random.default_rng(5).random((3, 32, 32)).astype(np.float32)
    assert np.array_equal(to_frame(image, (32, 32)), image)
    wide = to_frame(image[:, 4:28, :], (32, 32))  # 24×32 sits in rows 4..27; rows above repeat its first row
    np.testing.assert_allclose(wide[:, 4:28], image[:, 4:28], atol=1e-6)
    np.testing.assert_allclose(wide[:, 0], image[:, 4], atol=1e-6)
