"""The history of retraining cycles: one record per cycle, a JSON file and a plot.

Why derived from the version directories: each cycle writes its record into its own
immutable version (``metrics.json``); the history is rebuilt from those, so a worker killed
between two files can never leave the history and the versions disagreeing, and deleting a
version removes it from the history too.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

PLOTTED = ("mae", "avgfmeasure", "sm")
METRICS_FILE = "metrics.json"
HISTORY_JSON = "history.json"
HISTORY_PLOT = "history.png"


def _finite(value: Any) -> Any:
    """JSON has no NaN: a metric that could not be computed is written as ``null``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as strict JSON to a temporary sibling, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(_finite(data), fh, indent=2, sort_keys=False, default=str, allow_nan=False)
            fh.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def collect(version_dirs: Iterable[Path]) -> list[dict[str, Any]]:
    """Cycle records of the given version directories, oldest first (unreadable ones skipped)."""
    records = []
    for directory in version_dirs:
        try:
            record = json.loads((directory / METRICS_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(record, dict) and "challenger" in record and "champion" in record:
            records.append(record)
    return sorted(records, key=lambda r: (str(r.get("created", "")), str(r.get("version", ""))))


def write_history(records: Sequence[dict[str, Any]], directory: Path, current: str | None = None) -> list[Path]:
    """``history.json`` and ``history.png`` in ``directory``; ``current`` marks the served version."""
    rows = [
        {
            "version": r.get("version"),
            "created": r.get("created"),
            "champion": r["champion"].get("name"),
            "champion_metrics": {k: r["champion"]["metrics"].get(k) for k in PLOTTED},
            "challenger_metrics": {k: r["challenger"]["metrics"].get(k) for k in PLOTTED},
            "promote": bool(r.get("decision", {}).get("promote")),
            "reason": r.get("decision", {}).get("reason"),
            "held_out": r.get("held_out", {}).get("count"),
            "trained_on": r.get("train", {}).get("count"),
            "size": r.get("size"),
            "current": r.get("version") == current,
        }
        for r in records
    ]
    json_path = directory / HISTORY_JSON
    write_json_atomic(json_path, {"cycles": rows})
    plot_path = directory / HISTORY_PLOT
    plot_history(rows, plot_path)
    return [json_path, plot_path]


def plot_history(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """mae / avgfmeasure / sm per cycle, champion (before) and challenger (after); promoted
    challengers filled, rejected ones hollow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(4.2 * len(PLOTTED), 3.4), squeeze=False)
    xs = list(range(1, len(rows) + 1))
    for ax, metric in zip(axes[0], PLOTTED, strict=True):
        champ = [_num(r["champion_metrics"].get(metric)) for r in rows]
        chall = [_num(r["challenger_metrics"].get(metric)) for r in rows]
        ax.plot(xs, champ, "o--", color="tab:gray", label="champion (before)")
        ax.plot(xs, chall, "-", color="tab:blue", label="challenger")
        for x, y, r in zip(xs, chall, rows, strict=True):
            ax.plot([x], [y], "o", color="tab:blue", markerfacecolor="tab:blue" if r["promote"] else "white")
        ax.set_title(metric + (" (lower is better)" if metric == "mae" else " (higher is better)"), fontsize=10)
        ax.set_xlabel("cycle")
        ax.set_xticks(xs)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("held-out metrics per retraining cycle (filled: promoted)", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=100)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else float("nan")
