"""One registry of backends, one of methods, one protocol: names, defaults, refusals, lazy GPU classes (the
import directions between the rooms: tests/test_layout.py)."""

from __future__ import annotations

import pytest
from genorigin.runtime.backends import registry as backends
from genorigin.runtime.backends.eager import TorchBackend
from genorigin.runtime.loop.settings import FAST_SETTINGS, PAPER_SCHEDULE, PAPER_SETTINGS, InversionSettings
from genorigin.runtime.methods import registry as methods
from genorigin.runtime.methods.attribution import Attributor
from helpers import tiny_generator

from genorigin.models import resolve_model


def test_backend_names_and_the_one_factory():
    assert backends.backend_names() == (
        "torch",
        "torch-cuda",
        "torch-cuda-graph",
        "onnxruntime",
        "onnxruntime-cuda",
        "tensorrt",
        "torch-bf16",
    )
    target = backends.GeneratorOnly(tiny_generator())
    assert isinstance(backends.make_backend(target), TorchBackend)  # default for a PyTorch module
    with pytest.raises(ValueError, match="unknown backend 'cuda'; choose one of torch, torch-cuda"):
        backends.make_backend(target, "cuda")
    with pytest.raises(ValueError, match="run on an exported package"):
        backends.make_backend(target, "onnxruntime")
    with pytest.raises(ValueError, match="already registered"):
        backends.register_backend(backends.BACKENDS["torch"])


def test_a_package_gets_onnxruntime_and_refuses_torch(tmp_path):
    from genorigin.export.package import export_generator

    export_generator(tiny_generator(), tmp_path / "tiny.pkg")
    model = resolve_model(str(tmp_path / "tiny.pkg"))
    assert model.kind == "package" and model.encoder_path == tmp_path / "tiny.pkg" / "encoder.onnx"
    assert backends.make_backend(model).name == "onnxruntime"
    with pytest.raises(ValueError, match=r"exported package .* use onnxruntime, onnxruntime-cuda, tensorrt"):
        backends.make_backend(model, "torch")


def test_methods_presets_and_the_old_name():
    assert methods.method_choices() == ("inversion", "inversion-encoder", "aedr", "inversion-random")
    model = methods.BareModel(tiny_generator())
    fast = methods.build_method("inversion", model)
    assert isinstance(fast, Attributor) and fast.settings == FAST_SETTINGS and fast.needs_encoder
    old = methods.build_method("inversion-random", model)  # the old name: random starts, the paper's loop
    assert old.settings == PAPER_SETTINGS and old.schedule == PAPER_SCHEDULE and old.method == "inversion"
    with pytest.raises(ValueError, match="needs an AutoencoderKL"):
        methods.build_method("aedr", model)
    with pytest.raises(ValueError, match="unknown method 'ronan'"):
        methods.build_method("ronan", model)
    with pytest.raises(ValueError, match="already registered"):
        methods.register_method(methods.METHODS["aedr"])


def test_the_loop_method_follows_the_protocol_end_to_end(tmp_path):
    """calibrate → use_calibration → attribute_files → describe, through the protocol's names only."""
    from genorigin.runtime.decide.calibration import quantize_8bit

    from genorigin.images import save_png

    gen = tiny_generator()
    method: methods.AttributionMethod = methods.build_method(
        "inversion-random", methods.BareModel(gen), methods.MethodOptions(settings=InversionSettings(steps=40))
    )
    cal = method.calibrate(4)
    method.use_calibration(cal)
    save_png(quantize_8bit(gen.sample(1, seed=3))[0], tmp_path / "own.png")
    (tmp_path / "bad.png").write_text("no")
    found = method.attribute_files([str(tmp_path)])
    assert [r.source for r in found.results] == [str(tmp_path / "own.png")] and len(found.errors) == 1
    assert found.results[0].input["format"] == "PNG" and found.results[0].evaluations > 0
    assert set(method.describe()) == {"method", "backend", "settings", "schedule", "rule", "encoder"}
    assert method.accept_threshold() == cal.grubbs_threshold
