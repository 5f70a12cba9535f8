"""One retraining job for one project: export the labels, skip or snapshot, run a cycle, record it.

Why the label count is taken here and not in ``/webhook``: counting needs an export, and Label
Studio gives a webhook 1 s. The job therefore exports, compares the labels with those the last
cycle used (``state.json``: a label is new when its task, annotation or ``updated_at`` is) and
stops with ``status: skipped`` below ``ISNET_MIN_NEW_LABELS``. ``START_TRAINING`` is the user
asking explicitly (``force``): it trains with any change at all, and with none it re-trains
on the same labels only if there are some (at least 1 label is always needed). A deleted
annotation is not a new label, but the next snapshot no longer contains it.

Everything it decides is written to ``MODEL_DIR/datasets/project-<id>/state.json`` and the last
outcome to ``MODEL_DIR/datasets/latest.json`` (what ``GET /metrics`` shows). Also runnable as
``python -m worker.retrain --project ID [--force]``: the no-Redis server starts it that way, in
a process of its own, so training never slows the server's threads.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from backend.labelstudio.config import parse_label_config
from backend.labelstudio.fetch import ImageFetcher
from backend.settings import Settings, load
from worker.export import export_tasks, labels_of, write_snapshot
from worker.lsclient import LabelStudioClient

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
LATEST_FILE = "latest.json"


def datasets_dir(settings: Settings) -> Path:
    return settings.model_dir / "datasets"


def project_dir(settings: Settings, project_id: int) -> Path:
    return datasets_dir(settings) / f"project-{project_id}"


def read_json(path: Path) -> dict[str, Any] | None:
    """The file's JSON object, or None when it is missing or half-written."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_json(path: Path, value: dict[str, Any]) -> None:
    """Atomically (a reader such as ``/metrics`` never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=2, default=str))
    os.replace(tmp, path)


def latest_report(settings: Settings) -> dict[str, Any] | None:
    """The last retraining outcome of any project (cheap: one small file)."""
    return read_json(datasets_dir(settings) / LATEST_FILE)


def retrain_project(project_id: int, *, force: bool = False, settings: Settings | None = None,
                    client: LabelStudioClient | None = None) -> dict[str, Any]:
    """Run (or skip) one cycle for the project; the outcome, also saved as state and latest report."""
    from backend.isnet.training.cycle import run_cycle
    from backend.isnet.training.options import TrainOptions

    settings = settings or load()
    client = client or LabelStudioClient.from_settings(settings)
    started = time.time()
    folder = project_dir(settings, project_id)
    state = read_json(folder / STATE_FILE) or {}
    project = client.project(project_id)
    target = parse_label_config(project.get("label_config") or "", from_name=settings.from_name or None,
                                label=settings.label or None)
    tasks = export_tasks(client, project_id)
    labels = labels_of(tasks, target)
    used_before = set(state.get("used_keys") or [])
    new = sum(1 for label, _ in labels.values() if label.key not in used_before)
    needed = 1 if force else max(1, settings.min_new_labels)
    outcome: dict[str, Any] = {"project": project_id, "started": started, "forced": force,
                               "labels": len(labels), "new_labels": new, "needed": needed}
    if (len(labels) if force else new) < needed:
        outcome.update(status="skipped", reason=f"{new} new label(s) since the last cycle, {needed} needed"
                       if labels else "no annotated tasks")
        return _record(settings, folder, state, outcome)

    snap = write_snapshot(tasks, target, ImageFetcher(settings, client.auth), settings.max_pixels, folder,
                          project_id)
    outcome.update(dataset=str(snap.directory), used=len(snap.used), skipped=snap.skipped)
    if not snap.used:
        outcome.update(status="skipped", reason="no task could be used (see skipped)")
        return _record(settings, folder, state, outcome)
    try:
        report = run_cycle((snap.images, snap.masks), settings, TrainOptions.from_settings(settings), promote=True)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:  # TrainingError is a RuntimeError or ValueError
        outcome.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
        return _record(settings, folder, state, outcome)
    cycle = report.to_dict()
    outcome.update(status="promoted" if report.promoted else "rejected", reason=report.decision.reason,
                   version=report.version, report_path=str(report.directory / "cycle.json"),
                   metrics=cycle["metrics"], decision=cycle["decision"], engines=cycle["engines"])
    state["used_keys"] = [label.key for label in snap.used]
    state["last_cycle"] = time.time()
    return _record(settings, folder, state, outcome)


def _record(settings: Settings, folder: Path, state: dict[str, Any], outcome: dict[str, Any]) -> dict[str, Any]:
    outcome["finished"] = time.time()
    state["last_outcome"] = outcome
    write_json(folder / STATE_FILE, state)
    write_json(datasets_dir(settings) / LATEST_FILE, outcome)
    log.info("project %s: retraining %s (%s)", outcome["project"], outcome["status"], outcome.get("reason"))
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.retrain", description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=int, required=True)
    parser.add_argument("--force", action="store_true", help="the user asked (START_TRAINING): any label will do")
    args = parser.parse_args(argv)
    settings = load()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    outcome = retrain_project(args.project, force=args.force, settings=settings)
    print(json.dumps({k: v for k, v in outcome.items() if k != "skipped"}, default=str))
    return 0 if outcome["status"] != "failed" else 1


if __name__ == "__main__":
    sys.exit(main())
