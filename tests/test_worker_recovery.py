"""A starting worker gives back the jobs of workers killed on this host, whatever the moment of death.

Real Redis and RQ's own bookkeeping: each test dequeues a job the way an RQ worker does and stops
at one moment of its life; the worker is then "killed" by giving its registration the id of a
process that has exited.
"""

from __future__ import annotations

import subprocess
import uuid

import pytest
from redis import Redis
from rq import Queue, Worker

from worker.recovery import RecoveringWorker, recover_abandoned

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def queue():
    connection = Redis.from_url(REDIS_URL)
    queue = Queue(f"isnet-recovery-{uuid.uuid4().hex[:8]}", connection=connection)
    yield queue
    for worker in Worker.all(queue=queue):
        worker.register_death()
    queue.delete(delete_jobs=True)
    connection.delete(queue.intermediate_queue_key)


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def worker_on(queue: Queue, alive: bool) -> Worker:
    worker = Worker([queue], connection=queue.connection, name=f"w-{uuid.uuid4().hex[:8]}")
    worker.register_birth()
    if not alive:
        queue.connection.hset(worker.key, "pid", dead_pid())
    return worker


def dequeued(queue: Queue):
    """The job the way a worker holds it right after its dequeue: in the intermediate list."""
    queue.enqueue("builtins.len", "abc", job_id=f"job-{uuid.uuid4().hex[:8]}")
    job, _ = Queue.dequeue_any([queue], timeout=None, connection=queue.connection)
    return job


def registered(queue: Queue, worker: Worker):
    """Dequeued and its execution registered, but the work horse has not marked it started yet."""
    job = dequeued(queue)
    worker.prepare_execution(job)
    return job


def started(queue: Queue, worker: Worker):
    """Dequeued, registered and marked started by the work horse."""
    job = registered(queue, worker)
    worker.prepare_job_execution(job, remove_from_intermediate_queue=True)
    return job


def assert_back_at_the_front(queue: Queue, job_id: str) -> None:
    assert queue.job_ids[0] == job_id
    assert queue.fetch_job(job_id).get_status() == "queued"
    assert queue.started_job_registry.get_job_ids(cleanup=False) == []
    assert queue.connection.lrange(queue.intermediate_queue_key, 0, -1) == []


def test_a_job_whose_worker_died_while_running_it_is_requeued_at_the_front(queue):
    job = started(queue, worker_on(queue, alive=False))
    queue.enqueue("builtins.len", "later")
    assert recover_abandoned(queue) == 1
    assert_back_at_the_front(queue, job.id)


def test_a_job_whose_worker_died_before_the_work_horse_marked_it_started_is_requeued(queue):
    job = registered(queue, worker_on(queue, alive=False))
    assert queue.fetch_job(job.id).get_status() == "queued"  # RQ's own clean-up never rescues this one
    assert recover_abandoned(queue) == 1
    assert_back_at_the_front(queue, job.id)


def test_a_job_whose_worker_died_between_dequeue_and_registration_is_requeued(queue):
    worker_on(queue, alive=False)
    job = dequeued(queue)
    assert recover_abandoned(queue) == 1
    assert_back_at_the_front(queue, job.id)


def test_the_dead_worker_is_unregistered(queue):
    dead = worker_on(queue, alive=False)
    started(queue, dead)
    recover_abandoned(queue)
    assert dead.name not in {w.name for w in Worker.all(queue=queue)}


def test_a_job_whose_worker_is_alive_is_left_alone(queue):
    job = started(queue, worker_on(queue, alive=True))
    assert recover_abandoned(queue) == 0
    assert queue.fetch_job(job.id).get_status() == "started"
    assert queue.job_ids == []


def test_a_fresh_dequeue_is_left_alone_while_a_live_worker_could_be_registering_it(queue):
    worker_on(queue, alive=True)
    job = dequeued(queue)
    assert recover_abandoned(queue) == 0
    assert queue.connection.lrange(queue.intermediate_queue_key, 0, -1) == [job.id.encode()]


def expire(queue: Queue) -> None:
    """Every execution's heartbeat ran out (what a worker hung, or killed on another host, leaves)."""
    key = queue.started_job_registry.key
    for member in queue.connection.zrange(key, 0, -1):
        queue.connection.zadd(key, {member: 1})


def test_a_job_whose_heartbeat_expired_is_requeued_even_while_its_worker_looks_alive(queue):
    job = registered(queue, worker_on(queue, alive=True))
    expire(queue)
    assert recover_abandoned(queue) == 1
    assert_back_at_the_front(queue, job.id)


def test_running_workers_recover_before_each_maintenance_round(queue):
    job = registered(queue, worker_on(queue, alive=True))
    expire(queue)
    survivor = RecoveringWorker([queue], connection=queue.connection, name=f"w-{uuid.uuid4().hex[:8]}")
    survivor.run_maintenance_tasks()
    assert queue.job_ids == [job.id]
    assert queue.fetch_job(job.id).get_status() == "queued"


def test_nothing_to_recover_is_a_no_op(queue):
    queue.enqueue("builtins.len", "abc")
    assert recover_abandoned(queue) == 0
    assert queue.count == 1
