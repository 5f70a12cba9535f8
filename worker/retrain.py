"""One retraining job for one project: export the labels, skip or snapshot, run a cycle, record it.

Why the label count is taken here and not in ``/webhook``: counting needs an export, and Label
Studio gives a webhook 1 s. The job therefore exports, compares the labels with those the last
cycle used (``state.json``: a label is new when its task, annotation or ``updated_at`` is) and
stops with ``status: skipped`` below ``ISNET_MIN_NEW_LABELS``. ``START_TRAINING`` is the user
asking explicitly (``force``): it trains with any change at all, and with none it re-trains
on the same labels only if there are some (at least 1 label is always needed). A deleted
annotation is not a new label, but the next snapshot no longer contains it.

Everything it decides is written to ``MODEL_DIR/datasets/project-<id>/state.json`` and the last
outcome to ``MODEL_DIR/datasets/latest.json`` and to the lineage's own ``latest.json`` (what
``GET /metrics`` shows, with the running or last cycle's stage, step, ETA and loss from the
lineage's ``training-status.json`` under ``cycle``). Each snapshot holds every label the project
has (the export is of all annotated tasks), and the cycle starts from the current champion of the
project's lineage (:mod:`backend.learning.lineages`) and promotes into it only, so cycles
accumulate what was taught and never reach another project. The options come
from :func:`cycle_options`, the same defaults ``isnet train`` starts from. Also runnable as
``python -m worker.retrain --project ID [--force]``: the no-Redis server starts it that way, in
a process of its own, so training never slows the server's threads.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend import redaction, store
from backend.isnet.versions import lineage_dir
from backend.jobs.retrain_queue import LOCK_TIMEOUT_S, force_key, lock_key, pending_key
from backend.jobs.retrain_status import (
    LATEST_FILE,
    STATE_FILE,
    read_json,
    write_json,
)
from backend.labelstudio.client import LabelStudioClient
from backend.labelstudio.config import parse_label_config
from backend.labelstudio.fetch import ImageFetcher
from backend.learning.snapshots import datasets_dir, project_dir
from backend.pipeline import TaskImages
from backend.settings import Settings, load
from worker.export import export_tasks, labels_of, write_snapshot

if TYPE_CHECKING:
    from backend.isnet.training.networks import Networks
    from backend.isnet.training.options import TrainOptions
    from backend.isnet.training.progress import ProgressFn

log = logging.getLogger(__name__)

def cycle_options(settings: Settings) -> TrainOptions:
    """The options of a Label Studio-fed cycle: the settings' defaults, exactly what ``isnet train``
    uses when no flag is given."""
    from backend.isnet.training.options import TrainOptions

    return TrainOptions.from_settings(settings)


def retrain_project(project_id: int, *, force: bool = False, settings: Settings,
                    client: LabelStudioClient | None = None, networks: Networks | None = None,
                    progress: ProgressFn | None = None) -> dict[str, Any]:
    """Run (or skip) one cycle for the project; the outcome, also saved as state and latest report.

    One cycle per lineage at a time (:mod:`backend.learning.cycle_lock`): while another cycle of
    the lineage runs (another server process's, a worker's, ``isnet train``), this one waits with
    ``status: waiting`` in the latest report, and only then exports and counts the new labels, so
    it trains on what the other cycle did not.
    ``networks``: what the cycle builds (tests pass the tiny ones; default ISNet); ``progress``:
    the cycle's events."""
    from backend.learning import cycle_lock
    from backend.learning.lineages import lineage_for
    from backend.learning.registry import ModelRegistry

    lineage = lineage_for(project_id, settings)

    def waiting(holder: cycle_lock.Holder | None) -> None:
        outcome = {"project": project_id, "lineage": lineage, "started": time.time(), "forced": force,
                   "status": "waiting", "reason": f"another cycle of lineage {lineage} is running: "
                   f"{holder.describe() if holder else 'unknown'}; this one starts when it ends"}
        for folder_ in (datasets_dir(settings), lineage_dir(settings, lineage)):
            write_json(folder_ / LATEST_FILE, outcome)

    with ModelRegistry(settings, lineage).cycle_lock(f"retraining of project {project_id}", on_wait=waiting):
        return _retrain(project_id, force, settings, client, networks, progress)


def _retrain(project_id: int, force: bool, settings: Settings, client: LabelStudioClient | None,
             networks: Networks | None, progress: ProgressFn | None) -> dict[str, Any]:
    from backend.isnet.training.networks import ISNET
    from backend.learning.cycle import Cycle
    from backend.learning.lineages import lineage_for
    from backend.learning.registry import ModelRegistry

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
    lineage = lineage_for(project_id, settings)
    outcome: dict[str, Any] = {"project": project_id, "lineage": lineage, "started": started, "forced": force,
                               "labels": len(labels), "new_labels": new, "needed": needed}
    if (len(labels) if force else new) < needed:
        outcome.update(status="skipped", reason=f"{new} new label(s) since the last cycle, {needed} needed"
                       if labels else "no annotated tasks")
        return _record(settings, folder, state, outcome)

    snap = write_snapshot(tasks, target, TaskImages(settings, ImageFetcher(settings, client.auth)), folder,
                          project_id)
    outcome.update(dataset=str(snap.directory), used=len(snap.used), skipped=snap.skipped)
    if not snap.used:
        outcome.update(status="skipped", reason="no task could be used (see skipped)")
        return _record(settings, folder, state, outcome)
    for folder_ in (datasets_dir(settings), lineage_dir(settings, lineage)):
        write_json(folder_ / LATEST_FILE, {**outcome, "status": "running"})
    try:
        cycle = Cycle(settings, cycle_options(settings), registry=ModelRegistry(settings, lineage),
                      networks=networks or ISNET, progress=progress)
        report = cycle.run((snap.images, snap.masks))
    except (ValueError, FileNotFoundError, RuntimeError) as exc:  # TrainingError is a RuntimeError or ValueError
        outcome.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
        return _record(settings, folder, state, outcome)
    outcome.update(status="promoted" if report.promoted else "rejected", **report.summary())
    state["used_keys"] = [label.key for label in snap.used]
    state["last_cycle"] = time.time()
    return _record(settings, folder, state, outcome)


def _record(settings: Settings, folder: Path, state: dict[str, Any], outcome: dict[str, Any]) -> dict[str, Any]:
    outcome["finished"] = time.time()
    state["last_outcome"] = outcome
    write_json(folder / STATE_FILE, state)
    write_json(datasets_dir(settings) / LATEST_FILE, outcome)  # the latest of any project
    write_json(lineage_dir(settings, outcome["lineage"]) / LATEST_FILE, outcome)  # the latest of this lineage
    log.info("project %s: retraining %s (%s)", outcome["project"], outcome["status"], outcome.get("reason"))
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.retrain", description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=int, required=True)
    parser.add_argument("--force", action="store_true", help="the user asked (START_TRAINING): any label will do")
    args = parser.parse_args(argv)
    settings = load()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    redaction.remember(*settings.secrets)  # this child's log lines are as masked as the server's
    redaction.install()
    store.connect(settings)
    outcome = retrain_project(args.project, force=args.force, settings=settings)
    print(json.dumps({k: v for k, v in outcome.items() if k != "skipped"}, default=str))
    return 0 if outcome["status"] != "failed" else 1


if __name__ == "__main__":
    sys.exit(main())


def run_job(project_id: int) -> dict[str, Any]:
    """The RQ job: wait for the project's lock, then clear the marker (new events queue a successor) and train."""
    from redis import Redis
    from rq import get_current_job

    settings = load()
    store.connect(settings)  # ISNET_MODEL_STORE: the versions and pointers every host shares
    connection = Redis.from_url(settings.redis_url)
    job = get_current_job()
    from backend.learning.lineages import lineage_for

    lineage = lineage_for(project_id, settings)  # one cycle per lineage at a time (projects may share one)
    with connection.lock(lock_key(settings.queue_name, lineage), timeout=LOCK_TIMEOUT_S, blocking_timeout=None):
        pending = pending_key(settings.queue_name, project_id)
        if job is not None and connection.get(pending) == job.id.encode():
            connection.delete(pending)
        force = bool(connection.getdel(force_key(settings.queue_name, project_id)))
        return retrain_project(project_id, force=force, settings=settings)
