"""Dataset-level evaluation with the metrics the saliency / DIS literature reports.

Built on ``py_sod_metrics`` (PySODMetrics, the library behind PySODEvalToolkit), so the
numbers are the ones papers print: S-measure, weighted F, MAE, max/avg/adaptive F-measure
(beta^2 = 0.3), max/avg/adaptive E-measure and the DIS paper's human correction effort.

Modules, one job each:

* :mod:`~backend.metrics.pairing`: ground truth and predictions (or images) paired by stem;
* :mod:`~backend.metrics.masks`: decoding 0-255 maps and the resize rule;
* :mod:`~backend.metrics.measures`: PySODMetrics objects with mergeable state;
* :mod:`~backend.metrics.evaluator`: chunks in worker processes, merged in sample order;
* :mod:`~backend.metrics.preload`: what the workers' fork server imports (without scikit-learn);
* :mod:`~backend.metrics.report`, :mod:`~backend.metrics.plots`, :mod:`~backend.metrics.compare`: the files.

Typical use (what ``isnet evaluate`` and the training cycle do)::

    pairs, issues = pair_folders(gt_dir, pred_dir)
    evaluation = evaluate_predictions(pairs, issues)
    write_report(build_report(evaluation, "my-run", {"dataset": str(gt_dir)}), out_dir)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from backend.metrics.evaluator import Evaluation, Evaluator, evaluate_predictions, evaluate_segmenter
    from backend.metrics.issues import Issue
    from backend.metrics.measures import COLUMNS, LOWER_IS_BETTER, MetricSuite
    from backend.metrics.pairing import Pair, PairingError, pair_folders
    from backend.metrics.report import build_report, load_report, write_report

# Names are resolved on first use (PEP 562), so importing one submodule (``masks``, or
# ``preload`` in the evaluation fork server) does not import PySODMetrics with it.
_EXPORTS = {
    "COLUMNS": "measures",
    "LOWER_IS_BETTER": "measures",
    "Evaluation": "evaluator",
    "Evaluator": "evaluator",
    "Issue": "issues",
    "MetricSuite": "measures",
    "Pair": "pairing",
    "PairingError": "pairing",
    "build_report": "report",
    "evaluate_predictions": "evaluator",
    "evaluate_segmenter": "evaluator",
    "load_report": "report",
    "pair_folders": "pairing",
    "write_report": "report",
}

__all__ = [
    "COLUMNS",
    "LOWER_IS_BETTER",
    "Evaluation",
    "Evaluator",
    "Issue",
    "MetricSuite",
    "Pair",
    "PairingError",
    "build_report",
    "evaluate_predictions",
    "evaluate_segmenter",
    "load_report",
    "pair_folders",
    "write_report",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
