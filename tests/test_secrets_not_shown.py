"""A real ``isnet serve`` whose ``REDIS_URL`` carries a password (and whose Redis is down) never shows
that password, nor its Label Studio token, in a response or a log line; presigned URLs of failed
images reach ``/metrics.json`` without their signature. The worker says where Redis is without the password."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import requests

from tests import labelstudio_server

PASSWORD = "s3cret-pass"
TOKEN = "ls-token-7f3e9a1c5b"
SIGNATURE = "5ec2e7a1b0c9d8f7"
CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="tag" toName="image"><Label value="Foreground"/></BrushLabels></View>'
)


def redis_url_with_password() -> str:
    """A Redis URL with a password, on a port where nothing listens (Redis is down)."""
    return f"redis://:{PASSWORD}@127.0.0.1:{labelstudio_server.free_port()}/0"


@pytest.fixture(scope="module")
def backend(serve_backend, random_checkpoint, image_host, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    return serve_backend({
        "ISNET_WEIGHTS": str(random_checkpoint), "ISNET_ENGINE": "torch", "ISNET_INPUT_SIZE": "64",
        "ISNET_HOME": str(home), "MODEL_DIR": str(home / "models"), "LABEL_STUDIO_URL": image_host.url,
        "LABEL_STUDIO_API_KEY": TOKEN, "REDIS_URL": redis_url_with_password(), "ISNET_REDIS_TIMEOUT": "0.2",
        "LOG_LEVEL": "DEBUG",
    })


def shows_no_secret(text: str) -> bool:
    return PASSWORD not in text and TOKEN not in text and SIGNATURE not in text


def test_the_webhook_503_says_where_redis_is_without_its_password(backend):
    response = requests.post(backend.url + "/webhook", timeout=30, json={
        "action": "TASKS_CREATED", "project": {"id": 3}, "tasks": [{"id": 1}]})
    assert response.status_code == 503
    assert "redis://:***@127.0.0.1:" in response.json()["error"]
    assert shows_no_secret(response.text)


def test_metrics_health_and_setup_show_no_password(backend):
    requests.post(backend.url + "/webhook", json={"action": "START_TRAINING", "project": {"id": 3}}, timeout=30)
    answers = [requests.get(backend.url + route, timeout=30) for route in ("/metrics.json", "/metrics", "/health")]
    answers += [requests.post(backend.url + "/setup", json={"project": 3, "schema": CONFIG}, timeout=30)]
    assert [a.status_code for a in answers] == [200, 200, 200, 200]
    assert "Redis" in answers[0].text  # the metrics do report the unreachable queue...
    assert all(shows_no_secret(a.text) for a in answers)  # ...without its password


def test_a_presigned_image_url_that_failed_reaches_metrics_without_its_signature(backend, image_host):
    url = (f"{image_host.url}/gone.jpg?X-Amz-Credential=AKIAEXAMPLE%2F20260101&X-Amz-Date=20260101T000000Z"
           f"&X-Amz-Signature={SIGNATURE}")
    response = requests.post(backend.url + "/predict", timeout=100, json={
        "tasks": [{"id": 1, "data": {"image": url}}], "label_config": CONFIG})
    assert response.status_code == 200 and response.json()["results"][0]["result"] == []
    errors = requests.get(backend.url + "/metrics.json", timeout=30).json()["last_errors"]
    shown = [e["message"] for e in errors if "gone.jpg" in e["message"]]
    assert shown and "X-Amz-Signature=***" in shown[-1] and "AKIAEXAMPLE" not in shown[-1]
    assert shows_no_secret(str(errors))


def test_no_log_line_of_the_server_holds_a_secret(backend):
    requests.post(backend.url + "/webhook", json={"action": "TASKS_CREATED", "project": {"id": 4},
                                                  "tasks": [{"id": 9}]}, timeout=30)
    deadline = time.monotonic() + 30
    while "/webhook 503" not in backend.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = backend.log()
    assert "/webhook 503" in log  # the lines are there...
    assert shows_no_secret(log)  # ...and hold no secret


def test_the_worker_says_redis_is_unreachable_without_its_password():
    env = {**os.environ, "REDIS_URL": redis_url_with_password(), "ISNET_DEVICE": "cpu", "LOG_LEVEL": "DEBUG"}
    done = subprocess.run([sys.executable, "-m", "worker", "--burst"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1 and "cannot reach Redis at redis://:***@127.0.0.1:" in done.stderr
    assert PASSWORD not in done.stdout + done.stderr
