"""Which engine ``ISNET_ENGINE=auto`` serves: measured accuracy and speed, per model version.

The rule (documented in :mod:`backend.settings`): among the engines measured on this model
version at this input size (``isnet engine measure``), keep those whose MAE, average F-measure
and S-measure are within their precision's budget of the fp32 measurement on the same data,
and serve the one with the lowest measured time per image. Without an fp32 measurement, or
with no engine within budget, serve ``onnx-fp32``.

Why per model version: a retrained model may quantise worse than the pretrained one, so a
measurement of one version says nothing about the next; a new version starts with no
measurements and is served as ``onnx-fp32`` until it is measured.

The budgets are what the seed's accelerator engines lost on ECSSD: fp16 0.001 MAE, 0.002 avg F,
0.002 S; int8 0.002, 0.005, 0.003. An fp32 engine gets the fp16 budget (it should lose nothing).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from backend import atomic
from backend.isnet.versions import ModelVersion

MEASUREMENTS_FILE = "engine-measurements.json"
FALLBACK = "onnx-fp32"


@dataclass(frozen=True)
class Budget:
    """Largest acceptable loss against fp32 (MAE up, average F and S-measure down)."""

    mae: float
    avgfmeasure: float
    sm: float

    def allows(self, measured: dict[str, Any], reference: dict[str, Any]) -> bool:
        losses = (
            (measured["mae"] - reference["mae"], self.mae),
            (reference["avgfmeasure"] - measured["avgfmeasure"], self.avgfmeasure),
            (reference["sm"] - measured["sm"], self.sm),
        )
        return all(round(loss, 6) <= limit for loss, limit in losses)


BUDGETS = {
    "fp32": Budget(0.001, 0.002, 0.002),
    "fp16": Budget(0.001, 0.002, 0.002),
    "int8": Budget(0.002, 0.005, 0.003),
}


def precision_class(precision: str) -> str:
    """``fp16-autocast`` counts as fp16; anything not fp16 or int8 as fp32."""
    return next((p for p in ("int8", "fp16") if p in precision), "fp32")


class Measurements:
    """``<version dir>/engine-measurements.json``: ``{engine: {size: measurement}}``."""

    def __init__(self, version: ModelVersion) -> None:
        self.version = version
        self.path = version.directory / MEASUREMENTS_FILE

    def load(self) -> dict[str, dict[str, dict[str, Any]]]:
        try:
            data = json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def record(
        self,
        engine: str,
        size: int,
        precision: str,
        metrics: dict[str, float],
        seconds_per_image: float,
        dataset: str,
        images: int,
    ) -> dict[str, Any]:
        """Store one measurement (replacing the previous one for this engine and size)."""
        entry = {
            "precision": precision,
            "mae": metrics["mae"],
            "avgfmeasure": metrics["avgfmeasure"],
            "sm": metrics["sm"],
            "seconds_per_image": seconds_per_image,
            "dataset": dataset,
            "images": images,
            "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        data = self.load()
        data.setdefault(engine, {})[str(size)] = entry
        atomic.write_json(self.path, data)
        return entry

    def reference(self, size: int) -> dict[str, Any] | None:
        """The fp32 measurement at ``size``, eager torch (when it ran in fp32) or onnx-fp32: the
        newer one, so a measurement on new images replaces an old one as the yardstick."""
        data = self.load()
        entries = [entry for engine in ("torch", "onnx-fp32")
                   if (entry := data.get(engine, {}).get(str(size))) and precision_class(entry["precision"]) == "fp32"]
        return max(entries, key=lambda e: e.get("measured_at", "")) if entries else None

    def choose(self, size: int) -> tuple[str, str]:
        """``(engine name, why)`` by the rule in this module's docstring."""
        reference = self.reference(size)
        if reference is None:
            return FALLBACK, f"no fp32 measurement at size {size} for {self.version.name}"
        candidates, passed_over = [], []
        for engine, by_size in sorted(self.load().items()):
            entry = by_size.get(str(size))
            if not entry or (entry["dataset"], entry["images"]) != (reference["dataset"], reference["images"]):
                continue
            if BUDGETS[precision_class(entry["precision"])].allows(entry, reference):
                candidates.append((entry["seconds_per_image"], engine))
            else:
                passed_over.append(f"{engine} out of budget ({losses(entry, reference)})")
        if not candidates:
            return FALLBACK, f"no engine measured within budget at size {size}"
        seconds, engine = min(candidates)
        slower = [f"{e} within budget but slower ({s:.3f} s/image)" for s, e in sorted(candidates)[1:]]
        where = f"{reference['images']} image(s) of {reference['dataset']}"
        return engine, "; ".join([f"fastest within budget at size {size} ({seconds:.3f} s/image, measured on "
                                  f"{where})", *slower, *passed_over])


def losses(entry: dict[str, Any], reference: dict[str, Any]) -> str:
    """``entry``'s accuracy minus ``reference``'s, in words (a loss is MAE up, F or S down)."""
    return ", ".join(f"{label} {entry[key] - reference[key]:+.4f}"
                     for label, key in (("MAE", "mae"), ("avg F", "avgfmeasure"), ("S", "sm")))
