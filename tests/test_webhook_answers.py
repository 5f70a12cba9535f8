"""``/webhook`` answers what really happened to an event: "queued" only when a job will run for it,
else "skipped" with the reason (and a log line).

Without Redis and without ``LABEL_STUDIO_API_KEY`` the in-process worker cannot export annotations
or write predictions, so nothing is started. With a real Redis (127.0.0.1:6379, a unique queue per
test) the jobs are queued, and a repeated event says it joined the job already waiting.
"""

from __future__ import annotations

import logging
import uuid

import pytest
from redis import Redis
from rq import Queue

from backend.jobs import hooks, local, retrain_queue
from backend.model import ISNetModel
from backend.server.app import create_app
from backend.settings import Settings

REDIS_URL = "redis://127.0.0.1:6379/0"
PROJECT = 7
ACTIONS = ["ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "START_TRAINING",
           "TASKS_CREATED"]


@pytest.fixture(scope="module")
def settings(random_checkpoint, tmp_path_factory) -> Settings:
    home = tmp_path_factory.mktemp("home")
    return Settings(home=home, weights=str(random_checkpoint), input_size=64, engine="torch", device="cpu",
                    label_studio_api_key="", redis_url="", model_dir_env=str(home / "models"))


@pytest.fixture(scope="module")
def client(settings):
    model = ISNetModel(settings)
    model.setup()
    yield create_app(settings, model).test_client()
    model.service.stop()


@pytest.fixture
def rq_settings(settings):
    rq = settings.replace(redis_url=REDIS_URL, label_studio_api_key="a-key",
                             queue_name=f"isnet-test-webhook-{uuid.uuid4().hex[:8]}")
    yield rq
    connection = Redis.from_url(REDIS_URL)
    Queue(rq.queue_name, connection=connection).delete(delete_jobs=True)
    for key in connection.scan_iter(f"isnet:{rq.queue_name}:*"):
        connection.delete(key)


def event(action: str, project: int | None = PROJECT, task_ids: tuple[int, ...] = (1, 2, 3)) -> dict:
    return {"action": action, "project": {"id": project} if project is not None else None,
            "tasks": [{"id": i} for i in task_ids]}


@pytest.mark.parametrize("action", ACTIONS)
def test_without_an_api_key_the_in_process_worker_skips_the_event_and_says_why(client, action, caplog):
    with caplog.at_level(logging.WARNING, logger="backend.jobs.hooks"):
        response = client.post("/webhook", json=event(action))
    assert response.status_code == 200
    body = response.get_json()
    assert (body["status"], body["action"]) == ("skipped", action)
    assert body["reason"].startswith("no LABEL_STUDIO_API_KEY")
    assert f"{action} event of project {PROJECT} skipped: no LABEL_STUDIO_API_KEY" in caplog.text
    assert hooks.recorded()["last_event"]["status"] == "skipped"
    assert not retrain_queue.local_runner().running  # no cycle was started that could only fail


def test_an_event_without_a_project_is_skipped(client):
    body = client.post("/webhook", json=event("START_TRAINING", project=None)).get_json()
    assert body == {"status": "skipped", "action": "START_TRAINING", "reason": "the event names no project id"}


def test_with_redis_the_jobs_are_queued_and_a_repeat_joins_the_waiting_one(rq_settings):
    first = hooks.enqueue_event("TASKS_CREATED", PROJECT, event("TASKS_CREATED"), rq_settings)
    again = hooks.enqueue_event("TASKS_CREATED", PROJECT, event("TASKS_CREATED"), rq_settings)
    assert first.answer("TASKS_CREATED") == {"status": "queued", "action": "TASKS_CREATED"}
    assert (again.status, again.reason) == ("queued", "already queued")
    cycle = hooks.enqueue_event("ANNOTATION_CREATED", PROJECT, {}, rq_settings)
    joined = hooks.enqueue_event("START_TRAINING", PROJECT, {}, rq_settings)
    assert (cycle.status, cycle.reason) == ("queued", "")
    assert joined == hooks.Handover("queued", f"joins the retraining cycle of project {PROJECT} already waiting")
    assert Queue(rq_settings.queue_name, connection=Redis.from_url(REDIS_URL)).count == 2


def test_the_bulk_annotations_created_asks_for_a_retraining_cycle_like_annotation_created(rq_settings):
    # Label Studio's payload for "Create annotations from predictions": lists under the singular keys
    bulk = {"action": "ANNOTATIONS_CREATED", "annotation": [{"id": 11, "task": 1}, {"id": 12, "task": 2}],
            "task": [{"id": 1}, {"id": 2}], "project": {"id": PROJECT}}
    cycle = hooks.enqueue_event("ANNOTATIONS_CREATED", PROJECT, bulk, rq_settings)
    joined = hooks.enqueue_event("ANNOTATION_CREATED", PROJECT, {}, rq_settings)
    assert (cycle.status, cycle.reason) == ("queued", "")
    assert joined == hooks.Handover("queued", f"joins the retraining cycle of project {PROJECT} already waiting")
    (job,) = Queue(rq_settings.queue_name, connection=Redis.from_url(REDIS_URL)).jobs
    assert job.args == (PROJECT,) and job.description == f"retrain project {PROJECT}"


def test_tasks_created_without_task_ids_is_skipped(rq_settings):
    outcome = hooks.enqueue_event("TASKS_CREATED", PROJECT, event("TASKS_CREATED", task_ids=()), rq_settings)
    assert (outcome.status, outcome.reason) == ("skipped", "the event lists no task ids")


def test_a_full_in_process_queue_skips_the_tasks_and_says_so(settings):
    full = settings.replace(label_studio_api_key="a-key", local_queue=2, preannotate_batch=4)
    local.reset()
    try:
        outcome = hooks.enqueue_event("TASKS_CREATED", PROJECT, event("TASKS_CREATED"), full)
    finally:
        local.reset()
    assert outcome.status == "skipped" and "in-process queue is full (ISNET_LOCAL_QUEUE=2" in outcome.reason
