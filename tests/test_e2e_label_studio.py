"""End to end against a real Label Studio 1.23: a BrushLabels project, the DIS demo images uploaded,
this backend connected, "Retrieve predictions" run twice, the stored predictions read back and
compared with ``isnet predict`` at 1024 thresholded at 0.5. Once with a legacy token and once
with a personal access token (exchanged for short-lived access tokens) as ``LABEL_STUDIO_API_KEY``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from backend.labelstudio.rle import rle_to_mask
from tests import labelstudio_server
from tests.paths import DIS_DEMO_IMAGES

pytestmark = pytest.mark.slow

CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="tag" toName="image"><Label value="Foreground"/></BrushLabels></View>'
)
IMAGES = sorted(DIS_DEMO_IMAGES.glob("*.jpeg"))
WARMUP_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def reference_masks(tmp_path_factory) -> dict[str, np.ndarray]:
    """``isnet predict --size 1024 --engine torch`` for each image, thresholded at 0.5."""
    out = tmp_path_factory.mktemp("isnet-predict")
    subprocess.run([sys.executable, "-m", "backend.cli", "predict", *map(str, IMAGES), "--out", str(out),
                    "--size", "1024", "--engine", "torch"], check=True, capture_output=True)
    return {p.name: np.asarray(Image.open(out / f"{p.stem}.png")) > 127.5 for p in IMAGES}


@dataclass
class Retrieved:
    """What Label Studio stored after one and after two "Retrieve predictions"."""

    kind: str
    backend_state: str
    model_version: str
    tasks: list[dict]
    first: list[dict]
    second: list[dict]
    annotation_webhooks: int

    def image_name(self, task_id: int) -> str:
        """The uploaded file's name: Label Studio stores ``/data/upload/<project>/<8 hex>-<name>``."""
        (task,) = [t for t in self.tasks if t["id"] == task_id]
        return Path(task["data"]["image"]).name.split("-", 1)[1]


def wait_until_warm(backend_url: str) -> None:
    """The backend measures its speed on one image at start; wait so the batch gets the whole budget."""
    deadline = time.monotonic() + WARMUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if requests.get(backend_url + "/metrics.json", timeout=5).json()["inference"]["seconds_per_image"]:
            return
        time.sleep(0.5)
    raise AssertionError(f"{backend_url} did not finish its warm-up in {WARMUP_TIMEOUT_S} s")


@pytest.fixture(scope="module", params=["legacy-token", "personal-access-token"])
def retrieved(request, label_studio, serve_backend, tmp_path_factory) -> Retrieved:
    kind = request.param
    key = label_studio.legacy_token if kind == "legacy-token" else label_studio.create_personal_access_token()
    backend = serve_backend({
        "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": key, "ISNET_INPUT_SIZE": "1024",
        "ISNET_ENGINE": "torch", "ISNET_WEIGHTS": "", "MODEL_DIR": str(tmp_path_factory.mktemp("models")),
        "ISNET_PREDICT_BUDGET": "90",  # a busy CI machine must not push the second image past the budget
    })
    try:
        wait_until_warm(backend.url)
        project = label_studio.create_project(f"e2e {kind}", CONFIG)
        label_studio.upload_images(project, IMAGES)
        ml = label_studio.connect_backend(project, backend.url)
        label_studio.retrieve_predictions(project)
        first = label_studio.predictions(project)
        label_studio.retrieve_predictions(project)
        second = label_studio.predictions(project)
        version = requests.post(backend.url + "/setup", json={"schema": CONFIG}, timeout=5).json()["model_version"]
        label_studio.annotate(first[0]["task"], first[0]["result"])  # the annotator accepts a prediction
        events = requests.get(backend.url + "/metrics.json", timeout=5).json()["counters"]
        return Retrieved(kind, ml["state"], version, label_studio.tasks(project), first, second,
                         events.get("webhook.ANNOTATION_CREATED", 0))
    finally:
        labelstudio_server.stop(backend.process)


def test_label_studio_connects_to_the_backend(retrieved):
    assert retrieved.backend_state == "CO"


def test_retrieve_predictions_stores_one_brush_prediction_per_image(retrieved):
    assert sorted(p["task"] for p in retrieved.first) == sorted(t["id"] for t in retrieved.tasks)
    assert len(retrieved.tasks) == len(IMAGES)
    for prediction in retrieved.first:
        (region,) = prediction["result"]
        assert (region["from_name"], region["to_name"], region["type"]) == ("tag", "image", "brushlabels")
        assert region["value"]["brushlabels"] == ["Foreground"]


def test_predictions_are_at_each_images_full_resolution(retrieved):
    for prediction in retrieved.first:
        (region,) = prediction["result"]
        with Image.open(DIS_DEMO_IMAGES / retrieved.image_name(prediction["task"])) as image:
            assert (region["original_width"], region["original_height"]) == image.size


def test_predicted_masks_match_isnet_predict_with_iou_of_at_least_099(retrieved, reference_masks):
    for prediction in retrieved.first:
        (region,) = prediction["result"]
        mask = rle_to_mask(region["value"]["rle"], region["original_height"], region["original_width"]) > 0
        reference = reference_masks[retrieved.image_name(prediction["task"])]
        iou = np.logical_and(mask, reference).sum() / np.logical_or(mask, reference).sum()
        assert iou >= 0.99, (retrieved.image_name(prediction["task"]), iou)


def test_predictions_are_stored_under_the_version_setup_reports(retrieved):
    assert {p["model_version"] for p in retrieved.first} == {retrieved.model_version}


def test_a_second_retrieve_adds_no_duplicates(retrieved):
    assert sorted(p["id"] for p in retrieved.second) == sorted(p["id"] for p in retrieved.first)


def test_an_annotation_made_in_label_studio_reaches_the_backends_webhook(retrieved):
    assert retrieved.annotation_webhooks == 1
