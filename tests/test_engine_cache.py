"""Engine cache keying, invalidation and atomic writes; batch profiles, buckets and buffer shapes (CPU, for real).

Nothing here needs TensorRT or a GPU: the cache stores opaque engine bytes, and the graph side uses real ONNX
graphs exported from a small generator.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
from genorigin.runtime.backends.gpu import engine_cache as ec
from genorigin.runtime.backends.gpu import engine_io, graphs, profiles, slots, trt_build, trt_env
from genorigin.runtime.backends.gpu.engine_cache import EngineCache, EngineKey
from genorigin.runtime.backends.gpu.engine_io import TensorSpec
from genorigin.runtime.backends.gpu.profiles import BatchProfile
from helpers import tiny_generator


def make_key(**over: object) -> EngineKey:
    base = {
        "role": "vjp",
        "graph_sha256": "a" * 64,
        "tensorrt_version": "10.7.0",
        "compute_capability": "9.0",
        "device_name": "NVIDIA H100 80GB HBM3",
        "precision": "fp32",
        "profiles": (BatchProfile(1, 32, 256),),
        "builder": (("optimization_level", None), ("workspace_bytes", None)),
    }
    base.update(over)
    return EngineKey(**base)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- profiles


def test_batch_profile_validates_and_parses() -> None:
    assert profiles.parse_profile("1:32:256") == BatchProfile(1, 32, 256)
    assert profiles.parse_profile("64") == BatchProfile(1, 64, 64)
    for bad in ("0:1:2", "4:2:8", "1:2", "a:b:c", "8:16:4"):
        with pytest.raises(ValueError):
            profiles.parse_profile(bad)
    assert str(BatchProfile(2, 4, 8)) == "2:4:8"


def test_pow2_bucket() -> None:
    assert [slots.pow2_bucket(n) for n in (1, 2, 3, 4, 5, 31, 32, 33, 256)] == [1, 2, 4, 4, 8, 32, 32, 64, 256]
    with pytest.raises(ValueError):
        slots.pow2_bucket(0)


def test_bucket_sizes_inside_profiles() -> None:
    assert slots.bucket_sizes([BatchProfile(1, 32, 256)]) == (1, 2, 4, 8, 16, 32, 64, 128, 256)
    # non-power-of-two limits are buckets themselves, so every count in range fits
    assert slots.bucket_sizes([BatchProfile(3, 8, 20)]) == (3, 4, 8, 16, 20)
    assert slots.bucket_sizes([BatchProfile(1, 1, 1), BatchProfile(8, 64, 100)]) == (1, 8, 16, 32, 64, 100)
    with pytest.raises(ValueError):
        slots.bucket_sizes([])


def test_choose_bucket_pads_up_and_names_the_limit() -> None:
    buckets = slots.bucket_sizes([BatchProfile(1, 32, 96)])
    assert slots.choose_bucket(1, buckets) == 1
    assert slots.choose_bucket(3, buckets) == 4
    assert slots.choose_bucket(33, buckets) == 64
    assert slots.choose_bucket(65, buckets) == 96
    with pytest.raises(ValueError, match="largest batch the engines were built for \\(96\\)"):
        slots.choose_bucket(97, buckets)
    with pytest.raises(ValueError):
        slots.choose_bucket(0, buckets)


def test_choose_profile_prefers_tightest_range() -> None:
    ranges = [BatchProfile(1, 64, 256), BatchProfile(1, 1, 8), BatchProfile(16, 32, 64)]
    assert profiles.choose_profile(1, ranges) == 1
    assert profiles.choose_profile(8, ranges) == 1
    assert profiles.choose_profile(32, ranges) == 2
    assert profiles.choose_profile(128, ranges) == 0
    with pytest.raises(ValueError, match="outside every optimisation profile"):
        profiles.choose_profile(512, ranges)
    # equal ranges: the nearer opt wins
    assert profiles.choose_profile(10, [BatchProfile(1, 2, 16), BatchProfile(1, 12, 16)]) == 1


# ---------------------------------------------------------------------------------------------- shapes


def test_concrete_and_profile_shapes() -> None:
    assert engine_io.concrete_shape((-1, 100, 1, 1), 8) == (8, 100, 1, 1)
    assert engine_io.concrete_shape(("batch", 3, 32, 32), 4) == (4, 3, 32, 32)
    assert engine_io.concrete_shape((None,), 5) == (5,)
    assert engine_io.concrete_shape((8, 3), 8) == (8, 3)
    with pytest.raises(ValueError, match="fixed batch"):
        engine_io.concrete_shape((8, 3), 4)
    with pytest.raises(ValueError, match="dynamic non-batch"):
        engine_io.concrete_shape((-1, -1, 32), 2)
    with pytest.raises(ValueError, match="rank 0"):
        engine_io.concrete_shape((), 2)
    assert engine_io.profile_shapes((-1, 100, 1, 1), BatchProfile(1, 32, 256)) == (
        (1, 100, 1, 1),
        (32, 100, 1, 1),
        (256, 100, 1, 1),
    )


DCGAN_VJP = [
    TensorSpec("z", True, (-1, 100, 1, 1), "float32"),
    TensorSpec("g_image", True, (-1, 3, 32, 32), "float32"),
    TensorSpec("image", False, (-1, 3, 32, 32), "float32"),
    TensorSpec("g_z", False, (-1, 100, 1, 1), "float32"),
]


def test_buffer_shapes_from_engine_io() -> None:
    assert engine_io.buffer_shapes(DCGAN_VJP, 16) == {
        "z": (16, 100, 1, 1),
        "g_image": (16, 3, 32, 32),
        "image": (16, 3, 32, 32),
        "g_z": (16, 100, 1, 1),
    }
    loss = [TensorSpec("z", True, (-1, 8), "float32"), TensorSpec("loss", False, (-1,), "float32")]
    assert engine_io.buffer_shapes(loss, 3) == {"z": (3, 8), "loss": (3,)}


def test_assign_io_by_exporter_names() -> None:
    assert engine_io.assign_io("vjp", DCGAN_VJP) == {"z": "z", "seed": "g_image", "grad": "g_z"}
    fwd = [TensorSpec("z", True, (-1, 8), "float32"), TensorSpec("image", False, (-1, 3, 8, 8), "float32")]
    assert engine_io.assign_io("forward", fwd) == {"z": "z", "image": "image"}
    loss = [
        TensorSpec("z", True, (-1, 8), "float32"),
        TensorSpec("target", True, (-1, 3, 8, 8), "float32"),
        TensorSpec("loss", False, (-1,), "float32"),
        TensorSpec("grad_z", False, (-1, 8), "float32"),
    ]
    assert engine_io.assign_io("loss", loss) == {"z": "z", "target": "target", "loss": "loss", "grad": "grad_z"}
    with pytest.raises(ValueError, match="no input 'z'"):
        engine_io.assign_io("forward", [TensorSpec("w", True, (-1,), "float32")])
    with pytest.raises(ValueError, match="vjp engine"):
        engine_io.assign_io("vjp", fwd)
    with pytest.raises(ValueError, match="unknown engine role"):
        engine_io.assign_io("decoder", fwd)


# ---------------------------------------------------------------------------------------------- keys


KEY_CHANGES = {
    "role": "loss",
    "graph_sha256": "b" * 64,
    "tensorrt_version": "10.8.0",
    "compute_capability": "8.7",
    "device_name": "Orin",
    "precision": "fp16",
    "profiles": (BatchProfile(1, 32, 128),),
    "builder": (("optimization_level", 5), ("workspace_bytes", None)),
}


def test_key_digest_is_stable_and_covers_every_component() -> None:
    key = make_key()
    assert key.digest() == make_key().digest()
    assert key.file_name().startswith("vjp-fp32-") and key.file_name().endswith(".engine")
    digests = {key.digest()}
    for name, value in KEY_CHANGES.items():
        other = replace(key, **{name: value})
        assert other.digest() not in digests, name
        digests.add(other.digest())
        diff = ec.key_mismatches(key.to_dict(), other.to_dict())
        assert len(diff) == 1 and diff[0].startswith(name), (name, diff)
    with pytest.raises(ValueError):
        make_key(precision="int8")
    with pytest.raises(ValueError):
        make_key(role="decoder")
    with pytest.raises(ValueError):
        make_key(profiles=())


def test_foreign_reasons() -> None:
    found = make_key().to_dict()
    assert ec.foreign_reasons(found, "10.7.0", "9.0", "NVIDIA H100 80GB HBM3") == []
    reasons = ec.foreign_reasons(found, "10.7.0", "8.7", "Orin")
    assert {r.split(":")[0] for r in reasons} == {"compute_capability", "device_name"}
    assert ec.foreign_reasons(found, "10.9.0", "9.0", "NVIDIA H100 80GB HBM3")[0].startswith("tensorrt_version")


def test_graph_sha256_covers_external_data(tmp_path: Path) -> None:
    g, d = tmp_path / "g.onnx", tmp_path / "g.onnx.data"
    g.write_bytes(b"graph")
    d.write_bytes(b"weights-1")
    first = ec.graph_sha256(g, [d])
    assert first != ec.graph_sha256(g)
    d.write_bytes(b"weights-2")
    assert ec.graph_sha256(g, [d]) != first
    g.write_bytes(b"graph!")
    assert ec.graph_sha256(g) != ec.graph_sha256(tmp_path / "g.onnx.data")


# ---------------------------------------------------------------------------------------------- cache


def test_cache_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GENORIGIN_CACHE", str(tmp_path / "g"))  # genorigin's one cache base (genorigin.files)
    assert ec.engine_cache_dir() == tmp_path / "g" / "engines"
    monkeypatch.delenv("GENORIGIN_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert ec.engine_cache_dir() == tmp_path / "x" / "genorigin" / "engines"
    assert ec.engine_cache_dir(tmp_path / "here") == tmp_path / "here"
    assert EngineCache().root == tmp_path / "x" / "genorigin" / "engines"


def test_store_and_lookup_roundtrip(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    key = make_key()
    assert cache.lookup(key) == (None, "no engine file")
    path = cache.store(key, b"ENGINE-BYTES", {"graph_kind": "vjp"})
    assert path == tmp_path / key.file_name()
    assert cache.lookup(key) == (path, None)
    meta = json.loads(ec.sidecar_path(path).read_text())
    assert meta["key"] == key.to_dict() and meta["engine_bytes"] == 12 and meta["graph_kind"] == "vjp"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, path.name + ".json"])
    fresh = EngineCache(tmp_path / "new" / "folder")  # the cache creates its folder on first store
    assert fresh.lookup(key) == (None, "no engine file") and fresh.store(key, b"E").is_file()


@pytest.mark.parametrize("component", sorted(KEY_CHANGES))
def test_each_key_component_invalidates(tmp_path: Path, component: str) -> None:
    cache = EngineCache(tmp_path)
    built: list[str] = []
    key = make_key()
    cache.get_or_build(key, lambda: b"old")
    changed = replace(key, **{component: KEY_CHANGES[component]})
    path, was_built, why = cache.get_or_build(changed, lambda: built.append("x") or b"new")
    assert was_built and built == ["x"] and why == "no engine file"
    assert path.read_bytes() == b"new"
    # the old engine is still the old engine, and both verify only against their own key
    assert cache.lookup(key)[0] is not None
    assert ec.engine_problem(path, key) is not None


@pytest.mark.parametrize("component", sorted(KEY_CHANGES))
def test_foreign_engine_under_expected_name_is_rebuilt(tmp_path: Path, component: str) -> None:
    """An engine copied in from elsewhere (other GPU, TensorRT, graph, ...) is never used, whatever its name."""
    cache = EngineCache(tmp_path)
    key = make_key()
    foreign = replace(key, **{component: KEY_CHANGES[component]})
    src = EngineCache(tmp_path / "elsewhere").store(foreign, b"FOREIGN")
    dst = cache.path_for(key)
    dst.write_bytes(src.read_bytes())
    ec.sidecar_path(dst).write_text(ec.sidecar_path(src).read_text())
    path, problem = cache.lookup(key)
    assert path is None and problem.startswith("built for another key") and component in problem
    calls: list[int] = []
    path, built, why = cache.get_or_build(key, lambda: calls.append(1) or b"MINE")
    assert built and calls == [1] and path.read_bytes() == b"MINE" and component in why
    assert cache.lookup(key) == (path, None)


def test_tampered_missing_or_corrupt_sidecar_is_rejected(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    key = make_key()
    path = cache.store(key, b"ENGINE")
    path.write_bytes(b"ENGINf")  # same size, other bytes
    assert "SHA-256" in cache.lookup(key)[1]
    path.write_bytes(b"ENGINE-TRUNC"[:3])
    assert "SHA-256" in cache.lookup(key)[1]
    cache.store(key, b"ENGINE")
    ec.sidecar_path(path).write_text("{not json")
    assert "unreadable" in cache.lookup(key)[1]
    ec.sidecar_path(path).unlink()
    assert "no sidecar" in cache.lookup(key)[1]
    cache.store(key, b"ENGINE")
    meta = json.loads(ec.sidecar_path(path).read_text())
    meta["key"]["format"] = "someone-else-v9"
    ec.sidecar_path(path).write_text(json.dumps(meta))
    assert "format" in ec.engine_problem(path)
    assert "format" in cache.lookup(key)[1]


def test_get_or_build_uses_cache_and_honours_force(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    key = make_key()
    calls: list[int] = []

    def build() -> bytes:
        calls.append(1)
        return b"E%d" % len(calls)

    p1, built1, _ = cache.get_or_build(key, build)
    p2, built2, why2 = cache.get_or_build(key, build)
    assert (built1, built2, why2, len(calls)) == (True, False, None, 1)
    p3, built3, why3 = cache.get_or_build(key, build, force=True)
    assert p1 == p2 == p3 and built3 and why3 == "rebuild forced" and p3.read_bytes() == b"E2"


def test_atomic_write_leaves_old_file_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "sub" / "x.engine"
    target.parent.mkdir()  # genorigin.files writes into existing folders; EngineCache.store creates its own
    ec.atomic_write_bytes(target, b"v1")
    assert target.read_bytes() == b"v1"

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        ec.atomic_write_bytes(target, b"v2-partial")
    monkeypatch.undo()
    assert target.read_bytes() == b"v1"
    assert [p.name for p in target.parent.iterdir()] == ["x.engine"]  # no temp file left behind


def test_crash_between_engine_and_sidecar_is_detected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine is replaced first; if the sidecar write then fails, the old sidecar no longer verifies."""
    cache = EngineCache(tmp_path)
    key = make_key()
    cache.store(key, b"OLD")
    real = ec.atomic_write_bytes

    def engine_only(path: str | Path, data: bytes) -> None:
        if str(path).endswith(".json"):
            raise OSError("killed")
        real(path, data)

    monkeypatch.setattr(ec, "atomic_write_bytes", engine_only)
    with pytest.raises(OSError):
        cache.store(key, b"NEWER")
    monkeypatch.undo()
    assert "SHA-256" in cache.lookup(key)[1]


# ---------------------------------------------------------------------------------------------- graphs


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An attribution package of a small real generator, as `genorigin export` writes it."""
    from genorigin.export.package import export_generator

    return export_generator(tiny_generator(), tmp_path_factory.mktemp("pkg") / "tiny")


def test_resolve_graphs_package_folder_list_and_mapping(exported: Path, tmp_path: Path) -> None:
    files = {"forward": exported / "forward.onnx", "vjp": exported / "vjp.onnx", "loss": exported / "loss_mse.onnx"}
    assert graphs.resolve_graphs(exported) == files
    assert {r: graphs.graph_role(p) for r, p in files.items()} == {r: r for r in files}
    assert graphs.graph_kind(files["loss"]) == "loss-mse"
    # a plain folder (no manifest) is matched by file name
    plain = tmp_path / "plain"
    plain.mkdir()
    for role, p in files.items():
        (plain / ("loss.onnx" if role == "loss" else p.name)).write_bytes(p.read_bytes())
    assert graphs.resolve_graphs(plain) == {
        r: plain / ("loss.onnx" if r == "loss" else p.name) for r, p in files.items()
    }
    # a list of files: roles come from the autodiff metadata, whatever the file names
    renamed = tmp_path / "whatever.onnx"
    renamed.write_bytes(files["vjp"].read_bytes())
    assert graphs.resolve_graphs([files["forward"], renamed]) == {"forward": files["forward"], "vjp": renamed}
    assert graphs.resolve_graphs({"loss": files["loss"]}) == {"loss": files["loss"]}
    assert graphs.resolve_graphs(exported, roles=["loss"]) == {"loss": files["loss"]}
    with pytest.raises(ValueError, match="two forward graphs"):
        graphs.resolve_graphs([files["forward"], files["forward"]])
    with pytest.raises(ValueError, match="no ONNX graph for role"):
        graphs.resolve_graphs({"loss": files["loss"]}, roles=["vjp"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no ONNX graphs found"):
        graphs.resolve_graphs(empty)
    with pytest.raises(FileNotFoundError):
        graphs.resolve_graphs([tmp_path / "missing.onnx"])


def test_tampered_package_is_refused(exported: Path, tmp_path: Path) -> None:
    import shutil

    from genorigin.export.package import PackageError

    copy = tmp_path / "pkg"
    shutil.copytree(exported, copy)
    data = bytearray((copy / "vjp.onnx").read_bytes())
    data[-1] ^= 1
    (copy / "vjp.onnx").write_bytes(bytes(data))
    with pytest.raises(PackageError, match="SHA-256"):
        graphs.resolve_graphs(copy)


def test_usable_plans() -> None:
    assert graphs.usable_role_sets(["forward", "vjp", "loss"]) == [("loss",), ("forward", "vjp")]
    assert graphs.usable_role_sets(["forward"]) == []
    assert graphs.usable_role_sets(["vjp", "forward"]) == [("forward", "vjp")]


def test_engine_key_tracks_the_graph_bytes(exported: Path, tmp_path: Path) -> None:
    kw = {
        "precision": "fp32",
        "profiles": (BatchProfile(1, 8, 64),),
        "tensorrt_version": "10.7.0",
        "compute_capability": "9.0",
        "device_name": "H100",
    }
    a = trt_build.engine_key("vjp", exported / "vjp.onnx", **kw)
    assert a == trt_build.engine_key("vjp", exported / "vjp.onnx", **kw)
    copy = tmp_path / "vjp.onnx"
    weights = (exported / "weights.bin").read_bytes()
    (tmp_path / "weights.bin").write_bytes(weights)  # the graph's weights travel beside it
    data = bytearray((exported / "vjp.onnx").read_bytes())
    data[-1] ^= 1  # any change to the graph file is a different engine
    copy.write_bytes(bytes(data))
    assert trt_build.engine_key("vjp", copy, **kw).graph_sha256 != a.graph_sha256
    assert graphs.external_data_files(exported / "vjp.onnx") == [exported / "weights.bin"]
    copy.write_bytes((exported / "vjp.onnx").read_bytes())
    assert trt_build.engine_key("vjp", copy, **kw).graph_sha256 == a.graph_sha256
    (tmp_path / "weights.bin").write_bytes(weights[:-1] + bytes([weights[-1] ^ 1]))  # and so do its weights
    assert trt_build.engine_key("vjp", copy, **kw).graph_sha256 != a.graph_sha256


def test_build_engines_explains_missing_tensorrt(exported: Path) -> None:
    ok, why = trt_env.tensorrt_available()
    if ok:
        pytest.skip(f"TensorRT {why} is usable here; the missing-TensorRT path cannot be exercised")
    assert why
    with pytest.raises(trt_env.TensorRTUnavailableError):
        trt_build.build_engines(exported)
    with pytest.raises(ValueError, match="precision"):
        trt_build.build_engines(exported, precision="int8")
