"""What turns images into masks for a pre-annotation job, and under which model version.

Two kinds, one interface (:class:`Predictor`): a worker process loads its own network
through the registry, exactly as the server does (:func:`backend.service.inference.load_segmenter`
and :class:`VersionWatcher`, so the version string is the one ``/setup`` reports); the server's
in-process fallback borrows the server's :class:`InferenceService` at a priority below every
``/predict`` job, so background work waits whenever an annotator or Label Studio is waiting.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from backend.service.inference import PRIORITY_BATCH, InferenceService, VersionWatcher, load_segmenter
from backend.settings import Settings

PRIORITY_BACKGROUND = PRIORITY_BATCH + 1
"""Below both interactive and batch ``/predict`` jobs in the inference queue."""


class Predictor(Protocol):
    @property
    def model_version(self) -> str: ...

    def predict(self, images: Sequence[np.ndarray]) -> tuple[str, list[np.ndarray]]:
        """(the version that ran, one 0-255 confidence mask per image at its size)."""
        ...


class SegmenterPredictor:
    """The current registry version (or the pinned ``version``), loaded in this process.

    Following the registry, it reloads when another version is promoted, so predictions are
    written under what ``/setup`` reports at that moment.
    """

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

    def predict(self, images: Sequence[np.ndarray]) -> tuple[str, list[np.ndarray]]:
        with self._lock:
            version = self._pinned or self.watcher.current()
            if version.name != self._version.name:
                self._segmenter, self._version = load_segmenter(self.settings, version), version
            return self._version.name, list(self._segmenter.predict(images))


class ServicePredictor:
    """The server's inference thread, used only when no ``/predict`` job is ahead."""

    def __init__(self, service: InferenceService) -> None:
        self.service = service

    @property
    def model_version(self) -> str:
        return self.service.watcher.current().name

    def predict(self, images: Sequence[np.ndarray]) -> tuple[str, list[np.ndarray]]:
        outcome = self.service.predict(images, time.monotonic() + 3600, PRIORITY_BACKGROUND, "preannotate")
        masks = [m for m in outcome.masks if m is not None]
        if len(masks) != len(images):
            raise RuntimeError("the inference thread did not run every image")
        return outcome.model_version, masks
