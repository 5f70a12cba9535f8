"""Where pre-annotation work goes: RQ jobs of ``ISNET_PREANNOTATE_BATCH`` tasks, or the in-process thread.

Why chunks: a 10,000-task import must become many small jobs that several workers share and
that each finish (and can be retried) in minutes. The RQ job is named by its dotted path
(``worker.jobs.run_preannotation``), so this interface never imports the worker package.
"""

from __future__ import annotations

import hashlib
from typing import Any

from backend.jobs.connection import QueueUnavailable, redis_connection
from backend.redaction import redact
from backend.settings import Settings

JOB_FUNCTION = "worker.jobs.run_preannotation"
JOB_TIMEOUT_S = 3600
RETRY_INTERVALS_S = [15, 60, 240]
"""A job that failed (Label Studio down through every in-job retry, a killed worker) runs again."""
ACTIVE = {"queued", "started", "scheduled", "deferred"}


def chunks(task_ids: list[int], size: int) -> list[list[int]]:
    """``task_ids`` (duplicates dropped, order kept) in consecutive lists of at most ``size``."""
    unique = list(dict.fromkeys(task_ids))
    size = max(1, size)
    return [unique[i:i + size] for i in range(0, len(unique), size)]


def job_id(project_id: int, model_version: str, task_ids: list[int]) -> str:
    """The same chunk for the same version gets the same id, so enqueueing it twice is a no-op."""
    digest = hashlib.sha1(f"{model_version}|{task_ids}".encode()).hexdigest()[:20]
    return f"preannotate-{project_id}-{digest}"


def submit(project_id: int, task_ids: list[int], model_version: str, settings: Settings) -> list[str]:
    """Queue pre-annotation of ``task_ids``; the ids of the jobs (or local chunks) created."""
    parts = chunks(task_ids, settings.preannotate_batch)
    if not parts:
        return []
    if not settings.redis_url:
        from backend.jobs.local import runner

        return runner(settings).submit(project_id, parts, model_version)
    return _enqueue_rq(project_id, parts, model_version, settings)


def _enqueue_rq(project_id: int, parts: list[list[int]], model_version: str, settings: Settings) -> list[str]:
    from redis.exceptions import RedisError
    from rq import Queue, Retry
    from rq.job import Job

    from backend.jobs.progress import RedisProgress

    connection = redis_connection(settings)
    ids = [job_id(project_id, model_version, part) for part in parts]
    try:
        existing = Job.fetch_many(ids, connection=connection)
        fresh = [(jid, part) for jid, part, job in zip(ids, parts, existing, strict=True)
                 if job is None or job.get_status(refresh=False) not in ACTIVE]
        queue = Queue(settings.queue_name, connection=connection)
        jobs = [Queue.prepare_data(JOB_FUNCTION, args=(project_id, part, model_version), job_id=jid,
                                   timeout=JOB_TIMEOUT_S, result_ttl=86400, failure_ttl=7 * 86400,
                                   retry=Retry(max=len(RETRY_INTERVALS_S), interval=RETRY_INTERVALS_S),
                                   description=f"pre-annotate project {project_id}: {len(part)} task(s)")
                for jid, part in fresh]
        if jobs:
            queue.enqueue_many(jobs)
            RedisProgress(connection, settings.queue_name).incr("total", sum(len(part) for _, part in fresh))
    except (RedisError, OSError) as exc:
        raise QueueUnavailable(f"Redis at {redact(settings.redis_url)} is unreachable: {exc}") from exc
    finally:
        connection.close()
    return [jid for jid, _ in fresh]


def progress(settings: Settings) -> dict[str, Any]:
    """Counters for ``/metrics``: from Redis (every worker) or the in-process thread."""
    if not settings.redis_url:
        from backend.jobs.local import current_runner

        local = current_runner()
        return {"backend": "in-process", **(local.snapshot() if local else {})}
    from redis.exceptions import RedisError
    from rq import Queue

    from backend.jobs.progress import RedisProgress

    connection = redis_connection(settings)
    try:
        queue = Queue(settings.queue_name, connection=connection)
        return {"backend": "rq", "queue": settings.queue_name, "queued_jobs": queue.count,
                "started_jobs": queue.started_job_registry.count,
                "failed_jobs": queue.failed_job_registry.count,
                **RedisProgress(connection, settings.queue_name).snapshot()}
    except (RedisError, OSError) as exc:
        return {"backend": "rq", "error": f"Redis unreachable: {exc}"}
    finally:
        connection.close()
