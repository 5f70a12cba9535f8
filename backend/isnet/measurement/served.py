"""int8 from the images the backend served: built and measured without a label or a manual step.

A fresh install has no labelled images, yet int8 is 2.6 times faster than fp32 on a CPU with
VNNI. Once a lineage's served sample (:mod:`backend.isnet.calibration_sample`) holds
``ISNET_AUTO_INT8_AFTER`` images, the version serving it gets an int8 engine calibrated on two
thirds of them, and both engines are measured on the other third, the images the calibration
never saw, with fp32's own masks as the reference (:mod:`.measure`). ``ISNET_ENGINE=auto`` then
serves int8 only if it is within the int8 budget of fp32 and measured faster on this CPU
(:mod:`backend.isnet.engines.selection`); on a CPU without fast int8 it rightly stays on fp32.

The server runs :func:`upgrade` in a child process at a lower CPU priority (``isnet engine
upgrade``), so requests are never delayed by it, and reloads the version when it is done.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

from backend.isnet.calibration_sample import sample_dir, sample_images
from backend.isnet.engines.calibration import link_images
from backend.isnet.engines.config import default_config
from backend.isnet.engines.selection import Measurements
from backend.isnet.measurement.measure import Progress, Sample, measure_engines
from backend.isnet.versions import ModelVersion
from backend.settings import Settings

HELD_OUT_EVERY = 3
"""Every third served image (by name, a content hash) is kept out of calibration to measure on."""
DATASET_PREFIX = "served:"


def split(images: list[Path]) -> tuple[list[Path], list[Path]]:
    """``(calibration, measurement)``: the served images, every :data:`HELD_OUT_EVERY`-th measured."""
    held = {i for i in range(len(images)) if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1}
    return ([p for i, p in enumerate(images) if i not in held], [p for i, p in enumerate(images) if i in held])


def dataset_name(lineage: str, images: list[Path]) -> str:
    digest = hashlib.sha256("\n".join(p.name for p in images).encode()).hexdigest()[:12]
    return f"{DATASET_PREFIX}{lineage}:{digest}"


def served_count(settings: Settings, version: ModelVersion) -> int:
    return len(sample_images(sample_dir(settings, version.lineage)))


def threshold(settings: Settings) -> int:
    """Served images needed (0: never): ``ISNET_AUTO_INT8_AFTER``, at most what the sample keeps."""
    return max(0, min(settings.auto_int8_after, settings.calib_sample))


def ready(settings: Settings, version: ModelVersion) -> bool:
    """Whether the version's lineage has served enough images to build and measure int8 on."""
    return 0 < threshold(settings) <= served_count(settings, version)


def build_int8(version: ModelVersion, settings: Settings, calibration: list[Path]) -> Path:
    """The version's int8 engine (default recipe), calibrated on ``calibration``."""
    from backend.isnet.engines.store import EngineStore

    with tempfile.TemporaryDirectory(prefix="isnet-calib-") as tmp:
        config = default_config("int8").override(calib_dir=link_images(calibration, Path(tmp)))
        return EngineStore(version, settings).build(config)


def upgrade(version: ModelVersion, settings: Settings, size: int,
            progress: Progress | None = None) -> dict[str, Any]:
    """Build int8 on the served sample and measure it against fp32 on the images it did not see.

    Returns what ``auto`` serves now and why, with both measurements. Raises
    :class:`ValueError` when the sample is still too small.
    """
    images = sample_images(sample_dir(settings, version.lineage))
    if len(images) < max(threshold(settings), HELD_OUT_EVERY):
        raise ValueError(f"lineage {version.lineage} has served {len(images)} image(s); int8 is built after "
                         f"{threshold(settings)} (ISNET_AUTO_INT8_AFTER, at most ISNET_CALIB_SAMPLE; 0 = never)")
    calibration, held_out = split(images)
    engine = build_int8(version, settings, calibration)
    measured = measure_engines(version, settings, ["onnx-fp32", "onnx-int8"], [Sample(p) for p in held_out],
                               size, dataset_name(version.lineage, held_out), progress)
    chosen, why = Measurements(version).choose(size)
    return {"model_version": version.name, "int8": engine.name, "calibration_images": len(calibration),
            "measured_on": len(held_out), "measurements": measured, "auto": chosen, "why": why}
