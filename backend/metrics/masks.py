"""Reading masks and predictions as 0-255 maps, and the rule for predictions of another size.

Decoding: PIL (it refuses truncated files, where OpenCV would hand back half an image with a
warning) with EXIF orientation applied and colour converted to luma, which is what
PySODEvalToolkit's ``cv2.imread(path, IMREAD_GRAYSCALE)`` returns for masks; 16-bit masks
are scaled to 8 bits. Sizes are checked against ``ISNET_MAX_PIXELS`` before decoding.

Sizes: PySODEvalToolkit resizes every prediction to its ground truth's size (bilinear,
``cv2.resize``). That hides real mistakes: a prediction rotated by EXIF, or a file paired
with the wrong image, has another aspect ratio and would be stretched and scored. So the
default policy ``aspect`` resizes only predictions with the ground truth's aspect ratio (a
change of resolution, up to rounding) and reports the rest as ``size_mismatch``; ``always``
is PySODEvalToolkit's behaviour and ``never`` accepts only identical sizes. Every resize is
recorded in the report either way.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from backend.images import ImageError, load_mask

RESIZE_POLICIES = ("aspect", "always", "never")


class MaskError(ValueError):
    """A mask or prediction that cannot be decoded; the message says why."""


class SizeMismatch(ValueError):
    """A prediction whose size the resize policy does not allow to be changed."""


def read_mask(path: Path, max_pixels: int) -> np.ndarray:
    """``H x W`` uint8, 0-255; raises :class:`MaskError` for anything not decodable in full."""
    try:
        return load_mask(path, max_pixels, name="")
    except ImageError as exc:
        raise MaskError(str(exc)) from exc


def same_aspect(pred_hw: tuple[int, int], gt_hw: tuple[int, int]) -> bool:
    """Whether one size is the other scaled, each side within one pixel (any rounding: floor, ceil).

    If ``pred = (s*gh + e1, s*gw + e2)`` with ``|e| <= 1`` then ``|pw*gh - ph*gw| <= gh + gw``; the
    bound is taken from whichever of the two is the rescaled one.
    """
    (ph, pw), (gh, gw) = pred_hw, gt_hw
    return abs(pw * gh - ph * gw) <= max(gh + gw, ph + pw)


def align(pred: np.ndarray, gt_hw: tuple[int, int], policy: str = "aspect") -> tuple[np.ndarray, bool]:
    """``pred`` at the ground truth's size and whether it had to be resized.

    Resizing is PySODEvalToolkit's: ``cv2.resize`` to ``(width, height)``, bilinear, uint8.
    """
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"resize policy must be one of {', '.join(RESIZE_POLICIES)}, got {policy!r}")
    if pred.shape == gt_hw:
        return pred, False
    described = f"prediction {pred.shape[1]}x{pred.shape[0]}, ground truth {gt_hw[1]}x{gt_hw[0]}"
    if policy == "never" or (policy == "aspect" and not same_aspect(pred.shape, gt_hw)):
        hint = "" if policy == "never" else "; other aspect ratio (--resize always would stretch it)"
        raise SizeMismatch(described + hint)
    resized = cv2.resize(pred, dsize=(gt_hw[1], gt_hw[0]), interpolation=cv2.INTER_LINEAR)
    return resized.astype(np.uint8, copy=False), True
