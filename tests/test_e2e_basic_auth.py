"""End to end against a real Label Studio 1.23 with the backend behind basic auth.

The backend runs with ``BASIC_AUTH_USER``/``BASIC_AUTH_PASS`` and is connected as the README says:
"Authentication method: Basic" with that user and password. Label Studio sends them with ``/setup``,
``/predict`` and "Start training", but not with the webhook it creates for the backend; the backend
adds them there itself at ``/setup``. Then "Retrieve predictions", the auto-annotation of an import
(``TASKS_CREATED``), a smart-tool prompt, annotations and "Start training" all work through Label
Studio, while the same routes without the credentials get 401.

The weights are irrelevant (the plumbing is under test): an untrained ISNet at 128, a threshold that
keeps every pixel so that masks are never empty, and a two-step cycle.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from backend.labelstudio.rle import mask_to_rle
from backend.labelstudio.webhooks import basic_auth_header
from tests.paths import DUTS_TR

pytestmark = pytest.mark.slow

CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="tag" toName="image"><Label value="Foreground"/></BrushLabels>'
    '<RectangleLabels name="box" toName="image" smart="true"><Label value="Foreground"/></RectangleLabels></View>'
)
USER, PASSWORD = "label-studio", f"pw-{uuid.uuid4().hex[:12]}"
IMAGES = sorted((DUTS_TR / "images").iterdir())[:6]
DEADLINE_S = 120
CYCLE_TIMEOUT_S = 300


def wait_for(what: str, probe, timeout: float = DEADLINE_S):
    """``probe()``'s first truthy answer, polled until ``timeout``; an AssertionError naming ``what`` after."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r})")


@pytest.fixture(scope="module")
def stack(label_studio, serve_backend, random_checkpoint, tmp_path_factory):
    """The guarded backend connected with basic auth to a project holding six uploaded images."""
    home = tmp_path_factory.mktemp("basic-auth-home")
    backend = serve_backend({
        "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.legacy_token, "REDIS_URL": "",
        "BASIC_AUTH_USER": USER, "BASIC_AUTH_PASS": PASSWORD,
        "ISNET_WEIGHTS": str(random_checkpoint), "ISNET_INPUT_SIZE": "128", "ISNET_ENGINE": "torch",
        "ISNET_DEVICE": "cpu", "ISNET_THRESHOLD": "0.000001", "ISNET_HOME": str(home), "MODEL_DIR": str(home / "m"),
        "ISNET_TRAIN_BUDGET": "0", "ISNET_TRAIN_ITERS": "2", "ISNET_TRAIN_GT_ITERS": "2",
        "ISNET_PROMOTE_RULE": "always", "ISNET_MIN_NEW_LABELS": "1000",  # only "Start training" starts a cycle
    })
    project = label_studio.create_project("e2e basic auth", CONFIG)
    task_ids = label_studio.upload_images(project, IMAGES)  # before the connection: no webhook, no auto-annotation
    ml = label_studio.connect_backend(project, backend.url, auth_method="BASIC_AUTH", basic_auth_user=USER,
                                      basic_auth_pass=PASSWORD, is_interactive=True)
    yield label_studio, backend, project, ml, task_ids
    label_studio.api("DELETE", f"/api/ml/{ml['id']}", expect=(200, 204))


def backend_webhook(label_studio, project: int, backend_url: str) -> dict:
    (hook,) = [h for h in label_studio.api("GET", "/api/webhooks/", params={"project": project})
               if h["url"] == backend_url + "/webhook"]
    return hook


def mended(label_studio, project: int, backend_url: str) -> dict:
    """The backend's webhook once the backend has put its credentials on it."""
    return wait_for("the Authorization header on the backend's webhook",
                    lambda: (h := backend_webhook(label_studio, project, backend_url))["headers"] and h)


def metrics(backend_url: str) -> dict:
    return requests.get(backend_url + "/metrics.json", auth=(USER, PASSWORD), timeout=10).json()


def test_label_studio_connects_with_basic_auth(stack):
    _, _, _, ml, _ = stack
    assert ml["state"] == "CO" and ml["auth_method"] == "BASIC_AUTH"


def test_the_backend_puts_its_credentials_on_the_webhook_label_studio_made_for_it(stack):
    label_studio, backend, project, _, _ = stack
    hook = mended(label_studio, project, backend.url)
    assert hook["headers"] == {"Authorization": basic_auth_header(USER, PASSWORD)}
    assert hook["send_for_all_actions"] and hook["is_active"]


def test_retrieve_predictions_stores_a_prediction_per_task(stack):
    label_studio, _, project, _, task_ids = stack
    label_studio.retrieve_predictions(project)
    stored = wait_for("a prediction for every uploaded task", lambda: set(task_ids) <= {
        p["task"] for p in label_studio.predictions(project)} and label_studio.predictions(project))
    for prediction in stored:
        assert [r["type"] for r in prediction["result"]] == ["brushlabels"]


def test_an_import_is_auto_annotated_through_the_webhook(stack, tmp_path):
    label_studio, backend, project, _, task_ids = stack
    mended(label_studio, project, backend.url)
    image = tmp_path / f"imported-{IMAGES[0].name}"
    image.write_bytes(IMAGES[0].read_bytes())
    (new,) = set(label_studio.upload_images(project, [image])) - set(task_ids)
    (prediction,) = wait_for("the imported task's prediction, written by the backend",
                             lambda: [p for p in label_studio.predictions(project) if p["task"] == new])
    assert [r["type"] for r in prediction["result"]] == ["brushlabels"]
    assert metrics(backend.url)["counters"].get("webhook.TASKS_CREATED", 0) >= 1


def test_a_smart_tool_prompt_is_answered_with_a_brush_region(stack):
    label_studio, _, _, ml, task_ids = stack
    with Image.open(IMAGES[0]) as img:
        width, height = img.size
    box = {"id": "r1", "from_name": "box", "to_name": "image", "type": "rectanglelabels", "original_width": width,
           "original_height": height, "image_rotation": 0,
           "value": {"x": 10, "y": 10, "width": 60, "height": 60, "rotation": 0, "rectanglelabels": ["Foreground"]}}
    answer = label_studio.api("POST", f"/api/ml/{ml['id']}/interactive-annotating",
                              json={"task": task_ids[0], "context": {"result": [box]}})
    assert "errors" not in answer, answer
    (region,) = answer["data"]["result"]
    assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["Foreground"]


def brush(mask_path: Path) -> dict:
    mask = np.asarray(Image.open(mask_path).convert("L")) > 127
    return {"from_name": "tag", "to_name": "image", "type": "brushlabels",
            "original_width": mask.shape[1], "original_height": mask.shape[0], "image_rotation": 0,
            "value": {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": ["Foreground"]}}


def test_annotations_and_start_training_reach_the_backend_and_run_a_cycle(stack):
    label_studio, backend, project, ml, task_ids = stack
    mended(label_studio, project, backend.url)
    for task_id, image in zip(task_ids, IMAGES, strict=True):
        label_studio.annotate(task_id, [brush(DUTS_TR / "masks" / f"{image.stem}.png")])
    label_studio.api("POST", f"/api/ml/{ml['id']}/train")
    report = wait_for("a promoted cycle of the project", lambda: (r := metrics(backend.url)["retraining"] or {})
                      .get("project") == project and r.get("status") not in (None, "running", "skipped") and r,
                      CYCLE_TIMEOUT_S)
    assert report["status"] == "promoted" and report["used"] == len(IMAGES), report
    counters = metrics(backend.url)["counters"]
    assert counters.get("webhook.ANNOTATION_CREATED", 0) == len(IMAGES)
    assert counters.get("webhook.START_TRAINING", 0) >= 1


def test_credentials_in_the_connection_url_work_too(stack, tmp_path):
    # Label Studio 1.23 keeps them in the model's URL (shown in its settings) and sends them with every call,
    # its webhook's included (requests takes them from the URL): the README's second way.
    label_studio, backend, _, _, _ = stack
    project = label_studio.create_project("e2e credentials in the url", CONFIG)
    url = backend.url.replace("http://", f"http://{USER}:{PASSWORD}@")
    ml = label_studio.connect_backend(project, url)
    assert ml["state"] == "CO"
    image = tmp_path / f"url-{IMAGES[1].name}"
    image.write_bytes(IMAGES[1].read_bytes())
    (task,) = label_studio.upload_images(project, [image])
    (prediction,) = wait_for("the imported task's prediction",
                             lambda: [p for p in label_studio.predictions(project) if p["task"] == task])
    assert [r["type"] for r in prediction["result"]] == ["brushlabels"]
    label_studio.api("DELETE", f"/api/ml/{ml['id']}", expect=(200, 204))


@pytest.mark.parametrize(("method", "path"), [("POST", "/setup"), ("POST", "/predict"), ("POST", "/webhook"),
                                              ("GET", "/versions"), ("GET", "/metrics"), ("GET", "/metrics.json")])
def test_the_same_routes_without_credentials_get_401(stack, method, path):
    _, backend, project, _, _ = stack
    body = {"action": "START_TRAINING", "project": {"id": project}, "schema": CONFIG, "tasks": [],
            "label_config": CONFIG}
    assert requests.request(method, backend.url + path, json=body, timeout=10).status_code == 401
    wrong = requests.request(method, backend.url + path, json=body, auth=(USER, "wrong"), timeout=10)
    assert wrong.status_code == 401


def test_health_alone_answers_without_credentials(stack):
    _, backend, _, _, _ = stack
    assert requests.get(backend.url + "/health", timeout=10).status_code == 200
