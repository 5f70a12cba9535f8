"""How many retraining cycles ended how (promoted, rejected, skipped, failed), for ``GET /metrics``.

Why here and not in the job: the job (``worker.retrain``) runs on any host; with Redis its RQ
success and failure callbacks (:data:`ON_SUCCESS`, :data:`ON_FAILURE`, named by dotted path so the
worker imports this module, not the other way round) add to one Redis hash that every server
reads. Without Redis the server's in-process retrainer reads the outcome its child process
recorded and counts it in the host's Prometheus counters (:mod:`backend.service.telemetry`).
"""

from __future__ import annotations

import logging
from typing import Any

from backend.jobs.retrain_status import STATE_FILE, read_json
from backend.learning.snapshots import project_dir
from backend.settings import Settings

log = logging.getLogger(__name__)

OUTCOMES = ("promoted", "rejected", "skipped", "failed")
ON_SUCCESS = "backend.jobs.retrain_outcomes.on_success"
ON_FAILURE = "backend.jobs.retrain_outcomes.on_failure"


def outcomes_key(queue_name: str) -> str:
    return f"isnet:{queue_name}:retrain:outcomes"


def _status(result: Any) -> str:
    status = result.get("status") if isinstance(result, dict) else None
    return status if status in OUTCOMES else "failed"


def on_success(job: Any, connection: Any, result: Any, *args: Any, **kwargs: Any) -> None:
    """RQ success callback of a retraining job: its outcome's ``status`` is counted."""
    connection.hincrby(outcomes_key(job.origin), _status(result), 1)


def on_failure(job: Any, connection: Any, *exc_info: Any, **kwargs: Any) -> None:
    """RQ failure callback (the job raised or was stopped): counted as ``failed``."""
    connection.hincrby(outcomes_key(job.origin), "failed", 1)


def redis_counts(connection: Any, queue_name: str) -> dict[str, int]:
    """Every outcome with its count (0 for those not seen yet)."""
    raw = connection.hgetall(outcomes_key(queue_name))
    counts = dict.fromkeys(OUTCOMES, 0)
    counts.update({(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()})
    return counts


def count_local(settings: Settings, project_id: int, started: float) -> str:
    """The outcome the child process recorded for the project (``failed`` when it recorded none after
    ``started``), counted in this host's Prometheus counters; returns it."""
    from backend.service.telemetry import local_cycles

    last = (read_json(project_dir(settings, project_id) / STATE_FILE) or {}).get("last_outcome") or {}
    finished = last.get("finished")
    status = _status(last) if isinstance(finished, (int, float)) and finished >= started else "failed"
    local_cycles(OUTCOMES).labels(status).inc()
    return status
