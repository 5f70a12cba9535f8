"""The one thread that runs the network, and the model version it serves.

Why a dedicated thread: a forward pass at 1024 takes seconds of CPU, and Label Studio marks a
backend Disconnected when ``/health`` (1 s) or ``/setup`` (3 s) is late. Request threads only
queue jobs here and wait; the network runs one job at a time (concurrent passes would only
fight over the same cores and multiply memory), torch releases the GIL while it computes, and
``/health`` never touches this thread. Smart-tool prompts go first, then single-task requests
(an annotator opening a task), then the chunks of a large "Retrieve predictions" batch.

Why deadlines live here: a job may wait behind others, so only when it starts is it known how
much of its request's time is left. A job runs as many of its images as the measured
seconds-per-image says fit, and hands the rest back as ``None`` for the caller to defer.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backend.isnet.registry import ModelRegistry, ModelVersion
from backend.isnet.segmenter import Segmenter
from backend.isnet.weights import WeightCache
from backend.service.logs import reset_request_id, set_request_id
from backend.settings import Settings, check_input_size

log = logging.getLogger(__name__)

# Weight of the newest measurement in the seconds-per-image estimate.
_EWMA = 0.3
PRIORITY_PROMPT = 0
"""A smart-tool prompt: an annotator waits in the editor."""
PRIORITY_INTERACTIVE = 1
"""A single-task ``/predict``: an annotator opened a task."""
PRIORITY_BATCH = 2
"""A chunk of a large "Retrieve predictions" request."""
PRIORITY_BACKGROUND = 3
"""Background pre-annotation sharing the server's thread: it waits whenever anyone else does."""


def load_segmenter(settings: Settings, version: ModelVersion) -> Segmenter:
    """The segmenter for ``version`` with the configured engine and input size."""
    from backend.isnet.engines import create_engine

    size = check_input_size(settings.input_size)
    return Segmenter(create_engine(settings.engine, version, settings, size), size)


def _stat_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class VersionWatcher:
    """``ModelRegistry(settings).current()``, re-read only when a file that decides it changed.

    Every ``/setup`` and ``/predict`` asks for the current version; a few ``stat`` calls make
    that free, while the registry itself may hash a 176 MB checkpoint. A ``CURRENT`` pointer
    that names a broken version keeps the last good one in service (and says so in the log).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = ModelRegistry(settings)
        self._lock = threading.Lock()
        self._key: tuple[Any, ...] | None = None
        self._version: ModelVersion | None = None
        self.last_error: str | None = None

    def _fingerprint(self) -> tuple[Any, ...]:
        paths = [self.registry.current_file, WeightCache(self.settings).manifest_path]
        if self.settings.weights:
            paths.append(Path(self.settings.weights).expanduser())
        return tuple(_stat_key(p) for p in paths)

    def current(self) -> ModelVersion:
        key = self._fingerprint()
        with self._lock:
            if key == self._key and self._version is not None:
                return self._version
            try:
                version = self.registry.current()
            except (KeyError, OSError, RuntimeError) as exc:
                if self._version is None:
                    raise
                if self.last_error != str(exc):
                    log.error("model pointer is broken, still serving %s: %s", self._version.name, exc)
                self.last_error = str(exc)
                self._key = key
                return self._version
            self._key, self._version, self.last_error = key, version, None
            return version


@dataclass
class InferenceOutcome:
    """Masks in the order of the images given; ``None`` where an image did not fit the deadline."""

    model_version: str
    masks: list[np.ndarray | None]
    seconds: float = 0.0


@dataclass(order=True)
class _Job:
    priority: int
    seq: int
    images: Sequence[np.ndarray] = field(compare=False)
    deadline: float = field(compare=False)
    request_id: str = field(compare=False)
    future: Future = field(compare=False)
    size: int | None = field(default=None, compare=False)


class InferenceService:
    """Serialises every forward pass on one thread; reloads the segmenter when the version changes."""

    def __init__(self, settings: Settings, watcher: VersionWatcher,
                 loader: Callable[[Settings, ModelVersion], Segmenter] = load_segmenter) -> None:
        self.settings = settings
        self.watcher = watcher
        self._loader = loader
        self._version = watcher.current()
        self._segmenter = loader(settings, self._version)
        self._queue: queue.PriorityQueue[_Job] = queue.PriorityQueue()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._busy_since: float | None = None
        self.seconds_per_image: float | None = None
        self.images_done = 0
        self.batches_done = 0
        self.reloads = 0

    # -- lifecycle ----------------------------------------------------------------------

    def start(self, warmup: bool = True) -> None:
        """Start the inference thread; ``warmup`` runs one image first to measure seconds per image."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="isnet-inference", daemon=True)
        self._thread.start()
        if warmup:
            size = self._segmenter.size
            self._submit([np.full((size, size, 3), 127, np.uint8)], time.monotonic() + 3600, PRIORITY_BATCH, "warmup")

    def stop(self) -> None:
        self._stop.set()
        self._queue.put(_Job(-1, -1, [], 0.0, "stop", Future()))
        if self._thread is not None:
            self._thread.join(timeout=30)

    # -- what request threads call ----------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def model_version(self) -> str:
        """The version the loaded network is (the next job may reload first)."""
        return self._version.name

    @property
    def identity(self) -> tuple[str, str, int]:
        """(model version, engine, input size): what a cached result must match besides the image.

        The version is the one being served now, not the one loaded: after a switch, the next job
        reloads first, so a result cached under the old version must not answer for the new one.
        """
        return self.watcher.current().name, self._segmenter.engine.name, self._segmenter.size

    def fits(self, count: int, deadline: float) -> int:
        """How many of ``count`` images one job could run before ``deadline`` if it started now."""
        remaining = deadline - time.monotonic()
        if remaining <= 0 or count <= 0:
            return 0
        if self.seconds_per_image is None:
            return 1  # nothing measured yet: one image, to learn the speed
        return min(count, int(remaining // self.seconds_per_image))

    def predict(self, images: Sequence[np.ndarray], deadline: float, priority: int = PRIORITY_BATCH,
                request_id: str = "-", size: int | None = None) -> InferenceOutcome:
        """Masks for ``images`` as one engine batch; blocks until the inference thread is done.

        ``size`` runs the same engine at another input size (interactive crops); the default is
        the serving size.
        """
        if not images:
            return InferenceOutcome(self.model_version, [])
        return self._submit(images, deadline, priority, request_id, size).result()

    def describe(self) -> dict[str, Any]:
        busy = self._busy_since
        return {
            **self._segmenter.describe(),
            "model_version": self._version.name,
            "seconds_per_image": None if self.seconds_per_image is None else round(self.seconds_per_image, 3),
            "queued_jobs": self._queue.qsize(),
            "busy_for_s": None if busy is None else round(time.monotonic() - busy, 1),
            "images": self.images_done,
            "batches": self.batches_done,
            "reloads": self.reloads,
            "torch_threads": _torch_threads(),
            "cpus": os.cpu_count(),
        }

    # -- the inference thread -----------------------------------------------------------

    def _submit(self, images: Sequence[np.ndarray], deadline: float, priority: int, request_id: str,
                size: int | None = None) -> Future:
        if self._thread is None or not self._thread.is_alive():
            raise RuntimeError("the inference thread is not running")
        job = _Job(priority, next(self._seq), images, deadline, request_id, Future(), size)
        self._queue.put(job)
        return job.future

    def _run(self) -> None:
        while not self._stop.is_set():
            job = self._queue.get()
            if self._stop.is_set():
                job.future.cancel()
                break
            token = set_request_id(job.request_id)
            try:
                job.future.set_result(self._run_job(job))
            except Exception as exc:  # the request thread reports it; this thread must live on
                log.exception("inference failed")
                job.future.set_exception(exc)
            finally:
                self._busy_since = None
                reset_request_id(token)

    def _maybe_reload(self) -> None:
        version = self.watcher.current()
        if version.name == self._version.name:
            return
        log.info("model version changed: %s -> %s; loading it", self._version.name, version.name)
        try:
            self._segmenter = self._loader(self.settings, version)
        except Exception:
            log.exception("could not load %s; still serving %s", version.name, self._version.name)
            return
        self._version = version
        self.reloads += 1

    def _run_job(self, job: _Job) -> InferenceOutcome:
        self._maybe_reload()
        n = len(job.images)
        masks: list[np.ndarray | None] = []
        self._busy_since = start = time.monotonic()
        if job.size is not None and job.size != self._segmenter.size:
            return self._run_resized(job, start)
        if self.seconds_per_image is None and n > 1 and self.fits(1, job.deadline):
            masks.extend(self._timed(job.images[:1]))  # nothing measured yet: one image tells the speed
        k = self.fits(n - len(masks), job.deadline)
        if k:
            masks.extend(self._timed(job.images[len(masks):len(masks) + k]))
        elapsed = time.monotonic() - start
        return InferenceOutcome(self._version.name, masks + [None] * (n - len(masks)), elapsed)

    def _run_resized(self, job: _Job, start: float) -> InferenceOutcome:
        """A job at another input size: the same engine, not folded into the serving-size speed."""
        assert job.size is not None
        if time.monotonic() >= job.deadline:
            return InferenceOutcome(self._version.name, [None] * len(job.images), 0.0)
        masks = Segmenter(self._segmenter.engine, job.size).predict(job.images)
        self.images_done += len(job.images)
        self.batches_done += 1
        return InferenceOutcome(self._version.name, list(masks), time.monotonic() - start)

    def _timed(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One engine batch, folded into the seconds-per-image estimate."""
        start = time.monotonic()
        masks = self._segmenter.predict(images)
        elapsed = time.monotonic() - start
        per_image = elapsed / len(images)
        prev = self.seconds_per_image
        self.seconds_per_image = per_image if prev is None else (1 - _EWMA) * prev + _EWMA * per_image
        self.images_done += len(images)
        self.batches_done += 1
        log.debug("inference", extra={"images": len(images), "seconds": round(elapsed, 3)})
        return list(masks)


class DirectInference:
    """The current registry version (or a pinned one), loaded in this process and run on the
    caller's thread: what an RQ worker or ``isnet preannotate`` predicts with, where no request
    waits and no queue is needed. It follows the registry like :class:`InferenceService`, so
    predictions are written under what ``/setup`` reports at that moment."""

    def __init__(self, settings: Settings, version: str | None = None) -> None:
        self.settings = settings
        self.watcher = VersionWatcher(settings)
        self._pinned = self.watcher.registry.get(version) if version else None
        self._lock = threading.Lock()
        self._version = self._pinned or self.watcher.current()
        self._segmenter = load_segmenter(settings, self._version)

    @property
    def model_version(self) -> str:
        return (self._pinned or self.watcher.current()).name

    @property
    def identity(self) -> tuple[str, str, int]:
        return self.model_version, self._segmenter.engine.name, self._segmenter.size

    def predict(self, images: Sequence[np.ndarray], deadline: float = 0.0, priority: int = PRIORITY_BACKGROUND,
                request_id: str = "-", size: int | None = None) -> InferenceOutcome:
        """Masks for every image (nothing else is waiting here, so ``deadline`` and ``priority`` do not apply)."""
        started = time.monotonic()
        with self._lock:
            version = self._pinned or self.watcher.current()
            if version.name != self._version.name:
                self._segmenter, self._version = load_segmenter(self.settings, version), version
            segmenter = self._segmenter if size in (None, self._segmenter.size) else Segmenter(
                self._segmenter.engine, size)
            masks = list(segmenter.predict(images)) if images else []
            return InferenceOutcome(self._version.name, masks, time.monotonic() - started)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()
