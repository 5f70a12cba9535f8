"""One pre-annotation job: predict a chunk of a project's tasks and write the predictions to Label Studio.

Why it is idempotent: a job may run twice (a worker killed mid-chunk, a retry after Label
Studio was down, the webhook and ``/predict``'s overflow naming the same task). Before a task is
predicted, and again just before its prediction is written, the job asks Label Studio whether the
task already has a prediction of the current model version; if so the task is skipped. Re-running
after a crash therefore finishes only what is missing and adds no duplicates.

Why it reports to :mod:`backend.jobs.inflight`: ``/predict`` leaves a handed-over task to the job while
it is held. A stored prediction turns the hold into a written mark (a ``/predict`` already under
way must not answer the task too); a task that failed, or a chunk that stopped, is released so the
next "Retrieve predictions" tries again.

Why through :class:`backend.pipeline.TaskPipeline`: a task is fetched, cached, segmented and
turned into a brush result exactly as ``/predict`` does it, score included; in-process the
pipeline (and so its cache) is the server's own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from backend.jobs.inflight import InFlight, registry
from backend.labelstudio.client import LabelStudioClient, TaskRejected
from backend.labelstudio.config import BrushTarget, parse_label_config
from backend.pipeline import LOAD_ERRORS, TaskImage, TaskPipeline
from backend.service.inference import PRIORITY_BACKGROUND
from backend.settings import Settings

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


BACKGROUND_WAIT_S = 3600.0
"""How long a background batch may wait for the network (behind every ``/predict``) before it fails."""


def preannotate_tasks(project_id: int, task_ids: list[int], *, client: LabelStudioClient,
                      pipeline: TaskPipeline, settings: Settings, report: Report = _noop, force: bool = False,
                      held_version: str = "", inflight: InFlight | None = None) -> ChunkOutcome:
    """Predict and write each task that has no prediction of the current version yet (every task: ``force``).

    4xx answers fail the task they concern and the chunk goes on; Label Studio down through
    every retry raises :class:`backend.labelstudio.client.LabelStudioDown` so the job is retried later.
    ``held_version``: the version the tasks were handed over under, whose holds are settled
    (``inflight``, by default the one ``settings`` name).
    """
    chunk = _Chunk(project_id, task_ids, client, pipeline, settings, report, force,
                   inflight or registry(settings), held_version)
    try:
        chunk.run()
    finally:
        chunk.release_unresolved()
    return chunk.outcome


class _Chunk:
    """One chunk's run: its counters, and what each task's hold becomes."""

    def __init__(self, project_id: int, task_ids: list[int], client: LabelStudioClient, pipeline: TaskPipeline,
                 settings: Settings, report: Report, force: bool, inflight: InFlight, held_version: str) -> None:
        self.task_ids = task_ids
        self.client = client
        self.pipeline = pipeline
        self.settings = settings
        self.report = report
        self.force = force
        self.inflight = inflight
        self.held_version = held_version
        self.outcome = ChunkOutcome(project_id, len(task_ids))  # the version is read when the network is needed
        self.resolved: set[int] = set()

    def run(self) -> None:
        """The project's brush target, then the tasks in engine batches of ``ISNET_PREDICT_BATCH``."""
        try:
            project = self.client.project(self.outcome.project)
            target = parse_label_config(project.get("label_config") or "", from_name=self.settings.from_name or None,
                                        label=self.settings.label or None)
        except (TaskRejected, ValueError) as exc:
            for task_id in self.task_ids:
                self.fail(task_id, f"project {self.outcome.project}: {exc}")
            return
        size = max(1, self.settings.predict_batch)
        for start in range(0, len(self.task_ids), size):
            self.run_batch(self.task_ids[start:start + size], target)

    def run_batch(self, task_ids: list[int], target: BrushTarget) -> None:
        """Skip, load, predict (one engine batch) and write the tasks of one batch."""
        version = self.pipeline.model_version
        self.outcome.model_version = version
        wanted = [task_id for task_id in task_ids if self.missing(task_id, version)]
        if not wanted:
            return
        try:
            found = self.client.tasks(self.outcome.project, wanted)
        except TaskRejected as exc:
            for task_id in wanted:
                self.fail(task_id, str(exc))
            return
        todo: list[tuple[int, dict[str, Any], TaskImage | Exception]] = []
        for task_id in wanted:
            task = found.get(task_id)
            if task is None:
                self.fail(task_id, f"not in project {self.outcome.project} (deleted?)")
                continue
            try:
                todo.append((task_id, task, self.pipeline.load(task, target)))
            except LOAD_ERRORS as exc:
                todo.append((task_id, task, exc))
        if not todo:
            return
        predictions = self.pipeline.run([task for _, task, _ in todo], [item for _, _, item in todo], target,
                                        time.monotonic() + BACKGROUND_WAIT_S, PRIORITY_BACKGROUND, strict=True)
        for (task_id, _, _), prediction in zip(todo, predictions, strict=True):
            if prediction is None:
                self.fail(task_id, "the network was busy for the whole wait")
                continue
            self.outcome.model_version = prediction.model_version
            # A failed image is written as an empty prediction, as /predict does, so it is not tried forever.
            self.write(task_id, prediction.result, prediction.score, prediction.model_version, prediction.error)

    def missing(self, task_id: int, version: str) -> bool:
        """True when the task still needs a prediction of ``version`` (always with ``force``); else counted."""
        if self.force:
            return True
        try:
            if self.client.find_prediction(task_id, version) is None:
                return True
        except TaskRejected as exc:
            self.fail(task_id, str(exc))
            return False
        self.stored("skipped", task_id, version)
        return False

    def write(self, task_id: int, result: list[dict[str, Any]], score: float, version: str,
              failed: str | None = None) -> None:
        """Write one prediction, looking first whether ``/predict`` or another job wrote one meanwhile."""
        if not self.missing(task_id, version):
            return
        try:
            self.client.create_prediction(task_id, result, score, version)
        except TaskRejected as exc:
            self.fail(task_id, str(exc))
            return
        self.stored("failed" if failed else "done", task_id, version, failed)

    def stored(self, name: str, task_id: int, version: str, error: str | None = None) -> None:
        """The task has its prediction of ``version`` in Label Studio: its hold becomes a written mark."""
        project = self.outcome.project
        self.inflight.written(project, version, [task_id])
        if self.held_version and self.held_version != version:
            self.inflight.release(project, self.held_version, [task_id])
        self.count(name, task_id, error)

    def fail(self, task_id: int, error: str) -> None:
        """The task got no prediction: released, so the next ``/predict`` may answer it."""
        self.release([task_id])
        self.count("failed", task_id, error)

    def release(self, task_ids: list[int]) -> None:
        for version in {self.held_version, self.outcome.model_version} - {""}:
            self.inflight.release(self.outcome.project, version, task_ids)

    def release_unresolved(self) -> None:
        """Tasks the chunk never got to (it stopped on an error) are released too."""
        rest = [task_id for task_id in self.task_ids if task_id not in self.resolved]
        if rest:
            self.release(rest)

    def count(self, name: str, task_id: int, error: str | None = None) -> None:
        self.resolved.add(task_id)
        setattr(self.outcome, name, getattr(self.outcome, name) + 1)
        if error:
            self.outcome.errors.append(f"task {task_id}: {error}"[:300])
            log.warning("pre-annotation of task %s failed: %s", task_id, error)
        self.report(name, self.outcome)
