"""Retraining ISNet from corrected labels, as the DIS paper trains it.

Stage 1 trains a GT encoder to reconstruct the masks; stage 2 fine-tunes the current
ISNetDIS with side-output BCE plus feature-level intermediate supervision against the frozen
encoder. Each cycle evaluates the current model and the new one on held-out items at the
serving size and promotes the new one only when the rule allows. Entry point:
:func:`run_cycle`; the parts are importable for benchmarks and tests.
"""

from backend.isnet.training.cycle import CycleReport, run_cycle
from backend.isnet.training.data import Dataset, Item, Skipped, split_holdout
from backend.isnet.training.networks import ISNET, Networks
from backend.isnet.training.options import FEATURE_LOSSES, TrainOptions
from backend.isnet.training.progress import Progress, ProgressFn, TqdmProgress
from backend.isnet.training.promotion import Decision, decide, parse_rule
from backend.isnet.training.trainer import TrainingError

__all__ = [
    "FEATURE_LOSSES",
    "ISNET",
    "CycleReport",
    "Dataset",
    "Decision",
    "Item",
    "Networks",
    "Progress",
    "ProgressFn",
    "Skipped",
    "TqdmProgress",
    "TrainOptions",
    "TrainingError",
    "decide",
    "parse_rule",
    "run_cycle",
    "split_holdout",
]
