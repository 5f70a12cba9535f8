"""Accuracy and speed of engines on the same images, recorded for ``ISNET_ENGINE=auto``.

Three callers, two kinds of reference:

* ``isnet engine measure`` and a retraining cycle measure on labelled images (the cycle: its
  held-out images, so a promoted version arrives with its engine already chosen);
* the server measures a version on images it served, where no label exists: the first engine's
  masks (``onnx-fp32``) are the reference, so what is measured is exactly what the budget bounds,
  the loss of int8 against fp32 on the team's own images.

Every engine runs every image at the same input size, one image per call, and the time recorded
is the engine's own (median over the images: on a shared machine a few calls stall for seconds).
Only MAE, mean F-measure and S-measure are computed: they are what the budgets of
:mod:`backend.isnet.engines.selection` bound, and the slow ones (HCE, E-measure curves) would add minutes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from py_sod_metrics.utils import validate_and_normalize_input

from backend.images import load_image
from backend.isnet.engines.base import Engine
from backend.isnet.versions import ModelVersion
from backend.metrics.masks import align, read_mask
from backend.metrics.measures import MAE, FMeasure, SMeasure
from backend.settings import Settings

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
"""``(engine, done, total)`` after each image."""


@dataclass(frozen=True)
class Sample:
    """An image, and its label when there is one (``None``: the reference engine's mask judges)."""

    image: Path
    mask: Path | None = None


class TimedEngine:
    """Wraps an engine and records the time of each ``predict``, per image."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.name, self.precision = engine.name, engine.precision
        self.per_image: list[float] = []

    def predict(self, batch: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        out = self.engine.predict(batch)
        self.per_image.append((time.perf_counter() - start) / len(batch))
        return out

    def describe(self) -> dict[str, Any]:
        return self.engine.describe()

    @property
    def seconds_per_image(self) -> float:
        return float(np.median(self.per_image))


class Accuracy:
    """MAE, mean F-measure and S-measure, PySODMetrics' style: ``step()``, then ``get_results()``."""

    def __init__(self) -> None:
        self.measures = [MAE(), FMeasure(), SMeasure()]

    def step(self, pred: np.ndarray, gt: np.ndarray) -> None:
        pred_n, gt_n = validate_and_normalize_input(pred, gt, normalize=True)
        for measure in self.measures:
            measure.step(pred_n, gt_n)

    def get_results(self) -> dict[str, float]:
        values: dict[str, float] = {}
        for measure in self.measures:
            values.update(measure.get_results())
        return {key: float(values[key]) for key in ("mae", "avgfmeasure", "sm")}


def measure_engines(version: ModelVersion, settings: Settings, engines: Sequence[str], samples: Sequence[Sample],
                    size: int, dataset: str, progress: Progress | None = None) -> dict[str, dict[str, Any]]:
    """Measure each engine of ``engines`` on ``samples`` at ``size`` and record it for ``version``.

    Unlabelled samples are judged by the masks of ``engines[0]`` (give the fp32 engine first).
    ``dataset`` names the images in the record: only measurements on the same dataset and the
    same number of images are compared with each other. Returns ``{engine: recorded entry}``.
    """
    from backend.isnet.engines import create_engine
    from backend.isnet.engines.selection import Measurements
    from backend.isnet.segmenter import Segmenter

    references: dict[Path, np.ndarray] = {}
    recorded: dict[str, dict[str, Any]] = {}
    for name in engines:
        engine = TimedEngine(create_engine(name, version, settings, size))
        segmenter = Segmenter(engine, size)
        accuracy = Accuracy()
        for done, sample in enumerate(samples, 1):
            mask = segmenter.predict_one(load_image(sample.image, settings.max_pixels))
            if sample.mask is not None:
                gt = read_mask(sample.mask, settings.max_pixels)
                mask = align(mask, gt.shape)[0]
            else:
                gt = references.setdefault(sample.image, np.where(mask > 127, 255, 0).astype(np.uint8))
            accuracy.step(mask, gt)
            if progress is not None:
                progress(name, done, len(samples))
        recorded[name] = Measurements(version).record(name, size, engine.precision, accuracy.get_results(),
                                                      engine.seconds_per_image, dataset, len(samples))
        log.info("%s measured on %d image(s) of %s at %d: %s", name, len(samples), dataset, size, recorded[name])
    return recorded
