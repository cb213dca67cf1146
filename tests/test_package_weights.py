"""Weights stored once: one weights.bin shared by the forward, VJP and loss graphs, read once at run time.

Real exports, real ONNX Runtime sessions. Also: packages of the earlier self-contained format still load and
run, tampering with the weights is refused, half-precision storage, export progress, and (slow) a package
whose weights pass protobuf's 2 GB limit.
"""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from genorigin.export.bundled import load_bundled
from genorigin.export.package import (
    EXPORT_STEPS,
    AttributionPackage,
    PackageError,
    export_generator,
    export_onnx_file,
    export_steps,
)
from genorigin.export.package_checks import LEGACY_FORMAT
from genorigin.export.weights import INLINE_LIMIT, STORAGE_TYPES, WEIGHTS_FILE, bfloat16_bits_to_float32, external_ref
from genorigin.runtime.backends.ort import OrtBackend
from helpers import UnflattenDecoder, export_legacy_onnx

from genorigin.files import sha256_file

GRAPHS = ("forward", "vjp", "loss_mse")


@pytest.fixture(scope="module")
def dcgan(tmp_path_factory):
    gen = load_bundled("dcgan_a")
    return gen, AttributionPackage.load(export_generator(gen, tmp_path_factory.mktemp("dcgan") / "dcgan_a.pkg"))


def _param_bytes(module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def _loss_and_grad(pkg: AttributionPackage, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = pkg.latent.sample(2, rng)
    img = pkg.manifest["image"]
    x = rng.random((2, img["channels"], img["height"], img["width"]), dtype=np.float32)
    return OrtBackend(pkg, threads=1).loss_and_grad(z, x)


def test_the_three_graphs_read_one_weights_file(dcgan):
    gen, pkg = dcgan
    assert pkg.weights_path == pkg.root / WEIGHTS_FILE and pkg.manifest["weights"]["storage"] == "float32"
    for key in GRAPHS:
        model = onnx.load(str(pkg.graph_path(key)), load_external_data=False)
        for tensor in model.graph.initializer:  # large ones live in weights.bin, small ones stay in the graph
            ref = external_ref(tensor)
            if ref is None:
                assert onnx.numpy_helper.to_array(tensor).nbytes < INLINE_LIMIT
            else:
                assert ref.location == WEIGHTS_FILE and ref.length >= INLINE_LIMIT
    package_bytes = sum(f.stat().st_size for f in pkg.root.iterdir())
    weights = _param_bytes(gen.module)
    assert pkg.weights_path.stat().st_size <= weights  # each weight once
    assert package_bytes <= 1.1 * weights, (package_bytes, weights)  # was 3× (three self-contained graphs)


def test_sessions_of_a_package_share_one_buffer(dcgan, tmp_path):
    """Zeroing the shared buffer changes what every session of the package computes: they read that buffer,
    not copies of their own (lean sessions: ONNX Runtime's own pre-packed copies are off)."""
    _, genuine = dcgan
    pkg = AttributionPackage.load(shutil.copytree(genuine.root, tmp_path / "pkg"))
    forward = pkg.session("forward", threads=1, lean=True, optimization="basic")
    loss = pkg.session("loss_mse", threads=1, lean=True, optimization="basic")
    assert forward.genorigin_weights is loss.genorigin_weights is pkg.shared_weights()
    z = pkg.latent.sample(2, np.random.default_rng(0))
    x = np.full((2, 3, 32, 32), 0.25, dtype=np.float32)
    before = forward.run(["image"], {"z": z})[0]
    loss_before = loss.run(["loss"], {"z": z, "target": x})[0]
    pkg.shared_weights().buffer[:] = 0  # every stored weight (and bias) is now 0
    after = forward.run(["image"], {"z": z})[0]
    loss_after = loss.run(["loss"], {"z": z, "target": x})[0]
    assert np.abs(after - before).max() > 0.05 and np.ptp(after) < 1e-6  # a constant image: weights gone
    assert not np.allclose(loss_before, loss_after)


def _as_v1(pkg: AttributionPackage, to: Path) -> Path:
    """The package as the earlier release wrote it: three self-contained graphs, no weights file."""
    to.mkdir()
    manifest = json.loads((pkg.root / "manifest.json").read_text())
    for key, entry in manifest["graphs"].items():
        model = onnx.load(str(pkg.graph_path(key)))  # external data read in
        onnx.save(model, str(to / entry["file"]))
        entry["sha256"] = sha256_file(to / entry["file"])
    manifest["format"] = LEGACY_FORMAT
    del manifest["weights"]
    (to / "manifest.json").write_text(json.dumps(manifest))
    return to


def test_a_v1_package_still_loads_and_runs(dcgan, tmp_path):
    _, pkg = dcgan
    old = AttributionPackage.load(_as_v1(pkg, tmp_path / "v1.pkg"))
    assert old.weights_path is None and old.shared_weights() is None
    v1_rule = hashlib.sha256(b"genorigin-package-v1")  # the identity rule of v1 releases, written out
    for key in sorted(GRAPHS):
        v1_rule.update(f"\n{key}={sha256_file(old.graph_path(key))}".encode())
    assert old.fingerprint == v1_rule.hexdigest()  # so calibrations made for v1 packages still apply
    loss, grad = _loss_and_grad(old)
    loss2, grad2 = _loss_and_grad(pkg)
    np.testing.assert_allclose(loss, loss2, rtol=1e-5)
    np.testing.assert_allclose(grad, grad2, rtol=1e-4, atol=1e-7)


def test_an_unknown_format_says_to_re_export(dcgan, tmp_path):
    _, pkg = dcgan
    bad = shutil.copytree(pkg.root, tmp_path / "bad.pkg")
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["format"] = "genorigin-package-v9"
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match=r"unknown package format .*re-export") as info:
        AttributionPackage.load(bad)
    assert len(str(info.value).splitlines()) == 1


def test_changed_weights_are_refused_and_rehashed_ones_are_another_model(dcgan, tmp_path):
    _, pkg = dcgan
    bad = shutil.copytree(pkg.root, tmp_path / "bad.pkg")
    data = bytearray((bad / WEIGHTS_FILE).read_bytes())
    data[len(data) // 2] ^= 0x40
    (bad / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(PackageError, match=r"weights\.bin: SHA-256 does not match the manifest"):
        AttributionPackage.load(bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["weights"]["sha256"] = sha256_file(bad / WEIGHTS_FILE)
    (bad / "manifest.json").write_text(json.dumps(manifest))
    assert AttributionPackage.load(bad).fingerprint != pkg.fingerprint  # loads, but as a different model


def test_a_graph_reading_an_unhashed_file_is_refused(dcgan, tmp_path):
    """A graph pointing its weights at another file in the folder would escape the fingerprint."""
    _, pkg = dcgan
    bad = shutil.copytree(pkg.root, tmp_path / "bad.pkg")
    shutil.copy(bad / WEIGHTS_FILE, bad / "other.bin")
    model = onnx.load(str(bad / "vjp.onnx"), load_external_data=False)
    tensor = next(t for t in model.graph.initializer if external_ref(t) is not None)
    next(e for e in tensor.external_data if e.key == "location").value = "other.bin"
    onnx.save(model, str(bad / "vjp.onnx"))
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["graphs"]["vjp"]["sha256"] = sha256_file(bad / "vjp.onnx")
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match=r"reads external data from 'other\.bin', which the manifest does not hash"):
        AttributionPackage.load(bad)


@pytest.mark.parametrize("storage", ["float16", "bfloat16"])
def test_half_precision_storage_halves_the_weights(dcgan, tmp_path, storage):
    """The graphs are validated in float32, then the model's weights are stored rounded; what that moves is
    measured at export and recorded, and matches what the loaded package computes."""
    gen, full = dcgan
    said: list[str] = []
    out = export_generator(gen, tmp_path / f"{storage}.pkg", storage=storage, progress=said.append)
    assert tuple(said) == export_steps("module", storage)
    pkg = AttributionPackage.load(out)
    assert pkg.manifest["weights"]["storage"] == storage
    assert pkg.weights_path.stat().st_size <= 0.55 * full.weights_path.stat().st_size
    report = pkg.manifest["validation"]
    assert report["max_grad_error"] <= 1e-5 and report["max_vjp_error"] <= 1e-5  # the float32 graphs
    effect = report["storage"]
    assert effect["type"] == storage and 0 < effect["grad_change"] < 5e-2 and 0 < effect["max_loss_change"] < 2e-2
    forward = onnx.load(str(pkg.graph_path("forward")), load_external_data=False)
    stored = [t for t in forward.graph.initializer if external_ref(t) is not None]
    cast_inputs = {n.input[0] for n in forward.graph.node if n.op_type == "Cast"}
    assert stored and all(t.data_type == STORAGE_TYPES[storage] and t.name in cast_inputs for t in stored)
    loss, grad = _loss_and_grad(pkg)
    loss32, grad32 = _loss_and_grad(full)
    assert 0 < np.abs(loss - loss32).max() / np.abs(loss32).max() < 2e-2  # rounding moves the model a little
    assert 0 < np.linalg.norm(grad - grad32) / np.linalg.norm(grad32) < 5e-2
    assert pkg.fingerprint != full.fingerprint


def test_bfloat16_rounding_matches_torch():
    """Round to nearest, ties to even, subnormals and specials included: torch's own conversion is the reference."""
    import torch
    from genorigin.export.weights import float32_to_bfloat16_bits

    rng = np.random.default_rng(0)
    ties = [1.0 + 2**-8, 1.0 + 3 * 2**-8, -(1.0 + 2**-8)]  # halfway cases: down to even, up to even
    values = np.concatenate([rng.standard_normal(10_000) * 10.0 ** rng.integers(-40, 38, 10_000),
                             ties, [0.0, -0.0, np.inf, -np.inf, 1e-40, 3e38]]).astype(np.float32)  # fmt: skip
    back = bfloat16_bits_to_float32(float32_to_bfloat16_bits(values))
    reference = torch.from_numpy(values).to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(back, reference)
    assert np.isnan(bfloat16_bits_to_float32(float32_to_bfloat16_bits(np.array([np.nan], np.float32))))[0]


def test_export_reports_exactly_its_steps(tmp_path):
    said: list[str] = []
    export_generator(load_bundled("dcgan_b"), tmp_path / "m.pkg", progress=said.append)
    assert tuple(said) == EXPORT_STEPS["module"]
    said.clear()
    export_onnx_file(
        export_legacy_onnx(UnflattenDecoder(), tmp_path / "tp.onnx"), tmp_path / "tp.pkg", progress=said.append
    )
    assert tuple(said) == EXPORT_STEPS["onnx"]


@pytest.mark.slow
def test_a_package_over_two_gigabytes(tmp_path):
    """A third-party graph with a 2.1 GB initializer (protobuf's limit is 2 GB): exported, stored once,
    loaded, and run on ONNX Runtime from the one shared buffer."""
    big = _third_party_with_big_initializer(tmp_path / "src", elements=(2**31 + 2**26) // 4)
    pkg = AttributionPackage.load(export_onnx_file(big, tmp_path / "big.pkg"))
    size = pkg.weights_path.stat().st_size
    assert size > 2**31 and size < 2**31 + 2**27  # one copy, not three
    assert all(pkg.graph_path(key).stat().st_size < 2**20 for key in GRAPHS)
    backend = OrtBackend(pkg, threads=1)
    z = np.linspace(-1, 1, 8, dtype=np.float32)[None]
    image = backend.render(z)
    assert image.shape == (1, 3, 8, 8) and np.isfinite(image).all()
    assert pkg.shared_weights().nbytes == size


def _third_party_with_big_initializer(folder: Path, elements: int) -> Path:
    """z (N×8) → sigmoid(reshape(z W) + a row of a huge table): the table is the large initializer. Its row
    index is computed from z (always row 0), so ONNX Runtime cannot fold the lookup into a copy at load time."""
    from onnx import TensorProto, helper

    folder.mkdir()
    rows = elements // 192
    table = np.memmap(folder / "table.bin", dtype=np.float32, mode="w+", shape=(rows, 192))
    table[0] = np.linspace(-0.5, 0.5, 192, dtype=np.float32)
    table.flush()
    del table
    big = TensorProto(name="table", data_type=TensorProto.FLOAT, dims=[rows, 192])
    big.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "table.bin"), ("offset", "0"), ("length", str(rows * 192 * 4))):
        big.external_data.add(key=key, value=value)
    w = onnx.numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 192)).astype(np.float32) * 0.3, "w")
    consts = [onnx.numpy_helper.from_array(np.asarray(v, dtype=np.int64), n) for n, v in
              (("start", [0]), ("end", [1]), ("axis", [1]), ("shape", [-1, 3, 8, 8]))]  # fmt: skip
    never = onnx.numpy_helper.from_array(np.array(-1e30, dtype=np.float32), "never")
    nodes = [
        helper.make_node("MatMul", ["latent", "w"], ["h"]),
        helper.make_node("Slice", ["latent", "start", "end", "axis"], ["first"]),  # (N, 1)
        helper.make_node("Less", ["first", "never"], ["no"]),  # all False: integer path, not differentiated
        helper.make_node("Cast", ["no"], ["row"], to=TensorProto.INT64),  # (N, 1) zeros
        helper.make_node("Gather", ["table", "row"], ["picked"], axis=0),  # (N, 1, 192)
        helper.make_node("Reshape", ["picked", "shape"], ["bias"]),
        helper.make_node("Reshape", ["h", "shape"], ["hr"]),
        helper.make_node("Add", ["hr", "bias"], ["hb"]),
        helper.make_node("Sigmoid", ["hb"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "big",
        [helper.make_tensor_value_info("latent", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        initializer=[big, w, never, *consts],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "big.onnx"
    onnx.save(model, str(path))
    return path


def test_weights_changed_after_loading_are_refused_when_read(dcgan, tmp_path):
    """The bytes sessions use are hashed as they are read, so a file swapped after the load check is caught."""
    from genorigin.export.weights import WeightsError

    _, genuine = dcgan
    pkg = AttributionPackage.load(shutil.copytree(genuine.root, tmp_path / "pkg"))
    data = bytearray(pkg.weights_path.read_bytes())
    data[-1] ^= 1
    pkg.weights_path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"weights\.bin: SHA-256 does not match the manifest"):
        pkg.session("forward")
