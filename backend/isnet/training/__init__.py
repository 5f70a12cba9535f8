"""Training ISNet from labelled pairs, as the DIS paper trains it.

Stage 1 trains a GT encoder to reconstruct the masks; stage 2 fine-tunes ISNetDIS with
side-output BCE plus feature-level intermediate supervision against the frozen encoder, within a
wall-time budget. The retraining application around it (data gathering, champion and challenger,
promotion, lineages) is :mod:`backend.learning`.
"""

from backend.isnet.training.data import Dataset, Item, Skipped, split_holdout
from backend.isnet.training.networks import ISNET, Networks
from backend.isnet.training.options import FEATURE_LOSSES, TrainOptions
from backend.isnet.training.progress import Progress, ProgressFn, TqdmProgress
from backend.isnet.training.trainer import TrainingError

__all__ = [
    "FEATURE_LOSSES",
    "ISNET",
    "Dataset",
    "Item",
    "Networks",
    "Progress",
    "ProgressFn",
    "Skipped",
    "TqdmProgress",
    "TrainOptions",
    "TrainingError",
    "split_holdout",
]
