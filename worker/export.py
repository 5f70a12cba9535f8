"""A project's labels, exported from Label Studio, frozen as one cycle's dataset on disk.

Why a snapshot per cycle: annotators keep editing while a model trains, so a cycle trains on a
copy (``MODEL_DIR/datasets/project-<id>/<timestamp>/{images,masks,manifest.json}``) whose
manifest names every task, annotation and ``updated_at`` it used; the cycle can be re-run, and
compared, long after Label Studio changed. Why the export API: ``GET
/api/projects/{id}/export?exportType=JSON`` returns every annotated task with its annotations
in one call and, unlike ``GET /api/tasks/{id}``, never makes Label Studio call ``/predict``.
A task whose image cannot be fetched or whose annotation cannot be decoded is skipped and
listed in the manifest: one bad task never stops a cycle.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from PIL import Image

from backend.labelstudio.client import LabelStudioClient
from backend.labelstudio.config import BrushTarget
from backend.pipeline import LOAD_ERRORS, TaskImages

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Label:
    """One task's usable annotation: what makes a training pair."""

    task_id: int
    annotation_id: int
    updated_at: str

    @property
    def key(self) -> str:
        """Changes whenever the annotation is edited, so edits count as new labels."""
        return f"{self.task_id}:{self.annotation_id}:{self.updated_at}"


@dataclass
class Snapshot:
    """Where one cycle's dataset was written, and what it holds or skipped."""

    directory: Path
    project: int
    used: list[Label] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)

    @property
    def images(self) -> Path:
        return self.directory / "images"

    @property
    def masks(self) -> Path:
        return self.directory / "masks"

    def manifest(self) -> dict[str, Any]:
        return {"project": self.project, "created": _now(), "count": len(self.used),
                "items": [asdict(lb) for lb in self.used], "skipped": self.skipped}


def export_tasks(client: LabelStudioClient, project_id: int) -> list[dict[str, Any]]:
    """Every annotated task of the project, with its annotations (Label Studio's JSON export).

    ``download_all_tasks=false`` is Label Studio's "only annotated tasks": in 1.23 it filters
    ``annotations__isnull=False`` and nothing else (no page size, no "labeled" flag), so every
    label ever saved is exported and each cycle's snapshot holds all of them, old and new."""
    answer = client.call("GET", f"/api/projects/{project_id}/export",
                         params={"exportType": "JSON", "download_all_tasks": "false"})
    return [t for t in answer or [] if isinstance(t, dict)]


def latest_annotation(task: dict[str, Any], target: BrushTarget) -> dict[str, Any] | None:
    """The most recently updated annotation that was not cancelled and has a result for the tag."""
    usable = [a for a in task.get("annotations") or []
              if isinstance(a, dict) and not a.get("was_cancelled")
              and any(r.get("from_name") == target.from_name for r in a.get("result") or [] if isinstance(r, dict))]
    if not usable:
        return None
    return max(usable, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), int(a.get("id") or 0)))


def labels_of(tasks: list[dict[str, Any]], target: BrushTarget) -> dict[int, tuple[Label, dict[str, Any]]]:
    """Task id -> its :class:`Label` and the annotation it names (cheap: nothing is decoded)."""
    found: dict[int, tuple[Label, dict[str, Any]]] = {}
    for task in tasks:
        annotation = latest_annotation(task, target)
        if annotation is None or not isinstance(task.get("id"), int):
            continue
        stamp = str(annotation.get("updated_at") or annotation.get("created_at") or "")
        found[task["id"]] = (Label(task["id"], int(annotation.get("id") or 0), stamp), annotation)
    return found


def write_snapshot(tasks: list[dict[str, Any]], target: BrushTarget, images: TaskImages, root: Path,
                   project_id: int) -> Snapshot:
    """Fetch, decode and write each task's pair under a new ``root/<timestamp>``; the manifest last.

    Images are fetched and decoded by the task pipeline's own :class:`TaskImages`."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    snap = Snapshot(root / stamp, project_id)
    snap.images.mkdir(parents=True)
    snap.masks.mkdir()
    for task_id, (label, annotation) in sorted(labels_of(tasks, target).items()):
        task = next(t for t in tasks if t.get("id") == task_id)
        try:
            image, mask = images.pair(task, annotation, target)
        except LOAD_ERRORS as exc:  # first: an image that cannot be decoded is a ValueError too
            snap.skipped.append({"task": task_id, "annotation": label.annotation_id, "reason": f"image: {exc}"})
            continue
        except (ValueError, TypeError, KeyError) as exc:
            snap.skipped.append({"task": task_id, "annotation": label.annotation_id, "reason": f"annotation: {exc}"})
            continue
        name = f"task-{task_id}"
        _save_png(Image.fromarray(image), snap.images / f"{name}.png")
        _save_png(Image.fromarray(mask), snap.masks / f"{name}.png")
        snap.used.append(label)
    for item in snap.skipped:
        log.warning("project %s: task %s skipped: %s", project_id, item["task"], item["reason"])
    (snap.directory / MANIFEST).write_text(json.dumps(snap.manifest(), indent=2))
    return snap


def _save_png(image: Image.Image, path: Path) -> None:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    path.write_bytes(buf.getvalue())


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
