"""The report files: ``metrics.json`` (everything), ``metrics.md``, ``metrics.csv``, per-image CSV, plots.

Why JSON is the source: ``isnet evaluate --compare`` and the training cycle read reports
back, so everything a table or plot shows (dataset metrics, curves, per-image values,
settings, issues) is in ``metrics.json`` at full precision; the Markdown and CSV files are
views of it with the column names PySODEvalToolkit prints.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from backend import __version__
from backend.metrics.evaluator import Evaluation
from backend.metrics.issues import KINDS
from backend.metrics.measures import BETA2, COLUMNS, LOWER_IS_BETTER

SCHEMA = "isnet-evaluate/1"
JSON_NAME = "metrics.json"
MD_NAME = "metrics.md"
CSV_NAME = "metrics.csv"
PER_IMAGE_CSV = "per_image.csv"
WORST_SHOWN = 10


class ReportError(ValueError):
    """A file that is not a readable ``metrics.json`` of this format."""


def _finite(value: Any) -> Any:
    """JSON has no NaN: a metric that could not be computed is written as ``null``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def pysodmetrics_version() -> str:
    try:
        return metadata.version("pysodmetrics")
    except metadata.PackageNotFoundError:  # pragma: no cover - a hard dependency
        return "unknown"


def build_report(evaluation: Evaluation, name: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The ``metrics.json`` document. ``settings`` describes the run (model, engine, paths...)."""
    return {
        "schema": SCHEMA,
        "name": name,
        "complete": not evaluation.blocking,
        "metrics": {k: _finite(v) for k, v in evaluation.metrics.items()},
        "settings": {
            **settings,
            "image_count": evaluation.count,
            "workers": evaluation.workers,
            "seconds": round(evaluation.seconds, 3),
            "cpu_seconds": round(evaluation.cpu_seconds, 3),
            "beta2": BETA2,
            "gt_threshold": 128,
            "pysodmetrics": pysodmetrics_version(),
            "isnet_label_studio": __version__,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        },
        "curves": {"threshold": list(range(256)),
                   **{k: [_finite(x) for x in v] for k, v in evaluation.curves.items()}} if evaluation.curves else {},
        "per_image": [{k: _finite(v) for k, v in image.to_dict().items()} for image in evaluation.images],
        "issues": [issue.to_dict() for issue in evaluation.issues],
    }


def load_report(path: Path) -> dict[str, Any]:
    try:
        report = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ReportError(f"{path}: no such file") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path}: not a JSON file ({exc})") from exc
    if not isinstance(report, dict) or report.get("schema") != SCHEMA:
        raise ReportError(f"{path}: not an `isnet evaluate` report (schema {SCHEMA})")
    return report


def fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown_table(rows: Sequence[tuple[str, int, dict[str, Any]]], digits: int = 3,
                   columns: Sequence[str] = COLUMNS) -> str:
    """``| run | images | sm | wfm | ... |``, one row per ``(label, image count, metrics)``."""
    lines = ["| run | images | " + " | ".join(columns) + " |", "| --- | ---: |" + " ---: |" * len(columns)]
    for label, count, metrics in rows:
        cells = [fmt(metrics.get(c), digits) for c in columns]
        lines.append(f"| {label} | {count} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def legend() -> str:
    low = ", ".join(c for c in COLUMNS if c in LOWER_IS_BETTER)
    return (f"Higher is better except {low} (lower is better). F-measure with beta^2 = {BETA2}; ground truth "
            f"binarised at >128; predictions min-max normalised (PySODMetrics {pysodmetrics_version()}).")


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _markdown(report: dict[str, Any], digits: int) -> str:
    s = report["settings"]
    out = [f"# Evaluation: {report['name']}", ""]
    if not report["complete"]:
        out += ["**Incomplete:** some pairs were missing, unreadable or mismatched (see Issues); the numbers "
                "cover only the pairs that were evaluated.", ""]
    out += [markdown_table([(report["name"], s["image_count"], report["metrics"])], digits), "", legend(), "",
            "## Settings", ""]
    keys = ("model_version", "engine", "input_size", "dataset", "predictions", "images", "image_count",
            "resize", "workers", "seconds", "pysodmetrics", "created")
    out += [f"- {key}: {s[key]}" for key in keys if s.get(key) is not None]
    issues = report["issues"]
    out += ["", f"## Issues ({len(issues)})", ""]
    if not issues:
        out.append("None: every file was paired, read and evaluated at its ground truth's size.")
    for kind, (block, meaning) in KINDS.items():
        found = [i for i in issues if i["kind"] == kind]
        if found:
            out += [f"### {kind} ({len(found)}{', blocking' if block else ''})", "", meaning, ""]
            out += [f"- {i['name']}: {i['path']}{' - ' + i['detail'] if i['detail'] else ''}" for i in found]
            out.append("")
    images = [i for i in report["per_image"] if i.get("mae") is not None]
    if images:
        worst = sorted(images, key=lambda i: i["mae"], reverse=True)[:WORST_SHOWN]
        shown = ("mae", "maxfmeasure", "sm", "wfm", "hce")
        out += ["", f"## Worst {len(worst)} images by mae (all of them in {PER_IMAGE_CSV})", "",
                "| name | " + " | ".join(shown) + " |", "| --- |" + " ---: |" * len(shown)]
        out += [f"| {i['name']} | " + " | ".join(fmt(i.get(c), digits) for c in shown) + " |" for i in worst]
    return "\n".join(out) + "\n"


def write_report(report: dict[str, Any], out_dir: Path, digits: int = 3) -> list[Path]:
    """Write every report file into ``out_dir`` (created); returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / JSON_NAME]
    written[0].write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    written.append(out_dir / MD_NAME)
    written[1].write_text(_markdown(report, digits))
    count = report["settings"]["image_count"]
    written.append(write_csv(out_dir / CSV_NAME, ["run", "images", *COLUMNS],
                             [[report["name"], count, *(report["metrics"].get(c) for c in COLUMNS)]]))
    extra = ["height", "width", "resized", "ground_truth", "prediction", "image"]
    written.append(write_csv(out_dir / PER_IMAGE_CSV, ["name", *COLUMNS, *extra],
                             [[i["name"], *(i.get(c) for c in COLUMNS), *(i.get(c) for c in extra)]
                              for i in report["per_image"]]))
    if report["curves"]:
        # Imported here: matplotlib is a quarter of a second that every evaluation worker
        # process would otherwise import for nothing (they import this package).
        from backend.metrics.plots import plot_curves

        written += plot_curves([(report["name"], report["curves"])], out_dir)
    return written
