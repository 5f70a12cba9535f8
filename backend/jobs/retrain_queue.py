"""Where retraining requests go: at most one queued and one running cycle per project.

Why coalescing: annotators save hundreds of annotations an hour and each one is a webhook; a
cycle per annotation would train the same data over and over. With Redis, a pending marker
(``SET NX`` of ``isnet:retrain:pending:<project>``, holding the queued job's id) lets only the
first event of a burst enqueue a job; later events find it and only raise the ``force`` flag
when one is ``START_TRAINING``. The job takes the project's Redis lock before it clears the
marker, so while one cycle runs the next events queue exactly one successor, which waits for
the lock. Without Redis, the server starts ``python -m worker.retrain`` as a child process (one
at a time for all projects and all the server's worker processes on the host, the others' requests
remembered and run in turn): training never runs in the serving process, so ``/health`` and
``/predict`` stay fast, and a webhook naming many projects cannot start many trainings.

Why a bound: every webhook names a project, and a project id is just a number in the body, so at
most ``ISNET_RETRAIN_WAITING`` projects may have a cycle waiting at once (a Redis set of them, or
the in-process list); an event beyond that is refused with :class:`RetrainQueueFull` (``/webhook``
says "skipped" and why) instead of growing the queue without end. Every cycle also takes its
lineage's cycle lock (:mod:`backend.learning.cycle_lock`, which ``isnet train`` takes too), so two
cycles of one lineage take turns on the host whoever started them.
"""

from __future__ import annotations

import fcntl
import logging
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from backend.jobs import retrain_outcomes
from backend.jobs.connection import QueueUnavailable, redis_connection
from backend.jobs.queue import ACTIVE
from backend.redaction import redact
from backend.settings import Settings

log = logging.getLogger(__name__)

JOB_FUNCTION = "worker.retrain.run_job"
JOB_TIMEOUT_S = 24 * 3600
LOCK_TIMEOUT_S = JOB_TIMEOUT_S


def pending_key(queue_name: str, project_id: int) -> str:
    return f"isnet:{queue_name}:retrain:pending:{project_id}"


def force_key(queue_name: str, project_id: int) -> str:
    return f"isnet:{queue_name}:retrain:force:{project_id}"


def waiting_key(queue_name: str) -> str:
    """The set of projects whose cycle waits in the queue (its size is bounded)."""
    return f"isnet:{queue_name}:retrain:waiting"


class RetrainQueueFull(Exception):
    """``ISNET_RETRAIN_WAITING`` projects already have a cycle waiting; the message says so."""


def _full(settings: Settings) -> RetrainQueueFull:
    return RetrainQueueFull(f"{settings.retrain_waiting} project(s) already have a retraining cycle waiting "
                            f"(ISNET_RETRAIN_WAITING); ask again when one has started")


def lock_key(queue_name: str, lineage: str) -> str:
    """One running cycle per model lineage (projects that share one take turns)."""
    return f"isnet:{queue_name}:retrain:lock:{lineage}"


def submit(project_id: int, *, force: bool = False, settings: Settings) -> str | None:
    """Ask for a cycle of the project; the id of the job queued now, or None when one already waits."""
    if not settings.redis_url:
        return local_runner().submit(project_id, force, settings)
    from redis.exceptions import RedisError
    from rq import Callback, Queue
    from rq.job import Job

    connection = redis_connection(settings)
    pending = pending_key(settings.queue_name, project_id)
    try:
        if force:
            connection.set(force_key(settings.queue_name, project_id), 1, ex=JOB_TIMEOUT_S)
        waiting = connection.get(pending)
        if waiting:
            job = Job.fetch_many([waiting.decode()], connection=connection)[0]
            if job is not None and job.get_status(refresh=False) in ACTIVE:
                return None  # coalesced into the job that already waits
        if _waiting_projects(connection, settings, project_id) >= max(1, settings.retrain_waiting):
            raise _full(settings)
        job_id = f"retrain-{project_id}-{uuid.uuid4().hex[:12]}"
        if not connection.set(pending, job_id, nx=not waiting, ex=JOB_TIMEOUT_S):
            return None  # another process queued it meanwhile
        connection.sadd(waiting_key(settings.queue_name), project_id)
        Queue(settings.retrain_queue or settings.queue_name, connection=connection).enqueue(
            JOB_FUNCTION, args=(project_id,), job_id=job_id, job_timeout=JOB_TIMEOUT_S, result_ttl=7 * 86400,
            failure_ttl=7 * 86400, description=f"retrain project {project_id}",
            on_success=Callback(retrain_outcomes.ON_SUCCESS), on_failure=Callback(retrain_outcomes.ON_FAILURE))
        return job_id
    except (RedisError, OSError) as exc:
        raise QueueUnavailable(f"Redis at {redact(settings.redis_url)} is unreachable: {exc}") from exc
    finally:
        connection.close()


def _waiting_projects(connection: Any, settings: Settings, asking: int) -> int:
    """How many other projects have a cycle waiting; members whose job started (marker gone) leave the set."""
    key = waiting_key(settings.queue_name)
    members = [m for m in connection.smembers(key) if m.decode() != str(asking)]
    markers = connection.mget([pending_key(settings.queue_name, int(m)) for m in members]) if members else []
    started = [m for m, marker in zip(members, markers, strict=True) if marker is None]
    if started:
        connection.srem(key, *started)
    return len(members) - len(started)


HOST_LOCK_FILE = ".local-retrain.lock"


class HostLock:
    """An exclusive ``flock`` on a file in ``MODEL_DIR``: one retraining child per host, whichever of the
    server's worker processes starts it (each has its own :class:`LocalRetrainer`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: Any = None

    def acquire(self, blocking: bool) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a")  # noqa: SIM115 - held open while the lock is held
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.close()
            return False
        self._file = handle
        return True

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


class LocalRetrainer:
    """Without Redis: one ``python -m worker.retrain`` child process at a time for all projects (and,
    through :class:`HostLock`, for all the server's processes on the host); the projects asking
    meanwhile wait in order (each once, at most ``ISNET_RETRAIN_WAITING`` of them)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._host: HostLock | None = None
        self._waiting_for_host = False
        self.running: dict[int, subprocess.Popen] = {}
        """The one cycle running (project -> its child process), or none."""
        self.pending: dict[int, bool] = {}
        """Project -> force, for the requests that came while a cycle ran (first come, first run)."""

    def submit(self, project_id: int, force: bool, settings: Settings) -> str | None:
        """The id of the cycle started now, or None when it waits (or joined one waiting);
        :class:`RetrainQueueFull` when too many projects already wait."""
        if not settings.label_studio_api_key:  # the child has this process's environment: it could not export
            log.warning("retraining of project %s not started: LABEL_STUDIO_API_KEY is not set", project_id)
            return None
        with self._lock:
            if self._host is None:
                self._host = HostLock(settings.model_dir / HOST_LOCK_FILE)
            if self.running or self.pending:
                if project_id not in self.pending and len(self.pending) >= max(1, settings.retrain_waiting):
                    raise _full(settings)
                self.pending[project_id] = self.pending.get(project_id, False) or force
                return None
            if not self._host.acquire(blocking=False):  # another process of this host runs a cycle
                self.pending[project_id] = force
                self._wait_for_host(settings)
                return None
            self._start(project_id, force, settings)
            return f"local-retrain-{project_id}"

    def _wait_for_host(self, settings: Settings) -> None:
        """A thread that takes the host lock when the other process lets go, then runs what waits."""
        if self._waiting_for_host:
            return
        self._waiting_for_host = True

        def take() -> None:
            assert self._host is not None
            self._host.acquire(blocking=True)
            with self._lock:
                self._waiting_for_host = False
                self._next(settings)

        threading.Thread(target=take, daemon=True, name="isnet-retrain-host-lock").start()

    def _next(self, settings: Settings) -> None:
        """With the host lock held and ``self._lock`` taken: start the first waiting request, or let go."""
        assert self._host is not None
        if self.pending:
            project_id = next(iter(self.pending))
            self._start(project_id, self.pending.pop(project_id), settings)
        else:
            self._host.release()

    def _start(self, project_id: int, force: bool, settings: Settings) -> None:
        cmd = [sys.executable, "-m", "worker.retrain", "--project", str(project_id)] + (["--force"] if force else [])
        process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)  # the server's environment is the settings
        self.running[project_id] = process
        threading.Thread(target=self._wait, args=(project_id, process, settings, time.time()), daemon=True,
                         name=f"isnet-retrain-wait-{project_id}").start()

    def _wait(self, project_id: int, process: subprocess.Popen, settings: Settings, started: float) -> None:
        """Only waits (no training here), counts the outcome; then starts the request that came first meanwhile."""
        code = process.wait()
        if code:
            log.error("retraining of project %s exited with %s", project_id, code)
        retrain_outcomes.count_local(settings, project_id, started)
        with self._lock:
            self.running.pop(project_id, None)
            self._next(settings)

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
