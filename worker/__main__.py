"""``python -m worker`` (``make worker``): an RQ worker on the pre-annotation queue from ``REDIS_URL``.

Why it recovers jobs first: a worker killed in the middle of a chunk leaves its job where RQ
rescues it late or never (see :mod:`worker.recovery`). A worker starting on the same host
re-queues, at once, every job whose worker is gone; the job's per-task check then writes only
the predictions that are still missing.
"""

from __future__ import annotations

import argparse
import logging
import sys

from backend import redaction, store
from backend.settings import SettingsError, load
from worker.recovery import RecoveringWorker, recover_abandoned

log = logging.getLogger("worker")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__.splitlines()[0])
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    parser.add_argument("--name", help="worker name (default: RQ's)")
    parser.add_argument("--queue", action="append", dest="queues", metavar="NAME",
                        help="listen on this RQ queue only (repeatable; default ISNET_QUEUE and ISNET_RETRAIN_QUEUE): "
                        "a GPU worker takes only --queue $ISNET_RETRAIN_QUEUE")
    args = parser.parse_args(argv)
    try:
        settings = load()
    except SettingsError as exc:  # a bad variable: one line that names it, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    redaction.remember(*settings.secrets)
    redaction.install()  # no log line shows REDIS_URL's password, a token or a presigned query
    try:
        store.connect(settings)  # ISNET_MODEL_STORE: versions in the object store, pointers in Redis
    except store.StoreSetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not settings.redis_url:
        print("REDIS_URL is not set: without Redis the server pre-annotates in its own background thread, "
              "no worker is needed. Set REDIS_URL=redis://host:6379/0 to run workers.", file=sys.stderr)
        return 2
    from redis import Redis
    from redis.exceptions import RedisError
    from rq import Queue

    connection = Redis.from_url(settings.redis_url, socket_connect_timeout=5)
    try:
        connection.ping()
    except (RedisError, OSError) as exc:
        where = redaction.redact(settings.redis_url)
        print(f"cannot reach Redis at {where}: {redaction.redact(str(exc))}. Start Redis or fix REDIS_URL.",
              file=sys.stderr)
        return 1
    names = args.queues or list(dict.fromkeys(n for n in (settings.queue_name, settings.retrain_queue) if n))
    queues = [Queue(name, connection=connection) for name in names]
    for queue in queues:
        recover_abandoned(queue)
    worker = RecoveringWorker(queues, connection=connection, name=args.name)
    log.info("worker %s listening on %s at %s", worker.name, ", ".join(names), redaction.redact(settings.redis_url))
    worker.work(burst=args.burst, with_scheduler=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
