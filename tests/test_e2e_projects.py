"""End to end against a real Label Studio 1.23: two projects on one backend each get a model lineage
of their own. Training project P changes P's model version, in Label Studio and in its masks, and
leaves project Q's version and Q's masks byte for byte as they were; rolling P back changes P only.

The weights are irrelevant to what is checked (which lineage serves which project), so the network
is an untrained ISNet at 128 and the cycle takes two steps; the real learning runs are in ``bench/``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import requests

from tests.paths import DUTS_TR
from tests.test_e2e_retraining import CONFIG, brush

pytestmark = pytest.mark.slow

ANNOTATED = 6
CYCLE_TIMEOUT_S = 300


def ml_version(label_studio, ml_id: int) -> str:
    """The model version Label Studio holds for a connection (reading it makes Label Studio ask ``/setup``)."""
    return label_studio.api("GET", f"/api/ml/{ml_id}")["model_version"]


def rle_by_task(label_studio, project: int) -> dict[int, list[int]]:
    return {p["task"]: p["result"][0]["value"]["rle"] for p in label_studio.predictions(project) if p["result"]}


def test_training_one_project_leaves_the_other_projects_model_and_masks_unchanged(
        label_studio, serve_backend, random_checkpoint, tmp_path):
    env = {
        "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.legacy_token, "REDIS_URL": "",
        "ISNET_WEIGHTS": str(random_checkpoint), "ISNET_INPUT_SIZE": "128", "ISNET_ENGINE": "torch",
        "ISNET_HOME": str(tmp_path / "home"), "MODEL_DIR": str(tmp_path / "models"),
        "ISNET_TRAIN_BUDGET": "0", "ISNET_TRAIN_ITERS": "2", "ISNET_TRAIN_GT_ITERS": "2",
        "ISNET_PROMOTE_RULE": "always", "ISNET_MIN_NEW_LABELS": "1000",  # only "Start training" starts a cycle
        "ISNET_TRAIN_ANCHORS": "none", "ISNET_CACHE_MB": "0",  # Q's masks are computed again, not read from a cache
    }
    backend = serve_backend(env)
    images = sorted((DUTS_TR / "images").iterdir())[:ANNOTATED]
    p = label_studio.create_project("project P", CONFIG)
    q = label_studio.create_project("project Q", CONFIG)
    p_tasks = label_studio.upload_images(p, images)
    label_studio.upload_images(q, images[:2])
    ml_p = label_studio.connect_backend(p, backend.url)["id"]
    ml_q = label_studio.connect_backend(q, backend.url)["id"]
    label_studio.retrieve_predictions(q)
    q_masks = rle_by_task(label_studio, q)
    pretrained = ml_version(label_studio, ml_q)
    assert len(q_masks) == 2 and ml_version(label_studio, ml_p) == pretrained

    for task_id, image in zip(p_tasks, images, strict=True):
        label_studio.annotate(task_id, [brush(DUTS_TR / "masks" / f"{image.stem}.png")])
    label_studio.api("POST", f"/api/ml/{ml_p}/train")
    deadline = time.monotonic() + CYCLE_TIMEOUT_S
    report: dict = {}
    while time.monotonic() < deadline:
        report = requests.get(backend.url + "/metrics.json", timeout=5).json()["retraining"] or {}
        if report.get("forced") and report.get("status") not in (None, "running"):  # "Start training"'s cycle
            break
        time.sleep(1)
    assert report.get("status") == "promoted" and report["lineage"] == f"p{p}", report

    trained = ml_version(label_studio, ml_p)
    assert trained == report["version"] and trained.startswith(f"isnet-p{p}-ft-")
    assert ml_version(label_studio, ml_q) == pretrained
    for prediction in label_studio.predictions(q):  # Q predicted again: the same version, the same bytes
        label_studio.api("DELETE", f"/api/predictions/{prediction['id']}/", expect=(200, 204))
    label_studio.retrieve_predictions(q)
    assert rle_by_task(label_studio, q) == q_masks
    assert {pr["model_version"] for pr in label_studio.predictions(q)} == {pretrained}
    assert label_studio.api("GET", f"/api/ml/{ml_q}/versions")["versions"][0] == trained  # the list names them all

    rollback = subprocess.run([sys.executable, "-m", "backend.cli", "model", "rollback", "--project", str(p)],
                              env={**os.environ, **env}, capture_output=True, text=True, timeout=120, check=False)
    assert rollback.returncode == 0, rollback.stderr
    assert ml_version(label_studio, ml_p) == pretrained and ml_version(label_studio, ml_q) == pretrained
