"""End to end against a real Label Studio 1.23: no duplicate predictions while background pre-annotation runs.

30 tasks at 1024 and a ``/predict`` budget of a few images, so the first "Retrieve predictions"
answers some tasks and hands the rest to background pre-annotation. A second "Retrieve
predictions" right after sends the handed-over tasks again, while the background writes them;
a third comes once the background is done. Every task must end with exactly one prediction, of
the version ``/setup`` reports. Once in process (no Redis) and once with Redis and a real
``python -m worker``.

The budget is a number of images at the engine's measured speed, so the same share of the tasks
is handed over on a fast machine and on a slow one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from redis import Redis
from rq import Queue

from backend.settings import Settings
from tests import labelstudio_server
from tests.paths import DUTS_TE
from tests.test_e2e_label_studio import wait_until_warm
from tests.test_e2e_preannotate import Worker

pytestmark = pytest.mark.slow

CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="tag" toName="image"><Label value="Foreground"/></BrushLabels></View>'
)
REDIS_URL = "redis://127.0.0.1:6379/0"
TASKS = 30
SIZE = 1024
ENGINE = "onnx-fp32"
BUDGET_IMAGES = 10
"""``ISNET_PREDICT_BUDGET`` in images at the measured speed: about a third of the tasks fit."""
POLL_S = 0.5


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A fresh MODEL_DIR, given the default one's built fp32 engines (hard links) so none is exported again."""
    fresh = tmp_path_factory.mktemp("models")
    default = Settings().model_dir / "versions"
    for engine in default.glob("*/engines/fp32-*"):
        target = fresh / "versions" / engine.relative_to(default)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(engine, target)
        except OSError:  # another file system
            shutil.copy2(engine, target)
    return fresh


@pytest.fixture(scope="module")
def seconds_per_image(model_dir) -> float:
    """The engine's speed at 1024 on this machine (it builds the engine first if none was there)."""
    from backend.service.inference import VersionWatcher, load_segmenter

    settings = Settings(model_dir_env=str(model_dir), engine=ENGINE, input_size=SIZE, device="cpu", weights="")
    segmenter = load_segmenter(settings, VersionWatcher(settings).current())
    image = np.random.default_rng(0).integers(0, 255, (300, 400, 3), np.uint8)
    segmenter.predict([image])  # the first run pays for allocations
    start = time.monotonic()
    segmenter.predict([image])
    return time.monotonic() - start


@pytest.fixture(scope="module")
def images() -> list[Path]:
    found = sorted((DUTS_TE / "images").glob("*.jpg"))[:TASKS]
    if len(found) < TASKS:
        pytest.skip(f"{DUTS_TE} holds fewer than {TASKS} images")
    return found


@pytest.fixture(scope="module")
def env(label_studio, model_dir, seconds_per_image, tmp_path_factory) -> dict[str, str]:
    budget = min(60.0, max(3.0, BUDGET_IMAGES * seconds_per_image))
    return {
        "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.legacy_token,
        "ISNET_INPUT_SIZE": str(SIZE), "ISNET_ENGINE": ENGINE, "ISNET_WEIGHTS": "", "ISNET_DEVICE": "cpu",
        "MODEL_DIR": str(model_dir), "ISNET_CALIB_SAMPLE": "0", "ISNET_PREDICT_BUDGET": f"{budget:.1f}",
        "ISNET_LS_BACKOFF": "1", "REDIS_URL": "",
    }


@contextlib.contextmanager
def redis_queue(env: dict[str, str], tmp_path: Path) -> Iterator[dict[str, str]]:
    """A queue of this test's own and one ``python -m worker`` on it; its keys are deleted afterwards."""
    queue = f"isnet-e2e-dup-{uuid.uuid4().hex[:8]}"
    env = {**env, "REDIS_URL": REDIS_URL, "ISNET_QUEUE": queue}
    worker = Worker(env, tmp_path / "worker.log")
    try:
        yield env
    finally:
        worker.stop()
        connection = Redis.from_url(REDIS_URL)
        Queue(queue, connection=connection).delete(delete_jobs=True)
        for key in connection.scan_iter(f"isnet:{queue}:*"):
            connection.delete(key)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(POLL_S)


def background_idle(backend_url: str) -> bool:
    """No pre-annotation waiting or running, in the server's thread or in RQ."""
    state: dict[str, Any] = requests.get(backend_url + "/metrics.json", timeout=5).json()["preannotation"]
    if state["backend"] == "rq":
        return "error" not in state and state["queued_jobs"] == 0 and state["started_jobs"] == 0
    return state.get("waiting", 0) == 0


def predictions_per_task(label_studio, project: int) -> Counter:
    return Counter(p["task"] for p in label_studio.predictions(project))


@pytest.mark.parametrize("mode", ["in-process", "redis"])
def test_retrieving_twice_while_the_background_writes_and_once_after_leaves_one_prediction_per_task(
        mode, env, images, seconds_per_image, label_studio, serve_backend, tmp_path):
    with contextlib.ExitStack() as stack:
        full_env = stack.enter_context(redis_queue(env, tmp_path)) if mode == "redis" else env
        backend = serve_backend(full_env)
        stack.callback(labelstudio_server.stop, backend.process)
        wait_until_warm(backend.url)
        project = label_studio.create_project(f"no duplicates, {mode}", CONFIG)
        task_ids = label_studio.upload_images(project, images)  # before connecting: no TASKS_CREATED webhook
        assert len(task_ids) == TASKS
        label_studio.connect_backend(project, backend.url)
        version = requests.post(backend.url + "/setup", json={"schema": CONFIG}, timeout=5).json()["model_version"]

        label_studio.retrieve_predictions(project)
        handed = requests.get(backend.url + "/metrics.json", timeout=5).json()["handed_over"]["preannotation_tasks"]
        assert handed > 0, f"a budget of {env['ISNET_PREDICT_BUDGET']} s must hand some tasks over"
        label_studio.retrieve_predictions(project)
        wait_for(lambda: set(predictions_per_task(label_studio, project)) >= set(task_ids)
                 and background_idle(backend.url), 3 * TASKS * seconds_per_image + 120, "every task predicted")
        label_studio.retrieve_predictions(project)
        wait_for(lambda: background_idle(backend.url), 60, "the background idle after the third retrieve")

        predictions = label_studio.predictions(project)
        per_task = Counter(p["task"] for p in predictions)
        assert {t: per_task[t] for t in task_ids} == dict.fromkeys(task_ids, 1), \
            f"duplicates: {sorted(t for t in task_ids if per_task[t] > 1)}"
        assert {p["model_version"] for p in predictions} == {version}
