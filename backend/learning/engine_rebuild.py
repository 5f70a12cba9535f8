"""A promoted version arrives with its serving engines built, and with ``auto``'s choice measured.

Why at promotion and not lazily at the first request: an int8 engine takes minutes to calibrate,
and a team must not fall back to a slower engine (or wait) because a better model arrived.

What is built, calibrated on the cycle's training images (the team's own data, the images the
new weights were fitted to):

* every engine the champion had (a team that served a custom recipe keeps it);
* with ``ISNET_ENGINE=auto`` or ``onnx-int8``, fp32 and the default int8 recipe.

With ``auto`` both are then measured on the cycle's held-out images against their labels (at
most :data:`MEASURE_MAX`, spread evenly), so the new version is served as int8 from its first
request where int8 is within budget and faster on this CPU (:mod:`backend.isnet.engines.selection`).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from backend.isnet.engines import AUTO
from backend.isnet.engines.calibration import link_images, spread
from backend.isnet.engines.config import default_config
from backend.isnet.engines.selection import Measurements
from backend.isnet.engines.store import EngineStore
from backend.isnet.measurement.measure import Sample, measure_engines
from backend.isnet.training.data import Item
from backend.learning.registry import ModelVersion
from backend.settings import Settings

log = logging.getLogger(__name__)

MEASURE_MAX = 32
"""Held-out images the engines are measured on at most: int8's loss against fp32 is a paired
difference on the same images, steady long before the hundreds a promotion is judged on."""
MEASURED = ("onnx-fp32", "onnx-int8")
INT8_BUILD_S = 120.0
"""Time kept for an int8 build when the champion has none to go by (50 images at 320: about
100 s on 2 Zen 4 cores)."""


def wants_int8(settings: Settings) -> bool:
    return settings.engine in (AUTO, "onnx-int8")


def prepare_engines(champion: ModelVersion, challenger: ModelVersion, images: list[Path],
                    held_out: list[Item], settings: Settings) -> dict[str, Any]:
    """Build ``challenger``'s engines and, under ``auto``, measure them; what was done, or why not.

    Never raises: the version is already written, and serving can still build an engine on
    demand, so a failure here is reported in the cycle report rather than losing the cycle.
    """
    previous = EngineStore(champion, settings)
    store = EngineStore(challenger, settings)
    if not previous.scan()[0] and not wants_int8(settings):
        return {"built": [], "reason": f"{champion.name} had no built engines and ISNET_ENGINE={settings.engine}"}
    report: dict[str, Any] = {"calibration_images": len(images)}
    try:
        with tempfile.TemporaryDirectory(prefix="isnet-calib-") as tmp:
            calib = link_images(images, Path(tmp))
            built = store.rebuild_from(previous, calib)
            if wants_int8(settings):
                built += [store.build(default_config("fp32")), store.build(default_config("int8", calib))]
        report["built"] = sorted({p.name for p in built})
        if settings.engine == AUTO:
            samples = [Sample(it.image, it.mask) for it in spread(held_out, MEASURE_MAX)]
            size = settings.input_size
            report["measured"] = measure_engines(challenger, settings, MEASURED, samples, size,
                                                 f"held-out:{challenger.name}")
            report["auto"], report["why"] = Measurements(challenger).choose(size)
    except Exception as exc:  # an engine build can fail in onnx/onnxruntime in many ways
        log.warning("engines for %s were not prepared: %s", challenger.name, exc)
        report["error"] = f"{type(exc).__name__}: {exc}"
    return report


def estimate_seconds(champion: ModelVersion, settings: Settings, seconds_per_image: float,
                     held_out: int) -> float:
    """How long :func:`prepare_engines` will take, kept free by the cycle's budget.

    Builds: the champion's own recorded build times (the challenger gets the same recipes on the
    same machine), or :data:`INT8_BUILD_S` when int8 is wanted and the champion has no int8 to go
    by. Measurements: fp32 and int8 (about half fp32's time) on at most :data:`MEASURE_MAX`
    held-out images at ``seconds_per_image``, the champion's measured scoring speed."""
    try:
        artefacts = EngineStore(champion, settings).scan()[0]
    except OSError:
        artefacts = []
    seconds = float(sum(float(a.record.get("build_seconds") or 0.0) for a in artefacts))
    if wants_int8(settings) and not any(a.serves("int8") for a in artefacts):
        seconds += INT8_BUILD_S
    if settings.engine == AUTO:
        seconds += 1.5 * min(held_out, MEASURE_MAX) * seconds_per_image
    return seconds
