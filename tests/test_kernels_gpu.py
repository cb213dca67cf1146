"""CUDA loss and Adam kernels against the reference, on a real GPU (skipped without one).

Run: pytest -m gpu tests/test_kernels_gpu.py -v
Loss: ≤1e-5 relative error vs a float64 evaluation of reference.loss_and_grad over random shapes (odd sizes,
batch 1, 1024×1024, many samples), fp32/fp16/bf16 y, both vector and scalar paths, raw pointers and torch
tensors, a side stream; two launches are bit-identical. Adam: one step vs the NumPy reference, 100 steps
vs torch.optim.Adam, best-so-far bookkeeping, split and fused launch plans.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from genorigin.kernels import build, launch, plan, reference, torch_launch  # noqa: E402
from genorigin.kernels.occupancy import LIMITS, parse_ptxas, resident_blocks  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU visible to torch"),
]

DEV = "cuda"


@pytest.fixture(scope="module")
def ks() -> Iterator[launch.CudaKernels]:
    """The kernels on GPU 0; with a GPU present they must load (a skip here would hide a broken install)."""
    try:
        kernels = launch.get_kernels(0)
    except launch.KernelUnavailableError as e:
        pytest.fail(f"a CUDA GPU is present but the CUDA kernels do not load: {e}")
    yield kernels


def _inputs(
    shape: tuple[int, ...], dtype: torch.dtype, x_dtype: torch.dtype, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(seed)
    y = torch.randn(shape, generator=g).to(dtype)
    x = torch.randn(shape, generator=g).to(x_dtype)
    return y.to(DEV), x.to(DEV)


def _ref64(
    y: torch.Tensor, x: torch.Tensor, kind: str, weight: torch.Tensor | None, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """The reference evaluated in float64 on the exact fp32 values the kernel sees."""
    y64 = y.float().cpu().numpy().astype(np.float64)
    x64 = x.float().cpu().numpy().astype(np.float64)
    w = None if weight is None else weight.cpu().numpy()
    return reference.loss_and_grad(y64, x64, kind, w, scale)


def _ref32(
    y: torch.Tensor, x: torch.Tensor, kind: str, weight: torch.Tensor | None, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """The reference on fp32 NumPy arrays: gy is reproduced bit for bit by the kernel."""
    w = None if weight is None else weight.cpu().numpy()
    return reference.loss_and_grad(y.float().cpu().numpy(), x.float().cpu().numpy(), kind, w, scale)


SHAPES = [
    (1, 3, 1024, 1024),  # batch 1, big image: many blocks per sample + finalize pass
    (4, 3, 1024, 1024),
    (8, 3, 256, 256),
    (3, 3, 255, 255),  # odd: scalar path
    (2, 3, 17, 1023),
    (1, 1, 1, 1),
    (5, 1, 1, 3),
    (3000, 1, 3, 5),  # more samples than resident blocks: one block per sample
    (64, 3, 32, 32),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", ["mse", "l1"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_loss_fp32_matches_reference(ks: launch.CudaKernels, shape: tuple[int, ...], kind: str, weighted: bool) -> None:
    y, x = _inputs(shape, torch.float32, torch.float32, seed=sum(shape) + len(kind))
    weight = torch.rand(shape[0], device=DEV) + 0.5 if weighted else None
    scale = 0.125 if weighted else 1.0
    loss, gy = torch_launch.loss_and_grad_cuda(y, x, kind, weight, scale, kernels=ks)
    torch.cuda.synchronize()
    loss64, _ = _ref64(y, x, kind, weight, scale)
    np.testing.assert_allclose(loss.cpu().numpy(), loss64, rtol=1e-5, atol=0)
    _, gy32 = _ref32(y, x, kind, weight, scale)
    np.testing.assert_allclose(gy.cpu().numpy(), gy32, rtol=1e-6, atol=0)
    assert loss.dtype == torch.float32 and gy.dtype == torch.float32 and gy.shape == y.shape


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("x_same", [False, True], ids=["x32", "x_same"])
@pytest.mark.parametrize("gy_same", [False, True], ids=["gy32", "gy_same"])
@pytest.mark.parametrize("shape", [(2, 3, 512, 512), (1, 3, 1024, 1024), (3, 3, 63, 65)], ids=str)
def test_loss_half_precision_y(
    ks: launch.CudaKernels, dtype: torch.dtype, x_same: bool, gy_same: bool, shape: tuple[int, ...]
) -> None:
    y, x = _inputs(shape, dtype, dtype if x_same else torch.float32, seed=7)
    loss, gy = torch_launch.loss_and_grad_cuda(y, x, "mse", gy_dtype=dtype if gy_same else None, kernels=ks)
    torch.cuda.synchronize()
    loss64, _ = _ref64(y, x, "mse", None, 1.0)
    np.testing.assert_allclose(loss.cpu().numpy(), loss64, rtol=1e-5)
    _, gy32 = _ref32(y, x, "mse", None, 1.0)
    expect = torch.from_numpy(gy32)
    if gy_same:
        assert gy.dtype == dtype
        assert torch.equal(gy.cpu(), expect.to(dtype))  # same fp32 value, same round-to-nearest-even
    else:
        np.testing.assert_allclose(gy.cpu().numpy(), gy32, rtol=1e-6, atol=0)


def test_loss_misaligned_pointers_use_scalar_path(ks: launch.CudaKernels) -> None:
    n, count = 3, 3 * 64 * 64
    big_y, big_x = _inputs((n * count + 1,), torch.float32, torch.float32, seed=3)
    y, x = big_y[1:].view(n, 3, 64, 64), big_x[1:].view(n, 3, 64, 64)  # 4-byte offset: no float4 loads
    plan = ks.loss_plan(n, count, ptrs=(y.data_ptr(), x.data_ptr(), 0))
    assert not plan.vec
    loss, gy = torch_launch.loss_and_grad_cuda(y, x, kernels=ks)
    torch.cuda.synchronize()
    np.testing.assert_allclose(loss.cpu().numpy(), _ref64(y, x, "mse", None, 1.0)[0], rtol=1e-5)
    np.testing.assert_allclose(gy.cpu().numpy(), _ref32(y, x, "mse", None, 1.0)[1], rtol=1e-6, atol=0)


def test_loss_raw_pointers_on_a_side_stream(ks: launch.CudaKernels) -> None:
    """The TensorRT path: integer pointers, an explicit stream, the workspace allocated stream-ordered."""
    n, count = 2, 3 * 512 * 512
    y, x = _inputs((n, count), torch.float32, torch.float32, seed=5)
    loss = torch.full((n,), -1.0, device=DEV)
    gy = torch.empty_like(y)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    plan = ks.loss(y.data_ptr(), x.data_ptr(), loss.data_ptr(), gy.data_ptr(), n, count, stream=stream.cuda_stream)
    assert plan is not None and plan.blocks_per_sample > 1  # exercised the workspace + finalize
    stream.synchronize()
    np.testing.assert_allclose(loss.cpu().numpy(), _ref64(y, x, "mse", None, 1.0)[0], rtol=1e-5)
    np.testing.assert_allclose(gy.cpu().numpy(), _ref32(y, x, "mse", None, 1.0)[1], rtol=1e-6, atol=0)


@pytest.mark.parametrize("shape", [(1, 3, 1024, 1024), (8, 3, 256, 256), (5, 3, 99, 101)], ids=str)
def test_loss_is_deterministic(ks: launch.CudaKernels, shape: tuple[int, ...]) -> None:
    y, x = _inputs(shape, torch.float32, torch.float32, seed=11)
    first = torch_launch.loss_and_grad_cuda(y, x, kernels=ks)
    for _ in range(3):
        again = torch_launch.loss_and_grad_cuda(y, x, kernels=ks)
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    # a different split is a different (equally valid) summation order: close, not necessarily equal
    other = torch_launch.loss_and_grad_cuda(y, x, blocks_per_sample=3, kernels=ks)
    torch.testing.assert_close(first[0], other[0], rtol=1e-6, atol=0)
    assert torch.equal(first[1], other[1])  # gy is elementwise: identical


# ---------------------------------------------------------------- Adam


def _adam_state(n: int, d: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator(device="cpu").manual_seed(seed)
    z = torch.randn(n, d, generator=g)
    m = torch.randn(n, d, generator=g) * 0.1
    v = torch.rand(n, d, generator=g) * 0.01
    grad = torch.randn(n, d, generator=g) * torch.logspace(-3, 2, d)
    loss = torch.rand(n, generator=g)
    best_loss = torch.where(torch.arange(n) % 2 == 0, loss + 0.1, loss - 0.1)  # half of them improve
    best_loss[0] = loss[0]  # equal: must not count as improved
    best_z = torch.full((n, d), -7.0)
    t = torch.randint(1, 500, (n,), generator=g)
    return z, m, v, grad, t, loss, best_loss, best_z


@pytest.mark.parametrize("n,d", [(8, 512), (32, 4 * 64 * 64), (3, 100), (1, 1), (2000, 100)])
@pytest.mark.parametrize("t_dtype", [torch.int32, torch.int64, torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("clip", [None, 0.5])
def test_adam_step_matches_reference(
    ks: launch.CudaKernels, n: int, d: int, t_dtype: torch.dtype, clip: float | None
) -> None:
    host = _adam_state(n, d, seed=n * 7 + d)
    z, m, v, grad, t, loss, best_loss, best_z = (a.to(DEV, copy=True) for a in host)
    t = t.to(t_dtype)
    hp = {"lr": 0.02, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "clip": clip}
    out = torch_launch.adam_step_cuda_(z, m, v, grad, t, loss, best_loss, best_z, kernels=ks, **hp)
    assert out[0] is z and out[3] is best_loss
    torch.cuda.synchronize()
    args = [a.numpy() for a in host]
    ref = reference.adam_step(*args, **hp)
    for name, got, want in zip(("z", "m", "v"), (z, m, v), ref[:3], strict=True):
        np.testing.assert_allclose(got.cpu().numpy(), want, rtol=2e-6, atol=1e-12, err_msg=name)
    np.testing.assert_array_equal(best_loss.cpu().numpy(), ref[3])
    np.testing.assert_array_equal(best_z.cpu().numpy(), ref[4])


@pytest.mark.parametrize("n,d", [(8, 512), (16, 4 * 64 * 64)])
def test_adam_matches_torch_optim_over_100_steps(ks: launch.CudaKernels, n: int, d: int) -> None:
    g = torch.Generator(device="cpu").manual_seed(1)
    z0 = torch.randn(n, d, generator=g).to(DEV)
    scales = torch.logspace(-2, 1, d).to(DEV)
    grads = [(torch.randn(n, d, generator=g).to(DEV) * scales) for _ in range(100)]
    hp = {"lr": 0.05, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
    p = z0.clone().requires_grad_(True)
    opt = torch.optim.Adam([p], lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"], foreach=False)
    z, m, v = z0.clone(), torch.zeros_like(z0), torch.zeros_like(z0)
    best_loss, best_z = torch.full((n,), float("inf"), device=DEV), torch.zeros_like(z0)
    for k, grad in enumerate(grads):
        p.grad = grad
        opt.step()
        t = torch.full((n,), float(k + 1), device=DEV)
        loss = torch.full((n,), 100.0 - k, device=DEV)  # improves every step
        torch_launch.adam_step_cuda_(z, m, v, grad, t, loss, best_loss, best_z, kernels=ks, **hp)
        if k == 98:
            z_before_last = z.clone()
    torch.cuda.synchronize()
    moved = (p.detach() - z0).abs().max().item()
    torch.testing.assert_close(z, p.detach(), rtol=0, atol=2e-6 * max(1.0, moved))
    assert torch.equal(best_loss, torch.full((n,), 1.0, device=DEV))
    assert torch.equal(best_z, z_before_last)


def test_adam_split_and_fused_plans_agree(ks: launch.CudaKernels) -> None:
    host = _adam_state(16, 8192, seed=3)
    results = []
    for bps in (1, 4):
        state = [a.to(DEV, copy=True) for a in host]
        plan = ks.adam(
            *(a.data_ptr() for a in state), 16, 8192, lr=0.01, t_dtype="int64", blocks_per_sample=bps,
            stream=torch.cuda.current_stream().cuda_stream,
        )  # fmt: skip
        assert plan is not None and plan.fused == (bps == 1)
        results.append(state)
    torch.cuda.synchronize()
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_driver_occupancy_is_what_the_grids_assume(ks: launch.CudaKernels) -> None:
    """The driver's resident blocks per SM (what grids are sized from) reach plan.py's figure, and equal the
    occupancy gate's ptxas-based arithmetic on the architectures it models; the modules are cubins."""
    assert ks.target.startswith("sm_"), f"loaded {ks.target}: PTX (driver JIT) instead of a cubin"
    for name, resident in ks.resident.items():
        planned = plan.planned_blocks_per_sm(name)
        assert planned is None or resident >= planned, f"{name}: {resident} blocks/SM, plan {planned}"
    if ks.arch in LIMITS:
        for source, names in build.KERNELS.items():
            found = parse_ptxas(build.ptxas_info(source, ks.arch))
            for name in names:
                assert resident_blocks(found[name], plan.block_size(name)) == ks.resident[name], name
