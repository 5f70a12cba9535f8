"""Whether the shared store answers, for ``GET /health``, which must never wait on it.

Why in the background: Label Studio checks ``/health`` every second, and an object store that is
down may take the connect timeout to say so. The object store and Redis are checked at most every
:data:`INTERVAL_S` seconds on a thread of their own; ``/health`` reports the last result (and
starts the next check when it is due). While the store is down, ``/predict`` serves the cached
current version; a promotion waits (it publishes the version first, and fails until it can).
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone
from typing import Any

from backend.isnet import remote
from backend.isnet.versions import BASE
from backend.learning import pointers
from backend.redaction import redact
from backend.settings import Settings

INTERVAL_S = 10.0


class StoreHealth:
    """The last check of one store and its Redis; :meth:`status` never blocks."""

    def __init__(self, settings: Settings, interval: float = INTERVAL_S) -> None:
        self.settings = settings
        self.interval = interval
        self._lock = threading.Lock()
        self._checking = False
        self._checked_at = 0.0
        self._last: dict[str, Any] = {"url": settings.model_store, "reachable": None, "redis": None,
                                      "error": "not checked yet", "checked": None}

    def status(self) -> dict[str, Any]:
        with self._lock:
            due = not self._checking and time.monotonic() - self._checked_at >= self.interval
            if due:
                self._checking = True
                threading.Thread(target=self._check, daemon=True, name="isnet-store-health").start()
            return dict(self._last)

    def check_now(self) -> dict[str, Any]:
        """Check at once, in this thread (at start, and for tests)."""
        with self._lock:
            self._checking = True
        self._check()
        return self.status()

    def _check(self) -> None:
        errors = []
        reachable = redis_ok = False
        try:
            objects = remote.objects(self.settings)
            if objects is not None:
                objects.check()
            reachable = True
        except (OSError, RuntimeError) as exc:
            errors.append(str(exc))
        try:
            shared = pointers.shared(self.settings)
            if shared is not None:
                shared.fingerprint([BASE])
            redis_ok = True
        except (OSError, RuntimeError) as exc:
            errors.append(str(exc))
        result = {"url": self.settings.model_store, "reachable": reachable, "redis": redis_ok,
                  "error": redact("; ".join(errors)) or None,
                  "checked": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        with self._lock:
            self._last = result
            self._checked_at = time.monotonic()
            self._checking = False


_health: dict[str, StoreHealth] = {}
_guard = threading.Lock()


def store_status(settings: Settings) -> dict[str, Any] | None:
    """The last check of ``ISNET_MODEL_STORE`` (None without one): url, reachable, redis, error, checked."""
    if not settings.model_store:
        return None
    with _guard:
        health = _health.setdefault(settings.model_store, StoreHealth(settings))
    return health.status()
