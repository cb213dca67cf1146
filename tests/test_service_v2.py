"""The Open Inference Protocol (KServe v2 REST, as Triton speaks it) with the official client, ``tritonclient.http``,
against a live uvicorn server on 127.0.0.1: health, metadata, inference with BYTES and UINT8 tensors, as JSON
and with the binary-data extension, several images per request, refusals — and answers equal, bit for bit, to
``/v1/attribute`` and to ``genorigin attribute`` on the same images (two small DCGAN model files whose step is
batch-exact on the CPU).
"""

from __future__ import annotations

import base64
import io
import json
import threading

import numpy as np
import pytest
from genorigin.runtime.decide.multimodel import decide_across
from PIL import Image
from service_helpers import (
    LONG,
    ReportEntry,
    calibrated_tiny,
    cli_models,
    cli_reports,
    cli_service,
    metric,
    png,
    post,
    request,
    running,
    variant,
    wait_until,
)

from genorigin.service import Limits

http = pytest.importorskip("tritonclient.http")  # the dev extra
from tritonclient.utils import InferenceServerException  # noqa: E402

OUTPUTS = ("verdict", "p_value", "score", "steps")
CLI_KEYS = {"verdict": "verdict", "p_value": "p_value", "score": "calibrated_loss", "steps": "steps"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("v2")
    models, images = cli_models(folder)
    reports = cli_reports(models, images, folder)
    names = sorted(p.name for p in images.iterdir())
    return models, {n: (images / n).read_bytes() for n in names}, reports


@pytest.fixture(scope="module")
def server(files):
    st = cli_service(files[0])
    with st as url:
        st.wait_ready()
        yield url


def _client(url: str):
    return http.InferenceServerClient(url.removeprefix("http://"), network_timeout=300.0)


def _bytes_input(images: list[bytes], binary: bool = True):
    tensor = http.InferInput("image", [len(images)], "BYTES")
    if binary:
        return tensor.set_data_from_numpy(np.array(images, dtype=np.object_))
    encoded = np.array([base64.b64encode(b) for b in images], dtype=np.object_)  # JSON strings must be text
    return tensor.set_data_from_numpy(encoded, binary_data=False)


def _pixels_input(images: list[bytes], binary: bool = True):
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in images])
    return http.InferInput("pixels", list(pixels.shape), "UINT8").set_data_from_numpy(pixels, binary_data=binary)


def _outputs(result, prefix: str = "") -> dict[str, list]:
    out = {}
    for name in OUTPUTS:
        values = result.as_numpy(prefix + name)
        out[name] = [v.decode() if isinstance(v, bytes) else v if isinstance(v, str) else v.item() for v in values]
    return out


def test_health_and_metadata(server):
    client = _client(server)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("alpha") and client.is_model_ready("all") and client.is_model_ready("beta", "1")
    assert not client.is_model_ready("nope")
    meta = client.get_server_metadata()
    assert meta["name"] == "genorigin" and "binary_tensor_data" in meta["extensions"]
    alpha = client.get_model_metadata("alpha")
    assert alpha["name"] == "alpha" and alpha["versions"] == ["1"]
    assert {(t["name"], t["datatype"]) for t in alpha["inputs"]} == {("image", "BYTES"), ("pixels", "UINT8")}
    outputs = [(t["name"], t["datatype"]) for t in alpha["outputs"]]
    assert outputs == [("verdict", "BYTES"), ("p_value", "FP64"), ("score", "FP64"), ("steps", "INT32")]
    assert client.get_model_metadata("alpha", "1") == alpha
    every = [t["name"] for t in client.get_model_metadata("all")["outputs"]]
    assert every[:3] == ["decision", "verdict", "ambiguous"] and "beta/score" in every and "alpha/steps" in every
    for args in (("nope",), ("alpha", "2")):
        with pytest.raises(InferenceServerException) as info:
            client.get_model_metadata(*args)
        assert info.value.status() == "404" and "no" in info.value.message()


def test_several_images_as_binary_bytes_equal_v1_and_the_command_line(server, files):
    _, images, reports = files
    names = list(images)
    client = _client(server)
    for model in ("alpha", "beta"):
        result = client.infer(model, [_bytes_input([images[n] for n in names])], request_id="r1")
        assert result.get_response()["model_name"] == model and result.get_response()["id"] == "r1"
        got = _outputs(result)
        for i, name in enumerate(names):
            assert {k: got[k][i] for k in OUTPUTS} == {k: reports[model][name][v] for k, v in CLI_KEYS.items()}
    every = client.infer("all", [_bytes_input([images[n] for n in names])])
    decision = [d.decode() for d in every.as_numpy("decision")]
    for i, name in enumerate(names):
        rule = decide_across({m: ReportEntry(reports[m][name]) for m in reports})
        status, _, v1 = post(server, images[name], headers={"X-Image-Name": name})
        assert status == 200 and decision[i] == (v1["decision"] or "") == (rule.model or "")
        assert bool(every.as_numpy("ambiguous")[i]) == v1["ambiguous"]
        for model in reports:
            got = _outputs(every, f"{model}/")
            v1_model = v1["models"][model]
            assert {k: got[k][i] for k in OUTPUTS} == {k: v1_model[v] for k, v in CLI_KEYS.items()}
    assert "alpha" in decision and "beta" in decision and "" in decision  # each model's own sample, and noise


def test_base64_bytes_in_json_and_json_outputs_give_the_same_answers(server, files):
    _, images, reports = files
    names = list(images)[:2]
    outputs = [http.InferRequestedOutput(n, binary_data=False) for n in OUTPUTS]
    result = _client(server).infer("beta", [_bytes_input([images[n] for n in names], binary=False)], outputs=outputs)
    assert all("data" in o for o in result.get_response()["outputs"])  # JSON numbers, no binary section
    got = _outputs(result)
    for i, name in enumerate(names):
        assert {k: got[k][i] for k in OUTPUTS} == {k: reports["beta"][name][v] for k, v in CLI_KEYS.items()}


@pytest.mark.parametrize("binary", [True, False])
def test_decoded_pixels_give_the_answers_of_the_encoded_images(server, files, binary):
    _, images, _ = files
    pngs = [images[n] for n in images if n.endswith(".png")]
    client = _client(server)
    from_pixels = _outputs(client.infer("alpha", [_pixels_input(pngs, binary)]))
    assert from_pixels == _outputs(client.infer("alpha", [_bytes_input(pngs)]))


def _refusal(client, model: str, inputs, **kwargs) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as info:
        client.infer(model, inputs, **kwargs)
    return info.value.status(), info.value.message()


def test_refusals_are_the_protocols_error_shape(server, files):
    _, images, _ = files
    client, one = _client(server), next(iter(images.values()))
    assert _refusal(client, "nope", [_bytes_input([one])])[0] == "404"
    assert _refusal(client, "alpha", [_bytes_input([one])], model_version="7")[0] == "404"
    bad_shape = http.InferInput("image", [1, 2], "BYTES").set_data_from_numpy(np.array([[one, one]], dtype=object))
    status, message = _refusal(client, "alpha", [bad_shape])
    assert status == "400" and "shape must be [N] or [N, 1]" in message
    four = http.InferInput("pixels", [1, 4, 4, 4], "UINT8").set_data_from_numpy(np.zeros((1, 4, 4, 4), np.uint8))
    assert "[N, H, W, 3]" in _refusal(client, "alpha", [four])[1]
    wrong = http.InferInput("pixels", [1, 4, 4, 3], "FP32").set_data_from_numpy(np.zeros((1, 4, 4, 3), np.float32))
    assert "must be UINT8" in _refusal(client, "alpha", [wrong])[1]
    status, message = _refusal(client, "alpha", [_bytes_input([one, b"not an image at all, just text\n" * 4])])
    assert status == "400" and "image[1]" in message
    outputs = [http.InferRequestedOutput("colour")]
    assert "no output colour" in _refusal(client, "alpha", [_bytes_input([one])], outputs=outputs)[1]
    body = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["%%%"]}]}).encode()
    status, headers, answer = request(server, "POST", "/v2/models/alpha/infer", body)
    assert status == 400 and isinstance(answer["error"], str) and "base64" in answer["error"]
    assert headers["content-type"] == "application/json"
    status, _, answer = request(server, "GET", "/v2/models/alpha/explain")
    assert status == 404 and isinstance(answer["error"], str)


def test_overload_deadline_metrics_and_token():
    """Admission and deadlines are /v1's: 503 with Retry-After at once, 504 past X-Deadline-Ms."""
    attributor = calibrated_tiny()
    noise = [png(x) for x in np.random.default_rng(7).random((3, 3, 8, 8))]
    token = "s3cret-token-for-tests"
    st = running({"tiny": variant(attributor, batch_size=1, **LONG)}, Limits(token=token), max_queue=0)
    auth = {"Authorization": f"Bearer {token}"}
    with st as url:
        st.wait_ready()
        client = _client(url)
        assert client.is_server_ready()  # probes stay open
        with pytest.raises(InferenceServerException) as info:
            client.get_model_metadata("tiny")
        assert info.value.status() == "401"
        held_result: dict = {}
        held = threading.Thread(target=lambda: held_result.setdefault("r", _client(url).infer(
            "tiny", [_bytes_input([noise[0]])], headers=auth)))  # a client per thread: it runs on gevent  # fmt: skip
        held.start()
        wait_until(lambda: metric(url, "genorigin_jobs_in_flight", token, model="tiny") == 1)
        status, message = _refusal(client, "tiny", [_bytes_input([noise[1]])], headers=auth)
        assert status == "503" and "retry later" in message
        body = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                       "data": [base64.b64encode(noise[1]).decode()]}]}).encode()  # fmt: skip
        status, headers, answer = request(url, "POST", "/v2/models/tiny/infer", body, auth)
        assert status == 503 and int(headers["retry-after"]) >= 1 and isinstance(answer["error"], str)
        held.join()
        assert held_result["r"].as_numpy("steps")[0] == attributor.settings.steps
        status, message = _refusal(client, "tiny", [_bytes_input([noise[2]])], headers={**auth, "X-Deadline-Ms": "300"})
        assert status == "504" and "deadline passed" in message and "steps done" in message
        infer_route = "/v2/models/{model}/infer"
        assert metric(url, "genorigin_requests_total", token, route=infer_route, outcome="overloaded") == 2
        assert metric(url, "genorigin_protocol_requests_total", token, protocol="v2", status="503") == 2
        assert metric(url, "genorigin_protocol_requests_total", token, protocol="v1") == 0
