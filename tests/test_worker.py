"""Where pre-annotation runs: RQ jobs on a real Redis, or the server's own thread without one.

A real Redis (127.0.0.1:6379) and a real stand-in Label Studio; an untrained ISNet at 64x64.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest
from redis import Redis
from rq import Queue, SimpleWorker

from backend.jobs import hooks, local
from backend.jobs.queue import progress, submit
from backend.labelstudio.client import LabelStudioClient
from backend.labelstudio.fetch import ImageFetcher
from backend.model import ISNetModel
from backend.pipeline import Pipelines
from backend.server.app import create_app
from backend.service.inference import DirectInference
from backend.settings import Settings
from tests import labelstudio_server
from tests.conftest import FAKE_LS_TOKEN
from tests.test_preannotate import BRUSH_CONFIG, png

REDIS_URL = "redis://127.0.0.1:6379/0"
PROJECT = 5


def closed_port_url() -> str:
    return f"redis://127.0.0.1:{labelstudio_server.free_port()}/0"


@pytest.fixture(scope="module")
def base_settings(random_checkpoint, tmp_path_factory) -> Settings:
    home = tmp_path_factory.mktemp("home")
    return Settings(home=home, weights=str(random_checkpoint), input_size=64, engine="torch", device="cpu",
                    model_dir_env=str(home / "models"), label_studio_api_key=FAKE_LS_TOKEN, predict_batch=2,
                    preannotate_batch=4, ls_retries=3, ls_backoff=0.01, ls_timeout=5, redis_url="")


@pytest.fixture(scope="module")
def predictor(base_settings) -> DirectInference:
    return DirectInference(base_settings)


@pytest.fixture
def ls(fake_label_studio):
    fake_label_studio.label_config = BRUSH_CONFIG
    fake_label_studio.images["a.png"] = png()
    return fake_label_studio


@pytest.fixture
def settings(base_settings, ls) -> Settings:
    return base_settings.replace(label_studio_url=ls.url)


@pytest.fixture
def local_runner(settings, predictor):
    local.reset()
    auth = LabelStudioClient.from_settings(settings).auth
    yield local.runner(settings, Pipelines(settings, predictor, ImageFetcher(settings, auth)))
    local.reset()


def test_without_redis_the_server_thread_writes_the_predictions(ls, settings, local_runner, predictor):
    ids = ls.add_tasks(PROJECT, "/img/a.png", 6)
    assert len(submit(PROJECT, ids, predictor.model_version, settings)) == 2  # chunks of 4
    assert local_runner.wait_idle(60)
    assert all(len(ls.predictions_of(i)) == 1 for i in ids)
    assert progress(settings) == {"backend": "in-process", "total": 6, "done": 6, "skipped": 0, "failed": 0,
                                  "waiting": 0, "dropped": 0, "chunks_done": 2, "queued_chunks": 0}


def test_predict_overflow_is_routed_to_the_same_jobs(ls, settings, local_runner, predictor):
    ids = ls.add_tasks(PROJECT, "/img/a.png", 2)
    hooks.enqueue_preannotation(f"{PROJECT}.1700000000", ids, predictor.model_version, settings)
    assert local_runner.wait_idle(60)
    assert all(len(ls.predictions_of(i)) == 1 for i in ids)
    assert hooks.recorded()["last_preannotation"]["task_ids"] == tuple(ids)


def test_the_in_process_queue_is_bounded(ls, settings, predictor):
    local.reset()
    runner = local.LocalRunner(settings.replace(local_queue=4, label_studio_url="http://127.0.0.1:9"))
    runner.submit(PROJECT, [[1, 2, 3, 4], [5, 6, 7, 8]], "v")
    assert runner.dropped == 4


@pytest.fixture
def rq_settings(settings):
    s = settings.replace(redis_url=REDIS_URL, queue_name=f"isnet-test-{uuid.uuid4().hex[:8]}")
    yield s
    connection = Redis.from_url(REDIS_URL)
    queue = Queue(s.queue_name, connection=connection)
    queue.delete(delete_jobs=True)
    connection.delete(f"isnet:{s.queue_name}:progress")


def test_with_redis_tasks_become_chunk_jobs_and_a_second_enqueue_adds_none(rq_settings):
    jobs = submit(PROJECT, list(range(1, 11)), "v1", rq_settings)
    assert len(jobs) == 3
    queue = Queue(rq_settings.queue_name, connection=Redis.from_url(REDIS_URL))
    assert sorted(len(queue.fetch_job(j).args[1]) for j in jobs) == [2, 4, 4]
    assert submit(PROJECT, list(range(1, 11)), "v1", rq_settings) == []
    assert progress(rq_settings)["queued_jobs"] == 3 and progress(rq_settings)["total"] == 10


def test_an_rq_job_writes_the_predictions_and_reports_progress_in_its_meta(
        ls, rq_settings, predictor, monkeypatch, random_checkpoint):
    for name, value in {"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": FAKE_LS_TOKEN, "ISNET_INPUT_SIZE": "64",
                        "ISNET_ENGINE": "torch", "ISNET_WEIGHTS": str(random_checkpoint), "ISNET_DEVICE": "cpu",
                        "ISNET_HOME": str(rq_settings.home), "MODEL_DIR": rq_settings.model_dir_env}.items():
        monkeypatch.setenv(name, value)
    ids = ls.add_tasks(PROJECT, "/img/a.png", 5)
    ls.predictions.append({"id": 77, "task": ids[0], "result": [], "model_version": predictor.model_version})
    (first, _second) = submit(PROJECT, ids, predictor.model_version, rq_settings)
    connection = Redis.from_url(REDIS_URL)
    queue = Queue(rq_settings.queue_name, connection=connection)
    SimpleWorker([queue], connection=connection).work(burst=True)
    meta = queue.fetch_job(first).meta
    assert (meta["total"], meta["done"], meta["skipped"], meta["failed"]) == (4, 3, 1, 0)
    assert meta["model_version"] == predictor.model_version
    assert all(len(ls.predictions_of(i)) == 1 for i in ids)
    counts = progress(rq_settings)
    assert (counts["total"], counts["done"], counts["skipped"], counts["queued_jobs"]) == (5, 4, 1, 0)


def test_webhook_answers_503_at_once_when_redis_is_unreachable_and_serving_goes_on(settings):
    down = settings.replace(redis_url=closed_port_url())
    model = ISNetModel(down)
    client = create_app(down, model).test_client()
    try:
        start = time.monotonic()
        response = client.post("/webhook", json={"action": "TASKS_CREATED", "project": {"id": PROJECT},
                                                 "tasks": [{"id": 1}, {"id": 2}]})
        assert time.monotonic() - start < 1.0  # Label Studio gives a webhook 1 s
        assert response.status_code == 503
        assert "queue is unavailable" in response.get_json()["error"]
        assert client.get("/health").status_code == 200
        assert client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": 5}).status_code == 200
        assert "error" in client.get("/metrics.json").get_json()["preannotation"]
    finally:
        model.service.stop()


def test_the_worker_says_clearly_when_redis_is_unreachable():
    env = {**os.environ, "REDIS_URL": closed_port_url(), "ISNET_DEVICE": "cpu"}
    done = subprocess.run([sys.executable, "-m", "worker", "--burst"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    assert "cannot reach Redis" in done.stderr
