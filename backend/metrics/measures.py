"""The saliency / DIS metrics as PySODMetrics computes them, with state that can be merged.

Why wrappers and not our own formulas: users compare these numbers with published tables,
so every value comes from ``py_sod_metrics`` itself (the library behind PySODEvalToolkit).
What the wrappers add is what parallel evaluation needs:

* ``step(pred, gt)`` also returns the sample's own values (for the per-image report);
* ``merge(other)`` appends another instance's per-sample state. PySODMetrics keeps one list
  entry per sample and averages with ``np.mean`` at the end, so if worker chunks are merged
  in sample order the lists, and therefore the results, are bit-identical to stepping every
  sample in one process;
* normalisation (ground truth ``> 128``, prediction ``/255`` then min-max) is done once per
  sample with PySODMetrics' own function instead of once per metric.

Column names are PySODEvalToolkit's (``maxfmeasure``, ``avgem``, ...), F-measure with
beta^2 = 0.3. Curves are stored by threshold: index ``t`` is the binarisation ``pred >= t``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import py_sod_metrics as psm
from py_sod_metrics.utils import validate_and_normalize_input

BETA2 = 0.3
"""beta^2 of the F-measure, the value the saliency literature uses."""

COLUMNS = ("sm", "wfm", "mae", "maxfmeasure", "avgfmeasure", "adpfmeasure", "maxem", "avgem", "adpem", "hce")
"""Dataset columns in PySODEvalToolkit's order (sm, wfm, mae, fmeasure, em) plus the DIS paper's HCE."""

LOWER_IS_BETTER = frozenset({"mae", "hce"})

CURVES = ("precision", "recall", "fmeasure", "emeasure")


class Measure:
    """One PySODMetrics object and the names of its per-sample lists (its mergeable state)."""

    columns: tuple[str, ...] = ()

    def __init__(self, impl: object, state: Iterable[tuple[object, str]]) -> None:
        self.impl = impl
        # (owner, attribute) pairs: the lists PySODMetrics appends one entry per sample to.
        self._state = tuple(state)

    def _lists(self) -> list[list]:
        return [getattr(owner, attr) for owner, attr in self._state]

    def step(self, pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
        """Add one normalised sample (float ``pred`` in [0, 1], bool ``gt``); return its own values."""
        self.impl.step(pred, gt, normalize=False)  # type: ignore[attr-defined]
        return self._last()

    def _last(self) -> dict[str, float]:
        raise NotImplementedError

    def merge(self, other: Measure) -> None:
        """Append ``other``'s samples after this one's (call in sample order)."""
        if type(other) is not type(self):
            raise TypeError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        for mine, theirs in zip(self._lists(), other._lists(), strict=True):
            mine.extend(theirs)

    def __len__(self) -> int:
        return len(self._lists()[0])

    def get_results(self) -> dict[str, float]:
        raise NotImplementedError

    def curves(self) -> dict[str, np.ndarray]:
        return {}


class _Scalar(Measure):
    """A metric with one number per sample, averaged over the dataset."""

    def __init__(self, impl: object, attr: str, key: str, column: str) -> None:
        super().__init__(impl, [(impl, attr)])
        self._attr, self._key, self.columns = attr, key, (column,)

    def _last(self) -> dict[str, float]:
        return {self.columns[0]: float(getattr(self.impl, self._attr)[-1])}

    def get_results(self) -> dict[str, float]:
        return {self.columns[0]: float(self.impl.get_results()[self._key])}  # type: ignore[attr-defined]


class MAE(_Scalar):
    def __init__(self) -> None:
        super().__init__(psm.MAE(), "maes", "mae", "mae")


class SMeasure(_Scalar):
    def __init__(self) -> None:
        super().__init__(psm.Smeasure(), "sms", "sm", "sm")


class WeightedFMeasure(_Scalar):
    def __init__(self) -> None:
        super().__init__(psm.WeightedFmeasure(), "weighted_fms", "wfm", "wfm")


class HCE(_Scalar):
    """Human correction effort (DIS paper): relax 5, RDP epsilon 2, PySODMetrics' defaults."""

    def __init__(self) -> None:
        super().__init__(psm.HumanCorrectionEffortMeasure(), "hces", "hce", "hce")


class EMeasure(Measure):
    columns = ("maxem", "avgem", "adpem")

    def __init__(self) -> None:
        impl = psm.Emeasure()
        super().__init__(impl, [(impl, "changeable_ems"), (impl, "adaptive_ems")])

    def _last(self) -> dict[str, float]:
        curve = self.impl.changeable_ems[-1]
        return {"maxem": float(np.max(curve)), "avgem": float(np.mean(curve)),
                "adpem": float(self.impl.adaptive_ems[-1])}

    def get_results(self) -> dict[str, float]:
        em = self.impl.get_results()["em"]
        return {"maxem": float(em["curve"].max()), "avgem": float(em["curve"].mean()), "adpem": float(em["adp"])}

    def curves(self) -> dict[str, np.ndarray]:
        return {"emeasure": np.flip(self.impl.get_results()["em"]["curve"])}


class FMeasure(Measure):
    """F-measure (beta^2 = 0.3) plus the precision and recall curves behind the PR plot."""

    columns = ("maxfmeasure", "avgfmeasure", "adpfmeasure")

    def __init__(self) -> None:
        self._fm = psm.FmeasureHandler(with_dynamic=True, with_adaptive=True, beta=BETA2)
        self._pre = psm.PrecisionHandler(with_dynamic=True, with_adaptive=False)
        self._rec = psm.RecallHandler(with_dynamic=True, with_adaptive=False)
        impl = psm.FmeasureV2(metric_handlers={"fmeasure": self._fm, "precision": self._pre, "recall": self._rec})
        super().__init__(impl, [(self._fm, "dynamic_results"), (self._fm, "adaptive_results"),
                                (self._pre, "dynamic_results"), (self._rec, "dynamic_results")])

    def _last(self) -> dict[str, float]:
        curve = self._fm.dynamic_results[-1]
        return {"maxfmeasure": float(np.max(curve)), "avgfmeasure": float(np.mean(curve)),
                "adpfmeasure": float(self._fm.adaptive_results[-1])}

    def get_results(self) -> dict[str, float]:
        fm = self.impl.get_results()["fmeasure"]
        return {"maxfmeasure": float(fm["dynamic"].max()), "avgfmeasure": float(fm["dynamic"].mean()),
                "adpfmeasure": float(fm["adaptive"])}

    def curves(self) -> dict[str, np.ndarray]:
        res = self.impl.get_results()
        return {name: np.flip(res[name]["dynamic"]) for name in ("precision", "recall", "fmeasure")}


class MetricSuite:
    """Every dataset metric at once: ``step`` per sample, ``merge`` per chunk, ``get_results`` at the end."""

    def __init__(self) -> None:
        self.measures: list[Measure] = [SMeasure(), WeightedFMeasure(), MAE(), FMeasure(), EMeasure(), HCE()]

    def step(self, pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
        """Add one sample (uint8 0-255 maps of one shape); return its values in :data:`COLUMNS` order."""
        pred_n, gt_n = validate_and_normalize_input(pred, gt, normalize=True)
        values: dict[str, float] = {}
        for measure in self.measures:
            values.update(measure.step(pred_n, gt_n))
        return {column: values[column] for column in COLUMNS}

    def merge(self, other: MetricSuite) -> MetricSuite:
        """Append ``other``'s samples after this suite's; returns ``self`` for chaining."""
        for mine, theirs in zip(self.measures, other.measures, strict=True):
            mine.merge(theirs)
        return self

    def __len__(self) -> int:
        return len(self.measures[0])

    def get_results(self) -> dict[str, float]:
        if not len(self):
            raise ValueError("no sample was evaluated")
        values: dict[str, float] = {}
        for measure in self.measures:
            values.update(measure.get_results())
        return {column: values[column] for column in COLUMNS}

    def curves(self) -> dict[str, np.ndarray]:
        """Dataset-mean curves indexed by threshold 0..255 (precision, recall, F-measure, E-measure)."""
        if not len(self):
            raise ValueError("no sample was evaluated")
        found: dict[str, np.ndarray] = {}
        for measure in self.measures:
            found.update(measure.curves())
        return {name: found[name] for name in CURVES}
