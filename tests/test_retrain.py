"""Retraining from Label Studio: export, snapshot, skipping bad tasks, the new-label minimum.

A real HTTP server stands in for Label Studio (``fake_label_studio_export``); the tasks' brush
annotations are RLE-encoded DUTS-TR masks. These tests stop before training (the minimum is not
met, or only the snapshot is taken); a real cycle runs in tests/test_retrain_queue.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from backend.jobs.retrain_status import latest_report
from backend.labelstudio.client import LabelStudioClient
from backend.labelstudio.config import parse_label_config
from backend.labelstudio.fetch import ImageFetcher
from backend.labelstudio.results import annotation_mask
from backend.learning.snapshots import project_dir
from backend.pipeline import TaskImages
from tests.retrain_helpers import BRUSH_CONFIG, PROJECT, add_duts_tasks, annotation, brush, settings_for
from worker.export import export_tasks, write_snapshot
from worker.retrain import retrain_project


@pytest.fixture
def ls(fake_label_studio_export):
    return fake_label_studio_export


@pytest.fixture
def settings(ls, random_checkpoint, tmp_path):
    return settings_for(ls, random_checkpoint, tmp_path / "models")


def snapshot(ls, settings, tmp_path):
    client = LabelStudioClient.from_settings(settings)
    tasks = export_tasks(client, PROJECT)
    images = TaskImages(settings, ImageFetcher(settings, client.auth))
    return write_snapshot(tasks, parse_label_config(BRUSH_CONFIG), images, tmp_path / "snap", PROJECT)


def test_the_export_becomes_a_snapshot_of_pairs_and_a_manifest_naming_tasks_and_annotations(ls, settings, tmp_path):
    ids = add_duts_tasks(ls, 3)
    ls.add_tasks(PROJECT, "/img/unlabelled.png", 1)  # no annotation: not exported, not used
    snap = snapshot(ls, settings, tmp_path)

    names = sorted(p.name for p in snap.images.iterdir())
    assert names == sorted(p.name for p in snap.masks.iterdir()) == [f"task-{i}.png" for i in ids]
    mask = np.asarray(Image.open(snap.masks / f"task-{ids[0]}.png"))
    assert mask.shape == (60, 80) and set(np.unique(mask)) <= {0, 255} and mask.any()
    manifest = json.loads((snap.directory / "manifest.json").read_text())
    assert [(it["task_id"], it["annotation_id"]) for it in manifest["items"]] == [(i, 100 + i) for i in ids]
    assert all(it["updated_at"] for it in manifest["items"]) and manifest["skipped"] == []
    assert not any(r.startswith("GET /api/tasks/") and r != "GET /api/tasks/" for r in ls.requests)


def test_an_undecodable_annotation_and_an_unfetchable_image_are_skipped_and_listed(ls, settings, tmp_path):
    good, broken, missing = add_duts_tasks(ls, 3)
    ls.tasks[broken]["annotations"][0]["result"][0]["value"]["rle"] = [1, 2, 3]
    ls.tasks[missing]["data"]["image"] = "/img/gone.png"
    snap = snapshot(ls, settings, tmp_path)

    assert [lb.task_id for lb in snap.used] == [good]
    skipped = {s["task"]: s["reason"] for s in snap.skipped}
    assert skipped.keys() == {broken, missing}
    assert skipped[broken].startswith("annotation:") and skipped[missing].startswith("image:")
    manifest = json.loads((snap.directory / "manifest.json").read_text())
    assert {s["task"] for s in manifest["skipped"]} == {broken, missing}


def test_the_latest_non_cancelled_annotation_is_used_and_its_brush_regions_are_or_ed():
    target = parse_label_config(BRUSH_CONFIG)
    left, right = np.zeros((4, 6), np.uint8), np.zeros((4, 6), np.uint8)
    left[:, :2], right[:, 4:] = 255, 255
    from worker.export import latest_annotation

    task = {"id": 1, "annotations": [annotation(1, [brush(left)], "2026-01-01T00:00:00Z"),
                                     annotation(2, [brush(left), brush(right, "r2")], "2026-01-02T00:00:00Z"),
                                     annotation(3, [brush(right)], "2026-01-03T00:00:00Z", cancelled=True)]}
    chosen = latest_annotation(task, target)
    assert chosen is not None and chosen["id"] == 2
    assert (annotation_mask(chosen, target.from_name) == (left | right)).all()


def test_a_cycle_is_skipped_below_the_minimum_of_new_labels_and_the_skip_is_reported(ls, settings):
    add_duts_tasks(ls, 2)  # ISNET_MIN_NEW_LABELS is 3 here
    outcome = retrain_project(PROJECT, settings=settings)
    assert outcome["status"] == "skipped" and (outcome["new_labels"], outcome["needed"]) == (2, 3)
    assert "2 new label(s)" in outcome["reason"]
    assert [p.name for p in project_dir(settings, PROJECT).iterdir()] == ["state.json"]  # no snapshot taken
    assert latest_report(settings)["status"] == "skipped"


def test_metrics_shows_the_latest_retraining_outcome(ls, settings):
    from backend.model import ISNetModel
    from backend.server.app import create_app

    add_duts_tasks(ls, 1)
    retrain_project(PROJECT, settings=settings)
    model = ISNetModel(settings)
    try:
        shown = create_app(settings, model).test_client().get("/metrics.json").get_json()["retraining"]
    finally:
        model.service.stop()
    assert shown["project"] == PROJECT and shown["status"] == "skipped" and shown["labels"] == 1


def test_each_cycle_starts_from_the_champion_and_trains_on_every_label_so_far(ls, tiny_settings, tmp_path):
    import torch

    from backend.isnet.training.tiny import TINY

    settings = settings_for(ls, tiny_settings.weights, tmp_path / "models", promote_rule="always")
    old = add_duts_tasks(ls, 4)
    first = retrain_project(PROJECT, force=True, settings=settings, networks=TINY)
    assert first["status"] == "promoted", first
    new = add_duts_tasks(ls, 3, start=4)
    second = retrain_project(PROJECT, settings=settings, networks=TINY)  # 3 new labels: the minimum

    assert second["status"] == "promoted" and second["champion"] == first["version"]
    assert second["used"] == 7 and second["trained_on"] + second["held_out"] == 7
    manifest = json.loads((project_dir(settings, PROJECT).joinpath(second["dataset"]) / "manifest.json").read_text())
    assert sorted(it["task_id"] for it in manifest["items"]) == sorted(old + new)  # the old labels are still in
    checkpoint = torch.load(tmp_path / "models" / "versions" / second["version"] / "checkpoint.pth", weights_only=True)
    assert checkpoint["meta"]["parent"] == first["version"]
    shown = latest_report(settings)
    assert shown["version"] == second["version"] and shown["cycle"]["status"] == "done"
    assert shown["decision"]["evidence"]["n"] == second["held_out"]
