"""Where a Label Studio task's image is, or one error that says why not.

Why: ``/predict`` must answer every task of a batch. A task whose image is missing,
unreachable or refused by the guard gets an empty prediction and a logged reason, and the batch
goes on. Fetching and decoding are :class:`backend.pipeline.TaskImages`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from backend.labelstudio.config import BrushTarget


class TaskImageError(Exception):
    """This task's image cannot be used; the message names the task and the reason."""


def task_label(task: Mapping[str, Any]) -> str:
    return f"task {task.get('id', '?')}"


def image_url(task: Mapping[str, Any], target: BrushTarget) -> str:
    """The image URL in the task's data under the Image tag's ``$key``."""
    data = task.get("data") if isinstance(task, Mapping) else None
    if not isinstance(data, Mapping):
        raise TaskImageError(f"{task_label(task) if isinstance(task, Mapping) else 'task'} has no data object")
    if target.value_key not in data:
        keys = ", ".join(repr(k) for k in data) or "none"
        raise TaskImageError(
            f"{task_label(task)} has no {target.value_key!r} in its data (the <Image name={target.to_name!r}> "
            f"reads ${target.value_key}); its data keys: {keys}"
        )
    url = data[target.value_key]
    if not isinstance(url, str) or not url.strip():
        raise TaskImageError(f"{task_label(task)}: data[{target.value_key!r}] is not an image URL: {url!r}")
    return url
