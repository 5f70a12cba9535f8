"""Retraining jobs: coalesced per project in Redis, run by a real ``python -m worker``, in a child process
without Redis, and refused with a 503 when Redis is down.

Redis at 127.0.0.1:6379 with a unique queue name per test; the stand-in Label Studio serves DUTS-TR
pairs as brush annotations; the cycle is an untrained ISNet at 64x64 for 2 iterations.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
import requests
from redis import Redis
from rq import Queue

from backend.jobs import hooks, retrain_queue
from backend.jobs.retrain_status import latest_report, read_json
from backend.learning.snapshots import project_dir
from tests import labelstudio_server
from tests.retrain_helpers import PROJECT, add_duts_tasks, child_process_settings, drop_queue, retrain_env, settings_for

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def ls(fake_label_studio_export):
    return fake_label_studio_export


@pytest.fixture
def rq_settings(ls, random_checkpoint, tmp_path):
    settings = settings_for(ls, random_checkpoint, tmp_path / "models", redis_url=REDIS_URL,
                            queue_name=f"isnet-test-retrain-{uuid.uuid4().hex[:8]}")
    yield settings
    drop_queue(settings, REDIS_URL)


def test_a_burst_of_annotation_events_queues_one_job_per_project(rq_settings):
    for _ in range(20):
        hooks.enqueue_event("ANNOTATION_CREATED", PROJECT, {}, rq_settings)
    hooks.enqueue_event("ANNOTATION_UPDATED", PROJECT + 1, {}, rq_settings)
    hooks.enqueue_event("START_TRAINING", PROJECT, {}, rq_settings)
    queue = Queue(rq_settings.queue_name, connection=Redis.from_url(REDIS_URL))
    jobs = [queue.fetch_job(j) for j in queue.job_ids]
    assert sorted(job.args for job in jobs) == [(PROJECT,), (PROJECT + 1,)]
    connection = Redis.from_url(REDIS_URL)
    assert connection.get(retrain_queue.force_key(rq_settings.queue_name, PROJECT)) == b"1"  # the explicit ask stays


def test_with_a_retraining_queue_of_its_own_cycles_go_there_and_pre_annotation_stays(rq_settings):
    settings = rq_settings.replace(retrain_queue=rq_settings.queue_name + "-gpu")  # what a GPU worker listens on
    connection = Redis.from_url(REDIS_URL)
    try:
        hooks.enqueue_event("START_TRAINING", PROJECT, {}, settings)

        retraining = Queue(settings.retrain_queue, connection=connection)
        assert [retraining.fetch_job(j).args for j in retraining.job_ids] == [(PROJECT,)]
        assert Queue(settings.queue_name, connection=connection).count == 0
    finally:
        Queue(settings.retrain_queue, connection=connection).delete(delete_jobs=True)


@pytest.mark.slow  # about 22 s on 2 busy cores: a worker process, torch, two tiny training stages
def test_a_queued_cycle_runs_in_a_real_worker_and_reports_its_decision_and_metrics(ls, rq_settings, random_checkpoint):
    add_duts_tasks(ls, 4)
    assert retrain_queue.submit(PROJECT, settings=rq_settings)
    env = {**os.environ, **retrain_env(ls, random_checkpoint, rq_settings.model_dir),
           "REDIS_URL": REDIS_URL, "ISNET_QUEUE": rq_settings.queue_name}
    done = subprocess.run([sys.executable, "-m", "worker", "--burst"], env=env, capture_output=True, text=True,
                          timeout=540)
    assert done.returncode == 0, done.stderr[-3000:]
    report = latest_report(rq_settings)
    assert report is not None, done.stderr[-3000:]
    assert report["status"] in {"promoted", "rejected"} and report["reason"], report
    assert {"mae", "avgfmeasure", "sm"} <= report["metrics"]["challenger"].keys()
    assert report["used"] == 4 and os.path.isfile(report["report_path"])
    state = read_json(project_dir(rq_settings, PROJECT) / "state.json")
    assert len(state["used_keys"]) == 4  # the next event counts new labels against these
    connection = Redis.from_url(REDIS_URL)
    assert connection.get(retrain_queue.pending_key(rq_settings.queue_name, PROJECT)) is None


def test_without_redis_a_cycle_runs_in_a_child_process_and_a_second_request_waits_for_it(
        ls, random_checkpoint, tmp_path, monkeypatch):
    add_duts_tasks(ls, 2)  # below the minimum of 3: each run is a quick, recorded skip
    settings = child_process_settings(ls, random_checkpoint, tmp_path / "models", monkeypatch)
    runner = retrain_queue.LocalRetrainer()
    assert runner.submit(PROJECT, False, settings) == f"local-retrain-{PROJECT}"
    child = runner.running[PROJECT]
    assert child.pid != os.getpid()
    assert runner.submit(PROJECT, False, settings) is None and runner.pending == {PROJECT: False}
    assert runner.submit(PROJECT, False, settings) is None  # still one waiting, not two
    assert runner.wait_idle(120)
    assert ls.requests.count(f"GET /api/projects/{PROJECT}/export") == 2
    assert latest_report(settings)["status"] == "skipped"


def test_start_training_through_the_real_server_answers_503_when_redis_is_down(serve_backend, random_checkpoint,
                                                                               tmp_path):
    closed = f"redis://127.0.0.1:{labelstudio_server.free_port()}/0"
    backend = serve_backend({"REDIS_URL": closed, "ISNET_WEIGHTS": str(random_checkpoint), "ISNET_INPUT_SIZE": "64",
                             "ISNET_ENGINE": "torch", "ISNET_DEVICE": "cpu", "MODEL_DIR": str(tmp_path / "models"),
                             "ISNET_HOME": str(tmp_path / "home")})
    response = requests.post(backend.url + "/webhook", json={"action": "START_TRAINING", "project": {"id": PROJECT}},
                             timeout=10)
    assert response.status_code == 503, response.text
    assert "queue is unavailable" in response.json()["error"]
    assert requests.get(backend.url + "/health", timeout=5).status_code == 200
