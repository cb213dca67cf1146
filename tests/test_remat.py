"""Rematerialised gradient graphs against the plain ones, and the activation-memory estimate they rely on.

Real exported graphs (a small AutoencoderKL decoder: GroupNorm, attention, upsampling), run on ONNX Runtime.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
import torch
from genorigin.export.activation_memory import batch_for_memory, peak_activation
from genorigin.export.onnx_autodiff import build_loss_graph, build_vjp_graph
from genorigin.export.onnx_forward import export_forward
from genorigin.export.remat import REMAT_KEY, rematerialise, rematerialise_to_fit
from genorigin.export.sessions import open_session
from genorigin.export.tensorrt_ops import ops_outside_tensorrt
from helpers import assert_static_gradient_graph
from onnx import TensorProto, helper

diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def forward(tmp_path_factory) -> onnx.ModelProto:
    from genorigin.export.latent_diffusion import latent_diffusion_from_vae

    torch.manual_seed(3)
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 16, 16), layers_per_block=2,
        latent_channels=4, norm_num_groups=4, sample_size=32,
    )  # fmt: skip
    gen = latent_diffusion_from_vae(vae).generator
    path = tmp_path_factory.mktemp("remat") / "forward.onnx"
    return export_forward(gen.module, torch.zeros(2, *gen.latent.shape), path)


def _inputs(batch: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "z": rng.standard_normal((batch, 4, 8, 8)).astype(np.float32),
        "target": rng.random((batch, 3, 32, 32), dtype=np.float32),
        "g_image": rng.standard_normal((batch, 3, 32, 32)).astype(np.float32),
    }


def _run(model: onnx.ModelProto) -> list[np.ndarray]:
    names = {i.name for i in model.graph.input}
    return open_session(model, threads=1).run(None, {k: v for k, v in _inputs().items() if k in names})


@pytest.mark.parametrize("segments", [2, 3, 6])
@pytest.mark.parametrize("build", [build_loss_graph, build_vjp_graph], ids=["loss", "vjp"])
def test_rematerialised_graph_computes_the_same_gradient(forward, build, segments):
    plain = build(forward)
    remat = rematerialise(plain, segments)
    assert {p.key: p.value for p in remat.metadata_props}[REMAT_KEY] == f"segments={segments}"
    assert any("__rc" in n.name for n in remat.graph.node)  # something is recomputed
    for got, want in zip(_run(remat), _run(plain), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)  # the same kernels on the same values
    assert not ops_outside_tensorrt(remat)
    assert_static_gradient_graph(remat)
    onnx.checker.check_model(remat)


def test_recomputation_waits_for_the_gradient(forward):
    """Every recomputed node depends on a backward tensor, so no scheduler can run it during the forward."""
    plain = build_loss_graph(forward)
    n_forward = sum(1 for _ in plain.graph.node[: int(_meta(plain)["forward_nodes"])])
    backward_outputs = {o for n in plain.graph.node[n_forward:] for o in n.output}
    remat = rematerialise(plain, 4)
    producer = {o: n for n in remat.graph.node for o in n.output}

    def reaches_backward(name: str, seen: set[str]) -> bool:
        if name in backward_outputs:
            return True
        node = producer.get(name)
        if node is None or name in seen:
            return False
        seen.add(name)
        return any(reaches_backward(i, seen) for i in node.input if i)

    recomputed = [n for n in remat.graph.node if "__rc" in n.name and n.op_type not in ("Constant",)]
    assert recomputed
    float_reading = [n for n in recomputed if any(i.endswith("_gated") or "__rc" in i for i in n.input)]
    assert float_reading and all(any(reaches_backward(i, set()) for i in n.input) for n in float_reading)


def _saved_bytes(model: onnx.ModelProto, plain: onnx.ModelProto) -> int:
    """Bytes of the plain graph's forward tensors that nodes outside its forward pass read (kept alive)."""
    from genorigin.export.activation_memory import _bytes
    from genorigin.export.static_shapes import infer_static_shapes

    n_forward = int(_meta(plain)["forward_nodes"])
    forward_names = {o for n in plain.graph.node[:n_forward] for o in n.output}
    forward_ids = {tuple(n.output) for n in plain.graph.node[:n_forward]}
    readers = [n for n in model.graph.node if tuple(n.output) not in forward_ids and n.op_type not in ("Shape", "Size")]
    shapes = infer_static_shapes(plain, 1)
    return sum(_bytes(shapes, name) for name in {i for n in readers for i in n.input} & forward_names)


def test_rematerialisation_lowers_the_estimated_peak(forward):
    plain = build_loss_graph(forward)
    assert _saved_bytes(rematerialise(plain, 4), plain) < 0.5 * _saved_bytes(plain, plain)  # copies read instead
    peaks = [peak_activation(rematerialise(plain, k), 1).peak_bytes for k in (2, 4)]
    assert max(peaks) < 0.8 * peak_activation(plain, 1).peak_bytes
    budget = int(0.9 * peak_activation(plain, 1).peak_bytes)
    fitted, segments = rematerialise_to_fit(plain, budget)
    assert segments > 0 and peak_activation(fitted, 1).peak_bytes <= budget
    assert rematerialise_to_fit(plain, 10 * budget)[1] == 0  # fits as it is: left alone
    with pytest.raises(ValueError, match="even rematerialised, one step needs"):
        rematerialise_to_fit(plain, 1000)


def _meta(model: onnx.ModelProto) -> dict[str, str]:
    from genorigin.export.onnx_autodiff import AUTODIFF_KEY

    raw = {p.key: p.value for p in model.metadata_props}[AUTODIFF_KEY]
    return dict(item.split("=", 1) for item in raw.split(","))


def test_peak_activation_of_a_known_chain():
    """z (N×1000) → Relu a → Relu b → Add(a, b) c: at Add, a, b and c are live (z too, an input): 4 × 4000 B
    per sample; b is freed after Add, a too."""
    nodes = [
        helper.make_node("Relu", ["z"], ["a"]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["c"]),
    ]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 1000])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, ["n", 1000])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert peak_activation(model, 1).peak_bytes == 4 * 4000
    assert peak_activation(model, 3).peak_bytes == 3 * 4 * 4000
    assert peak_activation(model, 1).peak_node == "Add"
    assert batch_for_memory(model, 10 * 16000) == 10 and batch_for_memory(model, 15999) == 0


def test_peak_activation_frees_what_is_read_no_more():
    """z → a → b → c → d, each a Relu: at most the input z and two neighbours are live (3 × 4000 B)."""
    names = ["z", "a", "b", "c", "d"]
    nodes = [helper.make_node("Relu", [x], [y]) for x, y in itertools.pairwise(names)]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 1000])],
        [helper.make_tensor_value_info("d", TensorProto.FLOAT, ["n", 1000])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert peak_activation(model, 1).peak_bytes == 3 * 4000


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    """The same decoder exported plainly and under a budget its plain gradient graphs do not fit."""
    from genorigin.export.latent_diffusion import latent_diffusion_from_vae
    from genorigin.export.package import AttributionPackage, export_generator

    torch.manual_seed(3)
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 16, 16), layers_per_block=2,
        latent_channels=4, norm_num_groups=4, sample_size=32,
    )  # fmt: skip
    gen = latent_diffusion_from_vae(vae).generator
    root = tmp_path_factory.mktemp("budget")
    plain = AttributionPackage.load(export_generator(gen, root / "plain.pkg"))
    need = 2 * plain.manifest["activations"]["plain_per_image_bytes"]["loss_mse"] * 1.5
    tight = AttributionPackage.load(export_generator(gen, root / "tight.pkg", activation_budget=int(0.8 * need)))
    return gen, plain, tight


def test_export_rematerialises_what_does_not_fit_its_budget(packages):
    from genorigin.runtime.backends.ort import OrtBackend

    gen, plain, tight = packages
    assert plain.manifest["activations"]["segments"] == {"vjp": 0, "loss_mse": 0}
    act = tight.manifest["activations"]
    assert (
        act["segments"]["loss_mse"] > 0
        and act["per_image_bytes"]["loss_mse"] < act["plain_per_image_bytes"]["loss_mse"]
    )
    loss_graph = onnx.load(str(tight.graph_path("loss_mse")), load_external_data=False)
    assert REMAT_KEY in {p.key for p in loss_graph.metadata_props}
    assert tight.manifest["validation"]["max_grad_error"] <= 1e-5  # the rematerialised graphs were validated
    rng = np.random.default_rng(1)
    z, x = gen.latent.sample(3, rng), rng.random((3, 3, 32, 32), dtype=np.float32)
    for got, want in zip(
        OrtBackend(tight, threads=1).loss_and_grad(z, x), OrtBackend(plain, threads=1).loss_and_grad(z, x)
    ):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)
    from genorigin.runtime.backends.ort import _other_loss_graph

    robust = _other_loss_graph(tight, "mse-dct8")  # other losses are rematerialised like the package's own
    assert REMAT_KEY in {p.key for p in robust.metadata_props}


def test_a_step_over_the_memory_budget_runs_in_chunks_of_rows(packages):
    from genorigin.runtime.backends.ort import OrtBackend

    gen, plain, _ = packages
    whole = OrtBackend(plain, threads=1)
    chunked = OrtBackend(plain, threads=1, memory_budget=1)
    assert whole.rows >= 5 and chunked.rows == 1 and chunked.describe()["rows_per_call"] == 1
    batches: list[int] = []
    session = chunked.loss_session  # the real session, watched: which batch sizes reach it

    class Watched:
        def run(self, names, feed):
            batches.append(len(feed["z"]))
            return session.run(names, feed)

    chunked.loss_session = Watched()
    rng = np.random.default_rng(2)
    z, x = gen.latent.sample(5, rng), rng.random((5, 3, 32, 32), dtype=np.float32)
    got_all = chunked.loss_and_grad(z, x)
    assert batches == [1, 1, 1, 1, 1]
    for got, want in zip(got_all, whole.loss_and_grad(z, x), strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)
