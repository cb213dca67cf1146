"""Attribution packages: numerical export validation and the checks that make a loaded package trustworthy.

Real exports, real ONNX Runtime sessions; tampering is done the way an attacker would, on the files.
"""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from genorigin.export.bundled import load_bundled
from genorigin.export.package import AttributionPackage, PackageError, export_generator, export_onnx_file
from genorigin.export.validate import (
    FINITE_DIFFERENCE_TOLERANCE,
    MODULE_TOLERANCE,
    ValidationError,
    validate_against_module,
    validate_by_finite_differences,
)
from genorigin.runtime.decide.calibration import Calibration, CalibrationMismatch
from helpers import UnflattenDecoder, export_legacy_onnx, tiny_generator

from genorigin.files import sha256_file
from genorigin.models import resolve_model

GRAPHS = ("forward", "vjp", "loss_mse")


@pytest.fixture(scope="module")
def dcgan(tmp_path_factory):
    gen = load_bundled("dcgan_a")
    return gen, AttributionPackage.load(export_generator(gen, tmp_path_factory.mktemp("dcgan") / "dcgan_a.pkg"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return AttributionPackage.load(export_generator(tiny_generator(), tmp_path_factory.mktemp("tiny") / "tiny.pkg"))


def _copy(pkg: AttributionPackage, to: Path) -> Path:
    shutil.copytree(pkg.root, to)
    return to


def _edit_manifest(root: Path, edit) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    edit(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest))


def _flip_gradient_sign(src: Path, dst: Path, output: str) -> None:
    """A gradient graph whose ``output`` is negated: what a sign error in one VJP rule would produce."""
    model = onnx.load(str(src))
    producer = next(n for n in model.graph.node if output in n.output)
    producer.output[list(producer.output).index(output)] = f"{output}__unflipped"
    model.graph.node.append(onnx.helper.make_node("Neg", [f"{output}__unflipped"], [output], name="corrupt"))
    onnx.save(model, str(dst))


# ---------------------------------------------------------------------------------------------------------
# Export validation
# ---------------------------------------------------------------------------------------------------------


def test_bundled_dcgan_export_is_validated_against_autograd(dcgan):
    _, pkg = dcgan
    report = pkg.manifest["validation"]
    assert report["method"] == "torch-autograd" and report["tolerance"] == MODULE_TOLERANCE
    assert 0 < report["max_grad_error"] <= 1e-5 and 0 < report["max_vjp_error"] <= 1e-5
    assert report["max_loss_error"] <= 1e-5 and report["samples"] == 3


def test_third_party_export_is_validated_by_finite_differences(tmp_path):
    path = export_legacy_onnx(UnflattenDecoder(), tmp_path / "legacy.onnx")
    report = AttributionPackage.load(export_onnx_file(path, tmp_path / "legacy.pkg")).manifest["validation"]
    assert report["method"] == "finite-differences" and report["tolerance"] == FINITE_DIFFERENCE_TOLERANCE
    assert report["max_grad_error"] <= FINITE_DIFFERENCE_TOLERANCE / 4 and report["max_vjp_error"] <= 1e-5


@pytest.mark.parametrize("graph,output", [("loss_mse", "grad_z"), ("vjp", "g_z")])
def test_a_sign_flipped_gradient_fails_validation(dcgan, tmp_path, graph, output):
    gen, pkg = dcgan
    graphs = {key: pkg.graph_path(key) for key in GRAPHS}
    graphs[graph] = tmp_path / f"{graph}.onnx"
    _flip_gradient_sign(pkg.graph_path(graph), graphs[graph], output)
    shape = (gen.channels, *gen.image_size)
    with pytest.raises(ValidationError, match=r"export validation failed for 'dcgan_a'.*differs from torch-autograd"):
        validate_against_module(graphs, gen.module, gen.latent, shape).check("dcgan_a")
    fd = validate_by_finite_differences(graphs, gen.latent, shape)
    if graph == "loss_mse":  # the directional derivatives disagree (by 2 along the gradient)
        assert fd.max_grad_error > 1.0
    else:  # vjp's g_z disagrees with the loss graph's grad_z
        assert fd.max_vjp_error > 1.0
    with pytest.raises(ValidationError, match="finite-differences"):
        fd.check("dcgan_a")


def test_failed_validation_writes_nothing(tmp_path):
    out = tmp_path / "models" / "strict.pkg"
    with pytest.raises(ValidationError) as info:
        export_generator(tiny_generator(), out, validation_tolerance=1e-12)
    assert len(str(info.value).splitlines()) == 1 and "nothing was written" in str(info.value)
    assert not out.exists() and list(out.parent.iterdir()) == []  # no staging folder left behind either


# ---------------------------------------------------------------------------------------------------------
# Loading: identity from content, shapes, symlinks, permissions
# ---------------------------------------------------------------------------------------------------------


def test_identity_comes_from_the_graph_bytes_not_the_manifest(tiny, tmp_path):
    """Rewrite a weight in forward.onnx and its hash in the manifest: the package loads, but as another model,
    so the genuine package's calibration is refused."""
    genuine = resolve_model(str(tiny.root))
    Calibration("tiny", genuine.generator.fingerprint(), {}, [0.1, 0.2, 0.3]).save(tmp_path / "genuine.json")
    bad = _copy(tiny, tmp_path / "tampered.pkg")
    model = onnx.load(str(bad / "forward.onnx"))
    weight = next(t for t in model.graph.initializer if t.dims and np.prod(t.dims) > 10)
    weight.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weight) * 1.5, weight.name))
    onnx.save(model, str(bad / "forward.onnx"))
    _edit_manifest(bad, lambda m: m["graphs"]["forward"].update(sha256=sha256_file(bad / "forward.onnx")))
    tampered = resolve_model(str(bad))
    assert tampered.package().source_fingerprint == tiny.source_fingerprint  # the manifest still claims it
    assert tampered.generator.fingerprint() == tampered.package().fingerprint != tiny.fingerprint
    with pytest.raises(CalibrationMismatch):
        Calibration.load(tmp_path / "genuine.json", fingerprint=tampered.generator.fingerprint())
    Calibration.load(tmp_path / "genuine.json", fingerprint=genuine.generator.fingerprint())
    assert AttributionPackage.load(_copy(tiny, tmp_path / "copy.pkg")).fingerprint == tiny.fingerprint  # movable


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda m: m["image"].update(height=16), r"makes \[3, 8, 8\] .* manifest says \[3, 16, 8\]"),
        (lambda m: m["image"].update(channels=1), r"manifest says \[1, 8, 8\]"),
        (lambda m: m["latent"].update(shape=[4, 2]), r"latent is \[8\], the manifest says \[4, 2\]"),
    ],
    ids=["height", "channels", "latent"],
)
def test_manifest_shapes_must_match_the_forward_graph(tiny, tmp_path, edit, message):
    bad = _copy(tiny, tmp_path / "bad.pkg")
    _edit_manifest(bad, edit)
    with pytest.raises(PackageError, match=message):
        AttributionPackage.load(bad)


def test_graph_files_that_are_symlinks_are_refused(tiny, tmp_path):
    """Same bytes, same hash, but a symlink: loading would read whatever the link points to later."""
    bad = _copy(tiny, tmp_path / "bad.pkg")
    outside = tmp_path / "elsewhere.onnx"
    shutil.move(bad / "vjp.onnx", outside)
    (bad / "vjp.onnx").symlink_to(outside)
    with pytest.raises(PackageError, match=r"vjp\.onnx: graph 'vjp' is a symlink or lies outside the package"):
        AttributionPackage.load(bad)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_exported_folder_gets_the_users_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        out = export_generator(tiny_generator(), tmp_path / "shared.pkg")
    finally:
        os.umask(previous)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask
    assert all((out / f).stat().st_mode & 0o777 == 0o666 & ~umask for f in ("manifest.json", "forward.onnx"))
