"""Progress of a cycle as plain events, so the CLI can draw tqdm bars and an RQ job can put
the same numbers into ``job.meta`` without either knowing about the other.

A callback may raise to abort the cycle (an RQ stop request, a test injecting a failure):
the exception propagates, and the staging directory stays invisible and resumable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Progress:
    stage: str
    """``load``, ``gt_encoder``, ``segmenter``, ``evaluate``, ``write`` or ``done``."""
    step: int
    total: int
    values: dict[str, float] = field(default_factory=dict)
    message: str = ""


ProgressFn = Callable[[Progress], None]


def emit(progress: ProgressFn | None, stage: str, step: int, total: int,
         values: dict[str, float] | None = None, message: str = "") -> None:
    if progress is not None:
        progress(Progress(stage, step, total, dict(values or {}), message))


class TqdmProgress:
    """One tqdm bar per stage, with the loss components in its postfix."""

    def __init__(self, **tqdm_kwargs: Any) -> None:
        self._kwargs = tqdm_kwargs
        self._bar: Any = None
        self._stage = ""

    def __call__(self, event: Progress) -> None:
        from tqdm import tqdm

        if event.stage != self._stage or self._bar is None:
            self.close()
            self._stage = event.stage
            if event.total <= 0:
                if event.message:
                    tqdm.write(f"[{event.stage}] {event.message}")
                return
            self._bar = tqdm(total=event.total, desc=event.stage, unit="it", **self._kwargs)
        if event.total > 0:
            self._bar.n = event.step
            if event.values:
                self._bar.set_postfix({k: f"{v:.4f}" for k, v in event.values.items()}, refresh=False)
            self._bar.refresh()
        if event.message:
            self._bar.write(f"[{event.stage}] {event.message}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
