"""The HTTP service, for real: a server on 127.0.0.1, real requests, a real model."""

import io
import json
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
from bad_images import write_bad_images
from genorigin.runtime.attribution import Attributor, quantize_8bit
from genorigin.runtime.inversion import InversionSettings, Schedule
from genorigin.runtime.server import AttributionServer
from helpers import tiny_generator
from PIL import Image


def _png(image_chw: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.round(image_chw.transpose(1, 2, 0) * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _post(url: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url + "/v1/attribute", data=body, method="POST",
                                 headers={"Content-Type": "image/png", "X-Image-Name": "x.png"})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def server():
    gen = tiny_generator()
    settings = InversionSettings(steps=200, lr=0.05)
    attributor = Attributor(gen, settings=settings, schedule=Schedule(check_every=25))
    attributor.calibrate(n=10)
    with AttributionServer(attributor, "127.0.0.1", 0, max_batch=8, max_wait_ms=20) as s:
        yield s, gen


def test_health_and_model_info(server):
    s, gen = server
    with urllib.request.urlopen(s.url + "/healthz", timeout=10) as r:
        assert json.loads(r.read()) == {"status": "ok"}
    with urllib.request.urlopen(s.url + "/v1/model", timeout=10) as r:
        info = json.loads(r.read())
    assert info["model"]["fingerprint"] == gen.fingerprint() and info["calibration"]["n"] == 10


def test_concurrent_requests_get_their_own_verdicts(server):
    s, gen = server
    own = quantize_8bit(gen.sample(3, seed=77))
    noise = np.random.default_rng(3).random((3, 3, 8, 8))
    bodies = [_png(x) for x in own] + [_png(x) for x in noise]
    answers: dict[int, tuple[int, dict]] = {}
    threads = [threading.Thread(target=lambda i=i: answers.__setitem__(i, _post(s.url, bodies[i]))) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(answers[i][0] == 200 for i in range(6))
    assert [answers[i][1]["verdict"] for i in range(3, 6)] == ["non-belonging"] * 3
    assert sum(answers[i][1]["verdict"] == "belonging" for i in range(3)) >= 2
    assert all("latency_ms" in answers[i][1] for i in range(6))


def test_bad_uploads_get_400_and_the_server_survives(server, tmp_path):
    s, gen = server
    for name in write_bad_images(tmp_path):
        status, payload = _post(s.url, (tmp_path / name).read_bytes())
        assert status == 400 and payload["error"]
    status, payload = _post(s.url, _png(quantize_8bit(gen.sample(1, seed=5))[0]))
    assert status == 200 and payload["verdict"] in ("belonging", "non-belonging")
