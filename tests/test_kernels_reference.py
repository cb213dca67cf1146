"""The NumPy/torch reference in kernels/reference.py on its own: the CUDA kernels are judged against it.

Finite differences pin the gradient, torch autograd and torch.optim.Adam pin the semantics, and the
best-so-far bookkeeping is checked step by step. CPU only, a few seconds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from genorigin.kernels.reference import adam_step, loss_and_grad

pytestmark = pytest.mark.numeric  # holds on any CPU: .ci/run repeats it under other ATEN_CPU_CAPABILITY

RNG_SEED = 1234


def _grid_y(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """y on a 2^-10 grid: exact in float32, so y ± 2^-8 is exact too and finite differences are clean."""
    return np.round(rng.standard_normal(shape) * 1024) / 1024


def _weighted_objective(y: np.ndarray, x: np.ndarray, kind: str, weight: np.ndarray | None, scale: float) -> float:
    """Σ_n scale·w_n·loss_n: the function whose gradient loss_and_grad's gy is."""
    loss, _ = loss_and_grad(y, x, kind)
    w = np.ones(len(loss)) if weight is None else weight.astype(np.float64)
    return float(scale * (w * loss).sum())


@pytest.mark.parametrize("kind", ["mse", "l1"])
@pytest.mark.parametrize("weighted", [False, True])
def test_gradient_matches_finite_differences(kind: str, weighted: bool) -> None:
    rng = np.random.default_rng(RNG_SEED)
    shape = (3, 2, 5, 7)
    y = _grid_y(rng, shape)
    x = rng.standard_normal(shape)  # float64: the loss is then computed in float64
    if kind == "l1":  # stay away from the kink: |y - x| > 2h everywhere
        x = np.where(np.abs(y - x) < 0.05, y - 0.1, x)
    weight = rng.uniform(0.5, 2.0, 3).astype(np.float32) if weighted else None
    scale = 0.25 if weighted else 1.0
    _, gy = loss_and_grad(y, x, kind, weight, scale)
    h = 2.0**-8
    flat = y.reshape(-1)
    for i in rng.choice(flat.size, 25, replace=False):
        plus, minus = flat.copy(), flat.copy()
        plus[i] += h
        minus[i] -= h
        fd = (
            _weighted_objective(plus.reshape(shape), x, kind, weight, scale)
            - _weighted_objective(minus.reshape(shape), x, kind, weight, scale)
        ) / (2 * h)
        assert gy.reshape(-1)[i] == pytest.approx(fd, rel=1e-6, abs=1e-12)
    # one random direction over all elements at once
    u = rng.choice([-1.0, 1.0], size=shape)
    fd = (
        _weighted_objective(y + h * u, x, kind, weight, scale) - _weighted_objective(y - h * u, x, kind, weight, scale)
    ) / (2 * h)
    assert float((gy * u).sum()) == pytest.approx(fd, rel=1e-6)


@pytest.mark.parametrize("kind", ["mse", "l1"])
def test_loss_values_and_dtypes(kind: str) -> None:
    rng = np.random.default_rng(RNG_SEED)
    y = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    loss, gy = loss_and_grad(y, x, kind)
    d = (y.astype(np.float64) - x).reshape(4, -1)
    expect = (d**2).mean(1) if kind == "mse" else np.abs(d).mean(1)
    np.testing.assert_allclose(loss, expect, rtol=1e-6)
    assert loss.shape == (4,) and loss.dtype == np.float32
    assert gy.shape == y.shape and gy.dtype == np.float32


def test_weight_and_scale_semantics() -> None:
    """Loss stays unweighted; gy = scale·w[n]·∂loss[n]/∂y; scale = 1/N is the gradient of the batch mean."""
    rng = np.random.default_rng(RNG_SEED)
    y = rng.standard_normal((5, 3, 4, 4)).astype(np.float32)
    x = rng.standard_normal((5, 3, 4, 4)).astype(np.float32)
    w = rng.uniform(0.1, 3.0, 5).astype(np.float32)
    loss0, gy0 = loss_and_grad(y, x, "mse")
    loss_w, gy_w = loss_and_grad(y, x, "mse", weight=w, scale=0.5)
    np.testing.assert_array_equal(loss0, loss_w)
    np.testing.assert_allclose(gy_w, gy0 * (0.5 * w)[:, None, None, None], rtol=1e-6)
    # each sample's own gradient does not depend on the rest of the batch (scale = 1)
    _, gy_one = loss_and_grad(y[2:3], x[2:3], "mse")
    np.testing.assert_array_equal(gy_one[0], gy0[2])
    # scale = 1/N: the gradient of the batch mean, checked against torch autograd
    yt = torch.tensor(y, requires_grad=True)
    loss_t, _ = loss_and_grad(yt, torch.tensor(x), "mse")
    (g_mean,) = torch.autograd.grad(loss_t.mean(), yt)
    _, gy_mean = loss_and_grad(y, x, "mse", scale=1 / 5)
    np.testing.assert_allclose(gy_mean, g_mean.numpy(), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("kind", ["mse", "l1"])
def test_gradient_matches_torch_autograd_and_torch_inputs(kind: str) -> None:
    rng = np.random.default_rng(RNG_SEED)
    y = rng.standard_normal((3, 3, 6, 5)).astype(np.float32)
    x = rng.standard_normal((3, 3, 6, 5)).astype(np.float32)
    w = np.array([0.5, 1.0, 2.0], np.float32)
    yt = torch.tensor(y, requires_grad=True)
    loss_t, gy_t = loss_and_grad(yt.detach(), torch.tensor(x), kind, torch.tensor(w), 0.3)
    per_sample = (yt - torch.tensor(x)).pow(2) if kind == "mse" else (yt - torch.tensor(x)).abs()
    objective = 0.3 * (torch.tensor(w) * per_sample.flatten(1).mean(1)).sum()
    (g,) = torch.autograd.grad(objective, yt)
    np.testing.assert_allclose(gy_t.numpy(), g.numpy(), rtol=1e-5, atol=1e-9)
    loss_n, gy_n = loss_and_grad(y, x, kind, w, 0.3)
    np.testing.assert_allclose(loss_t.numpy(), loss_n, rtol=1e-6)
    np.testing.assert_allclose(gy_t.numpy(), gy_n, rtol=1e-6)


def test_half_precision_y_is_promoted() -> None:
    rng = np.random.default_rng(RNG_SEED)
    y = rng.standard_normal((2, 3, 4, 4)).astype(np.float16)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    loss, gy = loss_and_grad(y, x)
    loss32, gy32 = loss_and_grad(y.astype(np.float32), x)
    np.testing.assert_array_equal(loss, loss32)
    np.testing.assert_array_equal(gy, gy32)
    assert gy.dtype == np.float32
    loss_t, gy_t = loss_and_grad(torch.tensor(y).to(torch.bfloat16), torch.tensor(x))
    assert gy_t.dtype == torch.float32 and loss_t.dtype == torch.float32


def test_bad_inputs_raise() -> None:
    y = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="differ in shape"):
        loss_and_grad(y, np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="unknown loss kind"):
        loss_and_grad(y, y, "huber")  # type: ignore[arg-type]


# ---------------------------------------------------------------- Adam


def _gradients(steps: int, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(RNG_SEED)
    scales = rng.uniform(0.01, 10.0, shape[1:])  # very different magnitudes per coordinate
    return (rng.standard_normal((steps, *shape)) * scales).astype(np.float32)


def _run_reference(z0: np.ndarray, grads: np.ndarray, *, use_torch: bool, **hp: float) -> np.ndarray:
    n = z0.shape[0]
    if use_torch:
        z, g_all = torch.tensor(z0), torch.tensor(grads)
        m, v, best_z = torch.zeros_like(z), torch.zeros_like(z), torch.zeros_like(z)
        best = torch.full((n,), float("inf"))
    else:
        z, g_all = z0.copy(), grads
        m, v, best_z = np.zeros_like(z), np.zeros_like(z), np.zeros_like(z)
        best = np.full(n, np.inf, np.float32)
    for k in range(len(grads)):
        t = torch.full((n,), float(k + 1)) if use_torch else np.full(n, k + 1, np.float32)
        loss = torch.ones(n) if use_torch else np.ones(n, np.float32)  # bookkeeping is tested elsewhere
        z, m, v, best, best_z = adam_step(z, m, v, g_all[k], t, loss, best, best_z, **hp)  # type: ignore[arg-type]
    return z.numpy() if use_torch else z


def _run_torch_adam(
    z0: np.ndarray, grads: np.ndarray, *, lr: float, beta1: float, beta2: float, eps: float
) -> np.ndarray:
    p = torch.tensor(z0.copy(), requires_grad=True)
    opt = torch.optim.Adam([p], lr=lr, betas=(beta1, beta2), eps=eps, foreach=False)
    for g in grads:
        p.grad = torch.tensor(g)
        opt.step()
    return p.detach().numpy()


@pytest.mark.parametrize("use_torch", [False, True], ids=["numpy", "torch"])
@pytest.mark.parametrize(
    "hp",
    [
        {"lr": 0.05, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
        {"lr": 0.01, "beta1": 0.5, "beta2": 0.99, "eps": 1e-6},
    ],
)
def test_adam_matches_torch_optim_over_100_steps(use_torch: bool, hp: dict[str, float]) -> None:
    rng = np.random.default_rng(RNG_SEED)
    z0 = rng.standard_normal((4, 64)).astype(np.float32)
    grads = _gradients(100, z0.shape)
    ours = _run_reference(z0, grads, use_torch=use_torch, **hp)
    theirs = _run_torch_adam(z0, grads, **hp)
    assert ours.dtype == np.float32
    moved = np.abs(theirs - z0).max()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-6 * max(1.0, moved))


def test_adam_per_sample_step_count_refill() -> None:
    """A slot refilled mid-run (t back to 1, m = v = 0) follows a fresh torch.optim.Adam exactly."""
    rng = np.random.default_rng(RNG_SEED)
    n, d, steps, refill_at = 3, 32, 60, 25
    hp = {"lr": 0.03, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
    z0 = rng.standard_normal((n, d)).astype(np.float32)
    z_new = rng.standard_normal(d).astype(np.float32)
    grads = _gradients(steps, (n, d))
    z, m, v = z0.copy(), np.zeros_like(z0), np.zeros_like(z0)
    best, best_z = np.full(n, np.inf, np.float32), np.zeros_like(z0)
    t = np.zeros(n, np.float32)
    for k in range(steps):
        if k == refill_at:
            z[1], m[1], v[1], t[1], best[1] = z_new, 0, 0, 0, np.inf
        t += 1
        z, m, v, best, best_z = adam_step(z, m, v, grads[k], t, np.ones(n, np.float32), best, best_z, **hp)
    fresh = _run_torch_adam(z_new[None], grads[refill_at:, 1:2], **hp)[0]
    np.testing.assert_allclose(z[1], fresh, atol=2e-6)
    whole = _run_torch_adam(z0[[0, 2]], grads[:, [0, 2]], **hp)
    np.testing.assert_allclose(z[[0, 2]], whole, atol=2e-6)


def _np(a: np.ndarray | torch.Tensor) -> np.ndarray:
    return a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


@pytest.mark.parametrize("use_torch", [False, True], ids=["numpy", "torch"])
def test_best_so_far_bookkeeping(use_torch: bool) -> None:
    """Only a strictly lower loss updates best_loss, and best_z gets the pre-update z of that step."""
    n, d = 3, 5
    losses = np.array(
        [
            [5.0, 1.0, np.nan],
            [4.0, 1.0, 3.0],  # sample 1: equal -> no update
            [6.0, 0.5, np.nan],  # sample 0: worse -> no update; sample 2: NaN -> no update
            [3.0, 0.7, 2.0],
        ],
        np.float32,
    )
    conv = (lambda a: torch.tensor(a)) if use_torch else (lambda a: np.array(a))
    z = conv(np.arange(n * d, dtype=np.float32).reshape(n, d))
    m, v = conv(np.zeros((n, d), np.float32)), conv(np.zeros((n, d), np.float32))
    best, best_z = conv(np.full(n, np.inf, np.float32)), conv(np.full((n, d), -1.0, np.float32))
    expect_best = np.full(n, np.inf, np.float32)
    expect_z = np.full((n, d), -1.0, np.float32)
    for k, row in enumerate(losses):
        z_before = _np(z).copy()
        grad = conv(np.ones((n, d), np.float32))
        t = conv(np.full(n, k + 1, np.float32))
        z, m, v, best, best_z = adam_step(z, m, v, grad, t, conv(row), best, best_z, lr=0.1)
        improved = row < expect_best
        expect_best = np.where(improved, row, expect_best)
        expect_z[improved] = z_before[improved]
        np.testing.assert_array_equal(_np(best), expect_best)
        np.testing.assert_array_equal(_np(best_z), expect_z)
        assert not np.array_equal(_np(z), z_before)  # the update itself still happened
    np.testing.assert_array_equal(expect_best, [3.0, 0.5, 2.0])


def test_clip_is_adam_on_clipped_gradients() -> None:
    rng = np.random.default_rng(RNG_SEED)
    z0 = rng.standard_normal((2, 16)).astype(np.float32)
    grads = _gradients(20, z0.shape)
    hp = {"lr": 0.05, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
    n = 2
    z, m, v = z0.copy(), np.zeros_like(z0), np.zeros_like(z0)
    best, best_z = np.full(n, np.inf, np.float32), np.zeros_like(z0)
    for k in range(20):
        t = np.full(n, k + 1, np.float32)
        z, m, v, best, best_z = adam_step(z, m, v, grads[k], t, np.ones(n, np.float32), best, best_z, clip=0.5, **hp)
    np.testing.assert_allclose(z, _run_torch_adam(z0, np.clip(grads, -0.5, 0.5), **hp), atol=2e-6)
    assert np.abs(grads).max() > 0.5  # the clip was active
