"""Weight interpolation after fine-tuning: keep the gain, bound the forgetting.

Why: a challenger fine-tuned on one team's images learns their house rule and forgets general
saliency. Measured on the butterflies, the default cycle's challenger went from MAE 0.0094 to
0.0336 on DUTS-TE. Averaging weights, ``(1 - lam) * champion + lam * challenger`` (WiSE-FT,
Wortsman et al., CVPR 2022), keeps most of the gain for a fraction of the forgetting.

How ``lam`` is chosen: the largest value whose masks on *anchor* images (general photos nobody
labelled) stay within ``max_drift`` mean absolute difference of the champion's masks. The drift
bounds the change of MAE on those photos (``|MAE(p, gt) - MAE(q, gt)| <= mean|p - q|``) without
their labels, but loosely: masks also move where neither was wrong, so the limit is set by
measurement (see ``TrainOptions.anchor_drift``). Drift grows with ``lam`` (monotone on every
measured line), so a bisection finds ``lam`` in a few passes over the anchors.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from backend.images import IMAGE_SUFFIXES, ImageError, load_image
from backend.isnet.engines.torch_engine import TorchEngine
from backend.isnet.segmenter import Segmenter
from backend.isnet.training.progress import ProgressFn, emit

log = logging.getLogger(__name__)

BUILTIN = "builtin"
"""``ISNET_TRAIN_ANCHORS`` value for the general photos shipped with scikit-image."""

OFF = ("none", "off")
"""``ISNET_TRAIN_ANCHORS`` values that turn the interpolation off (the challenger is kept whole)."""

BUILTIN_PHOTOS = ("astronaut.png", "camera.png", "chelsea.png", "coffee.png", "coins.png",
                  "motorcycle_left.png", "rocket.jpg")
"""scikit-image's bundled photographs with a salient subject (public-domain or CC0 images); the
textures, charts, micrographs and scans beside them have no foreground to keep."""

ANCHOR_MAX = 32
"""At most this many anchor images from a folder (in name order): each costs a prediction per pass."""

SEARCH_STEPS = 4
"""Bisection passes after the ``lam = 1`` check: ``lam`` to within 1/16."""

def anchor_paths(source: str) -> list[Path]:
    """The anchor images of ``source``: ``builtin`` (or empty), ``none``/``off``, or a folder."""
    source = source.strip()
    if source.lower() in OFF:
        return []
    if source.lower() in ("", BUILTIN):
        spec = importlib.util.find_spec("skimage")
        if spec is None or spec.origin is None:
            log.warning("scikit-image is not installed: no built-in anchor images, no interpolation")
            return []
        data = Path(spec.origin).parent / "data"
        return [data / name for name in BUILTIN_PHOTOS if (data / name).is_file()]
    folder = Path(source).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"anchor folder {folder} (ISNET_TRAIN_ANCHORS) does not exist")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:ANCHOR_MAX]


def load_anchors(source: str, max_pixels: int) -> list[np.ndarray]:
    """The readable anchor images of ``source`` as RGB arrays; unreadable ones are logged and left out."""
    images = []
    for path in anchor_paths(source):
        try:
            images.append(load_image(path, max_pixels))
        except (ImageError, OSError) as exc:
            log.warning("anchor image %s left out: %s", path, exc)
    return images


def interpolate(start: Mapping[str, torch.Tensor], end: Mapping[str, torch.Tensor],
                lam: float) -> dict[str, torch.Tensor]:
    """``(1 - lam) * start + lam * end`` for floating-point tensors; counters come from ``end``."""
    return {k: torch.lerp(start[k], v, lam) if v.is_floating_point() else v.clone() for k, v in end.items()}


def predict_masks(model: nn.Module, images: Sequence[np.ndarray], size: int, device: str = "cpu",
                  ) -> list[np.ndarray]:
    """``model``'s served masks (``uint8``, each image's size) for ``images`` at input ``size``."""
    segmenter = Segmenter(TorchEngine(model, device=device), size)
    return [segmenter.predict_one(image) for image in images]


def drift(masks: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> float:
    """Mean over images of the mean absolute difference of two mask sets, on the 0-1 scale of MAE."""
    return float(np.mean([np.abs(a.astype(np.float32) - b.astype(np.float32)).mean() / 255.0
                          for a, b in zip(masks, reference, strict=True)]))


@dataclass
class Interpolation:
    """What the step chose and why, as recorded in ``cycle.json``."""

    lam: float
    drift: float
    max_drift: float
    anchors: int
    tried: list[tuple[float, float]] = field(default_factory=list)
    """``(lam, drift)`` of every pass, in order."""
    seconds: float = 0.0
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["tried"] = [[round(a, 4), round(b, 6)] for a, b in self.tried]
        return out


def choose(measure: Callable[[float], float], max_drift: float, steps: int = SEARCH_STEPS,
           ) -> tuple[float, float, list[tuple[float, float]]]:
    """The largest ``lam`` in ``[0, 1]`` (to ``2**-steps``) with ``measure(lam) <= max_drift``,
    its drift and every ``(lam, drift)`` tried. ``lam = 1`` is tried first; ``lam = 0`` has drift 0."""
    tried = [(1.0, measure(1.0))]
    if tried[0][1] <= max_drift:
        return 1.0, tried[0][1], tried
    lo, lo_drift, hi = 0.0, 0.0, 1.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        value = measure(mid)
        tried.append((mid, value))
        if value <= max_drift:
            lo, lo_drift = mid, value
        else:
            hi = mid
    return lo, lo_drift, tried


def interpolate_towards(model: nn.Module, start: Mapping[str, torch.Tensor], anchors: Sequence[np.ndarray],
                        reference: Sequence[np.ndarray], max_drift: float, size: int, device: str = "cpu",
                        progress: ProgressFn | None = None) -> Interpolation:
    """Load into ``model`` (which holds the trained challenger) the interpolation of ``start`` (the
    champion) and its weights with the largest ``lam`` whose anchor masks drift from ``reference``
    (the champion's) by at most ``max_drift``. Without anchors the challenger is kept whole."""
    started = time.perf_counter()
    if not anchors:
        return Interpolation(1.0, 0.0, max_drift, 0, reason="no anchor images: the challenger is kept whole")
    end = {k: v.detach().clone() for k, v in model.state_dict().items()}
    passes = 0

    def measure(lam: float) -> float:
        nonlocal passes
        passes += 1
        model.load_state_dict(interpolate(start, end, lam))
        value = drift(predict_masks(model, anchors, size, device), reference)
        emit(progress, "interpolate", passes, SEARCH_STEPS + 1,
             message=f"lambda {lam:.4f}: anchor drift {value:.4f} (limit {max_drift:.4f})")
        return value

    lam, value, tried = choose(measure, max_drift)
    model.load_state_dict(interpolate(start, end, lam))
    emit(progress, "interpolate", passes, passes)  # the bar ends full when lam = 1 was accepted at once
    reason = ("the challenger moves the anchor masks within the limit: kept whole" if lam == 1.0 else
              f"(1 - {lam:.4f}) * champion + {lam:.4f} * challenger: the largest mix whose anchor masks "
              f"move by at most {max_drift:g}")
    return Interpolation(lam, value, max_drift, len(anchors), tried, time.perf_counter() - started, reason)
