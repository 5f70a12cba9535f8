"""Pre-annotation counters (total/done/skipped/failed) that every worker adds to and ``/metrics`` reads.

Why a Redis hash: jobs run in many worker processes, and the server process that answers
``/metrics`` runs none of them; ``HINCRBY`` on one hash is atomic and cheap. Without Redis the
in-process thread counts in memory instead. Each RQ job also keeps its own counts in its meta.
"""

from __future__ import annotations

import threading
from typing import Any

PROGRESS_KEY = "isnet:{queue}:progress"
FIELDS = ("total", "done", "skipped", "failed")


class LocalProgress:
    """Counters in this process's memory (the in-process fallback)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(FIELDS, 0)

    def incr(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + n

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._counts)


class RedisProgress:
    """Counters in one Redis hash shared by every worker and the server."""

    def __init__(self, connection: Any, queue: str) -> None:
        self.connection = connection
        self.key = PROGRESS_KEY.format(queue=queue)

    def incr(self, name: str, n: int = 1) -> None:
        self.connection.hincrby(self.key, name, n)

    def snapshot(self) -> dict[str, Any]:
        raw = self.connection.hgetall(self.key)
        counts = dict.fromkeys(FIELDS, 0)
        counts.update({k.decode() if isinstance(k, bytes) else k: int(v) for k, v in raw.items()})
        return counts
