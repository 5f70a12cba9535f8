"""Interactive pre-annotation: the annotator's box or clicks in, that object's brush region out.

Why its own module: Label Studio sends smart-tool prompts as a one-task ``/predict`` with
``params.context``; the answer is shown in the editor and stored nowhere. The network runs on a
crop of the full-resolution image (:mod:`backend.isnet.prompting`), queued ahead of batch work
on the same inference thread, and the decoded image of the task being edited is kept, so a
second prompt on it costs only the crop's inference; none when the crop (the box and its margin)
is the whole image, whose prediction is kept with it.

A prompt that cannot be used (zero-size or out-of-image rectangle, keypoint outside the image,
unknown label or tag, a context for another image) is dropped with a logged reason; when none
is left the answer is an empty result, never an error. A context with more than
``ISNET_MAX_PROMPTS`` regions is refused whole, before the image is fetched or a region read.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from backend.isnet.prompting import segment_object
from backend.labelstudio.config import BrushTarget
from backend.labelstudio.prompts import PromptError, check_prompt_count, parse_prompts
from backend.labelstudio.tasks import image_url, task_label
from backend.pipeline import TaskPipeline
from backend.service.inference import PRIORITY_PROMPT
from backend.settings import Settings

log = logging.getLogger(__name__)


def has_prompts(context: Any) -> bool:
    """Whether a ``/predict`` context carries smart-tool regions (an interactive request)."""
    return isinstance(context, dict) and bool(context.get("result"))


class ImageMemory:
    """The last few decoded task images (and their whole-image confidence), by task and URL."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._items: OrderedDict[tuple[Any, str], dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[Any, str], load: Callable[[], np.ndarray]) -> dict[str, Any]:
        """The entry for ``key`` (``{"image": ...}``), loading and keeping it when absent."""
        with self._lock:
            entry = self._items.get(key)
            if entry is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return entry
        entry = {"image": load()}
        with self._lock:
            self.misses += 1
            self._items[key] = entry
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return entry


class InteractiveAnnotator:
    """Turns one task and its smart-tool context into one prediction entry with brush regions,
    through the task pipeline of the task's project (its fetch, decode and model version)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.memory = ImageMemory(settings.interactive_images)

    def predict(self, pipeline: TaskPipeline, task: dict[str, Any], context: dict[str, Any], label_config: str,
                target: BrushTarget, deadline: float, request_id: str = "-") -> dict[str, Any]:
        """``{"result": [brush regions], "score", "model_version"}`` for the prompts in ``context``."""
        try:
            check_prompt_count(context, self.settings.max_prompts)
        except PromptError as exc:  # before the image is fetched and before any grouping
            log.warning("%s: interactive request refused: %s", task_label(task), exc)
            return self._answer(pipeline, [], 0.0, [str(exc)])
        inference = pipeline.inference
        entry = self._image(pipeline, task, target)
        image = entry["image"]
        height, width = image.shape[:2]
        try:
            prompts = parse_prompts(context, label_config, target, width, height)
        except PromptError as exc:
            log.warning("%s: interactive prompt ignored: %s", task_label(task), exc)
            return self._answer(pipeline, [], 0.0, [str(exc)])
        for reason in prompts.rejected:
            log.warning("%s: interactive prompt ignored: %s", task_label(task), reason)
        version = pipeline.model_version
        same_input = self.settings.interactive_size == self.settings.input_size

        def predict(crops: Sequence[np.ndarray]) -> list[np.ndarray]:
            if same_input and [c.shape for c in crops] == [image.shape]:
                return [whole()]  # the crop is the whole image: the same input, already predicted
            outcome = inference.predict(crops, deadline, PRIORITY_PROMPT, request_id, self.settings.interactive_size)
            if any(m is None for m in outcome.masks):
                raise TimeoutError("the interactive prompt did not fit its deadline")
            return outcome.masks  # type: ignore[return-value]

        def whole() -> np.ndarray:
            key = ("whole", pipeline.model_version)
            if key not in entry:
                outcome = inference.predict([image], deadline, PRIORITY_PROMPT, request_id)
                if outcome.masks[0] is None:
                    raise TimeoutError("the whole-image prediction did not fit its deadline")
                entry[key] = outcome.masks[0]
            return entry[key]

        regions: list[dict[str, Any]] = []
        scores: list[float] = []
        for obj in prompts.objects:
            prob = segment_object(image, predict, obj.box, obj.clicks, self.settings.threshold,
                                  self.settings.interactive_margin, whole)
            result, score = pipeline.brush(prob, _with_label(target, obj.label))
            regions.extend(result)
            if result:
                scores.append(score)
        score = float(np.mean(scores)) if scores else 0.0
        return self._answer(pipeline, regions, score, prompts.rejected, version)

    def _image(self, pipeline: TaskPipeline, task: dict[str, Any], target: BrushTarget) -> dict[str, Any]:
        """The task's decoded image (through the task pipeline), kept for the next prompt."""
        key = (task.get("id"), image_url(task, target).strip())
        return self.memory.get(key, lambda: pipeline.decode(task, target))

    def _answer(self, pipeline: TaskPipeline, result: list[dict[str, Any]], score: float, rejected: list[str],
                version: str | None = None) -> dict[str, Any]:
        answer: dict[str, Any] = {"result": result, "score": score,
                                  "model_version": version or pipeline.model_version}
        if rejected:
            answer["rejected_prompts"] = rejected
        return answer


def _with_label(target: BrushTarget, label: str) -> BrushTarget:
    return BrushTarget(target.from_name, target.to_name, target.value_key, label, target.labels)

