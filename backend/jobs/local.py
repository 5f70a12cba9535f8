"""Pre-annotation without Redis: one background thread in the server process.

Why one thread and a bounded queue: the server's network is busy answering ``/predict``; the
thread borrows it (:class:`backend.jobs.predictor.ServicePredictor`, below every ``/predict`` job in the
inference queue) one small batch at a time, so an annotator waits at most for one batch. When
more than ``ISNET_LOCAL_QUEUE`` tasks are waiting, new chunks are dropped with a log line
("Retrieve predictions" or ``isnet preannotate --missing`` fills them in later) instead of
growing memory without bound; :func:`backend.jobs.hooks.enqueue_event` says so in the webhook answer.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from backend.isnet import calibration_sample
from backend.jobs import inflight
from backend.jobs.preannotate import ChunkOutcome, preannotate_tasks
from backend.jobs.predictor import Predictor, SegmenterPredictor, ServicePredictor
from backend.jobs.progress import LocalProgress
from backend.labelstudio.client import LabelStudioClient
from backend.service.inference import InferenceService
from backend.settings import Settings

log = logging.getLogger(__name__)

_lock = threading.Lock()
_runner: LocalRunner | None = None
_service: InferenceService | None = None


class LocalRunner:
    """A daemon thread working through chunks in order."""

    def __init__(self, settings: Settings, predictor: Predictor | None = None) -> None:
        self.settings = settings
        self._predictor = predictor
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
                "chunks_done": self.chunks_done}

    @property
    def model_version(self) -> str:
        return self._predictor_now().model_version

    def predict(self, images: Sequence[np.ndarray]) -> tuple[str, list[np.ndarray]]:
        """Masks for ``images``; each image is offered to the int8 calibration sample, as ``/predict`` does."""
        version, masks = self._predictor_now().predict(images)
        for image in images:
            calibration_sample.offer(image, self.settings)
        return version, masks

    def _predictor_now(self) -> Predictor:
        """The server's inference thread if attached, else a network of its own, loaded on first need."""
        if self._predictor is None:
            self._predictor = ServicePredictor(_service) if _service is not None else SegmenterPredictor(self.settings)
        return self._predictor

    def _run(self) -> None:
        client = LabelStudioClient.from_settings(self.settings)
        while True:
            project_id, part, version = self._queue.get()
            try:
                preannotate_tasks(project_id, part, client=client, predictor=self,
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


def attach_service(service: InferenceService | None) -> None:
    """Let the in-process thread share the server's inference thread instead of loading a network."""
    global _service
    _service = service


def runner(settings: Settings, predictor: Predictor | None = None) -> LocalRunner:
    """The process's runner, started on first use."""
    global _runner
    with _lock:
        if _runner is None:
            _runner = LocalRunner(settings, predictor)
        return _runner


def current_runner() -> LocalRunner | None:
    return _runner


def reset() -> None:
    """Forget the runner (tests); its thread finishes what it has and then idles."""
    global _runner, _service
    with _lock:
        _runner, _service = None, None
