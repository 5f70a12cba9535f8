"""Bad input against a real ``isnet serve``: each gets a clear error or an empty prediction for its
task, and the server goes on serving (every test ends by predicting a good image)."""

from __future__ import annotations

import contextlib
import io
import time

import pytest
import requests
from PIL import Image

from tests.conftest import serve_directory

CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="tag" toName="image"><Label value="Foreground"/></BrushLabels></View>'
)
MAX_PIXELS = 1_000_000  # bike.jpeg (6 MP) is over it, 0003.jpeg (0.28 MP) is not


@pytest.fixture(scope="module")
def backend(serve_backend, random_checkpoint, image_host, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    return serve_backend({
        "ISNET_WEIGHTS": str(random_checkpoint), "ISNET_ENGINE": "torch",
        "ISNET_INPUT_SIZE": "64", "ISNET_HOME": str(home),
        "MODEL_DIR": str(home / "models"), "LABEL_STUDIO_URL": image_host.url, "LABEL_STUDIO_API_KEY": "",
        "ISNET_MAX_PIXELS": str(MAX_PIXELS), "ISNET_FETCH_TIMEOUT": "10",
    })


def predict(backend, *urls: str, config: str = CONFIG) -> list[dict]:
    tasks = [{"id": i + 1, "data": {"image": u}} for i, u in enumerate(urls)]
    response = requests.post(backend.url + "/predict", json={"tasks": tasks, "label_config": config}, timeout=100)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == len(tasks)
    return results


def still_serving(backend) -> bool:
    """Health answers and a good image still gets its mask."""
    if requests.get(backend.url + "/health", timeout=5).status_code != 200:
        return False
    (entry,) = predict(backend, "/0003.jpeg")
    return entry["result"][0]["original_width"] == 650


def empty_prediction_for(backend, url: str) -> bool:
    """The bad task gets an empty result; the good task beside it still gets its mask."""
    bad, good = predict(backend, url, "/0003.jpeg")
    return bad["result"] == [] and bool(bad["model_version"]) and good["result"][0]["original_height"] == 434


def jpeg_bytes(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 120, 30)).save(buf, "JPEG")
    return buf.getvalue()


def test_a_config_without_brush_labels_is_a_400_naming_what_is_missing(backend):
    config = CONFIG.replace("BrushLabels", "RectangleLabels")
    response = requests.post(backend.url + "/predict", timeout=30, json={
        "tasks": [{"id": 1, "data": {"image": "/0003.jpeg"}}], "label_config": config})
    assert response.status_code == 400
    assert "no <BrushLabels> tag" in response.json()["error"]
    assert still_serving(backend)


def test_a_task_with_no_image_field_gets_an_empty_prediction(backend):
    bad, good = requests.post(backend.url + "/predict", timeout=100, json={
        "tasks": [{"id": 1, "data": {"text": "hello"}}, {"id": 2, "data": {"image": "/0003.jpeg"}}],
        "label_config": CONFIG}).json()["results"]
    assert bad["result"] == [] and good["result"]
    assert still_serving(backend)


def test_an_image_that_is_not_found_gets_an_empty_prediction(backend):
    assert empty_prediction_for(backend, "/no-such-image.jpg")
    assert still_serving(backend)


def test_bytes_that_are_not_an_image_get_an_empty_prediction(backend, image_host):
    assert empty_prediction_for(backend, image_host.add("notes.jpg", b"these are not the pixels you want\n" * 50))
    assert still_serving(backend)


def test_a_truncated_jpeg_gets_an_empty_prediction(backend, image_host):
    data = (image_host.root / "bike.jpeg").read_bytes()
    assert empty_prediction_for(backend, image_host.add("truncated.jpeg", data[: len(data) // 3]))
    assert still_serving(backend)


def test_an_image_over_the_pixel_limit_gets_an_empty_prediction(backend, image_host):
    assert empty_prediction_for(backend, image_host.add("huge.jpeg", jpeg_bytes((1200, 1000))))
    assert still_serving(backend)


def test_the_cloud_metadata_address_is_never_fetched(backend):
    start = time.monotonic()
    assert empty_prediction_for(backend, "http://169.254.169.254/latest/meta-data/iam/security-credentials/")
    assert time.monotonic() - start < 30  # refused, not waited on
    assert still_serving(backend)


def test_loopback_on_another_port_is_not_fetched(backend, image_host):
    with serve_directory(image_host.root) as other:
        assert other.port != image_host.port
        assert requests.get(f"{other.url}/0003.jpeg", timeout=5).status_code == 200  # it would serve it
        assert empty_prediction_for(backend, f"http://127.0.0.1:{other.port}/0003.jpeg")
    assert still_serving(backend)


def test_a_file_url_is_not_read(backend):
    assert empty_prediction_for(backend, "file:///etc/passwd")
    assert still_serving(backend)


def test_malformed_json_is_a_400_naming_the_problem(backend):
    response = requests.post(backend.url + "/predict", data=b'{"tasks": [{"id": 1,', timeout=30,
                             headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]
    assert still_serving(backend)


def test_an_empty_task_list_gets_an_empty_list_of_results(backend):
    response = requests.post(backend.url + "/predict", json={"tasks": [], "label_config": CONFIG}, timeout=30)
    assert response.status_code == 200
    assert response.json() == {"results": []}
    assert still_serving(backend)


def test_every_failure_is_listed_in_metrics_with_its_task(backend):
    with contextlib.suppress(AssertionError):
        predict(backend, "file:///etc/passwd")
    errors = requests.get(backend.url + "/metrics.json", timeout=5).json()["last_errors"]
    assert any("file:///etc/passwd" in e["message"] and e["task_id"] == 1 for e in errors)
