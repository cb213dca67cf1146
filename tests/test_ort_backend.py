"""Attribution packages and the ONNX Runtime backend, against the PyTorch reference. Real graphs, real ORT."""

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from genorigin.export.package import AttributionPackage, PackageError, export_generator, export_onnx_file
from genorigin.kernels.reference import loss_and_grad
from genorigin.runtime.backends.eager import TorchBackend
from genorigin.runtime.backends.ort import OrtBackend, make_session, package_generator
from genorigin.runtime.decide.calibration import quantize_8bit
from genorigin.runtime.loop.settings import InversionSettings, Schedule
from genorigin.runtime.methods.attribution import Attributor
from helpers import TinyDecoder, UnflattenDecoder, assert_static_gradient_graph, export_legacy_onnx, tiny_generator

SETTINGS = InversionSettings(steps=200, lr=0.05, restarts=2)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    gen = tiny_generator()
    root = export_generator(gen, tmp_path_factory.mktemp("pkg") / "tiny.pkg")
    return gen, AttributionPackage.load(root)


def test_manifest_records_what_loading_needs(exported):
    gen, pkg = exported
    m = pkg.manifest
    assert m["source"]["fingerprint"] == gen.fingerprint() and m["latent"]["shape"] == [8]
    assert m["image"] == {"channels": 3, "height": 8, "width": 8, "range": [0.0, 1.0]}
    assert m["graphs"]["loss_mse"]["inputs"] == ["z", "target"]
    assert m["graphs"]["loss_mse"]["outputs"][:2] == ["loss", "grad_z"]
    assert m["graphs"]["vjp"]["outputs"] == ["image", "g_z"] and m["opset"] >= 13 and m["genorigin_version"]


def test_loss_and_gradient_match_torch(exported):
    gen, pkg = exported
    rng = np.random.default_rng(0)
    for batch in (1, 5):
        z = rng.standard_normal((batch, 8)).astype(np.float32)
        x = rng.random((batch, 3, 8, 8)).astype(np.float32)
        lo, go = OrtBackend(pkg).loss_and_grad(z, x)
        lt, gt = TorchBackend(gen).loss_and_grad(torch.from_numpy(z), torch.from_numpy(x))
        assert np.abs(lo - lt.numpy()).max() <= 1e-5 * np.abs(lt.numpy()).max()
        assert np.linalg.norm(go - gt.numpy()) <= 1e-5 * np.linalg.norm(gt.numpy())


def test_vjp_graph_matches_autograd(exported):
    gen, pkg = exported
    rng = np.random.default_rng(1)
    z = rng.standard_normal((3, 8)).astype(np.float32)
    gy = rng.standard_normal((3, 3, 8, 8)).astype(np.float32)
    image, gz = make_session(str(pkg.graph_path("vjp"))).run(None, {"z": z, "g_image": gy})
    zt = torch.from_numpy(z).requires_grad_(True)
    yt = gen.forward(zt)
    (expected,) = torch.autograd.grad(yt, zt, torch.from_numpy(gy))
    assert np.abs(image - yt.detach().numpy()).max() < 1e-5
    assert np.linalg.norm(gz - expected.numpy()) <= 1e-5 * np.linalg.norm(expected.numpy())


def test_ort_loop_and_torch_loop_agree(exported):
    gen, pkg = exported
    images = np.concatenate(
        [quantize_8bit(gen.sample(4, seed=31)), np.random.default_rng(2).random((4, 3, 8, 8)).astype(np.float32)]
    )
    sched = Schedule(batch_size=4, check_every=25, early_exit=False)
    torch_att = Attributor(gen, settings=SETTINGS, schedule=sched)
    cal = torch_att.calibrate(n=10)
    ort_att = Attributor(gen, backend=OrtBackend(pkg), settings=SETTINGS, schedule=sched, calibration=cal)
    a, b = torch_att.attribute(images), ort_att.attribute(images)
    assert [r.verdict for r in a] == [r.verdict for r in b]
    assert [r.verdict for r in a[4:]] == ["non-belonging"] * 4
    for x, y in zip(a, b):
        assert y.loss == pytest.approx(x.loss, rel=1e-4)  # measured ≤ 5e-6 after 200 steps: float rounding only


def test_tampered_or_incomplete_packages_are_refused(exported, tmp_path):
    _, pkg = exported
    bad = tmp_path / "bad.pkg"
    shutil.copytree(pkg.root, bad)
    data = bytearray((bad / "forward.onnx").read_bytes())
    data[-10] ^= 0xFF
    (bad / "forward.onnx").write_bytes(bytes(data))
    with pytest.raises(PackageError, match="SHA-256"):
        AttributionPackage.load(bad)
    shutil.rmtree(bad)
    shutil.copytree(pkg.root, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    del manifest["latent"]
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match="latent"):
        AttributionPackage.load(bad)
    (bad / "manifest.json").unlink()
    with pytest.raises(PackageError, match=r"no manifest\.json"):
        AttributionPackage.load(bad)


def test_third_party_onnx_generator(tmp_path):
    torch.manual_seed(3)
    module = TinyDecoder().eval()
    path = tmp_path / "third_party.onnx"
    torch.onnx.export(  # the legacy exporter, as third parties often use
        module, (torch.zeros(2, 8),), str(path), input_names=["latent"], output_names=["rgb"],
                      dynamic_axes={"latent": {0: "n"}, "rgb": {0: "n"}}, dynamo=False)  # fmt: skip
    pkg = AttributionPackage.load(export_onnx_file(path, tmp_path / "tp.pkg", output_range=(0.0, 1.0)))
    gen = package_generator(pkg)
    assert gen.latent.shape == (8,) and gen.image_size == (8, 8)
    z = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    with torch.no_grad():
        assert np.abs(gen.render(z) - module(torch.from_numpy(z)).numpy()).max() < 1e-5
    att = Attributor(gen, backend=OrtBackend(pkg), settings=InversionSettings(steps=150, lr=0.05),
                     schedule=Schedule(check_every=25))  # fmt: skip
    att.calibrate(n=8)
    own = quantize_8bit(gen.sample(2, seed=9))
    noise = np.random.default_rng(4).random((2, 3, 8, 8)).astype(np.float32)
    res = att.attribute(np.concatenate([own, noise]))
    assert max(r.loss for r in res[:2]) * 20 < min(r.loss for r in res[2:])


def test_legacy_export_with_unflatten_differentiates(tmp_path):
    """The legacy exporter writes nn.Unflatten as constant shape arithmetic ONNX inference cannot follow; the
    package still exports (genorigin's own output scaling included) and its gradient matches autograd."""
    torch.manual_seed(5)
    module = UnflattenDecoder().eval()
    path = export_legacy_onnx(module, tmp_path / "unflatten.onnx")
    pkg = AttributionPackage.load(export_onnx_file(path, tmp_path / "unflatten.pkg", output_range=(-1.0, 1.0)))
    for key in ("vjp", "loss_mse"):
        assert_static_gradient_graph(onnx.load(pkg.graph_path(key)))
    rng = np.random.default_rng(6)
    z = rng.standard_normal((3, 8)).astype(np.float32)
    x = rng.random((3, 3, 8, 8)).astype(np.float32)
    loss, grad = OrtBackend(pkg).loss_and_grad(z, x)
    zt = torch.from_numpy(z).requires_grad_(True)
    image = (module(zt) + 1.0) / 2.0
    ref_loss, g_image = loss_and_grad(image.detach(), torch.from_numpy(x))
    (ref_grad,) = torch.autograd.grad(image, zt, g_image)
    assert np.abs(loss - ref_loss.numpy()).max() <= 1e-5 * np.abs(ref_loss.numpy()).max()
    assert np.linalg.norm(grad - ref_grad.numpy()) <= 1e-5 * np.linalg.norm(ref_grad.numpy())


def test_bad_onnx_file_and_cuda_fallback_raise(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"not a graph")
    with pytest.raises(ValueError, match="not a valid ONNX model"):
        export_onnx_file(tmp_path / "bad.onnx", tmp_path / "out")
    model = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", ["z"], ["image"])],
            "g",
            [onnx.helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [None, 3, 4, 4])],
            [onnx.helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [None, 3, 4, 4])],
        )
    )
    onnx.save(model, tmp_path / "id.onnx")
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(RuntimeError, match="CUDA"):
            make_session(str(tmp_path / "id.onnx"), "cuda")


def test_cli_export_then_attribute_with_onnxruntime(tmp_path, capsys):
    from genorigin.export.bundled import real_images_dir

    from genorigin.cli import main

    pkg = tmp_path / "dcgan_a.pkg"
    assert main(["export", "--model", "dcgan_a", "--out", str(pkg), "--json", "--quiet"]) == 0
    manifest = json.loads(capsys.readouterr().out)["manifest"]
    assert set(manifest["graphs"]) == {"forward", "vjp", "loss_mse"}
    assert main(["export", "--model", "dcgan_a", "--out", str(pkg), "--quiet"]) == 2  # never overwrites
    fast = ["--preset", "paper", "--steps", "100", "--threads", "1", "--quiet"]
    assert main(["calibrate", "--model", str(pkg), "--samples", "6", *fast]) == 0
    assert (pkg / "calibration.json").exists()
    real = sorted(real_images_dir().glob("*.png"))[:2]
    capsys.readouterr()
    assert main(["attribute", *map(str, real), "--model", str(pkg), "--json", *fast]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["backend"]["backend"] == "onnxruntime" and len(report["results"]) == 2
    assert main(["attribute", str(real[0]), "--model", str(pkg), "--backend", "torch", *fast]) == 2
