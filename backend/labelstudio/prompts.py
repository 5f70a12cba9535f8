"""The annotator's smart-tool regions (``params.context``) as prompts for one object each.

Why a module: Label Studio sends interactive prompts as ordinary results in percent of the
image (``rectanglelabels``/``keypointlabels``, or the unlabelled ``rectangle``/``keypoint``).
Each must be checked against the labeling config (its tag, its image, its labels) and turned
into pixels; a prompt that cannot be used is dropped with a reason the log and the answer can
show, never an exception out of ``/predict``.

Grouping: every rectangle is one object, refined by the clicks inside it (the smallest
rectangle that contains a click gets it). Clicks outside every rectangle make one more object
between them (only negative ones: the whole-image mask without the parts they remove). An
object's label is its rectangle's (else its first positive click's) label
when the ``BrushLabels`` tag has a label of that name, else the default brush label.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from xml.etree.ElementTree import Element

from backend.geometry import Box, Click
from backend.labelstudio.config import BrushTarget, LabelConfigError, _kind, _label_names, _parse

BOX_TYPES = frozenset({"rectanglelabels", "rectangle"})
CLICK_TYPES = frozenset({"keypointlabels", "keypoint"})


class PromptError(ValueError):
    """The context as a whole is unusable (not a list of results); the message says why."""


@dataclass(frozen=True)
class PromptTag:
    """A smart tool's control tag in the labeling config."""

    name: str
    kind: str
    to_names: tuple[str, ...]
    labels: tuple[str, ...]


@dataclass
class ObjectPrompt:
    """What one brush region is made from: an optional box, clicks, and the region's label."""

    label: str
    box: Box | None = None
    clicks: list[Click] = field(default_factory=list)


@dataclass
class Prompts:
    """The objects to segment, and the reasons any region of the context was dropped."""

    objects: list[ObjectPrompt]
    rejected: list[str]


def prompt_tags(label_config: str) -> dict[str, PromptTag]:
    """The config's rectangle and keypoint tags by name (with their labels, as results name them)."""
    root: Element = _parse(label_config)
    tags = {}
    for element in root.iter():
        kind = _kind(element)
        if kind in BOX_TYPES | CLICK_TYPES and element.get("name"):
            to_names = tuple(t.strip() for t in (element.get("toName") or "").split(",") if t.strip())
            labels = tuple(name for name, _ in _label_names(element))
            tags[element.get("name", "")] = PromptTag(element.get("name", ""), kind, to_names, labels)
    return tags


def _number(value: Mapping[str, Any], key: str) -> float:
    number = value.get(key)
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
        raise ValueError(f"value.{key} is not a number: {number!r}")
    return float(number)


def _labels(region: Mapping[str, Any], value: Mapping[str, Any], tag: PromptTag) -> list[str]:
    """The region's labels, each checked against its tag (unlabelled tools have none)."""
    labels = value.get(region.get("type", ""), [])
    if not isinstance(labels, list) or not all(isinstance(v, str) for v in labels):
        raise ValueError(f"value.{region.get('type')} is not a list of labels: {labels!r}")
    unknown = [v for v in labels if v not in tag.labels]
    if unknown:
        raise ValueError(f"label {unknown[0]!r} is not a label of <{tag.kind} name={tag.name!r}>")
    return labels


def _box(value: Mapping[str, Any], width: int, height: int) -> Box:
    """The rectangle in pixels (the bounding box of a rotated one), clipped to the image."""
    x, y = _number(value, "x"), _number(value, "y")
    w, h = _number(value, "width"), _number(value, "height")
    if w <= 0 or h <= 0:
        raise ValueError(f"the rectangle has no area ({w} x {h} %)")
    x, y, w, h = x * width / 100, y * height / 100, w * width / 100, h * height / 100
    angle = math.radians(_number(value, "rotation") if value.get("rotation") is not None else 0.0)
    cos, sin = math.cos(angle), math.sin(angle)  # Label Studio rotates about the top-left corner
    xs = [x + dx * cos - dy * sin for dx, dy in ((0, 0), (w, 0), (0, h), (w, h))]
    ys = [y + dx * sin + dy * cos for dx, dy in ((0, 0), (w, 0), (0, h), (w, h))]
    box = Box(min(xs), min(ys), max(xs), max(ys))
    clipped = box.clip(width, height)
    if clipped.x1 - clipped.x0 < 1 or clipped.y1 - clipped.y0 < 1:
        raise ValueError("the rectangle lies outside the image")
    return clipped


def _click(region: Mapping[str, Any], value: Mapping[str, Any], width: int, height: int) -> Click:
    x, y = _number(value, "x"), _number(value, "y")
    if not (0 <= x <= 100 and 0 <= y <= 100):
        raise ValueError(f"the keypoint ({x:.1f} %, {y:.1f} %) lies outside the image")
    positive = region.get("is_positive", True)
    return Click(min(x * width / 100, width - 0.5), min(y * height / 100, height - 0.5), positive is not False)


def _brush_label(labels: Sequence[str], target: BrushTarget) -> str:
    return next((label for label in labels if label in target.labels), target.label)


def check_prompt_count(context: Any, limit: int) -> None:
    """:class:`PromptError` when ``context`` carries more than ``limit`` regions (``ISNET_MAX_PROMPTS``).

    Called before the image is fetched and before any region is read: a request with thousands of
    prompts costs one ``len``, not a grouping pass and the inference thread's top priority for its
    whole budget."""
    regions = context.get("result") if isinstance(context, Mapping) else None
    if isinstance(regions, list) and len(regions) > limit:
        raise PromptError(f"the interactive context has {len(regions)} regions; at most {limit} are taken "
                          "(ISNET_MAX_PROMPTS): the request was refused, no region was used")


def parse_prompts(context: Any, label_config: str, target: BrushTarget, width: int, height: int) -> Prompts:
    """The objects ``context`` asks for on a ``width x height`` image, and what was dropped.

    Raises :class:`PromptError` when ``context`` is not ``{"result": [region, ...]}``.
    """
    if not isinstance(context, Mapping) or not isinstance(context.get("result"), list):
        raise PromptError('the interactive context must be {"result": [region, ...]}')
    try:
        tags = prompt_tags(label_config)
    except LabelConfigError as exc:
        raise PromptError(str(exc)) from exc
    boxes: list[ObjectPrompt] = []
    clicks: list[tuple[Click, list[str]]] = []
    rejected: list[str] = []
    for n, region in enumerate(context["result"]):
        where = f"context region {n}"
        try:
            if not isinstance(region, Mapping) or not isinstance(region.get("value"), Mapping):
                raise ValueError("not a result object with a value")
            kind, value = region.get("type"), region["value"]
            if kind not in BOX_TYPES | CLICK_TYPES:
                raise ValueError(f"type {kind!r} is not a rectangle or a keypoint")
            tag = tags.get(str(region.get("from_name")))
            if tag is None or tag.kind != kind:
                raise ValueError(f"from_name {region.get('from_name')!r} is not a <{kind}> tag of the config")
            if region.get("to_name") != target.to_name:
                raise ValueError(f"it is for the image tag {region.get('to_name')!r}, not {target.to_name!r}")
            labels = _labels(region, value, tag)
            if kind in BOX_TYPES:
                boxes.append(ObjectPrompt(_brush_label(labels, target), _box(value, width, height)))
            else:
                clicks.append((_click(region, value, width, height), labels))
        except ValueError as exc:
            rejected.append(f"{where}: {exc}")
    return Prompts(_group(boxes, clicks, target), rejected)


def _group(boxes: list[ObjectPrompt], clicks: list[tuple[Click, list[str]]], target: BrushTarget) -> list[ObjectPrompt]:
    """Clicks go to the smallest box that holds them; the others make one object together."""
    loose: list[tuple[Click, list[str]]] = []
    for click, labels in clicks:
        holders = [obj for obj in boxes if obj.box is not None and obj.box.contains(click.x, click.y)]
        if holders:
            min(holders, key=lambda obj: obj.box.area if obj.box else 0.0).clicks.append(click)
        else:
            loose.append((click, labels))
    objects = list(boxes)
    if loose:
        first = next((labels for click, labels in loose if click.positive), loose[0][1])
        objects.append(ObjectPrompt(_brush_label(first, target), None, [click for click, _ in loose]))
    return objects
