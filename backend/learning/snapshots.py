"""Where a Label Studio-fed cycle's label snapshots live: ``MODEL_DIR/datasets/project-<id>/<timestamp>/``.

One definition for the jobs that write them (:mod:`worker.export`, :mod:`backend.jobs.retrain_status`)
and the retention that prunes them (:mod:`backend.learning.retention`): the retraining application
owns the layout, the queue layer only uses it.
"""

from __future__ import annotations

from pathlib import Path

from backend.settings import Settings

SNAPSHOTS_DIR = "datasets"
PROJECT_PREFIX = "project-"


def datasets_dir(settings: Settings) -> Path:
    return settings.model_dir / SNAPSHOTS_DIR


def project_dir(settings: Settings, project_id: int) -> Path:
    return datasets_dir(settings) / f"{PROJECT_PREFIX}{project_id}"
