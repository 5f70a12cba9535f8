"""Precision-recall and F-measure-vs-threshold plots, for one run or several side by side.

Why ``Figure`` + ``FigureCanvasAgg`` and not ``pyplot``: the Agg canvas needs no display and
touches no global state, so plotting inside a server or a worker never changes another
module's matplotlib backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

PR_CURVE = "pr_curve.png"
FM_CURVE = "fm_curve.png"


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=120)
    return path


def plot_curves(runs: Sequence[tuple[str, dict[str, Any]]], out_dir: Path) -> list[Path]:
    """Write ``pr_curve.png`` and ``fm_curve.png`` with one line per ``(label, curves)`` run.

    ``curves`` holds ``precision``, ``recall`` and ``fmeasure`` lists indexed by threshold 0..255,
    as stored in ``metrics.json``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    pr = Figure(figsize=(5.5, 5))
    ax = pr.add_subplot()
    for label, curves in runs:
        ax.plot(curves["recall"], curves["precision"], label=label, linewidth=1.5)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01),
           title="Precision-recall (thresholds 0-255)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    pr.tight_layout()

    fm = Figure(figsize=(6, 4.5))
    ax = fm.add_subplot()
    for label, curves in runs:
        values = np.asarray(curves["fmeasure"])
        best = int(np.argmax(values))
        ax.plot(np.arange(values.size), values, label=f"{label} (max {values[best]:.3f} at {best})", linewidth=1.5)
        ax.plot([best], [values[best]], marker="o", color=ax.lines[-1].get_color())
    ax.set(xlabel="threshold", ylabel="F-measure (beta^2 = 0.3)", xlim=(0, 255), ylim=(0, 1.01),
           title="F-measure vs threshold")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower center")
    fm.tight_layout()
    return [_save(pr, out_dir / PR_CURVE), _save(fm, out_dir / FM_CURVE)]
