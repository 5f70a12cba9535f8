"""One object's mask from a box and/or clicks, at the image's full resolution.

Why crops: ISNet segments "the" foreground of what it is shown. Shown a box around one object
(plus a margin of context), it segments that object, with DIS-quality edges, because the crop
is resized to the network's input instead of the whole photo. Why not always: when the box
frames what ISNet already finds on the whole image (that foreground lies in the box and fills
it), the whole-image prediction, made with all the context ISNet was trained on, is the better
mask of that object, and it is the one used. Clicks then choose among the
parts of that mask: a positive click keeps the connected part under it (a click on background
first runs the network on a crop around the click), a negative click removes the part under it.

Coordinates are pixels of the full image, ``x`` to the right and ``y`` down. ``predict`` is any
function from RGB crops to 0-255 confidence maps of the same size (the serving engine, queued).
This module knows no Label Studio and no HTTP.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

from backend.geometry import Box, Click

Predict = Callable[[Sequence[np.ndarray]], list[np.ndarray]]

DEFAULT_MARGIN = 0.2
"""Context around a box, as a fraction of the box's width and height on each side."""
FRAMED_SHARE = 0.95
"""A box frames the whole image's foreground when it holds at least this share of it ..."""
FRAMED_FILL = 0.1
"""... and that foreground covers at least this share of the box (a box far larger than it is a
request for something else)."""
CLICK_CROP = 0.4
"""Side of the crop around a click on background, as a fraction of the region it lies in."""
MIN_CROP = 32
"""Crops are at least this many pixels wide and high (where the image allows)."""


def expand(box: Box, margin: float, width: int, height: int, square: bool = False) -> tuple[int, int, int, int]:
    """The crop for ``box``: ``margin`` of its size added on each side, at least ``MIN_CROP``, clipped.

    ``square`` then widens the shorter side to the longer one (as far as the image allows): the
    network squashes every input to a square, and a long thin crop would distort the object.
    """
    x0, y0, x1, y1 = box.pixels()
    w, h = x1 - x0, y1 - y0
    mx, my = margin * w, margin * h
    if square:
        side = max(MIN_CROP, w + 2 * mx, h + 2 * my)
        grow_x, grow_y = (side - w - 2 * mx) / 2, (side - h - 2 * my) / 2
    else:
        grow_x, grow_y = max(0.0, (MIN_CROP - w) / 2), max(0.0, (MIN_CROP - h) / 2)
    cx0, cx1 = int(np.floor(x0 - mx - grow_x)), int(np.ceil(x1 + mx + grow_x))
    cy0, cy1 = int(np.floor(y0 - my - grow_y)), int(np.ceil(y1 + my + grow_y))
    return max(0, cx0), max(0, cy0), min(width, cx1), min(height, cy1)


def predict_crop(image: np.ndarray, crop: tuple[int, int, int, int], predict: Predict) -> np.ndarray:
    """The confidence map of ``image[crop]`` pasted into a full-size map of zeros."""
    x0, y0, x1, y1 = crop
    out = np.zeros(image.shape[:2], np.uint8)
    (prob,) = predict([np.ascontiguousarray(image[y0:y1, x0:x1])])
    out[y0:y1, x0:x1] = prob
    return out


def segment_box(image: np.ndarray, box: Box, predict: Predict, margin: float = DEFAULT_MARGIN,
                whole: Callable[[], np.ndarray] | None = None, threshold: float = 0.5) -> np.ndarray:
    """``H x W`` 0-255 confidence of the object in ``box``; zero outside the box.

    With ``whole`` (the whole image's confidence), a box that :func:`frames` its foreground is
    answered from it; any other box from its crop.
    """
    height, width = image.shape[:2]
    if whole is not None:
        full = whole()
        if frames(full, box, threshold):
            return keep_inside(full.copy(), box)
    prob = predict_crop(image, expand(box, margin, width, height, square=True), predict)
    return keep_inside(prob, box)


def frames(prob: np.ndarray, box: Box, threshold: float = 0.5) -> bool:
    """Whether ``box`` frames the foreground of ``prob``: it holds ``FRAMED_SHARE`` of it, and that
    foreground covers ``FRAMED_FILL`` of the box."""
    height, width = prob.shape
    x0, y0, x1, y1 = box.clip(width, height).pixels()
    foreground = prob > threshold * 255.0
    total = int(np.count_nonzero(foreground))
    inside = int(np.count_nonzero(foreground[y0:y1, x0:x1]))
    return total > 0 and inside >= FRAMED_SHARE * total and inside >= FRAMED_FILL * (x1 - x0) * (y1 - y0)


def keep_inside(prob: np.ndarray, box: Box) -> np.ndarray:
    """``prob`` with everything outside ``box`` set to zero (in place, returned)."""
    x0, y0, x1, y1 = box.clip(prob.shape[1], prob.shape[0]).pixels()
    prob[:y0] = 0
    prob[y1:] = 0
    prob[:, :x0] = 0
    prob[:, x1:] = 0
    return prob


def click_crop(click: Click, region: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """A square around ``click``, ``CLICK_CROP`` of ``region``'s longer side, kept inside ``region``."""
    side = max(MIN_CROP, CLICK_CROP * max(region.x1 - region.x0, region.y1 - region.y0))
    half = side / 2
    return expand(Box(click.x - half, click.y - half, click.x + half, click.y + half), 0.0, width, height)


def apply_clicks(prob: np.ndarray, clicks: Sequence[Click], threshold: float, image: np.ndarray | None = None,
                 predict: Predict | None = None, region: Box | None = None) -> np.ndarray:
    """``prob`` reduced to the parts the clicks choose (in place, returned).

    Positive clicks keep the connected parts of ``prob > threshold`` under them; one on background
    first adds the network's answer for a crop around it (when ``image`` and ``predict`` are given),
    inside ``region``. Negative clicks remove the part under them; where that part also holds a
    positive click, only the pixels nearer the negative click than any positive one go.
    """
    height, width = prob.shape
    region = (region or Box(0, 0, width, height)).clip(width, height)
    cut = threshold * 255.0
    positives = [c.pixel(width, height) for c in clicks if c.positive]
    negatives = [c.pixel(width, height) for c in clicks if not c.positive]
    if image is not None and predict is not None:
        for click, (x, y) in zip([c for c in clicks if c.positive], positives, strict=True):
            if prob[y, x] <= cut:
                local = keep_inside(predict_crop(image, click_crop(click, region, width, height), predict), region)
                np.maximum(prob, local, out=prob)
    parts = _components(prob > cut)
    if positives:
        chosen = {int(parts[y, x]) for x, y in positives} - {0}
        prob[~np.isin(parts, list(chosen))] = 0
    for x, y in negatives:
        part = int(parts[y, x])
        if part == 0 or prob[y, x] <= cut:
            continue
        inside = [(px, py) for px, py in positives if parts[py, px] == part]
        prob[_nearer(parts == part, (x, y), inside)] = 0
    return prob


def _components(mask: np.ndarray) -> np.ndarray:
    """Labels of the 8-connected parts of ``mask`` (0 is background)."""
    _, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return labels


def _nearer(part: np.ndarray, negative: tuple[int, int], positives: Sequence[tuple[int, int]]) -> np.ndarray:
    """The pixels of ``part`` nearer ``negative`` than every point of ``positives`` (all of it if none)."""
    if not positives:
        return part
    ys, xs = np.nonzero(part)
    to_negative = (xs - negative[0]) ** 2 + (ys - negative[1]) ** 2
    to_positive = np.min([(xs - px) ** 2 + (ys - py) ** 2 for px, py in positives], axis=0)
    out = np.zeros_like(part)
    drop = to_negative < to_positive
    out[ys[drop], xs[drop]] = True
    return out


def segment_object(image: np.ndarray, predict: Predict, box: Box | None = None, clicks: Sequence[Click] = (),
                   threshold: float = 0.5, margin: float = DEFAULT_MARGIN,
                   whole: Callable[[], np.ndarray] | None = None) -> np.ndarray:
    """``H x W`` 0-255 confidence of one object chosen by a box and/or clicks.

    ``whole()`` gives the full-image confidence (a cached prediction, say); it defaults to
    predicting the whole image. With a box, that answers a box that frames its foreground, the
    box's crop any other (see :func:`segment_box`), and nothing outside the box is kept. Without
    one, the clicks choose from it.
    """
    if whole is None:
        def whole() -> np.ndarray:
            return predict([image])[0]

    prob = segment_box(image, box, predict, margin, whole, threshold) if box is not None else whole().copy()
    if clicks:
        apply_clicks(prob, clicks, threshold, image, predict, box)
    return prob
