"""The RQ job that pre-annotates a chunk of tasks: :func:`backend.jobs.preannotate.preannotate_tasks`
with this worker's network, its progress in the job's meta and the queue's shared counters."""

from __future__ import annotations

import logging
from typing import Any

from backend.jobs.preannotate import ChunkOutcome, preannotate_tasks
from backend.labelstudio.client import LabelStudioClient
from backend.labelstudio.fetch import ImageFetcher
from backend.pipeline import Pipelines, TaskPipeline
from backend.service.inference import DirectInference
from backend.settings import Settings, load

log = logging.getLogger(__name__)

_pipelines: Pipelines | None = None


def _worker_pipeline(settings: Settings, client: LabelStudioClient, project_id: int) -> TaskPipeline:
    """The project's pipeline; one result cache and at most ``ISNET_MAX_LOADED_MODELS`` networks per
    worker process, loaded by the jobs that need them and kept."""
    global _pipelines
    if _pipelines is None:
        _pipelines = Pipelines(settings, DirectInference(settings), ImageFetcher(settings, client.auth))
    return _pipelines.for_project(project_id)


def run_preannotation(project_id: int, task_ids: list[int], requested_version: str = "") -> dict[str, Any]:
    """What an RQ worker runs: progress goes to the job's meta and the shared counters.

    ``requested_version`` is what the enqueuer served; predictions are written under the version
    this worker actually runs (the project's current one), because that is what ``/setup`` reports now.
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
    pipeline = _worker_pipeline(settings, client, project_id)
    outcome = preannotate_tasks(project_id, task_ids, client=client, pipeline=pipeline, settings=settings,
                                report=report, held_version=requested_version)
    if requested_version and requested_version != outcome.model_version:
        log.info("chunk asked for %s, written under the current version %s", requested_version,
                 outcome.model_version)
    return outcome.as_dict()
