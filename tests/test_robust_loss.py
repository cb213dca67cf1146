"""The robust mode's projection loss (kernels/projection.py): one definition in kernels/reference.py, the same
numbers from the ONNX loss graph, refused by the GPU backends, and tolerant of what JPEG changes."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
from genorigin.export.bundled import load_bundled
from genorigin.export.onnx_autodiff import build_loss_graph
from genorigin.export.onnx_forward import export_forward
from genorigin.export.package import AttributionPackage, export_generator
from genorigin.kernels.projection import noise_gain, projection_weights
from genorigin.kernels.reference import loss_and_grad, project, project_transpose
from genorigin.runtime.backends.eager import TorchBackend
from genorigin.runtime.backends.ort import OrtBackend
from genorigin.runtime.decide.calibration import quantize_8bit
from genorigin.runtime.loop.settings import InversionSettings
from genorigin.runtime.robust.transforms import apply_transform
from helpers import tiny_generator

KIND = "mse-dct8"
SHAPES = [(2, 3, 32, 32), (3, 3, 13, 21), (2, 1, 16, 16)]  # whole blocks, a padded edge, one channel


@pytest.mark.parametrize("shape", SHAPES)
def test_projection_and_its_transpose_are_adjoint(shape):
    rng = np.random.default_rng(0)
    r = rng.standard_normal(shape)
    coef = project(r, KIND)
    u = rng.standard_normal(coef.shape)
    assert coef.shape[2:] == (-(-shape[2] // 8), -(-shape[3] // 8))
    assert np.sum(coef * u) == pytest.approx(np.sum(r * project_transpose(u, KIND, shape)), rel=1e-10)


@pytest.mark.parametrize("shape", SHAPES)
def test_gradient_is_the_derivative_of_the_loss_and_numpy_equals_torch(shape):
    rng = np.random.default_rng(1)
    y, x = rng.random(shape), rng.random(shape)
    loss, gy = loss_and_grad(y, x, KIND)
    yt = torch.tensor(y, requires_grad=True)
    lt, gt = loss_and_grad(yt, torch.tensor(x), KIND)
    lt.sum().backward()  # autograd through the same formula (its y is rounded to float32, as the reference's)
    assert np.abs(lt.detach().numpy() - loss).max() <= 1e-12 * np.abs(loss).max()
    assert np.abs(yt.grad.numpy() - gy).max() <= 1e-6 * np.abs(gy).max()
    assert np.abs(gt.detach().numpy() - gy).max() <= 1e-12 * np.abs(gy).max()


def test_noise_gain_is_the_share_of_white_noise_the_projection_keeps():
    n = np.random.default_rng(2).standard_normal((400, 3, 32, 32))
    loss, _ = loss_and_grad(n, np.zeros_like(n), KIND)  # ‖P n‖² / count, E = gain × 1
    assert loss.mean() == pytest.approx(noise_gain(KIND, 3), rel=0.05)
    assert 0 < noise_gain(KIND, 3) < 0.1 and noise_gain(KIND, 1) == pytest.approx(10 / 64)


def test_it_ignores_most_of_what_jpeg_changes_and_little_of_a_real_mismatch():
    gen = load_bundled("dcgan_a")
    own = quantize_8bit(gen.sample(16, seed=5))
    jpeg = apply_transform("jpeg80", own)
    other = quantize_8bit(load_bundled("vae").sample(16, seed=5))
    plain_j, _ = loss_and_grad(jpeg, own, "mse")
    proj_j, _ = loss_and_grad(jpeg, own, KIND)
    plain_o, _ = loss_and_grad(other, own, "mse")
    proj_o, _ = loss_and_grad(other, own, KIND)
    # measured: JPEG q80 keeps ~2 % of its plain error under the projection; another image keeps ~40 %
    assert np.median(proj_j / plain_j) < 0.1
    assert np.median(proj_o / plain_o) > 0.2


class Odd(torch.nn.Module):
    """z (N×6) → N×3×12×20 in [0, 1]: an image whose sides are not whole blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(6, 3 * 12 * 20)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc(z)).view(-1, 3, 12, 20)


def test_onnx_loss_graph_computes_the_reference(tmp_path):
    torch.manual_seed(0)
    module = Odd().eval()
    graph = build_loss_graph(export_forward(module, torch.randn(2, 6), tmp_path / "odd.onnx"), kind=KIND)
    assert {"Conv", "ConvTranspose", "Pad", "Slice"} <= {n.op_type for n in graph.graph.node}
    sess = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    z, x = torch.randn(4, 6), torch.rand(4, 3, 12, 20)
    loss, grad_z = sess.run(["loss", "grad_z"], {"z": z.numpy(), "target": x.numpy()})
    zz = z.clone().requires_grad_(True)
    y = module(zz)
    ref_loss, gy = loss_and_grad(y.detach(), x, KIND)
    (ref_grad,) = torch.autograd.grad(y, zz, gy)
    assert np.abs(loss - ref_loss.numpy()).max() <= 1e-5 * np.abs(ref_loss.numpy()).max()
    assert np.linalg.norm(grad_z - ref_grad.numpy()) <= 1e-5 * np.linalg.norm(ref_grad.numpy())


def test_ort_backend_matches_torch_backend_on_the_projection_loss(tmp_path):
    gen = tiny_generator()
    pkg = AttributionPackage.load(export_generator(gen, tmp_path / "tiny.pkg"))
    rng = np.random.default_rng(3)
    z = rng.standard_normal((5, 8)).astype(np.float32)
    x = rng.random((5, 3, 8, 8)).astype(np.float32)
    lo, go = OrtBackend(pkg, loss=KIND).loss_and_grad(z, x)
    lt, gt = TorchBackend(gen, loss=KIND).loss_and_grad(torch.from_numpy(z), torch.from_numpy(x))
    plain, _ = TorchBackend(gen).loss_and_grad(torch.from_numpy(z), torch.from_numpy(x))
    assert np.abs(lo - lt.numpy()).max() <= 1e-5 * np.abs(lt.numpy()).max()
    assert np.linalg.norm(go - gt.numpy()) <= 1e-5 * np.linalg.norm(gt.numpy())
    assert not np.allclose(lt.numpy(), plain.numpy(), rtol=0.1)  # a different loss, not mse under a new name


def test_gpu_backends_refuse_it_before_touching_a_gpu():
    from genorigin.runtime.backends.gpu.ops import require_gpu_loss
    from genorigin.runtime.backends.gpu.torch_graph import CudaGraphTorchBackend

    with pytest.raises(ValueError, match=r"no CUDA kernel or TensorRT loss graph.*--backend torch"):
        CudaGraphTorchBackend(tiny_generator(), device="cpu", loss=KIND)
    CudaGraphTorchBackend(tiny_generator(), device="cpu", loss="mse")  # the plain losses still construct
    with pytest.raises(ValueError, match=KIND):
        require_gpu_loss(KIND)
    from genorigin.runtime.backends.gpu.tensorrt import TensorRTBackend

    with pytest.raises(ValueError, match="no CUDA kernel"):  # before any engine is built (or CUDA looked for)
        TensorRTBackend.from_graphs("no-such-package", loss=KIND)
    with pytest.raises(ValueError, match="no CUDA kernel"):
        TensorRTBackend({}, loss=KIND)


def test_settings_know_the_projection_kinds():
    assert InversionSettings(loss=KIND).loss == KIND
    with pytest.raises(ValueError, match="mse-dct8"):  # the error lists what exists
        InversionSettings(loss="mse-dct9")
    with pytest.raises(ValueError, match="1- or 3-channel"):
        projection_weights(KIND, 2)


@pytest.mark.numeric
@pytest.mark.parametrize("side", [8, 16, 26, 32])
def test_a_samples_projection_loss_is_the_same_bits_in_any_batch(side):
    """The robust and platform modes' loss is batch-invariant as the plain one is (runtime/loop/invariant.py): a
    batched contraction chose its kernel by the batch's size (8×8 and 16×16 residuals differed by an ulp)."""
    rng = np.random.default_rng(side)
    y = torch.tensor(rng.random((5, 3, side, side)), dtype=torch.float32)
    x = torch.tensor(rng.random((5, 3, side, side)), dtype=torch.float32)
    loss, grad = loss_and_grad(y, x, KIND)
    for n in (1, 2, 3, 4):
        part_loss, part_grad = loss_and_grad(y[:n], x[:n], KIND)
        assert torch.equal(part_loss, loss[:n]) and torch.equal(part_grad, grad[:n])
