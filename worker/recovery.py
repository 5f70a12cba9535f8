"""Give back the jobs of workers that were killed (SIGKILL, OOM, a pulled plug) on this host.

Why RQ's own clean-up is not enough: a job whose worker died stays "started" until its
heartbeat expires (minutes) and is then retried after a retry interval, and there are two
moments at which RQ loses a job for good or for ten minutes:

* between the worker's dequeue (the job moves to the queue's *intermediate* list) and the
  registration of its execution: RQ's maintenance only rescues such a job after it was seen
  twice, a minute apart, by a task that runs every ten minutes;
* between the registration of the execution (the job is in the started registry) and the work
  horse marking the job "started": the job is still "queued", so RQ's started-registry clean-up
  skips it forever.

A worker starting on a host calls :func:`recover_abandoned` before it takes work: every job
whose execution belongs to a dead worker (its process gone on this host, or its registration
expired) is put back at the front of the queue at once, whatever the moment of death. Running
workers call it again before each of RQ's maintenance rounds (:class:`RecoveringWorker`), where
it also takes every execution whose heartbeat expired, the ones RQ's clean-up is about to drop:
so a worker killed for good, on any host, loses nothing either. Jobs are idempotent per task, so
a re-run writes only what the dead worker had not written.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

from rq import Worker
from rq.executions import Execution
from rq.job import Job
from rq.utils import parse_composite_key

log = logging.getLogger("worker")

RECOVERABLE = {"queued", "started"}


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_workers(queue: Any) -> set[str]:
    """Names of the workers on ``queue`` that may still be working.

    A worker on another host counts as live while its registration lasts (its own heartbeat keeps
    it); one on this host only while its process exists. Dead ones on this host are unregistered,
    so ``rq info`` stops showing them busy.
    """
    host = socket.gethostname()
    live = set()
    for worker in Worker.all(queue=queue):
        if worker.hostname == host and worker.pid and not pid_alive(worker.pid):
            worker.register_death()
        else:
            live.add(worker.name)
    return live


def _execution_worker(connection: Any, job_id: str, execution_id: str) -> str | None:
    try:
        return Execution.fetch(execution_id, job_id, connection).worker_name or None
    except ValueError:  # the execution's record expired with its worker
        return None


def abandoned_jobs(queue: Any) -> dict[str, list[str]]:
    """Job id → the started-registry members to drop, for every job no live worker is running
    (its worker is dead, or its heartbeat expired)."""
    connection = queue.connection
    live = live_workers(queue)
    registry_key = queue.started_job_registry.key
    started: dict[str, list[str]] = {}
    abandoned: dict[str, list[str]] = {}
    now = time.time()
    for raw, expires in connection.zrange(registry_key, 0, -1, withscores=True):
        member = raw.decode()
        job_id, execution_id = parse_composite_key(member) if ":" in member else (member, "")
        started.setdefault(job_id, []).append(member)
        expired = 0 <= expires < now  # -1: never expires
        if expired or _execution_worker(connection, job_id, execution_id) not in live:
            abandoned.setdefault(job_id, []).append(member)
    for job_id in list(abandoned):
        if len(abandoned[job_id]) < len(started[job_id]):
            del abandoned[job_id]  # another execution of it is alive
    if not live:
        # Nobody can be between a dequeue and its registration: what the intermediate list holds
        # beyond the started registry was dequeued by a worker that died at that moment.
        for job_id in queue.intermediate_queue.get_job_ids():
            if job_id not in started:
                abandoned.setdefault(job_id, [])
    return abandoned


def recover_abandoned(queue: Any) -> int:
    """Re-queue, at the front, every job whose worker is dead; how many there were."""
    connection = queue.connection
    recovered = []
    for job_id, members in abandoned_jobs(queue).items():
        job = Job.fetch(job_id, connection=connection) if Job.exists(job_id, connection=connection) else None
        with connection.pipeline() as pipe:
            if members:
                pipe.zrem(queue.started_job_registry.key, *members)
            pipe.lrem(queue.intermediate_queue_key, 0, job_id)
            pipe.execute()
        if job is not None and job.get_status() in RECOVERABLE:
            queue.enqueue_job(job, at_front=True)  # now, not after a retry interval
            recovered.append(job_id)
    if recovered:
        log.warning("re-queued %d job(s) whose worker died: %s", len(recovered), ", ".join(recovered))
    return len(recovered)


class RecoveringWorker(Worker):
    """An RQ worker that gives back abandoned jobs before each maintenance round of RQ's own."""

    def run_maintenance_tasks(self) -> None:
        for queue in self.queues:
            try:
                recover_abandoned(queue)
            except Exception:  # never let recovery stop the worker; RQ's clean-up still runs
                log.exception("recovering abandoned jobs of %s failed", queue.name)
        super().run_maintenance_tasks()
