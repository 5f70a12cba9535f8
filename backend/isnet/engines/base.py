"""The one small interface every inference engine implements.

Why so small: the segmenter, the CLI, the backend and the benchmarks only ever need "tensor
batch in, probability batch out" plus a description for ``/health`` and reports. Anything an
engine needs to build itself (export, quantisation, calibration) stays inside that engine.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Engine(Protocol):
    """``predict(float32 [N,3,S,S] preprocessed) -> float32 [N,1,S,S]``, the first side output
    after sigmoid (0..1), not yet normalised."""

    name: str
    precision: str

    def predict(self, batch: np.ndarray) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...


class EngineError(RuntimeError):
    """An engine that cannot be created, built or loaded."""
