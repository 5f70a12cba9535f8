"""Pre-annotation without Redis: one background thread in the server process.

Why one thread and a bounded queue: the server's network is busy answering ``/predict``; the
thread uses the server's own :class:`backend.pipeline.TaskPipeline` (its cache, and its inference
thread below every ``/predict`` job) one small batch at a time, so an annotator waits at most
for one batch. When
more than ``ISNET_LOCAL_QUEUE`` tasks are waiting, new chunks are dropped with a log line
("Retrieve predictions" or ``isnet preannotate --missing`` fills them in later) instead of
growing memory without bound; :func:`backend.jobs.hooks.enqueue_event` says so in the webhook answer.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from backend.jobs import inflight
from backend.jobs.preannotate import ChunkOutcome, preannotate_tasks
from backend.jobs.progress import LocalProgress
from backend.labelstudio.client import LabelStudioClient
from backend.labelstudio.fetch import ImageFetcher
from backend.pipeline import Pipelines, TaskPipeline
from backend.service.inference import DirectInference
from backend.settings import Settings

log = logging.getLogger(__name__)

_lock = threading.Lock()
_runner: LocalRunner | None = None
_pipeline: Pipelines | None = None


class LocalRunner:
    """A daemon thread working through chunks in order."""

    def __init__(self, settings: Settings, pipeline: Pipelines | None = None) -> None:
        self.settings = settings
        self._pipeline = pipeline
        self._queue: queue.Queue[tuple[int, list[int], str]] = queue.Queue()
        self._waiting = 0
        self._lock = threading.Lock()
        self.progress = LocalProgress()
        self.dropped = 0
        self.chunks_done = 0
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._run, name="isnet-preannotate", daemon=True)
        self._thread.start()

    def submit(self, project_id: int, parts: list[list[int]], model_version: str) -> list[str]:
        ids = []
        for n, part in enumerate(parts):
            with self._lock:
                if self._waiting + len(part) > self.settings.local_queue:
                    self.dropped += len(part)
                    log.warning("in-process pre-annotation queue is full: %d task(s) dropped", len(part))
                    inflight.registry(self.settings).release(project_id, model_version, part)  # /predict may take them
                    continue
                self._waiting += len(part)
                self._idle.clear()
            self.progress.incr("total", len(part))
            self._queue.put((project_id, part, model_version))
            ids.append(f"local-{project_id}-{n}")
        return ids

    def wait_idle(self, timeout: float) -> bool:
        """True once every submitted chunk is finished (for tests and shutdown)."""
        return self._idle.wait(timeout)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            waiting = self._waiting
        return {**self.progress.snapshot(), "waiting": waiting, "dropped": self.dropped,
                "chunks_done": self.chunks_done, "queued_chunks": self._queue.qsize()}

    def pipeline(self, client: LabelStudioClient, project_id: int) -> TaskPipeline:
        """The project's pipeline: the server's if attached, else one with networks of its own, loaded
        on first need."""
        if self._pipeline is None:
            self._pipeline = _pipeline or Pipelines(self.settings, DirectInference(self.settings),
                                                    ImageFetcher(self.settings, client.auth))
        return self._pipeline.for_project(project_id)

    def _run(self) -> None:
        client = LabelStudioClient.from_settings(self.settings)
        while True:
            project_id, part, version = self._queue.get()
            try:
                preannotate_tasks(project_id, part, client=client, pipeline=self.pipeline(client, project_id),
                                  settings=self.settings, report=self._report, held_version=version)
            except Exception:  # Label Studio down through every retry, or a bug: this chunk only
                log.exception("in-process pre-annotation of %d task(s) failed", len(part))
                self.progress.incr("failed", len(part))
            finally:
                with self._lock:
                    self._waiting -= len(part)
                    self.chunks_done += 1
                    if self._waiting == 0:
                        self._idle.set()

    def _report(self, name: str, _: ChunkOutcome) -> None:
        self.progress.incr(name)


def attach_pipeline(pipeline: Pipelines | None) -> None:
    """Let the in-process thread share the server's pipelines (their cache and inference thread)."""
    global _pipeline
    _pipeline = pipeline


def runner(settings: Settings, pipeline: Pipelines | None = None) -> LocalRunner:
    """The process's runner, started on first use."""
    global _runner
    with _lock:
        if _runner is None:
            _runner = LocalRunner(settings, pipeline)
        return _runner


def current_runner() -> LocalRunner | None:
    return _runner


def reset() -> None:
    """Forget the runner (tests); its thread finishes what it has and then idles."""
    global _runner, _pipeline
    with _lock:
        _runner, _pipeline = None, None
