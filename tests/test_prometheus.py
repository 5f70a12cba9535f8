"""``GET /metrics`` is Prometheus text that ``prometheus_client``'s own parser reads: ``isnet_`` series for
requests, latency, queues and retraining cycles, counted across the gunicorn workers of a host, behind
the same basic auth as every route but ``/health`` (a real ``isnet serve``); with Redis, queue depths
and cycle outcomes come from Redis (real Redis, real RQ callbacks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis
from rq import Callback, Queue, SimpleWorker

from backend.jobs import retrain_outcomes
from backend.model import ISNetModel
from backend.server.app import create_app
from backend.settings import Settings
from tests import labelstudio_server
from tests.conftest import BACKEND_START_TIMEOUT_S, Backend

REDIS_URL = "redis://127.0.0.1:6379/0"
AUTH = ("operator", "s3cret-pass")


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(family, **labels) -> list:
    return [s for s in family.samples if all(s.labels.get(k) == v for k, v in labels.items())]


@pytest.fixture(scope="module")
def backend(random_checkpoint, tmp_path_factory) -> Iterator[Backend]:
    """``isnet serve`` with two workers and basic auth on (waited for with credentials: whether ``/health``
    needs them is the auth module's business)."""
    home = tmp_path_factory.mktemp("home")
    metrics_dir = tmp_path_factory.mktemp("prometheus")
    env = {**os.environ, "ISNET_WEIGHTS": str(random_checkpoint), "ISNET_ENGINE": "torch", "ISNET_INPUT_SIZE": "64",
           "ISNET_HOME": str(home), "MODEL_DIR": str(home / "models"), "LABEL_STUDIO_API_KEY": "",
           "REDIS_URL": "", "WORKERS": "2", "THREADS": "4", "BASIC_AUTH_USER": AUTH[0], "BASIC_AUTH_PASS": AUTH[1],
           "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    port = labelstudio_server.free_port()
    log_path = home / "serve.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "backend.cli", "serve", "--port", str(port)], env=env,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        labelstudio_server.wait_for_http(f"http://{AUTH[0]}:{AUTH[1]}@127.0.0.1:{port}/health", process,
                                         BACKEND_START_TIMEOUT_S, log_path)
        backend = Backend(f"http://127.0.0.1:{port}", process, log_path)
        backend.metrics_dir = metrics_dir
        yield backend
    finally:
        labelstudio_server.stop(process)


def counting_processes(metrics_dir) -> set[str]:
    """The worker pids that wrote a counter file (``counter_<pid>.db``)."""
    return {p.stem.split("_", 1)[1] for p in metrics_dir.glob("counter_*.db")}


def test_metrics_needs_the_same_credentials_as_the_other_routes(backend):
    assert requests.get(backend.url + "/metrics", timeout=10).status_code == 401


def test_the_parser_finds_request_latency_queue_and_cycle_series(backend):
    requests.post(backend.url + "/setup", json={}, auth=AUTH, timeout=10)
    response = requests.get(backend.url + "/metrics", auth=AUTH, timeout=10)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    found = families(response.text)
    assert samples(found["isnet_http_requests"], route="/setup", method="POST", status="200")
    assert samples(found["isnet_http_request_duration_seconds"], route="/setup")
    assert found["isnet_http_request_duration_seconds"].type == "histogram"
    assert found["isnet_inference_seconds"].type == "histogram"  # the warm-up ran through the engine
    assert samples(found["isnet_queue_jobs"], queue="in-process", state="queued")
    cycles = found["isnet_retrain_cycles"]
    assert cycles.type == "counter"
    assert {s.labels["outcome"] for s in cycles.samples} >= {"promoted", "rejected", "failed"}
    model = samples(found["isnet_model_info"])[0].labels
    assert model["engine"] == "torch" and model["engine_reason"] == "ISNET_ENGINE=torch"  # which, and why
    assert [s.labels["engine"] for s in samples(found["isnet_loaded_engine_info"])] == ["torch"]
    assert found["isnet_disk_usage_bytes"].type == "gauge"  # per lineage and kind, once there are versions


def health_answered(backend) -> float:
    found = families(requests.get(backend.url + "/metrics", auth=AUTH, timeout=10).text)
    health = samples(found["isnet_http_requests"], route="/health", status="200")
    return sum(s.value for s in health if s.name.endswith("_total"))


def test_the_request_count_covers_both_workers(backend):
    before = health_answered(backend)  # the start-up's health checks
    made = 0
    deadline = time.monotonic() + 120
    with ThreadPoolExecutor(8) as pool:  # a new connection each: gunicorn hands them to either worker
        while len(counting_processes(backend.metrics_dir)) < 2 and time.monotonic() < deadline:
            statuses = list(pool.map(lambda _: requests.get(backend.url + "/health", auth=AUTH,
                                                            timeout=10).status_code, range(16)))
            assert statuses == [200] * 16
            made += 16
    assert len(counting_processes(backend.metrics_dir)) == 2, "one worker answered every request"
    assert health_answered(backend) - before == made


@pytest.fixture
def rq_settings(random_checkpoint, tmp_path):
    settings = Settings(weights=str(random_checkpoint), input_size=64, engine="torch", device="cpu",
                        home=tmp_path / "home", model_dir_env=str(tmp_path / "models"), redis_url=REDIS_URL,
                        queue_name=f"isnet-test-prom-{uuid.uuid4().hex[:8]}", label_studio_api_key="")
    yield settings
    connection = Redis.from_url(REDIS_URL)
    Queue(settings.queue_name, connection=connection).delete(delete_jobs=True)
    for key in connection.scan_iter(f"isnet:{settings.queue_name}:*"):
        connection.delete(key)


def test_with_redis_cycle_outcomes_and_queue_depth_come_from_redis(rq_settings):
    connection = Redis.from_url(REDIS_URL)
    queue = Queue(rq_settings.queue_name, connection=connection)
    callbacks = {"on_success": Callback(retrain_outcomes.ON_SUCCESS),
                 "on_failure": Callback(retrain_outcomes.ON_FAILURE)}
    # Jobs whose results look like retraining outcomes, run by a real RQ worker that calls the real callbacks.
    queue.enqueue(json.loads, '{"status": "promoted"}', **callbacks)
    queue.enqueue(json.loads, '{"status": "rejected"}', **callbacks)
    queue.enqueue(json.loads, "not json", **callbacks)  # raises: a failed cycle
    SimpleWorker([queue], connection=connection).work(burst=True)
    queue.enqueue(json.loads, "{}")  # one left waiting
    model = ISNetModel(rq_settings)
    try:
        found = families(create_app(rq_settings, model).test_client().get("/metrics").get_data(as_text=True))
    finally:
        model.service.stop()
    cycles = {s.labels["outcome"]: s.value for s in found["isnet_retrain_cycles"].samples}
    assert (cycles["promoted"], cycles["rejected"], cycles["failed"]) == (1, 1, 1)
    assert samples(found["isnet_queue_jobs"], queue=rq_settings.queue_name, state="queued")[0].value == 1
    assert samples(found["isnet_queue_jobs"], queue=rq_settings.queue_name, state="failed")[0].value == 1
    assert found["isnet_queue_up"].samples[0].value == 1
