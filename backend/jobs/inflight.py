"""Which tasks are in flight: handed to background pre-annotation and not written yet.

Why: ``/predict`` hands the tasks its budget has no room for to the background. If Label Studio
sends them again (a second "Retrieve predictions") before the background wrote them, ``/predict``
and the job would both store a prediction. So a handed-over task is *held*, and ``/predict``
answers a held task without a ``result`` (Label Studio stores nothing for it). Once the job wrote
it, the hold becomes a *written* mark that outlives any ``/predict`` that listed the task before
the write; a task the job could not do is released, so the next "Retrieve predictions" tries
again. Every entry expires, so a killed worker cannot keep a task from being predicted for ever.

With ``REDIS_URL`` the entries are Redis keys (one per project, version and task, with a TTL) that
every server process and worker sees; without it, a table in this process, where the server and
its pre-annotation thread both live. Both answer through :class:`InFlight`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from backend.settings import Settings

log = logging.getLogger(__name__)

PENDING = "pending"
WRITTEN = "written"
WRITTEN_TTL_S = 130.0
"""How long a written mark lasts: longer than Label Studio waits for one ``/predict`` (100 s)."""
WARN_EVERY_S = 60.0


class InFlight:
    """Holds on (project, model version, task), set and read in bulk; storage is the subclass's."""

    errors: tuple[type[BaseException], ...] = ()
    """What the storage raises when it cannot be reached: logged, never raised to the caller."""

    def __init__(self, pending_ttl: float, written_ttl: float = WRITTEN_TTL_S) -> None:
        self.pending_ttl = pending_ttl
        self.written_ttl = written_ttl

    def hold(self, project: int, version: str, task_ids: Iterable[int]) -> None:
        """The tasks were handed to the background: ``/predict`` leaves them alone until written or expired."""
        self._guard(self._put, self._keys(project, version, task_ids), PENDING, self.pending_ttl)

    def written(self, project: int, version: str, task_ids: Iterable[int]) -> None:
        """The background wrote the tasks: a ``/predict`` already under way must not answer them too."""
        self._guard(self._put, self._keys(project, version, task_ids), WRITTEN, self.written_ttl)

    def release(self, project: int, version: str, task_ids: Iterable[int]) -> None:
        """The background gave the tasks up: the next ``/predict`` may answer them."""
        keys = self._keys(project, version, task_ids)
        if keys:
            self._guard(self._drop, keys)

    def states(self, project: int, version: str, task_ids: Iterable[int]) -> dict[int, str]:
        """``pending`` or ``written`` for each of the tasks that is in flight; storage down: none."""
        ids = list(task_ids)
        found = self._guard(self._get, self._keys(project, version, ids)) if ids else None
        return {t: state for t, state in zip(ids, found or [], strict=False) if state}

    def held(self, project: int, version: str, task_ids: Iterable[int]) -> set[int]:
        """The tasks ``/predict`` must not answer now."""
        return set(self.states(project, version, task_ids))

    def _guard(self, action: Callable[..., Any], *args: Any) -> Any:
        """Run a storage call; when the storage is unreachable, warn (at most once a minute) and go on."""
        try:
            return action(*args)
        except self.errors as exc:
            _warn(exc)
            return None

    @staticmethod
    def _keys(project: int, version: str, task_ids: Iterable[int]) -> list[str]:
        return [f"{project}:{version}:{t}" for t in task_ids]

    def _put(self, keys: list[str], state: str, ttl: float) -> None:
        raise NotImplementedError

    def _get(self, keys: list[str]) -> list[str | None]:
        raise NotImplementedError

    def _drop(self, keys: list[str]) -> None:
        raise NotImplementedError


class MemoryTable:
    """Entries and their expiry times in this process, shared by every :class:`MemoryInFlight`."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self.entries: dict[str, tuple[str, float]] = {}


class MemoryInFlight(InFlight):
    """In-process holds: the server and its pre-annotation thread share one :class:`MemoryTable`."""

    def __init__(self, table: MemoryTable, pending_ttl: float, written_ttl: float = WRITTEN_TTL_S) -> None:
        super().__init__(pending_ttl, written_ttl)
        self.table = table

    def _put(self, keys: list[str], state: str, ttl: float) -> None:
        with self.table.lock:
            now = self.table.clock()
            entries = self.table.entries
            for key in [k for k, (_, expiry) in entries.items() if expiry <= now]:
                del entries[key]
            entries.update((k, (state, now + ttl)) for k in keys)

    def _get(self, keys: list[str]) -> list[str | None]:
        with self.table.lock:
            now = self.table.clock()
            found = [self.table.entries.get(k) for k in keys]
        return [entry[0] if entry and entry[1] > now else None for entry in found]

    def _drop(self, keys: list[str]) -> None:
        with self.table.lock:
            for key in keys:
                self.table.entries.pop(key, None)


class RedisInFlight(InFlight):
    """Holds as Redis keys ``<prefix>:<project>:<version>:<task>`` that expire by themselves."""

    def __init__(self, connection: Any, prefix: str, pending_ttl: float, written_ttl: float = WRITTEN_TTL_S) -> None:
        from redis.exceptions import RedisError

        super().__init__(pending_ttl, written_ttl)
        self.connection = connection
        self.prefix = prefix
        self.errors = (RedisError, OSError)

    def _put(self, keys: list[str], state: str, ttl: float) -> None:
        pipe = self.connection.pipeline(transaction=False)
        for key in keys:
            pipe.set(f"{self.prefix}:{key}", state, px=max(1, int(ttl * 1000)))
        pipe.execute()

    def _get(self, keys: list[str]) -> list[str | None]:
        values = self.connection.mget([f"{self.prefix}:{k}" for k in keys])
        return [v.decode() if isinstance(v, bytes) else v for v in values]

    def _drop(self, keys: list[str]) -> None:
        self.connection.delete(*[f"{self.prefix}:{k}" for k in keys])


_table = MemoryTable()
_last_warning = float("-inf")
_connections: dict[tuple[str, float], Any] = {}
_connections_lock = threading.Lock()


def _warn(exc: BaseException) -> None:
    """Say (at most once a minute per process) that holds cannot be read or written."""
    global _last_warning
    now = time.monotonic()
    if now - _last_warning > WARN_EVERY_S:
        _last_warning = now
        log.warning("in-flight tasks unknown (storage unreachable: %s): duplicates are possible", exc)


def redis_prefix(settings: Settings) -> str:
    """Next to the queue's other keys, so each queue (and each test's) has its own."""
    return f"isnet:{settings.queue_name}:inflight"


def registry(settings: Settings) -> InFlight:
    """Redis holds with ``REDIS_URL`` (one client per process), else this process's table."""
    if not settings.redis_url:
        return MemoryInFlight(_table, settings.inflight_ttl)
    key = (settings.redis_url, settings.redis_timeout)
    with _connections_lock:
        if key not in _connections:
            from backend.jobs.connection import redis_connection

            _connections[key] = redis_connection(settings)
        connection = _connections[key]
    return RedisInFlight(connection, redis_prefix(settings), settings.inflight_ttl)
