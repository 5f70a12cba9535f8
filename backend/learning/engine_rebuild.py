"""A promoted version gets the serving engines its champion had, int8 calibrated on the cycle's images.

Why at promotion and not lazily at the first request: an int8 engine takes minutes to calibrate,
and a team that served int8 must not fall back to a slower engine (or wait) because a better
model arrived. Why the cycle's training images: they are the team's own data, the images the
new weights were fitted to; the int8 ranges should be measured on the same distribution.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from backend.learning.registry import ModelVersion
from backend.settings import Settings

log = logging.getLogger(__name__)


def _link_images(images: list[Path], folder: Path) -> None:
    """The images side by side in ``folder`` (symlinks; a name used twice gets its index)."""
    used: set[str] = set()
    for n, image in enumerate(images):
        name = image.name if image.name not in used else f"{n:06d}-{image.name}"
        used.add(name)
        os.symlink(image.resolve(), folder / name)


def rebuild_engines(champion: ModelVersion, challenger: ModelVersion, images: list[Path],
                    settings: Settings) -> dict[str, Any]:
    """Build for ``challenger`` every verified engine ``champion`` has; what was built, or why not.

    Never raises: the version is already written, and serving can still build an engine on
    demand, so a failure here is reported in the cycle report rather than losing the cycle.
    """
    from backend.isnet.engines.store import EngineStore

    previous = EngineStore(champion, settings)
    if not previous.scan()[0]:
        return {"built": [], "reason": f"{champion.name} had no built engines"}
    try:
        with tempfile.TemporaryDirectory(prefix="isnet-calib-") as tmp:
            _link_images(images, Path(tmp))
            built = EngineStore(challenger, settings).rebuild_from(previous, Path(tmp))
    except Exception as exc:  # an engine build can fail in onnx/onnxruntime in many ways
        log.warning("engines for %s were not rebuilt: %s", challenger.name, exc)
        return {"built": [], "error": f"{type(exc).__name__}: {exc}"}
    return {"built": [p.name for p in built], "calibration_images": len(images)}


def estimate_seconds(champion: ModelVersion, settings: Settings) -> float:
    """How long :func:`rebuild_engines` will take: the champion's own recorded build times.

    Why those: the challenger gets the same recipes on the same machine, so the champion's
    engines took about as long as the challenger's will (a cycle keeps this time free)."""
    from backend.isnet.engines.store import EngineStore

    try:
        artefacts = EngineStore(champion, settings).scan()[0]
    except OSError:
        return 0.0
    return float(sum(float(a.record.get("build_seconds") or 0.0) for a in artefacts))
