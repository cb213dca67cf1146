"""The attribution service for real: uvicorn on 127.0.0.1 (a free port), real requests, a real model.

The "long" variant of the model has no non-belonging early exit, so a noise image runs its whole budget (about
2 s on the machine at hand, ``budget_for``): that is the request other requests must not wait for. Own samples
decide "belonging" in tens of steps.
"""

from __future__ import annotations

import socket
import threading
import urllib.parse
import urllib.request

import numpy as np
import pytest
from corpus.build import CASES
from genorigin.runtime.decide.calibration import quantize_8bit
from genorigin.runtime.methods.attribution import Attributor
from helpers import tiny_generator
from service_helpers import (
    FAST_SCHEDULE,
    LONG,
    calibrated_tiny,
    metric,
    png,
    post,
    request,
    running,
    variant,
    wait_until,
)

from genorigin.client import Client, DeadlineExceeded, Overloaded, ServiceError
from genorigin.images import decode_upload
from genorigin.service import Limits, ServedModel, Service


@pytest.fixture(scope="module")
def model():
    attributor = calibrated_tiny()
    own = quantize_8bit(attributor.generator.sample(8, seed=11))
    results = attributor.attribute(own)
    short = [png(x) for x, r in zip(own, results) if r.belonging and r.steps <= 200]
    assert len(short) >= 3, [(r.verdict, r.steps) for r in results]
    noise = [png(x) for x in np.random.default_rng(3).random((4, 3, 8, 8))]
    return attributor, short, noise


@pytest.fixture(scope="module")
def long_server(model):
    """Batch 4, queue 8, no non-belonging early exit."""
    attributor, _, _ = model
    st = running({"tiny": variant(attributor, **LONG)}, Limits(read_timeout_s=2.0), max_queue=8)
    with st as url:
        st.wait_ready()
        yield url


def _in_thread(fn, *args) -> tuple[threading.Thread, dict]:
    box: dict = {}
    t = threading.Thread(target=lambda: box.setdefault("r", fn(*args)))
    t.start()
    return t, box


def _steps(url: str) -> float:
    return metric(url, "genorigin_loop_steps_total", model="tiny")


@pytest.mark.parametrize("batching", ["continuous", "complete"])
def test_a_request_joins_the_running_inversion(model, batching):
    """B arrives while A is mid-inversion: it starts (and finishes) before A does. The old worker makes it wait."""
    attributor, short, noise = model
    st = running({"tiny": variant(attributor, **LONG)}, batching=batching)
    with st as url:
        st.wait_ready()
        start = _steps(url)
        ta, a = _in_thread(post, url, noise[0], "model=tiny")
        wait_until(lambda: _steps(url) >= start + 30)  # A is running, far from the end of its budget
        tb, b = _in_thread(post, url, short[0], "model=tiny")
        ta.join(), tb.join()
    (sa, _, ra), (sb, _, rb) = a["r"], b["r"]
    budget = attributor.settings.steps
    assert sa == sb == 200 and ra["steps"] == budget and rb["verdict"] == "belonging"
    ta_, tb_ = ra["timing"], rb["timing"]
    assert ta_["finished_step"] - ta_["admitted_step"] == budget
    if batching == "continuous":
        assert ta_["admitted_step"] < tb_["admitted_step"] < ta_["finished_step"]  # joined the running batch
        assert tb_["finished_step"] - tb_["admitted_step"] == rb["steps"] < budget  # and left at its own exit
        assert tb_["finished_step"] < ta_["finished_step"]
    else:  # batch to completion: B waits for all of A's remaining steps
        assert tb_["admitted_step"] >= ta_["finished_step"]


def test_verdicts_equal_a_lone_attribute_call(model, long_server):
    """Four requests at once against the same images one by one. This tiny model's Linear layer rounds
    differently at batch 1 (GEMV) than in a batch, so scores agree to float32 rounding here; bit-identity with
    `genorigin attribute` on a model whose step is batch-exact is tested in test_service_cli.py."""
    attributor, short, noise = model
    bodies = (noise[1], *short[:3])
    threads = [_in_thread(post, long_server, body, "model=tiny") for body in bodies]
    a = variant(attributor, **LONG)
    for (t, box), body in zip(threads, bodies):
        t.join()
        status, _, got = box["r"]
        want = a.attribute(decode_upload(body, "x.png", a.generator)[0][None])[0].to_dict()
        assert status == 200
        for key in ("verdict", "steps", "stop_reason", "evaluations", "fresh_starts"):
            assert got[key] == want[key], key
        assert got["calibrated_loss"] == pytest.approx(want["calibrated_loss"], rel=1e-5)


def test_overload_is_answered_503_with_retry_after_at_once(model):
    attributor, short, noise = model
    st = running({"tiny": variant(attributor, batch_size=1, **LONG)}, max_queue=1)  # room for 2 jobs
    with st as url:
        st.wait_ready()
        held = [_in_thread(post, url, noise[i]) for i in range(2)]
        wait_until(lambda: metric(url, "genorigin_jobs_in_flight", model="tiny") == 2)
        status, headers, body = post(url, short[0])
        still_running = [t.is_alive() for t, _ in held]
        assert status == 503 and int(headers["retry-after"]) >= 1
        assert body["error"]["code"] == "overloaded" and all(still_running)  # refused while both ran
        for t, box in held:
            t.join()
            assert box["r"][0] == 200
        assert request(url, "GET", "/readyz")[0] == 200
        assert metric(url, "genorigin_requests_total", outcome="overloaded") == 1


def test_deadline_gives_504_with_the_best_score_so_far_and_frees_the_slot(model):
    attributor, short, noise = model
    st = running({"tiny": variant(attributor, batch_size=1, **LONG)}, max_queue=2)
    with st as url:
        st.wait_ready()
        status, _, body = post(url, noise[0], headers={"X-Deadline-Ms": "300"})
        err = body["error"]
        assert status == 504 and err["code"] == "deadline_exceeded" and err["details"]["stage"] == "running"
        assert 0 < err["details"]["steps"] < attributor.settings.steps and err["details"]["best_calibrated_loss"] > 0
        wait_until(lambda: metric(url, "genorigin_images_in_batch", model="tiny") == 0)  # the slot was freed
        assert metric(url, "genorigin_attributions_total", stop_reason="cancelled") == 1
        # a job still queued at its deadline is answered at once, with nothing computed
        held = _in_thread(post, url, noise[1])
        wait_until(lambda: metric(url, "genorigin_images_in_batch", model="tiny") == 1)
        status, _, body = post(url, short[0], query="deadline_ms=200")
        details = body["error"]["details"]
        assert status == 504 and details["stage"] == "queued" and details["steps"] == 0
        assert held[0].is_alive()
        held[0].join()
        assert held[1]["r"][0] == 200
        assert post(url, short[0], query="deadline_ms=-5")[0] == 400


def test_several_models_in_one_process(model):
    attributor, short, _ = model
    other = Attributor(tiny_generator(seed=5, name="other"), settings=attributor.settings, schedule=FAST_SCHEDULE)
    other.calibrate(n=8)
    st = running({"tiny": attributor, "other": other})
    with st as url:
        st.wait_ready()
        status, _, info = request(url, "GET", "/v1/models")
        assert status == 200 and [m["name"] for m in info["models"]] == ["tiny", "other"]
        status, _, one = post(url, short[0], query="model=tiny")
        assert status == 200 and one["model"] == "tiny" and one["verdict"] == "belonging"
        for query in ("", "model=all"):
            status, _, both = post(url, short[0], query=query)
            assert status == 200 and set(both["models"]) == {"tiny", "other"}
            assert both["models"]["tiny"]["calibrated_loss"] == one["calibrated_loss"]
            accepting = [m for m, r in both["models"].items() if r["verdict"] == "belonging"]
            assert sorted(both["accepting"]) == sorted(accepting) and both["decision"] in accepting
        status, _, body = post(url, short[0], query="model=nope")
        assert status == 404 and body["error"]["code"] == "unknown_model"


def test_bad_uploads_get_json_4xx_and_the_service_stays_ready(model, long_server):
    _, short, _ = model
    for case in (c for c in CASES if isinstance(c.content, bytes) and c.http_status != 200):
        status, _, body = post(long_server, case.content, headers={"X-Image-Name": case.name})
        assert status == case.http_status, case.name
        assert case.expect_error in body["error"]["message"] and body["error"]["status"] == status
    assert request(long_server, "GET", "/readyz")[0] == 200
    assert post(long_server, short[0])[0] == 200


def test_multipart_several_files_in_one_request(model, long_server):
    _, short, _ = model
    boundary = "genorigin-test"
    parts = [("a.png", short[0]), ("bad.png", b"not an image at all, just text\n" * 4), ("b.png", short[1])]
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{n}"\r\n'
                    f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n" for n, data in parts)  # fmt: skip
    body += f"--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    status, _, answer = post(long_server, body, "model=tiny", headers)
    assert status == 200 and [r["filename"] for r in answer["results"]] == ["a.png", "bad.png", "b.png"]
    assert [r["status"] for r in answer["results"]] == [200, 400, 200]
    alone = post(long_server, short[1], "model=tiny")[2]
    assert answer["results"][2]["calibrated_loss"] == pytest.approx(alone["calibrated_loss"], rel=1e-5)


def test_metrics_probes_docs_and_wrong_methods(model, long_server):
    _, short, _ = model
    post(long_server, short[0])
    exposed = urllib.request.urlopen(long_server + "/metrics", timeout=30).read().decode()
    for name in ("genorigin_queue_depth", "genorigin_jobs_in_flight", "genorigin_slots_in_use",
                 "genorigin_loop_steps_total", "genorigin_loop_steps_per_second", "genorigin_requests_total",
                 "genorigin_request_seconds_bucket", "genorigin_attributions_total"):  # fmt: skip
        assert f"\n{name}{{" in exposed, name
    assert metric(long_server, "genorigin_slots_capacity", model="tiny") == 4 * model[0].settings.restarts
    assert metric(long_server, "genorigin_attributions_total", verdict="belonging", stop_reason="belonging") >= 1
    assert metric(long_server, "genorigin_request_seconds_count", route="/v1/attribute") >= 1
    assert metric(long_server, "genorigin_ready") == 1
    assert request(long_server, "GET", "/healthz")[2] == {"status": "ok"}
    assert request(long_server, "GET", "/openapi.json")[2]["paths"]["/v1/attribute"]["post"]
    assert request(long_server, "GET", "/docs")[0] == 200
    for method, path in (("GET", "/v1/attribute"), ("DELETE", "/healthz"), ("BREW", "/v1/models")):
        status, headers, body = request(long_server, method, path)
        assert status == 405 and body["error"]["code"] == "method_not_allowed" and "allow" in headers


def test_client_typed_result_retry_and_deadline(model):
    """The retry is driven by events, not by a retry budget racing the long job: the held request's client hangs
    up once the retrying client's first 503 is counted, and the loop frees its slot at the next checkpoint."""
    attributor, short, noise = model
    st = running({"tiny": variant(attributor, batch_size=1, **LONG)}, max_queue=0)  # room for 1 job
    with st as url:
        st.wait_ready()
        client = Client(url, retries=1000, max_retry_wait=0.05)  # retries end when the slot frees, not by count
        answer = client.attribute(short[0], name="own.png")
        assert answer.source == "own.png" and answer.model == "tiny" and answer.results["tiny"].belonging
        assert isinstance(answer.results["tiny"].p_value, float) and answer.results["tiny"].steps > 0
        held = _held_request(url, noise[0])
        wait_until(lambda: metric(url, "genorigin_jobs_in_flight", model="tiny") == 1)
        with pytest.raises(Overloaded):
            Client(url, retries=0).attribute(short[0])
        refused = metric(url, "genorigin_requests_total", outcome="overloaded")
        retrying = _in_thread(client.attribute, short[0], "tiny")
        wait_until(lambda: metric(url, "genorigin_requests_total", outcome="overloaded") > refused)
        assert retrying[0].is_alive()  # refused while the held job ran, and still trying
        held.close()  # the held job is cancelled at the loop's next checkpoint; a retry then gets its slot
        retrying[0].join()
        assert retrying[1]["r"].verdict == "belonging"
        wait_until(lambda: metric(url, "genorigin_jobs_in_flight", model="tiny") == 0)
        with pytest.raises(DeadlineExceeded) as info:
            client.attribute(noise[1], deadline_ms=200)
        assert info.value.status == 504 and info.value.steps > 0
        with pytest.raises(ServiceError) as info:
            client.attribute(b"", model="tiny")
        assert info.value.status == 400 and info.value.code == "unreadable_image"


def _held_request(url: str, body: bytes) -> socket.socket:
    """A request sent on a raw connection that is never read: closing the socket is the client hanging up."""
    u = urllib.parse.urlsplit(url)
    s = socket.create_connection((u.hostname, u.port))
    s.sendall(f"POST /v1/attribute?model=tiny HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
              + body)  # fmt: skip
    return s


def test_bearer_token(model):
    attributor, short, _ = model
    st = running({"tiny": attributor}, Limits(token="s3cret-token-for-tests"))
    with st as url:
        st.wait_ready()
        assert post(url, short[0])[0] == 401
        assert post(url, short[0], headers={"Authorization": "Bearer wrong-token-xxxxxxx"})[0] == 401
        assert request(url, "GET", "/metrics")[0] == 401
        assert request(url, "GET", "/readyz")[0] == 200  # probes stay open
        assert Client(url, token="s3cret-token-for-tests").attribute(short[0]).model == "tiny"


def test_warm_up_counts_its_job_even_when_requests_filled_the_bound(model):
    """Requests can fill a model's bound before its warm-up job is submitted. The warm-up must still hold a
    reservation for its job: its answer gives one back, and a count gone negative would keep a drain waiting
    for its whole timeout."""
    attributor, _, _ = model
    service = Service([ServedModel("tiny", "test:tiny", attributor)], Limits(drain_timeout_s=3600), max_queue=0)
    worker = service.workers["tiny"]
    assert worker.try_reserve(worker.capacity)  # admitted requests hold every place
    service.start()
    try:
        wait_until(service.ready)  # the warm-up job was answered
        worker.release(worker.capacity)  # … and so were the requests
        assert worker.reserved == 0
        service.begin_drain()
        assert service.drained()  # at once, not after drain_timeout_s
    finally:
        service.close()
