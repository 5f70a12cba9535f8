"""A confidence mask as a Label Studio prediction result, and a brush result back as a mask.

Why here: the result's shape (keys, RLE, size, label) is what Label Studio validates and
shows; the server only wraps it as ``{"result", "score", "model_version"}``.

The score says how far the mask can be trusted (0-1, higher = surer): how decisive its pixels
are, the mean of ``|2p - 1|`` over the whole image for confidences ``p`` in 0-1. Errors sit where
the model hesitates, so sorting tasks by prediction score, ascending, puts the masks most worth
correcting first.

An image where nothing reaches the threshold gets no region and score 0.0: an empty result
list is what Label Studio shows as "nothing predicted", whereas an empty brush region would be
an invisible region the annotator has to find and delete. Score 0.0 sorts it first, as a
missed object is the worst mask of all.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np

from backend.labelstudio.config import BrushTarget
from backend.labelstudio.rle import mask_to_rle, rle_to_mask

_DECISIVENESS = np.abs(np.arange(256) / 127.5 - 1.0)  # |2p - 1| of each 0-255 confidence level
SCORE_PIXELS = 1 << 20
"""About how many pixels the score counts. The model sees the image at its input size (1024 x 1024
by default), so the rows of a larger mask mostly repeat what it said; counting every k-th row
keeps the score's cost flat on large photos."""


def region_id() -> str:
    """A short random region id, like the ones the Label Studio editor gives regions."""
    return uuid.uuid4().hex[:10]


def brush_result(mask_u8: np.ndarray, target: BrushTarget, threshold: float) -> tuple[list[dict[str, Any]], float]:
    """One ``brushlabels`` region for the pixels above ``threshold``, and its score.

    ``mask_u8`` is the model's ``H x W`` confidence as 0-255 at the image's original size.
    A pixel is inside when ``mask_u8 / 255 > threshold``; the score is :func:`prediction_score`.
    Nothing inside: ``([], 0.0)``.
    """
    mask = np.asarray(mask_u8)
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"mask must be a 2-D uint8 array, got {mask.dtype} {mask.shape}")
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")
    inside = mask > threshold * 255.0
    if not inside.any():
        return [], 0.0
    height, width = mask.shape
    region = {
        "id": region_id(),
        "from_name": target.from_name,
        "to_name": target.to_name,
        "type": "brushlabels",
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "value": {"format": "rle", "rle": mask_to_rle(inside), "brushlabels": [target.label]},
    }
    return [region], prediction_score(mask, threshold)


def prediction_score(mask_u8: np.ndarray, threshold: float) -> float:
    """How far a 0-255 confidence mask can be trusted: the mean decisiveness ``|2p - 1|`` of its pixels.

    1.0 when every pixel is 0 or 255, near 0.0 when most are near 0.5; a wide or blotchy band of
    hesitant pixels lowers it. Read as probabilities, ``(1 - score) / 2`` is the share of pixels
    the 0.5-thresholded region is expected to get wrong. No pixel above ``threshold`` (nothing
    predicted): 0.0. A mask above about a megapixel is counted on every k-th row (:data:`SCORE_PIXELS`).
    """
    mask = np.ascontiguousarray(mask_u8)
    if mask.size == 0 or mask.max() <= threshold * 255.0:
        return 0.0
    rows = mask[:: max(1, mask.size // SCORE_PIXELS)]
    counts = cv2.calcHist([rows], [0], None, [256], [0, 256]).ravel().astype(np.float64)
    return float(np.clip(counts @ _DECISIVENESS / rows.size, 0.0, 1.0))


def annotation_mask(annotation: Mapping[str, Any], from_name: str) -> np.ndarray:
    """The union of an annotation's brush regions for the tag ``from_name``, 0/255 ``uint8``.

    ``ValueError`` when none decodes or two have different sizes."""
    mask: np.ndarray | None = None
    for result in annotation.get("result") or []:
        if not isinstance(result, Mapping) or result.get("from_name") != from_name:
            continue
        if result.get("type", "brushlabels") != "brushlabels":
            continue
        region = result_to_mask(result) > 127
        if mask is not None and mask.shape != region.shape:
            raise ValueError("brush regions of different sizes in one annotation")
        mask = region if mask is None else (mask | region)
    if mask is None:
        raise ValueError(f"no brush result for {from_name!r}")
    return mask.astype(np.uint8) * 255


def result_to_mask(result: Mapping[str, Any]) -> np.ndarray:
    """A brush result (from an annotation or a prediction) as its ``H x W`` ``uint8`` alpha mask.

    Raises :class:`ValueError` when it is not an RLE brush result or its size does not match.
    """
    value = result.get("value")
    if not isinstance(value, Mapping) or value.get("format", "rle") != "rle" or "rle" not in value:
        raise ValueError(f"result {result.get('id', '?')} is not an RLE brush result")
    try:
        width, height = int(result["original_width"]), int(result["original_height"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"result {result.get('id', '?')} has no original_width/original_height") from exc
    return rle_to_mask(value["rle"], height, width)
