"""A confidence mask as a Label Studio prediction result, and a brush result back as a mask.

Why here: the result's shape (keys, RLE, size, label) is what Label Studio validates and
shows; the server only wraps it as ``{"result", "score", "model_version"}``.

An image where nothing reaches the threshold gets no region and score 0.0: an empty result
list is what Label Studio shows as "nothing predicted", whereas an empty brush region would be
an invisible region the annotator has to find and delete.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np

from backend.labelstudio.config import BrushTarget
from backend.labelstudio.rle import mask_to_rle, rle_to_mask


def region_id() -> str:
    """A short random region id, like the ones the Label Studio editor gives regions."""
    return uuid.uuid4().hex[:10]


def brush_result(mask_u8: np.ndarray, target: BrushTarget, threshold: float) -> tuple[list[dict[str, Any]], float]:
    """One ``brushlabels`` region for the pixels above ``threshold``, and its score.

    ``mask_u8`` is the model's ``H x W`` confidence as 0-255 at the image's original size.
    A pixel is inside when ``mask_u8 / 255 > threshold``; the score is the mean confidence
    (0-1) of the pixels inside. Nothing inside: ``([], 0.0)``.
    """
    mask = np.asarray(mask_u8)
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"mask must be a 2-D uint8 array, got {mask.dtype} {mask.shape}")
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")
    inside = mask > threshold * 255.0
    count = int(np.count_nonzero(inside))
    if count == 0:
        return [], 0.0
    score = float(mask[inside].sum(dtype=np.int64)) / (255.0 * count)
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
    return [region], score


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
