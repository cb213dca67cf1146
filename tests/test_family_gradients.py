"""Every model family's exported gradient graph against torch.autograd (ONNX Runtime, real graphs)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from genorigin.export.bundled import load_bundled  # noqa: E402
from genorigin.export.generator import Generator  # noqa: E402
from genorigin.export.model_folders import load_model_path  # noqa: E402
from genorigin.export.package import AttributionPackage, export_generator, export_onnx_file  # noqa: E402
from genorigin.export.stylegan import StyleGANConfig, random_stylegan  # noqa: E402
from genorigin.export.tensorrt_ops import TENSORRT_VERSION, ops_outside_tensorrt  # noqa: E402
from genorigin.runtime.backends.eager import TorchBackend  # noqa: E402
from genorigin.runtime.backends.ort import OrtBackend  # noqa: E402
from helpers import UnflattenDecoder, assert_static_gradient_graph, export_legacy_onnx  # noqa: E402

pytestmark = pytest.mark.slow  # minutes: see README for the quick subset


def _unet(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    )  # fmt: skip


def _families(root) -> dict[str, Generator]:
    diffusers.DDIMPipeline(unet=_unet(0), scheduler=diffusers.DDIMScheduler(prediction_type="sample")).save_pretrained(
        root / "ddim"
    )
    diffusers.ConsistencyModelPipeline(
        unet=_unet(1), scheduler=diffusers.CMStochasticIterativeScheduler()
    ).save_pretrained(root / "cm")
    torch.manual_seed(2)
    diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
        latent_channels=4, norm_num_groups=4, sample_size=8,
    ).save_pretrained(root / "vae")  # fmt: skip
    return {
        "ddim-k2": load_model_path(root / "ddim", num_steps=2, use_checkpoint=False),
        "consistency": load_model_path(root / "cm"),
        "autoencoder-kl": load_model_path(root / "vae"),
        "stylegan-z": random_stylegan(StyleGANConfig(image_size=8, z_dim=16, w_dim=16, width=16), seed=0),
    }


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    gens = _families(root)
    return {
        name: (gen, AttributionPackage.load(export_generator(gen, root / f"{name}.pkg"))) for name, gen in gens.items()
    }


@pytest.mark.parametrize("family", ["ddim-k2", "consistency", "autoencoder-kl", "stylegan-z"])
def test_gradient_graph_matches_autograd(packages, family):
    gen, pkg = packages[family]
    rng = np.random.default_rng(0)
    z = gen.latent.sample(3, rng)
    x = rng.random((3, gen.channels, *gen.image_size)).astype(np.float32)
    lo, go = OrtBackend(pkg).loss_and_grad(z, x)
    lt, gt = TorchBackend(gen).loss_and_grad(torch.from_numpy(z), torch.from_numpy(x))
    assert np.abs(lo - lt.numpy()).max() <= 1e-5 * np.abs(lt.numpy()).max()
    assert np.linalg.norm(go - gt.numpy()) <= 1e-5 * np.linalg.norm(gt.numpy())
    assert json.loads((pkg.root / "manifest.json").read_text())["source"]["fingerprint"] == gen.fingerprint()


@pytest.fixture(scope="module")
def every_package(packages, tmp_path_factory):
    """The four families above plus the bundled DCGAN and VAE and a legacy-exporter third-party ONNX file."""
    root = tmp_path_factory.mktemp("more-families")
    out = {name: pkg for name, (_, pkg) in packages.items()}
    for name in ("dcgan_a", "vae"):
        out[name] = AttributionPackage.load(export_generator(load_bundled(name), root / f"{name}.pkg"))
    torch.manual_seed(4)
    legacy = export_legacy_onnx(UnflattenDecoder(), root / "legacy.onnx")
    out["legacy-onnx"] = AttributionPackage.load(export_onnx_file(legacy, root / "legacy.pkg"))
    return out


@pytest.mark.parametrize("graph", ["vjp", "loss_mse"])
@pytest.mark.parametrize(
    "family", ["dcgan_a", "vae", "ddim-k2", "consistency", "autoencoder-kl", "stylegan-z", "legacy-onnx"]
)
def test_gradient_graphs_only_use_tensorrt_ops(every_package, family, graph):
    """TensorRT parses every op and no shape depends on data (no NonZero, constant reduction axes)."""
    model = onnx.load(every_package[family].graph_path(graph))
    assert not ops_outside_tensorrt(model), f"not in TensorRT {TENSORRT_VERSION}'s ONNX operator list"
    assert_static_gradient_graph(model)
