"""Fault test against a real Label Studio 1.23: a prediction stored but answered too late is written once.

A delaying proxy (:mod:`tests.delaying_proxy`) stands between a pre-annotation job and Label
Studio. It forwards the job's first ``POST /api/predictions/``, lets Label Studio store it, and
holds the answer until the client has given up (``ISNET_LS_TIMEOUT`` = 2 s). The job must then
find the stored prediction instead of writing it a second time. The job runs in this process
with settings read from the environment, as a worker reads them; an untrained ISNet at 64x64
predicts (the plumbing is under test, not the masks).
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from backend.jobs.preannotate import preannotate_tasks
from backend.labelstudio.client import LabelStudioClient
from backend.labelstudio.fetch import ImageFetcher
from backend.pipeline import TaskPipeline
from backend.service.inference import DirectInference
from backend.settings import Settings, load
from tests.delaying_proxy import DelayingProxy, first
from tests.paths import DIS_DEMO_IMAGES

pytestmark = pytest.mark.slow

CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="tag" toName="image"><Label value="Foreground"/></BrushLabels></View>'
)
TIMEOUT_S = 2
DEADLINE_S = 30


def wait_until(condition: Callable[[], bool], timeout: float = DEADLINE_S) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` passes; its last value."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


@pytest.fixture
def proxy(label_studio) -> Iterator[DelayingProxy]:
    """Holds back the answer to the first prediction written through it."""
    proxy = DelayingProxy(int(label_studio.url.rsplit(":", 1)[1]), first("POST", "/api/predictions/"))
    yield proxy
    proxy.close()


@pytest.fixture
def settings(proxy, label_studio, random_checkpoint, tmp_path, monkeypatch) -> Settings:
    """A worker's settings, from its environment: Label Studio behind the proxy, a 2 s client timeout."""
    env = {
        "LABEL_STUDIO_URL": proxy.url, "LABEL_STUDIO_API_KEY": label_studio.legacy_token,
        "ISNET_LS_TIMEOUT": str(TIMEOUT_S), "ISNET_LS_RETRIES": "4", "ISNET_LS_BACKOFF": "1",
        "ISNET_INPUT_SIZE": "64", "ISNET_ENGINE": "torch", "ISNET_WEIGHTS": str(random_checkpoint),
        "ISNET_DEVICE": "cpu", "ISNET_HOME": str(tmp_path / "home"), "MODEL_DIR": str(tmp_path / "models"),
        "REDIS_URL": "",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load()


def images(tmp_path: Path, count: int) -> list[Path]:
    """Copies of one demo image under new names: Label Studio keeps each upload as a new task."""
    out = []
    for n in range(count):
        path = tmp_path / f"{n}-{uuid.uuid4().hex[:6]}-0003.jpeg"
        shutil.copy(DIS_DEMO_IMAGES / "0003.jpeg", path)
        out.append(path)
    return out


def test_a_prediction_stored_but_answered_after_the_client_timeout_is_not_written_twice(
        label_studio, proxy, settings, tmp_path, caplog):
    project = label_studio.create_project("safe writes", CONFIG)
    task_ids = label_studio.upload_images(project, images(tmp_path, 2))
    client = LabelStudioClient.from_settings(settings)
    with caplog.at_level(logging.WARNING, logger="backend.labelstudio.client"):
        outcome = preannotate_tasks(project, task_ids, client=client,
                                    pipeline=TaskPipeline(settings, DirectInference(settings),
                                                          ImageFetcher(settings, client.auth)),
                                    settings=settings)

    (held,) = proxy.held
    assert wait_until(lambda: held.client_gone_at is not None), "the client must give up on the held answer"
    assert (outcome.done, outcome.failed) == (len(task_ids), 0), outcome.errors
    per_task = Counter(p["task"] for p in label_studio.predictions(project))
    assert per_task == dict.fromkeys(task_ids, 1)
    assert proxy.requests.count("POST /api/predictions/") == len(task_ids), "the held write was sent once"
    assert "ReadTimeout" in caplog.text and "stored after all; not written again" in caplog.text
