"""Webhook fan-out is bounded: without Redis one retraining child process runs at a time for all
projects (the others wait their turn, each once); with Redis at most ``ISNET_RETRAIN_WAITING``
projects have a cycle waiting, and an event beyond that is skipped with the reason.

Real child processes (``python -m worker.retrain``) against the stand-in Label Studio, real Redis.
"""

from __future__ import annotations

import re
import uuid

import pytest
from redis import Redis
from rq import Queue

from backend.jobs import hooks, retrain_queue
from tests.retrain_helpers import PROJECT, add_duts_tasks, child_process_settings, drop_queue, retrain_env, settings_for

REDIS_URL = "redis://127.0.0.1:6379/0"
OTHERS = (PROJECT + 1, PROJECT + 2)


def exported_projects(ls) -> list[int]:
    """The project of each export request, in the order the children asked."""
    return [int(m.group(1)) for r in ls.requests if (m := re.match(r"GET /api/projects/(\d+)/export", r))]


def test_without_redis_one_child_runs_at_a_time_and_the_other_projects_wait_their_turn(
        fake_label_studio_export, random_checkpoint, tmp_path, monkeypatch):
    ls = fake_label_studio_export
    add_duts_tasks(ls, 1)  # below the minimum of 3: each run is a quick, recorded skip
    settings = child_process_settings(ls, random_checkpoint, tmp_path / "models", monkeypatch)
    runner = retrain_queue.LocalRetrainer()
    assert runner.submit(PROJECT, False, settings) == f"local-retrain-{PROJECT}"
    for project in OTHERS:
        assert runner.submit(project, False, settings) is None  # waits: no second child
    assert runner.submit(OTHERS[0], True, settings) is None  # already waiting: joins, forced
    assert list(runner.running) == [PROJECT]
    assert runner.pending == {OTHERS[0]: True, OTHERS[1]: False}
    assert runner.wait_idle(240)
    assert exported_projects(ls) == [PROJECT, *OTHERS]  # one after the other, in the order asked


def test_without_redis_two_server_processes_of_a_host_take_turns(
        fake_label_studio_export, random_checkpoint, tmp_path, monkeypatch):
    ls = fake_label_studio_export
    add_duts_tasks(ls, 1)
    settings = child_process_settings(ls, random_checkpoint, tmp_path / "models", monkeypatch)
    first, second = retrain_queue.LocalRetrainer(), retrain_queue.LocalRetrainer()  # each worker has its own
    assert first.submit(PROJECT, False, settings)
    assert second.submit(OTHERS[0], False, settings) is None  # the host lock is held: it waits
    assert not second.running and second.pending == {OTHERS[0]: False}
    assert first.wait_idle(240) and second.wait_idle(240)
    assert exported_projects(ls) == [PROJECT, OTHERS[0]]


def test_without_redis_projects_beyond_the_bound_are_skipped_with_the_reason(
        fake_label_studio_export, random_checkpoint, tmp_path, monkeypatch):
    ls = fake_label_studio_export
    settings = settings_for(ls, random_checkpoint, tmp_path / "models", retrain_waiting=1)
    for name, value in retrain_env(ls, random_checkpoint, settings.model_dir).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(retrain_queue, "_local", retrain_queue.LocalRetrainer())
    outcomes = [hooks.enqueue_event("ANNOTATION_CREATED", p, {}, settings) for p in (PROJECT, *OTHERS)]
    assert [o.status for o in outcomes] == ["queued", "queued", "skipped"]
    assert "ISNET_RETRAIN_WAITING" in outcomes[2].reason
    assert retrain_queue.local_runner().wait_idle(240)


@pytest.fixture
def rq_settings(fake_label_studio_export, random_checkpoint, tmp_path):
    settings = settings_for(fake_label_studio_export, random_checkpoint, tmp_path / "models", redis_url=REDIS_URL,
                            queue_name=f"isnet-test-fanout-{uuid.uuid4().hex[:8]}", retrain_waiting=2)
    yield settings
    drop_queue(settings, REDIS_URL)


def test_with_redis_at_most_the_bound_of_projects_have_a_cycle_waiting(rq_settings):
    answers = {p: hooks.enqueue_event("ANNOTATION_CREATED", p, {}, rq_settings) for p in range(1, 6)}
    assert [answers[p].status for p in range(1, 6)] == ["queued", "queued", "skipped", "skipped", "skipped"]
    assert "ISNET_RETRAIN_WAITING" in answers[3].reason
    # a project already waiting still takes its events in, bound or not
    assert hooks.enqueue_event("START_TRAINING", 1, {}, rq_settings).status == "queued"
    connection = Redis.from_url(REDIS_URL)
    assert len(Queue(rq_settings.queue_name, connection=connection)) == 2


def test_with_redis_a_started_cycle_frees_its_place(rq_settings):
    for project in (1, 2):
        hooks.enqueue_event("ANNOTATION_CREATED", project, {}, rq_settings)
    assert hooks.enqueue_event("ANNOTATION_CREATED", 3, {}, rq_settings).status == "skipped"
    connection = Redis.from_url(REDIS_URL)
    connection.delete(retrain_queue.pending_key(rq_settings.queue_name, 1))  # what the job does when it starts
    assert hooks.enqueue_event("ANNOTATION_CREATED", 3, {}, rq_settings).status == "queued"
