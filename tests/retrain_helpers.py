"""Shared by the retraining tests: a project of annotated tasks in the stand-in Label Studio, a test's
own RQ queue dropped afterwards, and a process killed at a chosen moment."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from backend.labelstudio.rle import mask_to_rle
from backend.settings import Settings
from tests.conftest import FAKE_LS_TOKEN, FakeLabelStudio
from tests.paths import DUTS_TR

BRUSH_CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="tag" toName="image"><Label value="Foreground"/></BrushLabels></View>'
)
PROJECT = 7
SIDE = (80, 60)
"""Images are shrunk to this (width, height) so fetching and decoding cost nothing."""


def brush(mask: np.ndarray, result_id: str = "r1") -> dict:
    return {"id": result_id, "from_name": "tag", "to_name": "image", "type": "brushlabels",
            "original_width": mask.shape[1], "original_height": mask.shape[0],
            "value": {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": ["Foreground"]}}


def annotation(annotation_id: int, results: list[dict], updated_at: str = "2026-11-24T10:00:00Z",
               cancelled: bool = False) -> dict:
    return {"id": annotation_id, "result": results, "was_cancelled": cancelled, "updated_at": updated_at,
            "created_at": updated_at}


def add_duts_tasks(ls: FakeLabelStudio, count: int, project: int = PROJECT, start: int = 0) -> list[int]:
    """``count`` DUTS-TR pairs as served images and tasks with one brush annotation each (id = 100 + task id)."""
    ls.label_config = BRUSH_CONFIG
    names = sorted(p.stem for p in (DUTS_TR / "images").iterdir())[start:start + count]
    ids = []
    for name in names:
        image = Image.open(DUTS_TR / "images" / f"{name}.jpg").convert("RGB").resize(SIDE)
        mask = np.asarray(Image.open(DUTS_TR / "masks" / f"{name}.png").convert("L").resize(SIDE))
        buf = io.BytesIO()
        image.save(buf, "PNG")
        ls.images[f"{name}.png"] = buf.getvalue()
        (task_id,) = ls.add_tasks(project, f"/img/{name}.png", 1)
        ls.tasks[task_id]["annotations"] = [annotation(100 + task_id, [brush(mask)])]
        ids.append(task_id)
    return ids


def retrain_env(ls: FakeLabelStudio, checkpoint: Path, model_dir: Path) -> dict[str, str]:
    """The environment of a tiny, fast cycle against ``ls``."""
    return {"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": FAKE_LS_TOKEN, "ISNET_WEIGHTS": str(checkpoint),
            "ISNET_INPUT_SIZE": "64", "ISNET_DEVICE": "cpu", "ISNET_ENGINE": "torch", "ISNET_THREADS": "1",
            "MODEL_DIR": str(model_dir), "ISNET_HOME": str(model_dir.parent / "home"),
            "ISNET_TRAIN_ITERS": "2", "ISNET_TRAIN_GT_ITERS": "2", "ISNET_TRAIN_CROP": "64",
            "ISNET_TRAIN_BATCH": "2", "ISNET_MIN_NEW_LABELS": "3", "ISNET_LS_RETRIES": "2",
            "ISNET_LS_BACKOFF": "0.01", "ISNET_LS_TIMEOUT": "5"}


def settings_for(ls: FakeLabelStudio, checkpoint: Path, model_dir: Path, **overrides: object) -> Settings:
    """Settings from :func:`retrain_env` without touching ``os.environ``."""
    return Settings(home=model_dir.parent / "home", model_dir_env=str(model_dir), weights=str(checkpoint),
                    input_size=64, device="cpu", engine="torch", threads=1, label_studio_url=ls.url,
                    label_studio_api_key=FAKE_LS_TOKEN, train_iters=2, train_gt_iters=2, train_crop=64,
                    train_batch=2, min_new_labels=3, ls_retries=2, ls_backoff=0.01, ls_timeout=5,
                    **overrides)  # type: ignore[arg-type]


def drop_queue(settings: Settings, redis_url: str) -> None:
    """A test's own RQ queue, its jobs and the backend's keys for it, gone from Redis."""
    from redis import Redis
    from rq import Queue

    connection = Redis.from_url(redis_url)
    Queue(settings.queue_name, connection=connection).delete(delete_jobs=True)
    for key in connection.scan_iter(f"isnet:{settings.queue_name}:*"):
        connection.delete(key)


def kill_when(proc: subprocess.Popen, ready: Callable[[], object], timeout: float, what: str) -> object:
    """SIGKILL ``proc`` as soon as ``ready()`` gives something truthy (returned); fails when ``proc``
    ends first or ``timeout`` passes. The process is never left running."""
    try:
        deadline = time.monotonic() + timeout
        while not (value := ready()):
            assert proc.poll() is None, f"the process ended before {what}"
            assert time.monotonic() < deadline, f"the process never reached {what}"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        return value
    finally:
        if proc.poll() is None:
            proc.kill()


def child_process_settings(ls: FakeLabelStudio, checkpoint: Path, model_dir: Path, monkeypatch) -> Settings:
    """Settings for retraining in a child process without Redis: the child reads the environment,
    so it is set to match (and put back by ``monkeypatch``)."""
    settings = settings_for(ls, checkpoint, model_dir)
    for name, value in retrain_env(ls, checkpoint, settings.model_dir).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("REDIS_URL", "")
    return settings
