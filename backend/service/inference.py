"""The one thread that runs the network, and the model version it serves.

Why a dedicated thread: a forward pass at 1024 takes seconds of CPU, and Label Studio marks a
backend Disconnected when ``/health`` (1 s) or ``/setup`` (3 s) is late. Request threads only
queue jobs here and wait; the network runs one job at a time (concurrent passes would only
fight over the same cores and multiply memory), torch releases the GIL while it computes, and
``/health`` never touches this thread. Smart-tool prompts go first, then single-task requests
(an annotator opening a task), then the chunks of a large "Retrieve predictions" batch.

Why models per lineage: every Label Studio project serves its own lineage's current version
(:mod:`backend.learning.lineages`). A job names its lineage; the thread resolves the version and
keeps the last ``ISNET_MAX_LOADED_MODELS`` versions loaded, least recently used evicted first, so
many projects cost bounded memory (projects on the same version share one loaded model).

Why deadlines live here: a job may wait behind others, so only when it starts is it known how
much of its request's time is left. A job runs as many of its images as the measured
seconds-per-image says fit, and hands the rest back as ``None`` for the caller to defer.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backend.isnet.segmenter import Segmenter
from backend.isnet.versions import BASE, ModelVersion
from backend.isnet.weights import WeightCache
from backend.learning.registry import ModelRegistry
from backend.service.engine_upgrades import EngineUpgrades, stale
from backend.service.logs import reset_request_id, set_request_id
from backend.service.telemetry import observe_inference
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


FALLBACK_ENGINE = "onnx-fp32"
RETRY_S = 30.0
"""How often a loaded version checks whether the engine it should be served with changed."""
HOUSEKEEPING_S = 10.0
"""How often the server's inference thread looks after its engines (background int8 builds)."""


def load_segmenter(settings: Settings, version: ModelVersion) -> Segmenter:
    """The segmenter for ``version`` with the configured engine and input size.

    An int8 engine that must calibrate on served images while too few were served yet does not
    stop the server: the version is served by ``onnx-fp32`` meanwhile, the segmenter says why
    (``fallback``), and the engine is built in the background once enough images were served
    (:mod:`backend.service.engine_upgrades`)."""
    from backend.isnet.engines import choose_engine, create_engine
    from backend.isnet.engines.calibration import CalibrationPending

    size = check_input_size(settings.input_size)
    name, why = choose_engine(settings.engine, version, size)
    try:
        segmenter = Segmenter(create_engine(name, version, settings, size), size)
        segmenter.reason = why
        log.info("%s served by %s: %s", version.name, name, why)
        return segmenter
    except CalibrationPending as exc:
        log.warning("%s cannot be built for %s yet, serving %s meanwhile: %s", name, version.name,
                    FALLBACK_ENGINE, exc)
        segmenter = Segmenter(create_engine(FALLBACK_ENGINE, version, settings, size), size)
        segmenter.fallback = f"{name} waits for calibration images: {exc}"
        return segmenter


def _stat_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class VersionWatcher:
    """``ModelRegistry(settings, lineage).current()`` per lineage, re-read only when a file that
    decides it changed (the lineage's pointer, the base's, the weights' manifest).

    Every ``/setup`` and ``/predict`` asks for the current version; a few ``stat`` calls make
    that free, while the registry itself may hash a 176 MB checkpoint. A ``CURRENT`` pointer
    that names a broken version keeps the last good one in service (and says so in the log).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = ModelRegistry(settings)
        self._lock = threading.Lock()
        self._known: dict[str, tuple[tuple[Any, ...], ModelVersion]] = {}
        self._registries: dict[str, ModelRegistry] = {BASE: self.registry}
        self.last_error: str | None = None

    def _fingerprint(self, registry: ModelRegistry) -> tuple[Any, ...]:
        """The pointer files' ``stat``; with a shared store (``ISNET_MODEL_STORE``) the current
        names in Redis instead (one round trip): another host's promotion or rollback is seen on
        the next request, and the object store is asked only when the version changes."""
        shared = registry.shared_fingerprint()
        paths = [*(registry.pointer_files if shared is None else []), WeightCache(self.settings).manifest_path]
        if self.settings.weights:
            paths.append(Path(self.settings.weights).expanduser())
        return (*(_stat_key(p) for p in paths), shared)

    def current(self, lineage: str = BASE) -> ModelVersion:
        registry = self._registries.get(lineage)
        if registry is None:  # made once per lineage: /setup and /predict ask on every call
            registry = self._registries.setdefault(lineage, self.registry.for_lineage(lineage))
        try:
            key = self._fingerprint(registry)
        except OSError as exc:  # Redis unreachable: keep serving what was current
            known = self._known.get(lineage)
            if known is None:
                raise
            if self.last_error != str(exc):
                log.error("lineage %s: cannot read the shared pointers, still serving %s: %s", lineage,
                          known[1].name, exc)
            self.last_error = str(exc)
            return known[1]
        with self._lock:
            known = self._known.get(lineage)
            if known is not None and known[0] == key:
                return known[1]
            try:
                version = registry.current()
            except (KeyError, OSError, RuntimeError) as exc:
                if known is None:
                    raise
                if self.last_error != str(exc):
                    log.error("model pointer of lineage %s is broken, still serving %s: %s", lineage,
                              known[1].name, exc)
                self.last_error = str(exc)
                self._known[lineage] = (key, known[1])
                return known[1]
            changed = known is not None and known[1].name != version.name
            self._known[lineage] = (key, version)
            self.last_error = None
        if changed and registry.shared is not None:  # a switch on some host: retention may have run there
            threading.Thread(target=registry.store.evict_unshared, daemon=True, name="isnet-cache-evict").start()
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
    lineage: str = field(default=BASE, compare=False)
    housekeeping: bool = field(default=False, compare=False)


class LoadedModels:
    """Segmenters by version name, at most ``capacity``, the least recently used evicted first."""

    def __init__(self, settings: Settings, loader: Callable[[Settings, ModelVersion], Segmenter],
                 capacity: int, watch_engines: bool = True) -> None:
        self.settings = settings
        self.watch_engines = watch_engines
        """Whether :meth:`get` looks for a changed engine itself (the server's housekeeping does it there)."""
        self._loader = loader
        self.capacity = max(1, capacity)
        self._models: OrderedDict[str, tuple[ModelVersion, Segmenter]] = OrderedDict()
        self.loads = 0
        self.evictions = 0
        self._checked: dict[str, float] = {}

    def get(self, version: ModelVersion) -> Segmenter:
        """The loaded segmenter of ``version``, loading it (and evicting the oldest) when absent; one
        whose engine is no longer the one to serve (``auto`` measured another, or an engine it fell
        back from was built) is loaded again, checked at most every :data:`RETRY_S`."""
        loaded = self._models.get(version.name)
        if (loaded is not None and self.watch_engines and self._due(version.name)
                and stale(self.settings, version, loaded[1])):
            log.info("%s: loading %s again for its new engine", version.name, self.settings.engine)
            loaded = None
        if loaded is not None:
            self._models.move_to_end(version.name)
            return loaded[1]
        return self.load(version)

    def load(self, version: ModelVersion) -> Segmenter:
        """Load ``version`` now (again, if it was loaded), evicting the least recently used."""
        segmenter = self._loader(self.settings, version)
        self.loads += 1
        self._checked[version.name] = time.monotonic()
        self._models.pop(version.name, None)
        self._models[version.name] = (version, segmenter)
        while len(self._models) > self.capacity:
            evicted, _ = self._models.popitem(last=False)
            self.evictions += 1
            log.info("model %s unloaded (ISNET_MAX_LOADED_MODELS=%d)", evicted, self.capacity)
        return segmenter

    def _due(self, name: str) -> bool:
        now = time.monotonic()
        if now - self._checked.get(name, 0.0) < RETRY_S:
            return False
        self._checked[name] = now
        return True

    def drop(self, name: str) -> None:
        self._models.pop(name, None)

    def peek(self, name: str) -> Segmenter | None:
        loaded = self._models.get(name)
        return loaded[1] if loaded is not None else None

    def loaded(self) -> list[tuple[ModelVersion, Segmenter]]:
        """Every loaded version and its segmenter, least recently used first."""
        return list(self._models.values())

    def names(self) -> list[str]:
        """Loaded versions, least recently used first."""
        return list(self._models)


class LineageViews:
    """What :class:`InferenceService` and :class:`DirectInference` share: one lineage's view of them
    (:class:`LineageInference`), and the base lineage's version and identity as their own."""

    def version_of(self, lineage: str) -> str:
        raise NotImplementedError

    def identity_of(self, lineage: str) -> tuple[str, str, int]:
        raise NotImplementedError

    def predict(self, images: Sequence[np.ndarray], deadline: float, priority: int, request_id: str,
                size: int | None, lineage: str) -> InferenceOutcome:
        raise NotImplementedError

    def for_lineage(self, lineage: str) -> LineageInference:
        """This as one lineage's :class:`backend.pipeline.Inference`."""
        return LineageInference(self, lineage)

    @property
    def model_version(self) -> str:
        return self.version_of(BASE)

    @property
    def identity(self) -> tuple[str, str, int]:
        return self.identity_of(BASE)


class InferenceService(LineageViews):
    """Serialises every forward pass on one thread; each job runs its lineage's current version."""

    def __init__(self, settings: Settings, watcher: VersionWatcher,
                 loader: Callable[[Settings, ModelVersion], Segmenter] = load_segmenter) -> None:
        self.settings = settings
        self.watcher = watcher
        self.models = LoadedModels(settings, loader, settings.max_loaded_models, watch_engines=False)
        base = watcher.current()
        self._segmenter = self.models.get(base)
        """The base lineage's segmenter: its engine and size describe the service."""
        self._served: dict[str, ModelVersion] = {BASE: base}
        """The version each lineage's last job ran with."""
        self._failed: dict[str, str] = {}
        """Versions whose last load failed, and why: never reported as served."""
        self._loaded_once: set[str] = {base.name}
        """Versions that loaded at least once (their files never change): ``/setup`` need not try them."""
        self._queue: queue.PriorityQueue[_Job] = queue.PriorityQueue()
        self._retired: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._busy_since: float | None = None
        self.seconds_per_image: float | None = None
        self.images_done = 0
        self.batches_done = 0
        self.upgrades = EngineUpgrades(settings)
        self._housekeeping_due = threading.Event()
        self._upgrade_status: str | None = None
        """The base version's background engine work in words, as the last housekeeping found it
        (so ``/health`` reads no file)."""
        self._ticker: threading.Thread | None = None

    @property
    def reloads(self) -> int:
        """Models loaded since the base one at start: switches of a lineage's version, new lineages
        on versions not loaded, and versions loaded again after eviction."""
        return self.models.loads - 1

    # -- lifecycle ----------------------------------------------------------------------

    def start(self, warmup: bool = True) -> None:
        """Start the inference thread; ``warmup`` runs one image first to measure seconds per image."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="isnet-inference", daemon=True)
        self._thread.start()
        self._ticker = threading.Thread(target=self._tick, name="isnet-housekeeping", daemon=True)
        self._ticker.start()
        if warmup:
            size = self._segmenter.size
            self._submit([np.full((size, size, 3), 127, np.uint8)], time.monotonic() + 3600, PRIORITY_BATCH, "warmup")

    def stop(self) -> None:
        self._stop.set()
        self._queue.put(_Job(-1, -1, [], 0.0, "stop", Future()))
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.upgrades.stop()

    def _tick(self) -> None:
        """Queue a housekeeping job every :data:`HOUSEKEEPING_S` (one at a time): the inference
        thread owns the loaded models, so it is the one that looks after their engines."""
        while not self._stop.wait(HOUSEKEEPING_S):
            if not self._housekeeping_due.is_set():
                self._housekeeping_due.set()
                self._queue.put(_Job(PRIORITY_BATCH, next(self._seq), [], 0.0, "housekeeping", Future(),
                                     housekeeping=True))

    def _housekeep(self) -> None:
        """Start background engine builds that are due, and load versions whose engine changed."""
        self._housekeeping_due.clear()
        for version, segmenter in self.models.loaded():
            try:
                if not self.upgrades.review(version, segmenter):
                    continue
                fresh = self.models.load(version)
            except Exception:  # a bad engine file or a failed start costs this round, never the thread
                log.exception("engine housekeeping of %s failed", version.name)
                continue
            log.info("%s now served by %s", version.name, fresh.engine.name)
            if self._served[BASE].name == version.name:
                self._segmenter = fresh
        self._upgrade_status = self.upgrades.status(self._served[BASE], self._segmenter)

    # -- what request threads call ----------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def version_of(self, lineage: str) -> str:
        """The version ``lineage``'s next job runs: its current one, unless that failed to load;
        then the one still serving it (its last, else the base's)."""
        current = self.watcher.current(lineage)
        if current.name not in self._failed:
            return current.name
        return (self._served.get(lineage) or self._served[BASE]).name

    def served_version(self, lineage: str, wait_s: float) -> str:
        """:meth:`version_of` after the current version, if it never loaded yet, was tried (on the
        inference thread, at most ``wait_s``): what ``/setup`` reports, so a version that fails to
        load is never named while another one answers. Past ``wait_s`` it is named while it loads."""
        name = self.watcher.current(lineage).name
        if wait_s > 0 and self.alive and name not in self._failed and name not in self._loaded_once:
            probe = self._submit([], time.monotonic() + wait_s, PRIORITY_INTERACTIVE, "load-check", None, lineage)
            with contextlib.suppress(Exception):  # too slow, or a failure the next job reports
                probe.result(timeout=wait_s)
        return self.version_of(lineage)

    def identity_of(self, lineage: str) -> tuple[str, str, int]:
        """(model version, engine, input size): what a cached result must match besides the image.

        The version is the one being served now, not the one loaded: after a switch, the next job
        reloads first, so a result cached under the old version must not answer for the new one.
        """
        name = self.version_of(lineage)
        segmenter = self.models.peek(name) or self._segmenter
        return name, segmenter.engine.name, segmenter.size

    def fits(self, count: int, deadline: float) -> int:
        """How many of ``count`` images one job could run before ``deadline`` if it started now."""
        remaining = deadline - time.monotonic()
        if remaining <= 0 or count <= 0:
            return 0
        if self.seconds_per_image is None:
            return 1  # nothing measured yet: one image, to learn the speed
        return min(count, int(remaining // self.seconds_per_image))

    def predict(self, images: Sequence[np.ndarray], deadline: float, priority: int = PRIORITY_BATCH,
                request_id: str = "-", size: int | None = None, lineage: str = BASE) -> InferenceOutcome:
        """Masks for ``images`` as one engine batch of ``lineage``'s version; blocks until the
        inference thread is done. ``size`` runs the same engine at another input size
        (interactive crops); the default is the serving size.
        """
        if not images:
            return InferenceOutcome(self.version_of(lineage), [])
        return self._submit(images, deadline, priority, request_id, size, lineage).result()

    def forget(self, lineage: str) -> None:
        """A retired lineage: its version is unloaded (by the inference thread, before its next job)
        unless another lineage still runs it."""
        if lineage != BASE:
            self._retired.put(lineage)

    def _unload_retired(self) -> None:
        while not self._retired.empty():
            gone = self._served.pop(self._retired.get(), None)
            if gone is not None and all(v.name != gone.name for v in self._served.values()):
                self.models.drop(gone.name)

    def describe(self) -> dict[str, Any]:
        busy = self._busy_since
        upgrade = self._upgrade_status
        return {
            **self._segmenter.describe(),
            **({"engine_upgrade": upgrade} if upgrade else {}),
            "model_version": self.model_version,
            "loaded_models": self.models.names(),
            "engines": {version.name: segmenter.engine.name for version, segmenter in self.models.loaded()},
            "max_loaded_models": self.models.capacity,
            "model_loads": self.models.loads,
            "model_evictions": self.models.evictions,
            "served": {lineage: v.name for lineage, v in self._served.items()},
            "failed_to_load": dict(self._failed),
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
                size: int | None = None, lineage: str = BASE) -> Future:
        if self._thread is None or not self._thread.is_alive():
            raise RuntimeError("the inference thread is not running")
        job = _Job(priority, next(self._seq), images, deadline, request_id, Future(), size, lineage)
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

    def _model_for(self, lineage: str) -> tuple[ModelVersion, Segmenter]:
        """The lineage's current version, loaded; a version that fails to load keeps the one the
        lineage ran before (or the base's) in service."""
        version = self.watcher.current(lineage)
        before = self._served.get(lineage)
        try:
            segmenter = self.models.get(version)
        except Exception as exc:
            self._failed[version.name] = f"{type(exc).__name__}: {exc}"
            fallback = before or self._served[BASE]
            log.exception("could not load %s; lineage %s still served by %s", version.name, lineage, fallback.name)
            return fallback, self.models.get(fallback)
        self._failed.pop(version.name, None)
        self._loaded_once.add(version.name)
        if before is not None and before.name != version.name:
            log.info("lineage %s: model version changed: %s -> %s", lineage, before.name, version.name)
        self._served[lineage] = version
        if lineage == BASE:
            self._segmenter = segmenter
        return version, segmenter

    def _run_job(self, job: _Job) -> InferenceOutcome:
        self._unload_retired()
        if job.housekeeping:
            self._housekeep()
            return InferenceOutcome("", [])
        version, segmenter = self._model_for(job.lineage)
        n = len(job.images)
        masks: list[np.ndarray | None] = []
        self._busy_since = start = time.monotonic()
        if job.size is not None and job.size != segmenter.size:
            return self._run_resized(job, version, segmenter, start)
        if self.seconds_per_image is None and n > 1 and self.fits(1, job.deadline):
            masks.extend(self._timed(segmenter, job.images[:1]))  # nothing measured yet: one image tells the speed
        k = self.fits(n - len(masks), job.deadline)
        if k:
            masks.extend(self._timed(segmenter, job.images[len(masks):len(masks) + k]))
        elapsed = time.monotonic() - start
        return InferenceOutcome(version.name, masks + [None] * (n - len(masks)), elapsed)

    def _run_resized(self, job: _Job, version: ModelVersion, segmenter: Segmenter, start: float) -> InferenceOutcome:
        """A job at another input size: the same engine, not folded into the serving-size speed."""
        assert job.size is not None
        if time.monotonic() >= job.deadline:
            return InferenceOutcome(version.name, [None] * len(job.images), 0.0)
        masks = Segmenter(segmenter.engine, job.size).predict(job.images)
        observe_inference(time.monotonic() - start, len(job.images))
        self.images_done += len(job.images)
        self.batches_done += 1
        return InferenceOutcome(version.name, list(masks), time.monotonic() - start)

    def _timed(self, segmenter: Segmenter, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One engine batch, folded into the seconds-per-image estimate."""
        start = time.monotonic()
        masks = segmenter.predict(images)
        elapsed = time.monotonic() - start
        observe_inference(elapsed, len(images))
        per_image = elapsed / len(images)
        prev = self.seconds_per_image
        self.seconds_per_image = per_image if prev is None else (1 - _EWMA) * prev + _EWMA * per_image
        self.images_done += len(images)
        self.batches_done += 1
        log.debug("inference", extra={"images": len(images), "seconds": round(elapsed, 3)})
        return list(masks)


class LineageInference:
    """One lineage's view of an :class:`InferenceService` or a :class:`DirectInference`: what a task
    pipeline and interactive prompts of one project use, so they never name the lineage themselves."""

    def __init__(self, service: LineageViews, lineage: str) -> None:
        self.service = service
        self.lineage = lineage

    @property
    def model_version(self) -> str:
        return self.service.version_of(self.lineage)

    @property
    def identity(self) -> tuple[str, str, int]:
        return self.service.identity_of(self.lineage)

    def predict(self, images: Sequence[np.ndarray], deadline: float, priority: int = PRIORITY_BATCH,
                request_id: str = "-", size: int | None = None) -> InferenceOutcome:
        return self.service.predict(images, deadline, priority, request_id, size, self.lineage)


class DirectInference(LineageViews):
    """Each lineage's current version (or one pinned version), loaded in this process and run on
    the caller's thread: what an RQ worker or ``isnet preannotate`` predicts with, where no request
    waits and no queue is needed. It follows the registry like :class:`InferenceService`, so
    predictions are written under what ``/setup`` reports for that project at that moment; at
    most ``ISNET_MAX_LOADED_MODELS`` versions stay loaded."""

    def __init__(self, settings: Settings, version: str | None = None) -> None:
        self.settings = settings
        self.watcher = VersionWatcher(settings)
        self._pinned = self.watcher.registry.get(version) if version else None
        self._lock = threading.Lock()
        self.models = LoadedModels(settings, load_segmenter, settings.max_loaded_models)

    def _version(self, lineage: str) -> ModelVersion:
        return self._pinned or self.watcher.current(lineage)

    def version_of(self, lineage: str) -> str:
        return self._version(lineage).name

    def identity_of(self, lineage: str) -> tuple[str, str, int]:
        version = self._version(lineage)
        with self._lock:
            segmenter = self.models.get(version)
        return version.name, segmenter.engine.name, segmenter.size

    def predict(self, images: Sequence[np.ndarray], deadline: float = 0.0, priority: int = PRIORITY_BACKGROUND,
                request_id: str = "-", size: int | None = None, lineage: str = BASE) -> InferenceOutcome:
        """Masks for every image (nothing else is waiting here, so ``deadline`` and ``priority`` do not apply)."""
        started = time.monotonic()
        with self._lock:
            version = self._version(lineage)
            segmenter = self.models.get(version)
            if size not in (None, segmenter.size):
                segmenter = Segmenter(segmenter.engine, size)
            masks = list(segmenter.predict(images)) if images else []
            return InferenceOutcome(version.name, masks, time.monotonic() - started)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()
