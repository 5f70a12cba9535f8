"""Which ``BrushLabels`` -> ``Image`` pair, task data key and label a prediction is for.

Why a module: every ``/predict`` carries the project's labeling config, and a config this
backend cannot serve must be answered with a message that names what is missing (a 400 the
user can act on), never with a stack trace. Parsing follows the Label Studio frontend: tag
names are case-insensitive, ``toName`` may list several names, and a ``Label``'s ``alias``,
when set, is what results carry.
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

EXAMPLE = '<BrushLabels name="tag" toName="image"><Label value="Object"/></BrushLabels>'


class LabelConfigError(ValueError):
    """A labeling config this backend cannot predict for; the message says what to change."""


@dataclass(frozen=True)
class BrushTarget:
    """What one prediction is for."""

    from_name: str
    """The ``BrushLabels`` tag's ``name``: the result's ``from_name``."""
    to_name: str
    """The ``Image`` tag's ``name``: the result's ``to_name``."""
    value_key: str
    """The task data key holding the image URL (``image`` for ``value="$image"``)."""
    label: str
    """The label given to predicted regions (a ``Label``'s alias if it has one, else its value)."""
    labels: tuple[str, ...] = ()
    """Every label of the tag, in config order, as results name them."""


def _kind(element: Element) -> str:
    return str(element.tag).lower()


def _parse(xml: str) -> Element:
    if not xml or not xml.strip():
        raise LabelConfigError(f"the labeling config is empty: it needs an <Image> and a {EXAMPLE}")
    try:
        return fromstring(xml)
    except (ParseError, DefusedXmlException) as exc:
        raise LabelConfigError(f"the labeling config is not valid XML: {exc}") from exc


def _label_names(brush: Element) -> list[tuple[str, str]]:
    """(name in results, value) for each ``Label`` of the tag."""
    return [
        (child.get("alias") or child.get("value", ""), child.get("value", ""))
        for child in brush.iter()
        if _kind(child) == "label" and child.get("value")
    ]


def _image_for(brush: Element, tags: dict[str, Element]) -> Element:
    """The ``Image`` a ``BrushLabels`` tag points to, or an error naming what it points to."""
    name = brush.get("name", "")
    targets = [t.strip() for t in (brush.get("toName") or "").split(",") if t.strip()]
    if not targets:
        raise LabelConfigError(f"<BrushLabels name={name!r}> has no toName: point it at an <Image> tag")
    for target in targets:
        tag = tags.get(target)
        if tag is not None and _kind(tag) == "image":
            return tag
    found = [f"{t!r} is a <{tags[t].tag}>" if t in tags else f"{t!r} does not exist" for t in targets]
    raise LabelConfigError(
        f"<BrushLabels name={name!r}> toName={brush.get('toName')!r} does not point to an <Image> tag "
        f"({'; '.join(found)}); this backend segments images"
    )


def _choose(brushes: list[Element], tags: dict[str, Element], from_name: str | None) -> tuple[Element, Element]:
    """The ``BrushLabels`` named ``from_name``, else the first that points to an ``Image``."""
    if from_name:
        chosen = [b for b in brushes if b.get("name") == from_name]
        if not chosen:
            names = ", ".join(repr(b.get("name", "")) for b in brushes)
            raise LabelConfigError(
                f"ISNET_FROM_NAME={from_name!r}: no <BrushLabels> with that name; the config has {names}"
            )
        return chosen[0], _image_for(chosen[0], tags)
    errors = []
    for brush in brushes:
        try:
            return brush, _image_for(brush, tags)
        except LabelConfigError as exc:
            errors.append(exc)
    raise errors[0]


def _value_key(image: Element) -> str:
    name = image.get("name", "")
    value = (image.get("value") or "").strip()
    if not value:
        if image.get("valueList"):
            raise LabelConfigError(f"<Image name={name!r}> uses valueList (several images per task): not supported")
        raise LabelConfigError(f'<Image name={name!r}> has no value attribute: add value="$image"')
    if not value.startswith("$") or len(value) < 2:
        raise LabelConfigError(
            f'<Image name={name!r}> value={value!r} is not a task data field: use value="$<field>", e.g. "$image"'
        )
    return value[1:]


def _choose_label(brush: Element, label: str | None) -> tuple[str, tuple[str, ...]]:
    name = brush.get("name", "")
    labels = _label_names(brush)
    in_results = tuple(result for result, _ in labels)
    if label:
        match = [result for result, value in labels if label in (result, value)]
        if labels and not match:
            names = ", ".join(repr(n) for n in in_results)
            raise LabelConfigError(
                f"ISNET_LABEL={label!r} is not a label of <BrushLabels name={name!r}>; it has {names}"
            )
        return (match[0] if match else label), in_results
    if labels:
        return labels[0][0], in_results
    raise LabelConfigError(
        f'<BrushLabels name={name!r}> has no <Label value="..."/> and ISNET_LABEL is not set: add a Label or set it'
    )


def parse_label_config(xml: str, from_name: str | None = None, label: str | None = None) -> BrushTarget:
    """The ``BrushLabels`` -> ``Image`` pair to predict for, and the label to give regions.

    ``from_name`` (``ISNET_FROM_NAME``) picks a ``BrushLabels`` tag by name; without it the first
    tag that points to an ``Image`` is used. ``label`` (``ISNET_LABEL``) must be one of the tag's
    labels (by value or alias) when it has any, since Label Studio cannot show a region whose
    label is not in the config; without it the first ``Label`` is used. Raises
    :class:`LabelConfigError` naming what is missing.
    """
    root = _parse(xml)
    elements = list(root.iter())
    tags = {el.get("name", ""): el for el in elements if el.get("name")}
    brushes = [el for el in elements if _kind(el) == "brushlabels"]
    if not brushes:
        others = [f"<{el.tag}>" for el in elements if _kind(el).endswith("labels") or _kind(el) == "brush"]
        seen = f" (it has {', '.join(others)})" if others else ""
        raise LabelConfigError(
            f"the labeling config has no <BrushLabels> tag{seen}; this backend predicts brush masks: "
            f"add e.g. {EXAMPLE} next to the <Image>"
        )
    brush, image = _choose(brushes, tags, from_name)
    name = brush.get("name", "")
    if not name:
        raise LabelConfigError("the <BrushLabels> tag has no name attribute")
    chosen, labels = _choose_label(brush, label)
    return BrushTarget(
        from_name=name,
        to_name=image.get("name", ""),
        value_key=_value_key(image),
        label=chosen,
        labels=labels,
    )
