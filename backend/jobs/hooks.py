"""Where the serving process hands work to the background: the seam later issues fill in.

Why a seam: the server must answer ``/predict`` inside Label Studio's 100 s and ``/webhook`` at
once, so anything longer is handed over here and never run in the request. Both functions
record what they were given (in process, bounded, visible in ``GET /metrics``).
:func:`enqueue_preannotation` (``/predict``'s overflow) and a ``TASKS_CREATED`` event given to
:func:`enqueue_event` become pre-annotation jobs (:mod:`backend.jobs.queue`: RQ jobs of
``ISNET_PREANNOTATE_BATCH`` tasks, or the in-process thread without ``REDIS_URL``) that predict
the tasks and write the predictions to Label Studio; annotation events ask for a retraining
cycle. :func:`enqueue_event` says what became of an event (:class:`Handover`), so ``/webhook``
answers "queued" only when a job will really run, and "skipped" with the reason otherwise.

Contract for the real pre-annotation job: write each prediction under ``model_version`` (the
version ``/setup`` reports, else Label Studio hides it and predicts the task again), and skip
a task that already has a prediction of that version (an annotator may have opened it, which
makes Label Studio call ``/predict`` for it, before the job got to it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from backend.jobs import inflight
from backend.jobs import queue as work_queue
from backend.jobs.connection import QueueUnavailable
from backend.settings import Settings

__all__ = ["Handover", "QueueUnavailable", "enqueue_event", "enqueue_preannotation", "in_flight", "recorded"]

MAX_RECORDED = 1000
PREANNOTATE_EVENTS = frozenset({"TASKS_CREATED"})
RETRAIN_EVENTS = frozenset({"ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED",
                            "START_TRAINING"})
"""Label changes ask for a retraining cycle of their project (:mod:`backend.jobs.retrain_queue` coalesces them).
``ANNOTATIONS_CREATED`` is the bulk form (Data Manager "Create annotations from predictions")."""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreannotationRequest:
    """Tasks that ``/predict`` had no time for, to be predicted and written in the background."""

    project: str
    """Label Studio's project id (``/predict`` sends ``"<id>.<created timestamp>"``)."""
    task_ids: tuple[int, ...]
    model_version: str
    created: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Handover:
    """What became of a webhook event: ``queued`` (a job will run for it) or ``skipped``, and why."""

    status: str
    reason: str = ""

    def answer(self, action: str) -> dict[str, Any]:
        """The ``/webhook`` answer: status and action, and the reason when there is one."""
        return {"status": self.status, "action": action, **({"reason": self.reason} if self.reason else {})}


def _queued(reason: str = "") -> Handover:
    return Handover("queued", reason)


def _skipped(reason: str) -> Handover:
    return Handover("skipped", reason)


@dataclass(frozen=True)
class WebhookEvent:
    """One Label Studio webhook, as ``model.fit`` received it, and what became of it."""

    action: str
    project_id: int | None
    status: str = ""
    reason: str = ""
    created: float = field(default_factory=time.time)


_lock = threading.Lock()
_preannotations: deque[PreannotationRequest] = deque(maxlen=MAX_RECORDED)
_events: deque[WebhookEvent] = deque(maxlen=MAX_RECORDED)


def enqueue_preannotation(project: str, task_ids: list[int], model_version: str,
                          settings: Settings) -> PreannotationRequest:
    """Queue background pre-annotation of ``task_ids``; returns at once.

    The tasks are held first (:mod:`backend.jobs.inflight`), so ``/predict`` leaves them to the job
    until it wrote them; they are released at once when no job takes them. Called from
    ``/predict``, which must answer whatever happens to Redis: an unreachable queue is logged,
    and the tasks stay unpredicted until the next "Retrieve predictions" or
    ``isnet preannotate --missing``.
    """
    item = PreannotationRequest(project, tuple(task_ids), model_version)
    with _lock:
        _preannotations.append(item)
    project_id = _project_id(project)
    if project_id is None:
        log.warning("pre-annotation of %d task(s) not queued: no project id in %r", len(task_ids), project)
        return item
    holds = inflight.registry(settings)
    if settings.redis_url or settings.label_studio_api_key:  # else no job can write them: nothing to wait for
        holds.hold(project_id, model_version, task_ids)
    try:
        work_queue.submit(project_id, list(task_ids), model_version, settings)
    except QueueUnavailable as exc:
        holds.release(project_id, model_version, task_ids)
        log.error("pre-annotation of %d task(s) not queued: %s", len(task_ids), exc)
    return item


def in_flight(project: str, model_version: str, task_ids: list[int], settings: Settings) -> set[int]:
    """The tasks among ``task_ids`` that background pre-annotation holds: ``/predict`` leaves them to it."""
    project_id = _project_id(project)
    if project_id is None or not task_ids:
        return set()
    return inflight.registry(settings).held(project_id, model_version, task_ids)


def enqueue_event(action: str, project_id: int | None, data: dict[str, Any], settings: Settings) -> Handover:
    """Queue the work a webhook event asks for; returns at once, saying what really happened.

    ``TASKS_CREATED`` queues pre-annotation of the new tasks under ``data["model_version"]`` (the
    caller's current version); annotation events and ``START_TRAINING`` ask for one retraining
    cycle of the project (coalesced; ``START_TRAINING`` forces it past ``ISNET_MIN_NEW_LABELS``).
    An event no job can serve (no project, no tasks, no API key for the in-process worker, a full
    in-process queue) is ``skipped``, with the reason, and logged. Raises
    :class:`QueueUnavailable` when Redis cannot be reached, so ``/webhook`` can say so (503)
    instead of pretending the work was queued.
    """
    try:
        outcome = _hand_over(action, project_id, data, settings)
    except QueueUnavailable as exc:
        _record(WebhookEvent(action, project_id, "unavailable", str(exc)))
        raise
    _record(WebhookEvent(action, project_id, outcome.status, outcome.reason))
    if outcome.status == "skipped":
        log.warning("%s event of project %s skipped: %s", action, project_id, outcome.reason)
    return outcome


def _record(event: WebhookEvent) -> None:
    with _lock:
        _events.append(event)


def _hand_over(action: str, project_id: int | None, data: dict[str, Any], settings: Settings) -> Handover:
    """Submit the event's job, or the reason why there is none."""
    if action not in PREANNOTATE_EVENTS | RETRAIN_EVENTS:
        return _skipped(f"{action} asks for no background work")
    if project_id is None:
        return _skipped("the event names no project id")
    if not settings.redis_url and not settings.label_studio_api_key:
        return _skipped("no LABEL_STUDIO_API_KEY: the in-process worker cannot read tasks or annotations from "
                        "Label Studio nor write predictions (set LABEL_STUDIO_API_KEY)")
    if action in PREANNOTATE_EVENTS:
        return _preannotate(project_id, data, settings)
    return _retrain(project_id, action == "START_TRAINING", settings)


def _preannotate(project_id: int, data: dict[str, Any], settings: Settings) -> Handover:
    """Pre-annotation jobs for the event's tasks; skipped when none could be queued."""
    tasks = data.get("tasks") if isinstance(data.get("tasks"), list) else []
    ids = [t.get("id") if isinstance(t, dict) else t for t in tasks]
    ids = [i for i in ids if isinstance(i, int) and not isinstance(i, bool)]
    if not ids:
        return _skipped("the event lists no task ids")
    parts = len(work_queue.chunks(ids, settings.preannotate_batch))
    submitted = len(work_queue.submit(project_id, ids, str(data.get("model_version") or ""), settings))
    if settings.redis_url:  # a chunk not submitted again is already queued under the same id
        return _queued() if submitted else _queued("already queued")
    if not submitted:
        return _skipped(f"the in-process queue is full (ISNET_LOCAL_QUEUE={settings.local_queue} tasks waiting)")
    if submitted < parts:
        return _queued(f"{parts - submitted} of {parts} chunk(s) dropped: the in-process queue is full")
    return _queued()


def _retrain(project_id: int, force: bool, settings: Settings) -> Handover:
    """A retraining cycle for the project (one already waiting takes this event in)."""
    from backend.jobs import retrain_queue

    try:
        job = retrain_queue.submit(project_id, force=force, settings=settings)
    except retrain_queue.RetrainQueueFull as exc:
        return _skipped(str(exc))
    if job is None:
        return _queued(f"joins the retraining cycle of project {project_id} already waiting")
    return _queued()


def _project_id(project: str) -> int | None:
    """Label Studio's ``"<id>.<created timestamp>"`` (or a plain id) as the id."""
    head = str(project).split(".", 1)[0].strip()
    return int(head) if head.isdigit() else None


def progress(settings: Settings) -> dict[str, Any]:
    """Pre-annotation counters (total/done/skipped/failed) from every worker, for ``/metrics``."""
    return work_queue.progress(settings)


def recorded() -> dict[str, Any]:
    """What was handed over so far (newest last), for ``/metrics`` and tests."""
    with _lock:
        pre = [asdict(p) for p in _preannotations]
        events = [asdict(e) for e in _events]
    return {
        "preannotation_requests": len(pre),
        "preannotation_tasks": sum(len(p["task_ids"]) for p in pre),
        "last_preannotation": pre[-1] if pre else None,
        "events": len(events),
        "last_event": events[-1] if events else None,
    }


def attach_pipeline(pipeline: Any) -> None:
    """Without Redis, let the in-process pre-annotation thread share the server's task pipeline."""
    from backend.jobs.local import attach_pipeline as attach

    attach(pipeline)
