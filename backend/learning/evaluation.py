"""Champion and challenger on the held-out items, at the serving size, through the serving code.

Why through :class:`~backend.isnet.segmenter.Segmenter` and ``backend.metrics``: the number
that decides promotion must be the number users get and the number ``isnet evaluate``
prints, so predictions go through the same resize, engine and post-processing as serving
(masks at each image's original size) and are scored, and reported (``metrics.json/md/csv``
and plots), by the project's evaluator (PySODMetrics underneath) against the original masks.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from backend.isnet.engines.torch_engine import TorchEngine
from backend.isnet.segmenter import Segmenter
from backend.isnet.training.data import Item, Skipped
from backend.isnet.training.progress import ProgressFn, emit


@dataclass
class Evaluation:
    """Per-model dataset metrics and per-item MAE, on the same items for every model."""

    metrics: dict[str, dict[str, float]]
    per_item: dict[str, dict[str, float]] = field(default_factory=dict)
    """``{item key: {model label: MAE}}``, for finding where a challenger got worse."""
    items: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The ``backend.metrics`` report document of each model (written by :func:`write_reports`)."""
    seconds: float = 0.0


class _Counting:
    """A segmenter that reports each image it predicts (the evaluator takes no callback)."""

    def __init__(self, segmenter: Segmenter, progress: ProgressFn | None, offset: int, total: int,
                 stage: str = "evaluate") -> None:
        self.segmenter, self.progress, self.done, self.total, self.stage = segmenter, progress, offset, total, stage

    def predict_one(self, image: np.ndarray) -> np.ndarray:
        mask = self.segmenter.predict_one(image)
        self.done += 1
        emit(self.progress, self.stage, self.done, self.total)
        return mask


def evaluate_models(
    models: Mapping[str, nn.Module],
    items: Sequence[Item],
    size: int,
    max_pixels: int,
    device: str = "cpu",
    progress: ProgressFn | None = None,
    describe: Mapping[str, str] | None = None,
    stage: str = "evaluate",
) -> Evaluation:
    """Score every model in ``models`` (label -> network) on ``items`` at input ``size``;
    progress events carry ``stage``."""
    from backend.metrics import Pair, build_report, evaluate_segmenter

    started = time.perf_counter()
    pairs = [Pair(item.key, item.mask, item.image) for item in items]
    result = Evaluation({})
    total = len(pairs) * len(models)
    for n, (label, model) in enumerate(models.items()):
        segmenter = Segmenter(TorchEngine(model, device=device), size)
        counted = _Counting(segmenter, progress, n * len(pairs), total, stage)
        evaluation = evaluate_segmenter(counted, pairs, workers=1, progress=False, max_pixels=max_pixels)
        if not evaluation.count:
            raise ValueError("no held-out item could be evaluated: " + "; ".join(
                f"{i.name}: {i.detail}" for i in evaluation.issues[:5]))
        result.metrics[label] = {k: float(v) for k, v in evaluation.metrics.items()}
        for image in evaluation.images:
            result.per_item.setdefault(image.name, {})[label] = round(float(image.values["mae"]), 6)
        if n == 0:
            result.items = [image.name for image in evaluation.images]
            result.skipped = [Skipped(i.name, i.path, f"held-out item not evaluated: {i.kind} {i.detail}".strip())
                              for i in evaluation.issues if i.blocking]
        name = (describe or {}).get(label, label)
        result.reports[label] = build_report(evaluation, name, {"role": label, "model_version": name,
                                                                 "input_size": size, "engine": "torch"})
    result.seconds = time.perf_counter() - started
    return result


SCORING_OVERHEAD = 1.3
"""Reading the image and mask and computing the metrics, on top of the prediction itself."""


def seconds_per_image(model: nn.Module, item: Item, size: int, max_pixels: int, device: str = "cpu") -> float:
    """Wall time scoring one held-out image will take: a warm prediction of ``item`` at ``size``
    through the serving code (the first call pays for allocations, so it runs twice), plus
    :data:`SCORING_OVERHEAD`."""
    from backend.images import load_image

    segmenter = Segmenter(TorchEngine(model, device=device), size)
    image = load_image(item.image, max_pixels)
    segmenter.predict_one(image)
    started = time.perf_counter()
    segmenter.predict_one(image)
    return (time.perf_counter() - started) * SCORING_OVERHEAD


def merge(first: Evaluation, second: Evaluation) -> Evaluation:
    """One evaluation of the models of both (scored on the same items, e.g. before and after training)."""
    per_item = {k: dict(v) for k, v in first.per_item.items()}
    for key, values in second.per_item.items():
        per_item.setdefault(key, {}).update(values)
    return Evaluation({**first.metrics, **second.metrics}, per_item, first.items or second.items,
                      first.skipped or second.skipped, {**first.reports, **second.reports},
                      first.seconds + second.seconds)


def write_reports(evaluation: Evaluation, directory: Path) -> list[Path]:
    """``directory/<label>/`` with ``metrics.json``, ``metrics.md``, CSVs and plots per model."""
    from backend.metrics import write_report

    written: list[Path] = []
    for label, report in evaluation.reports.items():
        written += write_report(report, directory / label)
    return written
