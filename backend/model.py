"""The Label Studio ML backend model: Label Studio JSON in, ISNet brush predictions out.

Shaped like a label-studio-ml model so its users feel at home: :meth:`ISNetModel.setup`,
:meth:`ISNetModel.predict` (``tasks, context=None, **kwargs`` -> one prediction dict per task)
and :meth:`ISNetModel.fit` (``event, data, **kwargs``). One instance lives per server process,
because the network is loaded once; the labeling config comes with every call.

Why it stays thin: a task's prediction (fetch, hash, cache, decode, segment, brush result) is
:class:`backend.pipeline.TaskPipeline`, shared with background pre-annotation; inference is
:mod:`backend.service.inference`, and the HTTP protocol is :mod:`backend.server`. This module
decides what happens to each task of a request:

* it goes through the pipeline of the project's lineage (:mod:`backend.learning.lineages`: each
  Label Studio project serves its own model versions) in chunks of ``ISNET_PREDICT_BATCH`` images (one engine batch
  each), the next chunk fetched while the current one is in the network;
* a task that fails (no image field, unreachable or refused URL, not an image, too large)
  gets an empty ``result`` and the request goes on;
* ``ISNET_PREDICT_BUDGET`` bounds the request (Label Studio gives up after 100 s and then
  stores nothing): tasks that do not fit are handed to background pre-annotation and answered
  with an entry that has no ``result`` key. Label Studio 1.23 skips such an entry and stores
  nothing for that task (``ml/models.py``, ``_get_predictions_from_ml_backend``), so the task
  is still "unpredicted": the background job, opening the task, or the next "Retrieve
  predictions" fills it in, under the current model version, without duplicates.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from backend.interactive import InteractiveAnnotator, has_prompts
from backend.isnet.versions import BASE
from backend.jobs import hooks
from backend.jobs.retrain_status import latest_report, lineage_reports
from backend.labelstudio.config import BrushTarget, LabelConfigError, parse_label_config
from backend.labelstudio.fetch import ImageFetcher
from backend.learning.lineages import lineage_for, shared_with
from backend.learning.registry import ModelRegistry
from backend.learning.retention import disk_usage
from backend.pipeline import LOAD_ERRORS, Pipelines, TaskImage, TaskPipeline
from backend.redaction import redact_data
from backend.service.inference import PRIORITY_BATCH, PRIORITY_INTERACTIVE, InferenceService, VersionWatcher
from backend.service.logs import current_request_id
from backend.service.stats import Stats
from backend.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["ISNetModel", "LabelConfigError"]

TRAINING_EVENTS = frozenset(
    {"ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "START_TRAINING",
     "TASKS_CREATED"}
)
PROJECT_DELETED = "PROJECT_DELETED"
FETCH_THREADS = 4
SETUP_LOAD_WAIT_S = 2.0
"""How long ``/setup`` waits for a lineage's new current version to load before naming it (Label
Studio gives ``/setup`` 3 s): one that fails to load is never reported (see :meth:`ISNetModel.version_for`)."""
MAX_EVENTS = 100


def _project_uid(tasks: list[dict[str, Any]], project: Any) -> str:
    """Label Studio's ``"<id>.<timestamp>"`` from the request, else the first task's project id."""
    if project:
        return str(project)
    return str(tasks[0].get("project", "")) if tasks and isinstance(tasks[0], dict) else ""


class ISNetModel:
    """ISNet pre-annotations as Label Studio brush predictions."""

    def __init__(self, settings: Settings, stats: Stats | None = None,
                 service: InferenceService | None = None) -> None:
        self.settings = settings
        self.stats = stats or Stats()
        self.watcher = service.watcher if service else VersionWatcher(self.settings)
        self.service = service
        self.pipelines: Pipelines | None = None
        self.events: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS)
        self._setup_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="isnet-fetch")
        self.fetcher = ImageFetcher(self.settings)
        """The one image fetcher: the pipelines (requests, background, prompts) use this object."""
        self.interactive: InteractiveAnnotator | None = None

    # -- label-studio-ml interface ----------------------------------------------------------

    def setup(self) -> str:
        """Load the base model version and start inference (once); the base version's name."""
        with self._setup_lock:
            if self.service is None:
                self.service = InferenceService(self.settings, self.watcher)
                self.service.start()
            if self.pipelines is None:
                self.pipelines = Pipelines(self.settings, self.service, self.fetcher, stats=self.stats)
                # Without Redis, background pre-annotation shares these pipelines: their cache and inference thread.
                hooks.attach_pipeline(self.pipelines)
            if self.interactive is None:
                self.interactive = InteractiveAnnotator(self.settings)
        return self.model_version

    @property
    def model_version(self) -> str:
        """The base lineage's served version: what a request without a project is served (never waits)."""
        return self.version_for(None, wait_s=0.0)

    def version_for(self, project: Any, wait_s: float = SETUP_LOAD_WAIT_S) -> str:
        """What ``/setup`` reports for ``project`` (without one, the base lineage's): the version its
        lineage is served with, its current one unless that fails to load (a cheap ``stat`` between
        calls; after a switch, up to ``wait_s`` to try loading the new version first)."""
        lineage = lineage_for(project, self.settings)
        if self.service is None:
            return self.watcher.current(lineage).name
        return self.service.served_version(lineage, wait_s)

    def pipeline(self, project: Any = None) -> TaskPipeline:
        """The task pipeline of ``project``'s lineage."""
        if self.pipelines is None:
            self.setup()
        assert self.pipelines is not None
        return self.pipelines.for_project(project)

    def check_label_config(self, label_config: str) -> BrushTarget:
        """The brush target of a config, or :class:`LabelConfigError` saying what is missing."""
        return parse_label_config(label_config, from_name=self.settings.from_name or None,
                                  label=self.settings.label or None)

    def use_label_studio_token(self, access_token: str | None) -> None:
        """Fall back on the token ``/setup`` carries when ``LABEL_STUDIO_API_KEY`` is not set.

        It is the project creator's legacy token, so it only works where legacy tokens are enabled.
        """
        if access_token and not self.settings.label_studio_api_key:
            self.fetcher.use_token(access_token)

    def predict(self, tasks: list[dict[str, Any]], context: dict[str, Any] | None = None,
                **kwargs: Any) -> list[dict[str, Any]]:
        """One prediction dict per task, in order.

        ``kwargs``: ``label_config`` (required), ``project`` (Label Studio's ``"<id>.<ts>"``, for
        deferred tasks) and ``deadline`` (``time.monotonic()`` value; default now + budget).
        Raises :class:`LabelConfigError` for a config without a usable ``BrushLabels``.
        """
        if self.service is None or self.pipelines is None or self.interactive is None:
            self.setup()
        assert self.service is not None
        target = self.check_label_config(kwargs.get("label_config") or "")
        deadline = kwargs.get("deadline") or time.monotonic() + self.settings.predict_budget
        pipeline = self.pipeline(_project_uid(tasks, kwargs.get("project")))
        if has_prompts(context) and len(tasks) == 1:
            return [self._interactive(pipeline, tasks[0], context or {}, kwargs["label_config"], target, deadline)]
        priority = PRIORITY_INTERACTIVE if len(tasks) == 1 else PRIORITY_BATCH
        version = pipeline.model_version
        answers: list[dict[str, Any] | None] = [None] * len(tasks)
        for i in self._in_flight(tasks, version, kwargs.get("project")):  # the background writes these
            answers[i] = {"model_version": version, "score": 0.0}
        todo = [i for i, answer in enumerate(answers) if answer is None]
        batch = max(1, self.settings.predict_batch)
        chunks = [todo[i:i + batch] for i in range(0, len(todo), batch)]
        prefetch: dict[int, Future] = {}
        for c, chunk in enumerate(chunks):
            if self.service.fits(1, deadline) == 0:
                break
            for i in chunk:  # fetched in parallel (the first chunk; later ones were prefetched)
                if i not in prefetch:
                    prefetch[i] = self._pool.submit(pipeline.load, tasks[i], target)
            loaded = [self._take(prefetch.pop(i), tasks[i]) for i in chunk]
            if c + 1 < len(chunks):  # fetch the next chunk while this one is in the network
                for i in chunks[c + 1]:
                    prefetch[i] = self._pool.submit(pipeline.load, tasks[i], target)
            predictions = pipeline.run([tasks[i] for i in chunk], loaded, target, deadline, priority,
                                       current_request_id())
            for i, prediction in zip(chunk, predictions, strict=True):
                if prediction is not None:
                    answers[i] = prediction.as_answer()
                    version = prediction.model_version if not prediction.cached else version
            if any(answers[i] is None for i in chunk):
                break
        for fut in prefetch.values():
            fut.cancel()
        self._defer(tasks, answers, version, kwargs.get("project"))
        return [a if a is not None else {"model_version": version, "score": 0.0} for a in answers]

    def fit(self, event: str, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Record a Label Studio event and hand it to the background; returns at once.

        ``TASKS_CREATED`` becomes pre-annotation jobs; annotation events and ``START_TRAINING``
        one coalesced retraining job per project (:mod:`backend.jobs.retrain_queue`);
        ``PROJECT_DELETED`` retires the project's lineage (its versions stay on disk).
        """
        project = data.get("project")
        project_id = project.get("id") if isinstance(project, dict) else project
        project_id = project_id if isinstance(project_id, int) else None
        self.events.append({"action": event, "project": project_id, "time": time.time()})
        self.stats.incr(f"webhook.{event if event in TRAINING_EVENTS else 'other'}")
        if event == PROJECT_DELETED and project_id is not None:
            return self._retire(project_id)
        if event not in TRAINING_EVENTS:
            return {"status": "ignored", "action": event}
        if event == "TASKS_CREATED":  # pre-annotated under the version /setup reports now for that project
            data = {**data, "model_version": self.version_for(project_id, wait_s=0.0)}
        # "queued", or "skipped" and why (no API key, no tasks...); QueueUnavailable: /webhook answers 503
        return hooks.enqueue_event(event, project_id, data, self.settings).answer(event)

    def _retire(self, project_id: int) -> dict[str, Any]:
        """A deleted project's lineage stops being served (unless other projects share it)."""
        lineage = lineage_for(project_id, self.settings)
        others = [p for p in shared_with(lineage, self.settings) if p != project_id]
        if lineage == BASE or others:
            return {"status": "ignored", "action": PROJECT_DELETED,
                    "reason": f"lineage {lineage} serves other projects"}
        retired = ModelRegistry(self.settings, lineage).retire()
        if self.service is not None:
            self.service.forget(lineage)
        log.info("project %s deleted: lineage %s retired (was serving %s)", project_id, lineage, retired)
        return {"status": "retired", "action": PROJECT_DELETED, "lineage": lineage, "version": retired}

    # -- metrics --------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """Engine, device and version for ``/health``."""
        info = self.service.describe() if self.service else {}
        return {"model_version": self.model_version, "engine": info.get("engine"),
                "device": info.get("device") or self.settings.device,
                "precision": info.get("precision"), "input_size": info.get("input_size"),
                **{key: info[key] for key in ("engine_reason", "engine_fallback", "engine_upgrade") if info.get(key)}}

    def metrics(self) -> dict[str, Any]:
        """What ``/metrics`` shows of the model, secrets masked (errors may quote URLs and REDIS_URL)."""
        return redact_data({
            "model_version": self.model_version,
            "model_pointer_error": self.watcher.last_error,
            "inference": self.service.describe() if self.service else None,
            "cache": self._cache_metrics(),
            "handed_over": hooks.recorded(),
            "preannotation": hooks.progress(self.settings),
            "last_events": list(self.events)[-10:],
            "retraining": latest_report(self.settings),
            "lineages": lineage_reports(self.settings),
            "disk": disk_usage(self.settings),
        })

    # -- one chunk ------------------------------------------------------------------------

    def _cache_metrics(self) -> dict[str, int] | None:
        cache = self.pipelines.cache if self.pipelines else None
        return {"entries": len(cache), "bytes": cache.bytes, "max_bytes": cache.max_bytes} if cache else None

    @staticmethod
    def _take(fut: Future, task: dict[str, Any]) -> TaskImage | Exception:
        """A loaded task, or the exception that makes it a failed task."""
        try:
            return fut.result()
        except LOAD_ERRORS as exc:
            return exc
        except Exception as exc:  # a bug must cost one task, not the batch
            log.exception("preparing task %s failed", task.get("id"))
            return exc

    def _interactive(self, pipeline: TaskPipeline, task: dict[str, Any], context: dict[str, Any],
                     label_config: str, target: BrushTarget, deadline: float) -> dict[str, Any]:
        """A smart-tool prompt: that object's brush region(s), or an empty result and a logged reason."""
        assert self.interactive is not None
        self.stats.incr("interactive.requests")
        try:
            return self.interactive.predict(pipeline, task, context, label_config, target, deadline,
                                            current_request_id())
        except LOAD_ERRORS as exc:
            return pipeline.failed(task, exc).as_answer()
        except Exception as exc:  # a bug in one prompt must not become a 500 in the editor
            log.exception("interactive prompt on task %s failed", task.get("id"))
            return pipeline.failed(task, exc).as_answer()

    def _in_flight(self, tasks: list[dict[str, Any]], version: str, project: Any) -> list[int]:
        """Positions of the tasks handed to background pre-annotation that it has not written yet.

        They get the entry without ``result``: Label Studio stores nothing for them, so the
        background's prediction stays the only one.
        """
        ids = [t.get("id") if isinstance(t, dict) else None for t in tasks]
        held = hooks.in_flight(_project_uid(tasks, project), version, [i for i in ids if isinstance(i, int)],
                               self.settings)
        return [n for n, task_id in enumerate(ids) if task_id in held]

    def _defer(self, tasks: list[dict[str, Any]], answers: list[dict[str, Any] | None], version: str,
               project: Any) -> None:
        ids = [t.get("id") for t, a in zip(tasks, answers, strict=True) if a is None and isinstance(t, dict)]
        ids = [i for i in ids if isinstance(i, int)]
        if not ids:
            return
        project_uid = _project_uid(tasks, project)
        hooks.enqueue_preannotation(project_uid, ids, version, self.settings)
        self.stats.incr("tasks.deferred", len(ids))
        log.info("budget spent: %d task(s) handed to background pre-annotation", len(ids),
                 extra={"task_ids": ids[:20], "project": project_uid})
