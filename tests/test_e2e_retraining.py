"""End to end against a real Label Studio 1.23: brush annotations made in Label Studio, then
"Start training" (``POST /api/ml/{id}/train``, which sends ``START_TRAINING`` to the webhook), give a
retraining cycle on the annotations as Label Studio exports them, a promoted version in the project's
own lineage, and that version reported by ``/setup`` for the project and listed in Label Studio's
model versions.

The cycle takes two steps (the real learning runs are in ``bench/`` and README.md), but on the
real weights at the serving default (1024, ``ISNET_ENGINE=auto``): the promoted version's engines
are built and measured in its cycle, on its held-out images, so it is served as int8 from its
first request where int8 is within budget and faster (a CPU with VNNI or AMX).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import requests
from PIL import Image

from backend.labelstudio.rle import mask_to_rle
from tests.paths import DUTS_TR
from tests.test_auto_int8 import has_fast_int8

pytestmark = pytest.mark.slow

CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="tag" toName="image"><Label value="Foreground"/></BrushLabels></View>'
)
ANNOTATED = 6
CYCLE_TIMEOUT_S = 300


def brush(mask_path) -> dict:
    mask = np.asarray(Image.open(mask_path).convert("L")) > 127
    return {"from_name": "tag", "to_name": "image", "type": "brushlabels",
            "original_width": mask.shape[1], "original_height": mask.shape[0], "image_rotation": 0,
            "value": {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": ["Foreground"]}}


def setup_version(url: str, project: int | None = None) -> str:
    body = {"schema": CONFIG, **({"project": f"{project}.1700000000"} if project is not None else {})}
    return requests.post(url + "/setup", json=body, timeout=5).json()["model_version"]


def test_annotations_then_start_training_give_a_new_version_that_setup_reports(
        label_studio, serve_backend, tmp_path):
    backend = serve_backend({  # the real weights from the shared cache, every serving setting its default
        "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.legacy_token, "REDIS_URL": "",
        "MODEL_DIR": str(tmp_path / "models"), "ISNET_CALIB_DIR": "",
        "ISNET_TRAIN_BUDGET": "0", "ISNET_TRAIN_ITERS": "2", "ISNET_TRAIN_GT_ITERS": "2",
        "ISNET_PROMOTE_RULE": "always", "ISNET_MIN_NEW_LABELS": "1000",  # only "Start training" starts it
    })
    project = label_studio.create_project("retraining", CONFIG)
    images = sorted((DUTS_TR / "images").iterdir())[:ANNOTATED]
    task_ids = label_studio.upload_images(project, images)
    ml = label_studio.connect_backend(project, backend.url)
    pretrained = setup_version(backend.url, project)
    for task_id, image in zip(task_ids, images, strict=True):
        label_studio.annotate(task_id, [brush(DUTS_TR / "masks" / f"{image.stem}.png")])

    label_studio.api("POST", f"/api/ml/{ml['id']}/train")

    deadline = time.monotonic() + CYCLE_TIMEOUT_S
    while time.monotonic() < deadline:  # the version switches just before the outcome is recorded
        version = setup_version(backend.url, project)
        report = requests.get(backend.url + "/metrics.json", timeout=5).json()["retraining"] or {}
        if version != pretrained and report.get("status") not in (None, "running"):
            break
        time.sleep(1)
    assert version != pretrained, f"no new version within {CYCLE_TIMEOUT_S} s; last report: {report}"
    assert report["status"] == "promoted" and report["version"] == version, report
    assert report["project"] == project and report["used"] == ANNOTATED  # every annotation, as exported
    assert report["trained_on"] + report["held_out"] == ANNOTATED and report["steps"] == 2, report
    assert version.startswith(f"isnet-p{project}-ft-") and report["lineage"] == f"p{project}"
    assert setup_version(backend.url) == pretrained  # the base, and so every other project, is unchanged
    assert label_studio.api("GET", f"/api/ml/{ml['id']}/versions")["versions"][0] == version

    engines = report["engines"]  # built and measured in the cycle, on its held-out images
    assert engines["measured"]["onnx-int8"]["dataset"] == f"held-out:{version}", engines
    first = requests.post(backend.url + "/predict", timeout=300, json={
        "tasks": [{"id": task_ids[0], "data": label_studio.api("GET", f"/api/tasks/{task_ids[0]}")["data"]}],
        "project": f"{project}.1700000000", "label_config": CONFIG})
    assert first.status_code == 200 and first.json()["results"][0]["model_version"] == version, first.text
    served = requests.get(backend.url + "/metrics.json", timeout=5).json()["inference"]["engines"]
    assert served[version] == engines["auto"], (served, engines)  # loaded once, with the engine its cycle chose
    if has_fast_int8():
        assert engines["auto"] == "onnx-int8", engines
