"""Same image, same bits: a score, its steps, stop reason and verdict do not depend on the batch (issue 21).

Properties over random batch compositions and orders, on real bundled models, through a real ONNX Runtime
session and eager PyTorch, for the fast and the paper presets: an image attributed alone and the same image
inside any batch give identical bits. Everything is compared with itself on this machine, never with numbers
recorded on another CPU, so the tests hold on any instruction set (.ci/run repeats them under
``ATEN_CPU_CAPABILITY=default`` and ``avx2``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from genorigin.export.bundled import real_images_dir
from genorigin.export.package import AttributionPackage, export_generator
from genorigin.runtime.backends.eager import TorchBackend
from genorigin.runtime.backends.ort import OrtBackend, package_generator
from genorigin.runtime.decide.calibration import quantize_8bit
from genorigin.runtime.decide.result import AttributionResult
from genorigin.runtime.loop.invariant import row_sum, split_rows
from genorigin.runtime.loop.optimizers import LBFGS
from genorigin.runtime.loop.settings import PRESETS, InversionSettings, Schedule
from genorigin.runtime.methods.attribution import Attributor
from genorigin.runtime.methods.encoder import FittedEncoder

from genorigin.images import load_rgb8
from genorigin.models import resolve_model

pytestmark = pytest.mark.numeric
MODELS = ("dcgan_a", "vae")
PAPER = (InversionSettings(steps=40, restarts=2), Schedule(batch_size=8, check_every=10, exit_min_step=10))


def _numpy(a) -> np.ndarray:
    return a.detach().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


@pytest.fixture(scope="module", params=MODELS)
def model(request, tmp_path_factory):
    """A bundled model: its generator, its shipped encoder, its package, and 4 own samples + 2 real photos."""
    name = request.param
    resolved = resolve_model(name)
    gen = resolved.generator
    pkg = AttributionPackage.load(export_generator(gen, tmp_path_factory.mktemp(name) / "pkg"))
    real = [gen.prepare_image(load_rgb8(p)) for p in sorted(real_images_dir().glob("*.png"))[:2]]
    images = np.concatenate([quantize_8bit(gen.sample(4, seed=31)), np.stack(real)]).astype(np.float32)
    return name, gen, FittedEncoder.load(resolved.encoder_path), pkg, images


def _backend(kind: str, model, threads: int = 1):
    _, gen, _, pkg, _ = model
    return TorchBackend(gen, threads=threads) if kind == "torch" else OrtBackend(pkg, threads=threads)


@pytest.mark.parametrize("kind", ["torch", "ort"])
def test_loss_and_gradient_rows_are_the_same_bits_in_any_batch(model, kind):
    """Each row's loss and gradient: alone, at every position of random batches of 1-12 rows, with 1 or 2
    threads — identical bits (eager PyTorch needed one intra-op thread per row group and padded lone dense
    rows; ONNX Runtime's CPU kernels already were)."""
    _, gen, _, _, _ = model
    rng = np.random.default_rng(7)
    z = rng.standard_normal((6, *gen.latent.shape)).astype(np.float32)
    x = rng.random((6, gen.channels, *gen.image_size)).astype(np.float32)
    reference = _backend(kind, model, threads=1)
    alone = [tuple(_numpy(a)[0] for a in reference.loss_and_grad(reference.asarray(z[i : i + 1]),
                                                                 reference.asarray(x[i : i + 1])))
             for i in range(6)]  # fmt: skip
    for threads in (1, 2):
        backend = _backend(kind, model, threads=threads)
        for _ in range(6):
            n = int(rng.integers(1, 13))
            rows = rng.integers(0, 6, n)
            loss, grad = (_numpy(a) for a in backend.loss_and_grad(backend.asarray(z[rows]), backend.asarray(x[rows])))
            for j, i in enumerate(rows):
                assert loss[j].tobytes() == alone[i][0].tobytes(), (threads, n, j)
                assert grad[j].tobytes() == alone[i][1].tobytes(), (threads, n, j)


def test_lbfgs_update_of_a_slot_is_the_same_bits_beside_any_others():
    """The capturable L-BFGS update: a slot's next latent and history do not depend on the other slots."""
    rng = np.random.default_rng(3)
    opt, d = LBFGS(), 37

    def run(rows: np.ndarray, fillers: int) -> np.ndarray:
        n = len(rows) + fillers
        e = {k: torch.from_numpy(v) for k, v in opt.fresh_slots(np.zeros((n, d), np.float32)).items()}
        z = torch.from_numpy(np.concatenate([base_z[rows], rng.standard_normal((fillers, d)).astype(np.float32)]))
        a = torch.cat([scale[rows], torch.ones(fillers, dtype=torch.float64)])[:, None]
        for _ in range(12):  # a quadratic per slot, ½‖a z − 1‖², with its own curvature a
            r = z.double() * a - 1.0
            loss, grad = (0.5 * (r * r).sum(1)).float(), (r * a).float()
            z = opt.update(z, loss, grad, e).float()
        return z[: len(rows)].numpy()

    base_z = rng.standard_normal((4, d)).astype(np.float32)
    scale = torch.from_numpy(np.linspace(0.5, 3.0, 4))
    for i in range(4):
        alone = run(np.array([i]), 0)
        for fillers in (1, 5, 17):
            assert run(np.array([i]), fillers).tobytes() == alone.tobytes(), (i, fillers)
    together = run(np.arange(4), 3)
    assert all(together[i].tobytes() == run(np.array([i]), 0)[0].tobytes() for i in range(4))


def test_row_sum_is_one_fixed_pairwise_tree():
    """row_sum adds in a fixed pairwise order: the same bits as that tree written out, for any row count."""
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.standard_normal((9, 37)) * 10.0 ** rng.integers(-8, 8, (9, 37)))

    def tree(v: list[float]) -> float:
        while len(v) & (len(v) - 1):
            v.append(0.0)
        while len(v) > 1:
            h = len(v) // 2
            v = [v[i] + v[i + h] for i in range(h)]
        return v[0]

    got = row_sum(a)
    for i in range(9):
        assert float(got[i]) == tree(a[i].tolist())
        assert torch.equal(row_sum(a[i : i + 1])[0], got[i])
    assert split_rows(7, 3) == [(0, 2), (2, 4), (4, 7)] and split_rows(2, 5) == [(0, 1), (1, 2)]


def _attributor(kind: str, preset: str, model) -> Attributor:
    _, gen, encoder, pkg, _ = model
    settings, schedule = PRESETS["fast"] if preset == "fast" else PAPER
    backend = _backend(kind, model)
    target = gen if kind == "torch" else package_generator(pkg)
    att = Attributor(target, backend=backend, settings=settings, schedule=schedule,
                     encoder=encoder if settings.init == "encoder" else None)  # fmt: skip
    att.calibrate(6)
    return att


def _fingerprint(r: AttributionResult) -> tuple:
    return (r.verdict, r.steps, r.stop_reason, r.evaluations, np.float64(r.loss).tobytes(), tuple(r.restart_steps),
            tuple((s, np.float64(v).tobytes()) for s, v in r.trajectory))  # fmt: skip


@pytest.mark.parametrize("preset", ["fast", "paper"])
@pytest.mark.parametrize("kind", ["torch", "ort"])
def test_an_image_gets_the_same_result_alone_and_in_any_batch(model, kind, preset):
    """Random batch compositions, orders and batch sizes: every image's result equals its result alone."""
    name, _, _, _, images = model
    att = _attributor(kind, preset, model)
    alone = [_fingerprint(att.attribute(images[i : i + 1])[0]) for i in range(len(images))]
    rng = np.random.default_rng(hash((name, kind, preset)) % 2**32)
    for _ in range(2):
        order = rng.permutation(len(images))[: int(rng.integers(2, len(images) + 1))]
        batch = np.concatenate([images[order], images[rng.integers(0, len(images), 2)]])  # with repeats
        att.schedule = Schedule(**{**att.schedule.__dict__, "batch_size": int(rng.integers(1, 7))})
        got = att.attribute(batch)
        for j, i in enumerate(order):
            assert _fingerprint(got[j]) == alone[i], (name, kind, preset, j, i)


def test_torch_results_do_not_depend_on_the_thread_count(model):
    """Row groups at one intra-op thread each: 1 and 2 threads give the same calibration and results."""
    _, gen, encoder, _, images = model
    out = []
    for threads in (1, 2):
        att = Attributor(gen, backend=TorchBackend(gen, threads=threads), encoder=encoder)
        cal = att.calibrate(4)
        out.append((cal.scores, [_fingerprint(r) for r in att.attribute(images)]))
    assert out[0] == out[1]
