"""Counters and the last errors of one server process, for ``GET /metrics.json``.

Why its own truth: Label Studio answers "200" to most things whatever the backend did (a
failed task is just an empty prediction, ``/api/ml/{id}/train`` always says OK), so the
backend's own numbers are the only way to see what it actually did.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from typing import Any

from backend.redaction import redact, redact_data

MAX_ERRORS = 20


class Stats:
    """Thread-safe named counters plus a bounded list of recent errors."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: Counter[str] = Counter()
        self._errors: deque[dict[str, Any]] = deque(maxlen=MAX_ERRORS)
        self.started = time.time()

    def incr(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counters[name] += amount

    def error(self, kind: str, message: str, **fields: Any) -> None:
        """Remember an error (newest last); ``fields`` say where (task id, request id, ...)."""
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "kind": kind, "message": redact(message),
                 **redact_data(fields)}
        with self._lock:
            self._counters[f"errors.{kind}"] += 1
            self._errors.append(entry)

    def get(self, name: str) -> int:
        with self._lock:
            return self._counters[name]

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            counters = dict(sorted(self._counters.items()))
            errors = list(self._errors)
        return {"uptime_s": round(time.time() - self.started, 1), "counters": counters, "last_errors": errors}
