"""Several ``metrics.json`` reports side by side: one table row per run, curves overlaid.

Why a warning rather than a refusal when datasets differ: comparing a model on two
datasets is sometimes what a user wants, but a table that silently mixes them reads as a
like-for-like comparison, so the difference is printed under the table.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from backend.metrics.measures import COLUMNS
from backend.metrics.plots import plot_curves
from backend.metrics.report import load_report, markdown_table, write_csv


def labels_for(paths: Sequence[Path], reports: Sequence[dict[str, Any]]) -> list[str]:
    """Each run's name; runs sharing a name are told apart by their report's folder."""
    names = [str(r.get("name") or p.parent.name) for p, r in zip(paths, reports, strict=True)]
    counts = Counter(names)
    return [f"{n} ({p.parent.name or p})" if counts[n] > 1 else n for n, p in zip(names, paths, strict=True)]


def comparability_warnings(labels: Sequence[str], reports: Sequence[dict[str, Any]]) -> list[str]:
    """Reasons the rows may not be comparable (other dataset, other image count, incomplete run)."""
    warnings: list[str] = []
    datasets = {r["settings"].get("dataset") for r in reports}
    if len(datasets) > 1:
        warnings.append("runs are on different datasets: " + ", ".join(
            f"{label}: {r['settings'].get('dataset')}" for label, r in zip(labels, reports, strict=True)))
    counts = {r["settings"].get("image_count") for r in reports}
    if len(counts) > 1:
        warnings.append("runs evaluated different numbers of images: " + ", ".join(
            f"{label}: {r['settings'].get('image_count')}" for label, r in zip(labels, reports, strict=True)))
    warnings += [f"{label} is incomplete (pairs were missing or unreadable)"
                 for label, r in zip(labels, reports, strict=True) if not r.get("complete", True)]
    return warnings


def compare(paths: Sequence[Path], digits: int = 3, out_dir: Path | None = None) -> tuple[str, list[str]]:
    """The Markdown table (and warnings); with ``out_dir``, also ``compare.md``, ``compare.csv`` and plots."""
    reports = [load_report(p) for p in paths]
    labels = labels_for(paths, reports)
    rows = [(label, r["settings"].get("image_count", 0), r["metrics"])
            for label, r in zip(labels, reports, strict=True)]
    table = markdown_table(rows, digits)
    warnings = comparability_warnings(labels, reports)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        notes = "".join(f"\nWarning: {w}\n" for w in warnings)
        (out_dir / "compare.md").write_text(table + "\n" + notes)
        write_csv(out_dir / "compare.csv", ["run", "images", *COLUMNS],
                  [[label, count, *(m.get(c) for c in COLUMNS)] for label, count, m in rows])
        with_curves = [(label, r["curves"]) for label, r in zip(labels, reports, strict=True) if r.get("curves")]
        if with_curves:
            plot_curves(with_curves, out_dir)
    return table, warnings
