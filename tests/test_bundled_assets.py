"""The bundled generator weights and held-out real images shipped in src/genorigin/assets."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from genorigin.export.architectures import (
    DCGANConfig,
    DCGANGenerator,
    VAEConfig,
    VAEDecoder,
    VAEEncoder,
)
from PIL import Image

ASSETS = Path(__file__).resolve().parents[1] / "src" / "genorigin" / "assets"
MODELS = ("dcgan_a", "dcgan_b", "vae")
KINDS = {"dcgan_a": "dcgan", "dcgan_b": "dcgan", "vae": "vae"}
MAX_BYTES = 5 * 1024 * 1024
REAL_DIR = ASSETS / "images" / "real"


def _load(name: str) -> dict:
    path = ASSETS / "models" / f"{name}.pt"
    assert path.is_file(), f"missing bundled model {path}"
    payload = torch.load(path, map_location="cpu", weights_only=True)
    assert isinstance(payload, dict)
    return payload


def _heldout_from_sources() -> list[str]:
    """Photo names listed under 'Source photos (held out):' in SOURCES.txt."""
    text = (REAL_DIR / "SOURCES.txt").read_text()
    section = text.split("Source photos (held out):", 1)[1].split("\n\n", 1)[0]
    return re.findall(r"^\s+(\w+):", section, flags=re.MULTILINE)


@pytest.mark.parametrize("name", MODELS)
def test_bundled_model_payload(name: str) -> None:
    """Each .pt loads with weights_only=True, has the v1 keys, fits in 5 MB and loads strictly."""
    path = ASSETS / "models" / f"{name}.pt"
    payload = _load(name)
    assert path.stat().st_size <= MAX_BYTES
    for key in ("format", "name", "kind", "config", "state_dict", "training"):
        assert key in payload, key
    assert payload["format"] == "genorigin-bundled-v1"
    assert payload["name"] == name
    assert payload["kind"] == KINDS[name]
    training = payload["training"]
    for key in ("seed", "steps", "train_photos", "script"):
        assert key in training, key
    assert isinstance(training["seed"], int) and training["steps"] > 0
    assert training["script"] == "scripts/train_bundled_models.py"

    if payload["kind"] == "dcgan":
        cfg = DCGANConfig(**payload["config"])
        model: torch.nn.Module = DCGANGenerator(cfg)
        z = torch.randn(4, cfg.latent_dim, 1, 1, generator=torch.Generator().manual_seed(0))
    else:
        cfg = VAEConfig(**payload["config"])
        model = VAEDecoder(cfg)
        z = torch.randn(4, cfg.latent_dim, generator=torch.Generator().manual_seed(0))
        assert "encoder_state_dict" in payload
        VAEEncoder(cfg).load_state_dict(payload["encoder_state_dict"], strict=True)
    model.load_state_dict(payload["state_dict"], strict=True)
    model.eval()
    with torch.no_grad():
        out = model(z)
    assert out.shape == (4, cfg.channels, cfg.image_size, cfg.image_size)
    assert torch.isfinite(out).all()
    assert out.std() > 0.01, "generator output is (nearly) constant"


def test_dcgans_differ_only_in_seed() -> None:
    """dcgan_a and dcgan_b share config and training data but not their seed or weights."""
    a, b = _load("dcgan_a"), _load("dcgan_b")
    assert a["config"] == b["config"]
    assert a["training"]["train_photos"] == b["training"]["train_photos"]
    assert a["training"]["seed"] != b["training"]["seed"]
    assert not torch.equal(a["state_dict"]["net.0.weight"], b["state_dict"]["net.0.weight"])


def test_real_heldout_images() -> None:
    """At least 200 held-out real crops, each a 32×32 RGB PNG."""
    files = sorted(REAL_DIR.glob("*.png"))
    assert len(files) >= 200
    for f in files:
        with Image.open(f) as img:
            assert img.mode == "RGB", f
            assert img.size == (32, 32), f
            assert np.asarray(img).std() > 0, f


def test_heldout_and_training_photos_disjoint() -> None:
    """No held-out photo (SOURCES.txt and payloads) was used to train any bundled model."""
    heldout = set(_heldout_from_sources())
    assert heldout, "SOURCES.txt lists no held-out photos"
    for name in MODELS:
        training = _load(name)["training"]
        train = set(training["train_photos"])
        assert train, name
        assert not train & heldout, (name, train & heldout)
        assert not train & set(training.get("heldout_photos", [])), name
