"""StyleGAN2 config F as the paper describes it (8-layer mapping, channels 32768 / r capped at 512, FIR
upsampling, noise inputs, skip ToRGB, w and w+): structure at 256 px, and at a reduced width its exported
gradient graphs (from the module, and from a torch.onnx file) against autograd."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from genorigin.export.package import AttributionPackage, export_generator, export_onnx_file
from genorigin.export.stylegan import FIR, StyleGANConfig, StyleGANGenerator, Upsample2x, random_stylegan
from genorigin.runtime.backends.eager import TorchBackend
from genorigin.runtime.backends.ort import OrtBackend

SMALL = StyleGANConfig.config_f(32, z_dim=32, w_dim=32, channel_base=512, channel_max=32)


def test_config_f_at_256_has_the_published_shape():
    cfg = StyleGANConfig.config_f(256)
    net = StyleGANGenerator(cfg)
    assert len(net.mapping.layers) == 8 and cfg.num_ws == 14
    assert [cfg.channels_at(r) for r in (4, 8, 16, 32, 64, 128, 256)] == [512, 512, 512, 512, 512, 256, 128]
    convs = [layer.conv.weight.shape[:2] for layer in net.synthesis.layers]
    assert convs[0] == (512, 512) and convs[-2] == (128, 256) and convs[-1] == (128, 128)
    assert len(net.synthesis.layers) == 13 and len(net.synthesis.to_rgb) == 7
    params = sum(p.numel() for p in net.parameters())
    assert 29e6 < params < 31e6  # the paper's 256 px generator: ~30 M
    assert all(layer.use_noise and abs(layer.noise_strength.item() - 0.1) < 1e-7 for layer in net.synthesis.layers)


def test_fir_upsampling_is_zero_insertion_then_the_1331_filter():
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    up = Upsample2x(fir=True, channels=3).double()(x)
    zeros = torch.zeros(2, 3, 10, 10, dtype=torch.float64)
    zeros[:, :, ::2, ::2] = x  # zero insertion
    f = torch.tensor(FIR, dtype=torch.float64)
    k = (torch.outer(f, f) / f.sum() ** 2 * 4).flip(0, 1).expand(3, 1, 4, 4)
    expected = F.conv2d(F.pad(zeros, (2, 1, 2, 1)), k, groups=3)  # the paper's padding for ×2 with 4 taps
    torch.testing.assert_close(up, expected)
    flat = Upsample2x(fir=True)(torch.ones(1, 1, 6, 6))
    assert torch.allclose(flat[..., 1:-1, 1:-1], torch.ones(1, 1, 10, 10))  # gain 4 spread over 4 outputs


def test_w_plus_with_equal_rows_is_w_space():
    w_gen = random_stylegan(SMALL, seed=0, space="w")
    plus = random_stylegan(SMALL, seed=0, space="w+")
    assert plus.latent.shape == (SMALL.num_ws, 32) and plus.config["architecture"] == "stylegan2-config-f"
    u = torch.randn(2, 32)
    torch.testing.assert_close(plus.forward(u[:, None].expand(-1, SMALL.num_ws, -1)), w_gen.forward(u))
    np.testing.assert_allclose(plus.sample(2, seed=3), w_gen.sample(2, seed=3), atol=1e-6)
    u2 = u[:, None].repeat(1, SMALL.num_ws, 1)
    u2[:, -1] += 1.0  # the last style drives only the last ToRGB
    assert not torch.allclose(plus.forward(u2), plus.forward(u[:, None].expand(-1, SMALL.num_ws, -1)))


@pytest.mark.parametrize("space", ["z", "w+"])
def test_exported_gradient_matches_autograd(tmp_path, space):
    gen = random_stylegan(SMALL, seed=0, space=space)
    pkg = AttributionPackage.load(export_generator(gen, tmp_path / "sg.pkg"))
    rng = np.random.default_rng(0)
    z, x = gen.latent.sample(2, rng), rng.random((2, 3, 32, 32), dtype=np.float32)
    lo, go = OrtBackend(pkg, threads=1).loss_and_grad(z, x)
    lt, gt = TorchBackend(gen).loss_and_grad(torch.from_numpy(z), torch.from_numpy(x))
    assert np.abs(lo - lt.numpy()).max() <= 1e-5 * np.abs(lt.numpy()).max()
    assert np.linalg.norm(go - gt.numpy()) <= 1e-5 * np.linalg.norm(gt.numpy())


def test_a_torch_onnx_export_becomes_a_package(tmp_path):
    """The route a user with their own StyleGAN2 takes: torch.onnx.export, then genorigin export --onnx."""
    gen = random_stylegan(SMALL, seed=0)
    path = tmp_path / "stylegan2.onnx"
    torch.onnx.export(gen.module.inner.eval(), (torch.zeros(2, 32),), str(path), input_names=["z"],
                      output_names=["img"], dynamic_axes={"z": {0: "b"}, "img": {0: "b"}}, dynamo=False)  # fmt: skip
    # float32 finite differences through 8 mapping layers and 11 modulated convs resolve this gradient to ~2.4e-2
    # (the default tolerance is 2e-2); the exact check against autograd follows
    out = export_onnx_file(path, tmp_path / "sg.pkg", output_range=(-1.0, 1.0), validation_tolerance=5e-2)
    pkg = AttributionPackage.load(out)
    assert pkg.manifest["validation"]["method"] == "finite-differences"
    assert pkg.manifest["validation"]["max_vjp_error"] < 1e-5
    rng = np.random.default_rng(1)
    z, x = gen.latent.sample(2, rng), rng.random((2, 3, 32, 32), dtype=np.float32)
    lo, go = OrtBackend(pkg, threads=1).loss_and_grad(z, x)
    lt, gt = TorchBackend(gen).loss_and_grad(torch.from_numpy(z), torch.from_numpy(x))
    assert np.abs(lo - lt.numpy()).max() <= 1e-5 * np.abs(lt.numpy()).max()
    assert np.linalg.norm(go - gt.numpy()) <= 1e-4 * np.linalg.norm(gt.numpy())
