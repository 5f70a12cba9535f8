"""One pre-annotation job: predict a chunk of a project's tasks and write the predictions to Label Studio.

Why it is idempotent: a job may run twice (a worker killed mid-chunk, a retry after Label
Studio was down, the webhook and ``/predict``'s overflow naming the same task). Before a task is
predicted, and again just before its prediction is written, the job asks Label Studio whether the
task already has a prediction of the current model version; if so the task is skipped. Re-running
after a crash therefore finishes only what is missing and adds no duplicates.

The ``score`` written with each prediction is the one ``/predict`` gives (one definition, in
:func:`backend.labelstudio.results.brush_result`): the model's mean confidence inside the
predicted region, 0 for an image with no region. Sorting the Data Manager by prediction score,
ascending, therefore shows first the images whose masks the model is least sure of.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from backend.images import ImageError
from backend.labelstudio.auth import LabelStudioAuth
from backend.labelstudio.config import BrushTarget, parse_label_config
from backend.labelstudio.fetch import FetchError, ImageFetcher
from backend.labelstudio.results import brush_result
from backend.labelstudio.tasks import TaskImageError, load_task_image
from backend.settings import Settings, load
from worker.lsclient import LabelStudioClient, TaskRejected
from worker.predictor import Predictor, SegmenterPredictor

log = logging.getLogger(__name__)

@dataclass
class ChunkOutcome:
    """What one job did; also its RQ job meta while it runs."""

    project: int
    total: int
    model_version: str = ""
    done: int = 0
    skipped: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


Report = Callable[[str, ChunkOutcome], None]
"""Called after each task with the counter that moved (``done``, ``skipped``, ``failed``)."""


def _noop(_: str, __: ChunkOutcome) -> None:
    pass


def preannotate_tasks(project_id: int, task_ids: list[int], *, client: LabelStudioClient,
                      predictor: Predictor, settings: Settings, fetcher: ImageFetcher | None = None,
                      report: Report = _noop, force: bool = False) -> ChunkOutcome:
    """Predict and write each task that has no prediction of the current version yet (every task: ``force``).

    4xx answers fail the task they concern and the chunk goes on; Label Studio down through
    every retry raises :class:`worker.lsclient.LabelStudioDown` so the job is retried later.
    """
    outcome = ChunkOutcome(project_id, len(task_ids))  # the version is read when the network is needed

    def count(name: str, task_id: int, error: str | None = None) -> None:
        setattr(outcome, name, getattr(outcome, name) + 1)
        if error:
            outcome.errors.append(f"task {task_id}: {error}"[:300])
            log.warning("pre-annotation of task %s failed: %s", task_id, error)
        report(name, outcome)

    try:
        project = client.project(project_id)
        target = parse_label_config(project.get("label_config") or "", from_name=settings.from_name or None,
                                    label=settings.label or None)
    except (TaskRejected, ValueError) as exc:
        for task_id in task_ids:
            count("failed", task_id, f"project {project_id}: {exc}")
        return outcome
    fetcher = fetcher or ImageFetcher(settings, client.auth)
    pending: list[int] = []
    for task_id in task_ids:
        pending.append(task_id)
        if len(pending) == max(1, settings.predict_batch):
            _run_batch(pending, client, predictor, settings, fetcher, target, outcome, count, force)
            pending = []
    if pending:
        _run_batch(pending, client, predictor, settings, fetcher, target, outcome, count, force)
    return outcome


def _run_batch(task_ids: list[int], client: LabelStudioClient, predictor: Predictor, settings: Settings,
               fetcher: ImageFetcher, target: BrushTarget, outcome: ChunkOutcome,
               count: Callable[..., None], force: bool = False) -> None:
    """Skip, fetch, predict (one engine batch) and write the tasks of one batch."""
    version = predictor.model_version
    outcome.model_version = version
    todo: list[tuple[int, np.ndarray]] = []
    wanted: list[int] = []
    for task_id in task_ids:
        try:
            if not force and version in client.prediction_versions(task_id):
                count("skipped", task_id)
                continue
        except TaskRejected as exc:
            count("failed", task_id, str(exc))
            continue
        wanted.append(task_id)
    if not wanted:
        return
    try:
        found = client.tasks(outcome.project, wanted)
    except TaskRejected as exc:
        for task_id in wanted:
            count("failed", task_id, str(exc))
        return
    for task_id in wanted:
        task = found.get(task_id)
        if task is None:
            count("failed", task_id, f"not in project {outcome.project} (deleted?)")
            continue
        try:
            todo.append((task_id, load_task_image(task, target, fetcher, settings.max_pixels)))
        except (TaskImageError, ImageError, FetchError) as exc:
            # Written as an empty prediction, as /predict does, so the task is not tried forever.
            _write(client, task_id, [], 0.0, version, count, failed=str(exc), force=force)
    if not todo:
        return
    ran_version, masks = predictor.predict([image for _, image in todo])
    outcome.model_version = ran_version
    for (task_id, _), mask in zip(todo, masks, strict=True):
        result, score = brush_result(mask, target, settings.threshold)
        _write(client, task_id, result, score, ran_version, count, force=force)


def _write(client: LabelStudioClient, task_id: int, result: list[dict[str, Any]], score: float, version: str,
           count: Callable[..., None], failed: str | None = None, force: bool = False) -> None:
    try:
        if not force and version in client.prediction_versions(task_id):  # written meanwhile by /predict or another job
            count("skipped", task_id)
            return
        client.create_prediction(task_id, result, score, version)
    except TaskRejected as exc:
        count("failed", task_id, str(exc))
        return
    count("failed" if failed else "done", task_id, failed)


# -- the RQ entry point ---------------------------------------------------------------------

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

    from worker.progress import RedisProgress

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
                                settings=settings, fetcher=ImageFetcher(settings, auth), report=report)
    if requested_version and requested_version != outcome.model_version:
        log.info("chunk asked for %s, written under the current version %s", requested_version,
                 outcome.model_version)
    return outcome.as_dict()
