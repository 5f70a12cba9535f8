"""``python -m worker`` (``make worker``): an RQ worker on the pre-annotation queue from ``REDIS_URL``.

Why it recovers jobs first: a worker killed in the middle of a chunk leaves its job "started"
until RQ notices it was abandoned (minutes). A worker starting on the same host re-queues, at
once, every started job whose worker process is gone; the job's per-task check then writes only
the predictions that are still missing.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

from backend.settings import load

log = logging.getLogger("worker")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_abandoned(queue: object) -> int:
    """Re-queue, at the front, started jobs whose worker on this host is dead; how many there were."""
    from rq.job import Job
    from rq.worker import Worker

    registry = queue.started_job_registry  # type: ignore[attr-defined]
    connection = registry.connection
    host = socket.gethostname()
    dead: list[tuple[bytes, Job]] = []
    for member in connection.zrange(registry.key, 0, -1):
        job_id = member.decode().split(":", 1)[0]
        job = Job.fetch(job_id, connection=connection) if Job.exists(job_id, connection=connection) else None
        name = getattr(job, "worker_name", None) if job else None
        key = Worker.redis_worker_namespace_prefix + name if name else None
        worker = Worker.find_by_key(key, connection=connection) if key else None
        if job is not None and job.get_status() == "started" and (
                worker is None or (worker.hostname == host and worker.pid and not _pid_alive(worker.pid))):
            dead.append((member, job))
    for member, job in dead:
        connection.zrem(registry.key, member)
        queue.enqueue_job(job, at_front=True)  # type: ignore[attr-defined]  # now, not after a retry interval
    if dead:
        log.warning("re-queued %d job(s) whose worker died: %s", len(dead), ", ".join(j.id for _, j in dead))
    return len(dead)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__.splitlines()[0])
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    parser.add_argument("--name", help="worker name (default: RQ's)")
    args = parser.parse_args(argv)
    settings = load()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not settings.redis_url:
        print("REDIS_URL is not set: without Redis the server pre-annotates in its own background thread, "
              "no worker is needed. Set REDIS_URL=redis://host:6379/0 to run workers.", file=sys.stderr)
        return 2
    from redis import Redis
    from redis.exceptions import RedisError
    from rq import Queue, Worker

    connection = Redis.from_url(settings.redis_url, socket_connect_timeout=5)
    try:
        connection.ping()
    except (RedisError, OSError) as exc:
        print(f"cannot reach Redis at {settings.redis_url}: {exc}. Start Redis or fix REDIS_URL.", file=sys.stderr)
        return 1
    queue = Queue(settings.queue_name, connection=connection)
    recover_abandoned(queue)
    worker = Worker([queue], connection=connection, name=args.name)
    log.info("worker %s listening on %s at %s", worker.name, settings.queue_name, settings.redis_url)
    worker.work(burst=args.burst, with_scheduler=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
