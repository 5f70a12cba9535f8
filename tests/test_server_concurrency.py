"""Many annotators at once: concurrent single-task ``/predict`` requests wait their turn instead of
being refused, on a real ``isnet serve`` with few request threads.

An untrained network stands in for ISNet: what is under test is queueing, not masks.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from PIL import Image

CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="tag" toName="image"><Label value="Foreground"/></BrushLabels></View>'
)
REQUESTS = 12
THREADS = 4  # two of them kept for /health and /setup: two /predict slots for twelve requests


@pytest.fixture(scope="module")
def backend(serve_backend, random_checkpoint, image_host, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    return serve_backend({
        "ISNET_WEIGHTS": str(random_checkpoint), "ISNET_ENGINE": "torch", "ISNET_INPUT_SIZE": "320",
        "ISNET_HOME": str(home), "MODEL_DIR": str(home / "models"), "LABEL_STUDIO_URL": image_host.url,
        "LABEL_STUDIO_API_KEY": "", "THREADS": str(THREADS), "ISNET_CACHE_MB": "0",
    })


@pytest.fixture(scope="module")
def answers(backend, image_host) -> list[requests.Response]:
    base = Image.open(image_host.root / "0003.jpeg").convert("RGB")
    urls = []
    for i in range(REQUESTS):
        buf = io.BytesIO()
        base.rotate(i * 11).save(buf, "JPEG", quality=90)
        urls.append(image_host.add(f"concurrent-{i}.jpeg", buf.getvalue()))

    def one(i: int) -> requests.Response:
        body = {"tasks": [{"id": i + 1, "data": {"image": urls[i]}}], "label_config": CONFIG}
        return requests.post(backend.url + "/predict", json=body, timeout=300)

    with ThreadPoolExecutor(REQUESTS) as pool:
        return list(pool.map(one, range(REQUESTS)))


def test_every_concurrent_request_is_answered_rather_than_refused(answers):
    assert [r.status_code for r in answers] == [200] * REQUESTS


def test_every_concurrent_request_gets_its_prediction_not_a_deferral(answers):
    for response in answers:
        (entry,) = response.json()["results"]
        assert "result" in entry, entry  # an entry without "result" is a task handed to the background
