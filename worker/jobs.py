"""The RQ job that pre-annotates a chunk of tasks: :func:`backend.jobs.preannotate.preannotate_tasks`
with this worker's network, its progress in the job's meta and the queue's shared counters."""

from __future__ import annotations

import logging
from typing import Any

from backend.jobs.preannotate import ChunkOutcome, preannotate_tasks
from backend.jobs.predictor import SegmenterPredictor
from backend.labelstudio.auth import LabelStudioAuth
from backend.labelstudio.client import LabelStudioClient
from backend.labelstudio.fetch import ImageFetcher
from backend.settings import Settings, load

log = logging.getLogger(__name__)

_predictor: SegmenterPredictor | None = None


def _worker_predictor(settings: Settings) -> SegmenterPredictor:
    """One network per worker process, loaded by its first job and kept for the next ones."""
    global _predictor
    if _predictor is None:
        _predictor = SegmenterPredictor(settings)
    return _predictor


def run_preannotation(project_id: int, task_ids: list[int], requested_version: str = "") -> dict[str, Any]:
    """What an RQ worker runs: progress goes to the job's meta and the shared counters.

    ``requested_version`` is what the enqueuer served; predictions are written under the version
    this worker actually runs (the current one), because that is what ``/setup`` reports now.
    """
    from rq import get_current_job

    from backend.jobs.progress import RedisProgress

    settings = load()
    job = get_current_job()
    progress = RedisProgress(job.connection, job.origin) if job is not None else None

    def report(name: str, outcome: ChunkOutcome) -> None:
        if progress is not None:
            progress.incr(name)
        if job is not None:
            job.meta.update({k: v for k, v in outcome.as_dict().items() if k != "errors"})
            job.meta["errors"] = outcome.errors[-20:]
            job.save_meta()

    client = LabelStudioClient.from_settings(settings)
    auth: LabelStudioAuth = client.auth
    outcome = preannotate_tasks(project_id, task_ids, client=client, predictor=_worker_predictor(settings),
                                settings=settings, fetcher=ImageFetcher(settings, auth), report=report,
                                held_version=requested_version)
    if requested_version and requested_version != outcome.model_version:
        log.info("chunk asked for %s, written under the current version %s", requested_version,
                 outcome.model_version)
    return outcome.as_dict()
