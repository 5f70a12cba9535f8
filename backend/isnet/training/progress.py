"""Progress of a cycle as plain events, so the CLI can draw tqdm bars and an RQ job can put
the same numbers into ``job.meta`` without either knowing about the other.

A callback may raise to abort the cycle (an RQ stop request, a test injecting a failure):
the exception propagates, and the staging directory stays invisible and resumable.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from backend import atomic


@dataclass(frozen=True)
class Progress:
    stage: str
    """``load``, ``champion`` (scoring the current model before training), ``gt_encoder``,
    ``segmenter``, ``evaluate`` (the challenger), ``write``, ``engines`` or ``done``."""
    step: int
    total: int
    values: dict[str, float] = field(default_factory=dict)
    message: str = ""
    eta_s: float | None = None
    """Seconds to the end of the whole cycle, when the stage can estimate it."""


ProgressFn = Callable[[Progress], None]


def emit(progress: ProgressFn | None, stage: str, step: int, total: int,
         values: dict[str, float] | None = None, message: str = "", eta_s: float | None = None) -> None:
    if progress is not None:
        progress(Progress(stage, step, total, dict(values or {}), message, eta_s))


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
            if event.total != self._bar.total:  # the step count follows the measured step time
                self._bar.total = event.total
            self._bar.n = event.step
            if event.values:
                self._bar.set_postfix({k: f"{v:.4g}" for k, v in event.values.items()}, refresh=False)
            self._bar.refresh()
        if event.message:
            self._bar.write(f"[{event.stage}] {event.message}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


STATUS_FILE = "training-status.json"
"""Under MODEL_DIR: the running (or last) cycle's stage, step, ETA and loss, for ``GET /metrics``."""


class StatusWriter:
    """Passes events on to ``inner`` and keeps the latest one in a small JSON file.

    Why a file: the cycle runs in a worker or CLI process and ``/metrics`` is answered by the
    server; a file under MODEL_DIR is what both see (the server already reads the last outcome
    there). Writes are atomic and at most one per ``every_s`` within a stage.
    """

    def __init__(self, path: Path, base: dict[str, Any], inner: ProgressFn | None = None,
                 every_s: float = 1.0) -> None:
        self.path, self.base, self.inner, self.every_s = path, dict(base), inner, every_s
        self._last = 0.0
        self._stage = ""
        self.started = time.time()

    def __call__(self, event: Progress) -> None:
        now = time.monotonic()
        if event.stage != self._stage or event.message or now - self._last >= self.every_s:
            self._stage, self._last = event.stage, now
            self.write({"status": "running", "stage": event.stage, "step": event.step, "total": event.total,
                        "eta_s": event.eta_s, "values": dict(event.values), "message": event.message})
        if self.inner is not None:
            self.inner(event)

    def write(self, fields: dict[str, Any]) -> None:
        """Merge ``fields`` into the base record and replace the file (never raises: it is a display)."""
        record = {**self.base, "pid": os.getpid(), "host": socket.gethostname(),
                  "started": _iso(self.started), "updated": _iso(time.time()),
                  "elapsed_s": round(time.time() - self.started, 1), **fields}
        with contextlib.suppress(OSError):
            atomic.write_strict_json(self.path, record, fsync=False)  # a display, rewritten every second


def _iso(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, timezone.utc).isoformat(timespec="seconds")
