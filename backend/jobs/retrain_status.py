"""Where retraining outcomes are kept, and the latest one as ``GET /metrics`` shows it.

Why here: the server reads what the retraining jobs (``worker.retrain``) write; neither imports
the other, both import this.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from backend import atomic
from backend.learning.snapshots import datasets_dir
from backend.settings import Settings

STATE_FILE = "state.json"
LATEST_FILE = "latest.json"


def read_json(path: Path) -> dict[str, Any] | None:
    """The file's JSON object, or None when it is missing or half-written."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_json(path: Path, value: dict[str, Any]) -> None:
    """Atomically (a reader such as ``/metrics`` never sees half a file)."""
    atomic.write_json(path, value, default=str)


def latest_report(settings: Settings) -> dict[str, Any] | None:
    """The last retraining outcome of any project, with the running or last cycle (from Label Studio or
    ``isnet train``) under ``cycle``: stage, step, total, ETA, loss, and at the end the decision (cheap:
    two small files)."""
    from backend.isnet.training.progress import STATUS_FILE
    from backend.isnet.versions import BASE, lineage_dir

    outcome = read_json(datasets_dir(settings) / LATEST_FILE)
    lineage = str((outcome or {}).get("lineage") or BASE)
    try:
        cycle = read_json(lineage_dir(settings, lineage) / STATUS_FILE)
    except ValueError:  # a hand-edited outcome naming no valid lineage
        cycle = None
    if cycle is None:
        return outcome
    return {**(outcome or {}), "cycle": _checked_alive(cycle)}


def lineage_reports(settings: Settings) -> dict[str, dict[str, Any]]:
    """Per lineage: the version it serves and its last retraining outcome (``GET /metrics``)."""
    from backend.learning.registry import ModelRegistry

    out: dict[str, dict[str, Any]] = {}
    registry = ModelRegistry(settings)
    for lineage in registry.lineages():
        own = registry.for_lineage(lineage)
        latest = read_json(own.home / LATEST_FILE) or {}
        out[lineage] = {"current": own.current_or_pretrained_name(), "follows_base": own.follows_base,
                        "last_cycle": {k: latest.get(k) for k in ("status", "version", "reason", "finished")}
                        if latest else None}
    return out


def _checked_alive(cycle: dict[str, Any]) -> dict[str, Any]:
    """A "running" cycle whose process is gone (same host) is shown as ``interrupted``."""
    if cycle.get("status") != "running" or cycle.get("host") != socket.gethostname():
        return cycle
    try:
        os.kill(int(cycle.get("pid", 0)), 0)
    except (ProcessLookupError, ValueError):
        return {**cycle, "status": "interrupted"}
    except PermissionError:  # alive, another user's
        pass
    return cycle
