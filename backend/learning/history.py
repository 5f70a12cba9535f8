"""The history of retraining cycles: one record per cycle, a JSON file and a plot.

Why derived from the version directories: each cycle writes its record into its own
immutable version (``cycle.json``; versions written before it existed have ``metrics.json``); the
history is rebuilt from those, so a worker killed between two files can never leave the history
and the versions disagreeing, and deleting a version removes it from the history too. Each
lineage has its own history: a project is never judged, or shown, through another's cycles.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend import atomic

log = logging.getLogger(__name__)

PLOTTED = ("mae", "avgfmeasure", "sm")
CYCLE_FILE = "cycle.json"
METRICS_FILE = "metrics.json"
"""The record's name in versions written before ``cycle.json`` was the one record."""
HISTORY_JSON = "history.json"
HISTORY_PLOT = "history.png"


def read_record(directory: Path) -> dict[str, Any] | None:
    """A version's cycle record (``cycle.json``, else an older version's ``metrics.json``), or None."""
    for name in (CYCLE_FILE, METRICS_FILE):
        try:
            record = json.loads((directory / name).read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(record, dict) and isinstance(record.get("challenger"), dict) \
                and isinstance(record.get("champion"), dict):
            return record
    return None


def collect(version_dirs: Iterable[Path], lineage: str | None = None) -> list[dict[str, Any]]:
    """Cycle records of the given version directories, oldest first (unreadable ones skipped);
    with ``lineage``, only that lineage's (a record without one is the base lineage's)."""
    records = []
    for directory in version_dirs:
        record = read_record(directory)
        if record is None or (lineage is not None and record.get("lineage", "base") != lineage):
            continue
        records.append(record)
    return sorted(records, key=lambda r: (str(r.get("created", "")), str(r.get("version", ""))))


def guard_entries(records: Sequence[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """``(key, image, mask)`` of every held-out key of ``records`` (oldest first), as its newest
    cycle recorded it, newest cycle first: the files the forgetting guard reads, so the files
    :mod:`backend.learning.retention` keeps. Nothing is checked on disk."""
    found: dict[str, tuple[str, str, str]] = {}
    for record in reversed(records):
        held = record.get("held_out")
        for entry in (held.get("items", []) if isinstance(held, dict) else []) or []:
            if not isinstance(entry, (list, tuple)) or len(entry) != 3:
                continue
            key, image, mask = (str(v) for v in entry)
            found.setdefault(key, (key, image, mask))
    return list(found.values())


@dataclass
class EarlierHeldOut:
    """The forgetting guard's items, and those whose files are gone."""

    items: list[tuple[str, str, str]]
    missing: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)


def earlier_held_out(records: Sequence[dict[str, Any]], exclude: set[str], limit: int) -> EarlierHeldOut:
    """``(key, image, mask)`` of held-out items of earlier cycles (:func:`guard_entries`), leaving
    out ``exclude`` (keys this cycle trains or judges on), at most ``limit``; entries whose image or
    mask is gone are returned as ``missing`` and logged, never dropped silently.

    Why: the forgetting guard scores the challenger where earlier cycles measured, on images no
    cycle has trained on, so a cycle that learns new labels cannot silently unlearn old ones.
    Why a missing file is a logged, counted warning rather than an error: retention keeps every
    file the guard reads, so a missing one was moved or deleted by hand (often the folder of an
    ``isnet train`` run); failing would stop every later cycle of the lineage until old reports are
    edited, while skipping silently would narrow the guard unnoticed. The cycle goes on with the
    rest, lists each missing item among its ``skipped`` (with the path, to restore it) and counts
    them in its report (``budget.earlier_missing``), which the status and ``/metrics`` show. A
    missing newest copy of a key is not replaced by an older copy: that one holds an older label.
    """
    found: list[tuple[str, str, str]] = []
    missing: list[tuple[str, str, str]] = []
    for key, image, mask in guard_entries(records):
        if len(found) >= limit:
            break
        if key in exclude:
            continue
        if Path(image).is_file() and Path(mask).is_file():
            found.append((key, image, mask))
        else:
            missing.append((key, image, mask))
    if missing:
        log.warning("the forgetting guard cannot score %d earlier held-out item(s) whose files are gone "
                    "(first: %s, %s); it scores the %d others", len(missing), missing[0][1], missing[0][2], len(found))
    return EarlierHeldOut(found, missing)


def _interval(evidence: Any) -> dict[str, Any] | None:
    if not isinstance(evidence, dict):
        return None
    return {k: evidence.get(k) for k in ("n", "mean_change", "ci_low", "ci_high", "too_small")}


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
            "evidence": _interval(r.get("decision", {}).get("evidence")),
            "guard": _interval(r.get("decision", {}).get("guard")),
            "trained_on": r.get("train", {}).get("count"),
            "size": r.get("size"),
            "current": r.get("version") == current,
        }
        for r in records
    ]
    json_path = directory / HISTORY_JSON
    atomic.write_strict_json(json_path, {"cycles": rows})
    plot_path = directory / HISTORY_PLOT
    plot_history(rows, plot_path)
    return [json_path, plot_path]


def plot_history(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """mae / avgfmeasure / sm per cycle, champion (before) and challenger (after), promoted
    challengers filled, rejected ones hollow; the challenger's MAE carries the 95 % interval of
    the paired per-image change as error bars, and a last panel shows that change (and the
    forgetting guard's on earlier held-out images) against 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PLOTTED) + 1, figsize=(4.2 * (len(PLOTTED) + 1), 3.4), squeeze=False)
    xs = list(range(1, len(rows) + 1))
    _plot_change(axes[0][-1], xs, rows)
    for ax, metric in zip(axes[0], PLOTTED, strict=False):
        champ = [_num(r["champion_metrics"].get(metric)) for r in rows]
        chall = [_num(r["challenger_metrics"].get(metric)) for r in rows]
        ax.plot(xs, champ, "o--", color="tab:gray", label="champion (before)")
        ax.plot(xs, chall, "-", color="tab:blue", label="challenger")
        for x, y, r in zip(xs, chall, rows, strict=True):
            ax.plot([x], [y], "o", color="tab:blue", markerfacecolor="tab:blue" if r["promote"] else "white")
            low, high = _error(r.get("evidence"))
            if metric == "mae" and low is not None:
                ax.errorbar([x], [y], yerr=[[low], [high]], color="tab:blue", capsize=3, linewidth=1)
        ax.set_title(metric + (" (lower is better)" if metric == "mae" else " (higher is better)"), fontsize=10)
        ax.set_xlabel("cycle")
        ax.set_xticks(xs)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("held-out metrics per retraining cycle (filled: promoted)", fontsize=11)
    fig.tight_layout()
    try:
        with atomic.replacing(path, suffix=".png") as tmp:  # savefig reads the format from the name
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)


def _error(interval: Any) -> tuple[float | None, float | None]:
    """Error-bar lengths below and above the mean change, or ``(None, None)`` without an interval."""
    if not isinstance(interval, dict):
        return None, None
    mean, low, high = (_num(interval.get(k)) for k in ("mean_change", "ci_low", "ci_high"))
    if not all(math.isfinite(v) for v in (mean, low, high)):
        return None, None
    return max(0.0, mean - low), max(0.0, high - mean)


def _plot_change(ax: Any, xs: Sequence[int], rows: Sequence[dict[str, Any]]) -> None:
    """Mean per-image MAE change with its 95 % interval, held-out and earlier held-out images."""
    ax.axhline(0.0, color="tab:gray", linewidth=0.8)
    for field, color, label, shift in (("evidence", "tab:blue", "held-out", -0.08),
                                       ("guard", "tab:orange", "earlier held-out", 0.08)):
        shown = False
        for x, r in zip(xs, rows, strict=True):
            low, high = _error(r.get(field))
            if low is None:
                continue
            ax.errorbar([x + shift], [_num(r[field]["mean_change"])], yerr=[[low], [high]], fmt="o", color=color,
                        capsize=3, markerfacecolor=color if r["promote"] else "white",
                        label=None if shown else label)
            shown = True
    ax.set_title("MAE change, challenger - champion\n(95% CI; below 0 is better)", fontsize=10)
    ax.set_xlabel("cycle")
    ax.set_xticks(list(xs))
    ax.set_xlim(0.5, len(xs) + 0.5)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else float("nan")
