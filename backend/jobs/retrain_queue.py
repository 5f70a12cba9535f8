"""Where retraining requests go: at most one queued and one running cycle per project.

Why coalescing: annotators save hundreds of annotations an hour and each one is a webhook; a
cycle per annotation would train the same data over and over. With Redis, a pending marker
(``SET NX`` of ``isnet:retrain:pending:<project>``, holding the queued job's id) lets only the
first event of a burst enqueue a job; later events find it and only raise the ``force`` flag
when one is ``START_TRAINING``. The job takes the project's Redis lock before it clears the
marker, so while one cycle runs the next events queue exactly one successor, which waits for
the lock. Without Redis, the server starts ``python -m worker.retrain`` as a child process (one
per project at a time, a second request remembered and run after it): training never runs in
the serving process, so ``/health`` and ``/predict`` stay fast. With ``WORKERS>1`` each gunicorn
process has its own children; the lineage's cycle lock (:mod:`backend.learning.cycle_lock`, which
``isnet train`` takes too) makes their cycles take turns on the host.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
import uuid

from backend.jobs.connection import QueueUnavailable, redis_connection
from backend.jobs.queue import ACTIVE
from backend.settings import Settings

log = logging.getLogger(__name__)

JOB_FUNCTION = "worker.retrain.run_job"
JOB_TIMEOUT_S = 24 * 3600
LOCK_TIMEOUT_S = JOB_TIMEOUT_S


def pending_key(queue_name: str, project_id: int) -> str:
    return f"isnet:{queue_name}:retrain:pending:{project_id}"


def force_key(queue_name: str, project_id: int) -> str:
    return f"isnet:{queue_name}:retrain:force:{project_id}"


def lock_key(queue_name: str, lineage: str) -> str:
    """One running cycle per model lineage (projects that share one take turns)."""
    return f"isnet:{queue_name}:retrain:lock:{lineage}"


def submit(project_id: int, *, force: bool = False, settings: Settings) -> str | None:
    """Ask for a cycle of the project; the id of the job queued now, or None when one already waits."""
    if not settings.redis_url:
        return local_runner().submit(project_id, force, settings)
    from redis.exceptions import RedisError
    from rq import Queue
    from rq.job import Job

    connection = redis_connection(settings)
    pending = pending_key(settings.queue_name, project_id)
    try:
        if force:
            connection.set(force_key(settings.queue_name, project_id), 1, ex=JOB_TIMEOUT_S)
        job_id = f"retrain-{project_id}-{uuid.uuid4().hex[:12]}"
        if not connection.set(pending, job_id, nx=True, ex=JOB_TIMEOUT_S):
            waiting = connection.get(pending)
            job = Job.fetch_many([waiting.decode()], connection=connection)[0] if waiting else None
            if job is not None and job.get_status(refresh=False) in ACTIVE:
                return None  # coalesced into the job that already waits
            connection.set(pending, job_id, ex=JOB_TIMEOUT_S)  # its job was lost or failed: replace it
        Queue(settings.queue_name, connection=connection).enqueue(
            JOB_FUNCTION, args=(project_id,), job_id=job_id, job_timeout=JOB_TIMEOUT_S, result_ttl=7 * 86400,
            failure_ttl=7 * 86400, description=f"retrain project {project_id}")
        return job_id
    except (RedisError, OSError) as exc:
        raise QueueUnavailable(f"Redis at {settings.redis_url} is unreachable: {exc}") from exc
    finally:
        connection.close()


class LocalRetrainer:
    """Without Redis: one ``python -m worker.retrain`` child process per project, the next request remembered."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running: dict[int, subprocess.Popen] = {}
        self.pending: dict[int, bool] = {}
        """Project -> force, for a request that came while its cycle ran."""

    def submit(self, project_id: int, force: bool, settings: Settings) -> str | None:
        if not settings.label_studio_api_key:  # the child has this process's environment: it could not export
            log.warning("retraining of project %s not started: LABEL_STUDIO_API_KEY is not set", project_id)
            return None
        with self._lock:
            if project_id in self.running:
                self.pending[project_id] = self.pending.get(project_id, False) or force
                return None
            self._start(project_id, force, settings)
            return f"local-retrain-{project_id}"

    def _start(self, project_id: int, force: bool, settings: Settings) -> None:
        cmd = [sys.executable, "-m", "worker.retrain", "--project", str(project_id)] + (["--force"] if force else [])
        process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)  # the server's environment is the settings
        self.running[project_id] = process
        threading.Thread(target=self._wait, args=(project_id, process, settings), daemon=True,
                         name=f"isnet-retrain-wait-{project_id}").start()

    def _wait(self, project_id: int, process: subprocess.Popen, settings: Settings) -> None:
        """Only waits (no training here); then starts the request that came meanwhile."""
        code = process.wait()
        if code:
            log.error("retraining of project %s exited with %s", project_id, code)
        with self._lock:
            self.running.pop(project_id, None)
            if project_id in self.pending:
                self._start(project_id, self.pending.pop(project_id), settings)

    def wait_idle(self, timeout: float) -> bool:
        """True once no cycle runs or waits (tests, shutdown)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if not self.running and not self.pending:
                    return True
            time.sleep(0.1)
        return False


_local: LocalRetrainer | None = None
_local_lock = threading.Lock()


def local_runner() -> LocalRetrainer:
    global _local
    with _local_lock:
        if _local is None:
            _local = LocalRetrainer()
        return _local
