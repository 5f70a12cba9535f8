"""The one task-prediction pipeline: a Label Studio task in, its brush prediction out.

    fetch -> hash -> cache -> decode -> segment -> brush result

``/predict`` (:class:`backend.model.ISNetModel`), background pre-annotation (the in-process
thread and the RQ workers), ``isnet preannotate`` and smart-tool prompts (fetch, decode, brush
result) all go through :class:`TaskPipeline`; the training export reads a task's image and its
annotation's mask through the same fetch and decode (:class:`TaskImages`). Why one: a task must
be predicted the same way whoever asks, and within a process a result computed for one caller
answers the others from one cache, keyed by the image bytes' sha256, model version, engine, input
size and threshold.

What runs the network is given (:class:`Inference`): one lineage's view of the server's
inference thread, where callers queue by priority, or of networks loaded in a worker process.
:class:`Pipelines` gives each Label Studio project the pipeline of its lineage, all sharing one
result cache (its key holds the model version, so projects on one version share results).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from backend.images import ImageError, load_image
from backend.isnet import calibration_sample
from backend.isnet.versions import BASE, lineage_of
from backend.labelstudio.config import BrushTarget
from backend.labelstudio.fetch import FetchError, ImageFetcher
from backend.labelstudio.results import annotation_mask, brush_result
from backend.labelstudio.tasks import TaskImageError, image_url, task_label
from backend.learning.lineages import lineage_for
from backend.service.cache import CacheKey, ResultCache
from backend.service.inference import InferenceOutcome
from backend.service.logs import current_request_id
from backend.service.stats import Stats
from backend.settings import Settings

log = logging.getLogger(__name__)


class Inference(Protocol):
    """What turns images into masks: :class:`backend.service.inference.InferenceService` (queued on
    the server's inference thread) or :class:`backend.service.inference.DirectInference`."""

    @property
    def identity(self) -> tuple[str, str, int]:
        """(model version served now, engine, input size)."""
        ...

    def predict(self, images: Sequence[np.ndarray], deadline: float, priority: int = ...,
                request_id: str = "-", size: int | None = None) -> InferenceOutcome: ...


@dataclass
class Prediction:
    """One task's answer; ``error`` says why ``result`` is empty when the task failed."""

    result: list[dict[str, Any]]
    score: float
    model_version: str
    error: str | None = None
    cached: bool = False

    def as_answer(self) -> dict[str, Any]:
        """The prediction dict Label Studio expects from ``/predict``."""
        return {"result": self.result, "score": self.score, "model_version": self.model_version}


@dataclass
class TaskImage:
    """A task's image, fetched and hashed; decoded only when its result is not cached."""

    key: CacheKey
    cached: Prediction | None
    image: np.ndarray | None


def _retarget(result: list[dict[str, Any]], target: BrushTarget) -> list[dict[str, Any]]:
    """A cached result re-addressed to this project's tag names and label."""
    return [
        {**r, "from_name": target.from_name, "to_name": target.to_name,
         "value": {**r.get("value", {}), "brushlabels": [target.label]}}
        for r in result
    ]


def _result_bytes(result: list[dict[str, Any]]) -> int:
    """Roughly what a result holds in memory: a list slot per RLE integer, plus the dicts."""
    return 1024 + sum(8 * len(r.get("value", {}).get("rle", ())) for r in result)


class TaskImages:
    """A task's image fetched and decoded under every limit: written once, for predictions,
    prompts and the training export alike."""

    def __init__(self, settings: Settings, fetcher: ImageFetcher) -> None:
        self.settings = settings
        self.fetcher = fetcher

    def fetch(self, task: dict[str, Any], target: BrushTarget) -> tuple[str, bytes]:
        """(URL, bytes) of the task's image; :class:`TaskImageError` says why not."""
        url = image_url(task, target).strip()
        task_id = task.get("id")
        try:
            return url, self.fetcher.fetch(url, task_id=task_id if isinstance(task_id, int) else None)
        except FetchError as exc:
            raise TaskImageError(f"{task_label(task)}: {exc}") from exc

    def decode(self, task: dict[str, Any], url: str, raw: bytes) -> np.ndarray:
        """``H x W x 3`` RGB ``uint8``; :class:`ImageError` names the task and URL when it cannot be used."""
        return load_image(raw, self.settings.max_pixels, name=f"{task_label(task)} ({url})")

    def image(self, task: dict[str, Any], target: BrushTarget) -> np.ndarray:
        """The task's image; :class:`TaskImageError` or :class:`ImageError` says why not."""
        return self.decode(task, *self.fetch(task, target))

    def pair(self, task: dict[str, Any], annotation: dict[str, Any], target: BrushTarget
             ) -> tuple[np.ndarray, np.ndarray]:
        """A training pair: the task's image and its annotation's mask (0/255) at the image's size.

        ``ValueError`` when the annotation has no brush region for the tag or its size differs
        from the image's; :data:`LOAD_ERRORS` when the image cannot be used."""
        mask = annotation_mask(annotation, target.from_name)
        image = self.image(task, target)
        if image.shape[:2] != mask.shape:
            raise ValueError(f"mask {mask.shape} does not match image {image.shape[:2]}")
        return image, mask


class TaskPipeline:
    """Predicts Label Studio tasks: :meth:`load` each task's image, then :meth:`run` them in one batch."""

    def __init__(self, settings: Settings, inference: Inference, fetcher: ImageFetcher,
                 cache: ResultCache | None = None, stats: Stats | None = None) -> None:
        self.settings = settings
        self.inference = inference
        self.fetcher = fetcher
        self.images = TaskImages(settings, fetcher)
        self.cache = cache if cache is not None else ResultCache(int(settings.cache_mb * 1024 * 1024))
        self.stats = stats or Stats()

    @property
    def model_version(self) -> str:
        """The version predictions are made with now."""
        return self.inference.identity[0]

    def decode(self, task: dict[str, Any], target: BrushTarget) -> np.ndarray:
        """The task's image, decoded under every limit (smart-tool prompts need the pixels)."""
        return self.images.image(task, target)

    def brush(self, mask: np.ndarray, target: BrushTarget) -> tuple[list[dict[str, Any]], float]:
        """A mask (or confidence) as the brush result and score Label Studio shows (smart-tool answers)."""
        return brush_result(mask, target, self.settings.threshold)

    def load(self, task: dict[str, Any], target: BrushTarget) -> TaskImage:
        """Fetch and hash a task's image; decode it only when its result is not cached.

        Raises :class:`TaskImageError` or :class:`ImageError` for an image that cannot be used.
        """
        url, raw = self.images.fetch(task, target)
        version, engine, size = self.inference.identity
        key = CacheKey(hashlib.sha256(raw).hexdigest(), version, engine, size, float(self.settings.threshold))
        hit = self.cache.get(key)
        if hit is not None:
            result, score = hit
            return TaskImage(key, Prediction(_retarget(result, target), score, version, cached=True), None)
        return TaskImage(key, None, self.images.decode(task, url, raw))

    def run(self, tasks: Sequence[dict[str, Any]], loaded: Sequence[TaskImage | Exception], target: BrushTarget,
            deadline: float, priority: int, request_id: str = "-", strict: bool = False) -> list[Prediction | None]:
        """One prediction per task: failed loads get an empty one with the reason, cached ones their
        result, the rest one engine batch. ``None`` where an image did not fit ``deadline``.

        An inference error empties the batch's predictions, or with ``strict`` propagates (a
        background job is then retried instead of writing empty predictions for good).
        """
        out: list[Prediction | None] = [None] * len(tasks)
        todo: list[tuple[int, TaskImage]] = []
        for i, (task, item) in enumerate(zip(tasks, loaded, strict=True)):
            if isinstance(item, Exception):
                out[i] = self.failed(task, item)
            elif item.cached is not None:
                out[i] = item.cached
                self.stats.incr("cache.hits")
            else:
                todo.append((i, item))
        if not todo:
            return out
        self.stats.incr("cache.misses", len(todo))
        try:
            outcome = self.inference.predict([item.image for _, item in todo], deadline, priority, request_id)
        except Exception as exc:
            if strict:
                raise
            for i, _ in todo:
                out[i] = self.failed(tasks[i], exc)
            return out
        for (i, item), mask in zip(todo, outcome.masks, strict=True):
            if mask is not None:
                out[i] = self._result(tasks[i], item, mask, outcome.model_version, target)
        return out

    def _result(self, task: dict[str, Any], item: TaskImage, mask: np.ndarray, version: str,
                target: BrushTarget) -> Prediction:
        try:
            result, score = brush_result(mask, target, self.settings.threshold)
        except Exception as exc:
            return self.failed(task, exc)
        self.cache.put(item.key._replace(model_version=version), (result, score), _result_bytes(result))
        self.stats.incr("tasks.predicted")
        assert item.image is not None
        # int8 calibrates on the images the version's own lineage served
        calibration_sample.offer(item.image, self.settings, lineage_of(version))
        return Prediction(result, score, version)

    def failed(self, task: dict[str, Any], exc: Exception) -> Prediction:
        """The empty prediction of a task that failed, logged and counted with its reason."""
        task_id = task.get("id") if isinstance(task, dict) else None
        message = str(exc) or type(exc).__name__
        log.warning("task %s gets an empty prediction: %s", task_id, message, extra={"task_id": task_id})
        self.stats.incr("tasks.failed")
        self.stats.error(type(exc).__name__, message, task_id=task_id, request_id=current_request_id())
        return Prediction([], 0.0, self.model_version, error=message)


class LineageSource(Protocol):
    """What runs every lineage's network: :class:`backend.service.inference.InferenceService` or
    :class:`backend.service.inference.DirectInference`."""

    def for_lineage(self, lineage: str) -> Inference: ...


class Pipelines:
    """The task pipeline of each lineage, made on first use; all share one cache, fetcher and stats."""

    def __init__(self, settings: Settings, source: LineageSource, fetcher: ImageFetcher,
                 cache: ResultCache | None = None, stats: Stats | None = None) -> None:
        self.settings = settings
        self.source = source
        base = TaskPipeline(settings, source.for_lineage(BASE), fetcher, cache, stats)
        self.cache, self.stats = base.cache, base.stats
        self._pipelines: dict[str, TaskPipeline] = {BASE: base}

    def for_lineage(self, lineage: str) -> TaskPipeline:
        pipeline = self._pipelines.get(lineage)
        if pipeline is None:
            base = self._pipelines[BASE]
            pipeline = TaskPipeline(self.settings, self.source.for_lineage(lineage), base.fetcher, self.cache,
                                    self.stats)
            self._pipelines[lineage] = pipeline
        return pipeline

    def for_project(self, project: Any) -> TaskPipeline:
        """The pipeline of the lineage that ``project`` (as Label Studio names it) belongs to."""
        return self.for_lineage(lineage_for(project, self.settings))


LOAD_ERRORS = (TaskImageError, ImageError)
"""What :meth:`TaskPipeline.load` raises for a task whose image cannot be used."""
