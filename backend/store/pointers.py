"""Lineage pointers, switch records and locks in Redis, for :mod:`backend.learning.pointers`.

Keys (``<ns>`` is ``isnet:store:<ISNET_MODEL_STORE>``, so deployments sharing a Redis never mix):
``<ns>:lineage:<L>:current`` (the version name; absent: follow the base), ``:switches`` (the JSON of
``switches.json``), ``:retired``, ``:switch`` and ``:cycle`` (locks), ``:cycle:holder`` (who holds
it), and the set ``<ns>:lineages``.

Why WATCH and a lock: a switch holds the lineage's switch lock (so retention, which decides under
it, sees no switch meanwhile) and commits with ``WATCH``/``MULTI``, so even a lock that expired
under a stalled holder cannot let two promotions both succeed: the second sees the first's change
and is judged again (a cycle's promotion then fails its compare-and-swap). The cycle lock expires
``ISNET_STORE_LOCK_TTL`` seconds after its holder stops renewing it, so a killed worker host frees
its lineage for the next cycle.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from typing import Any, TypeVar

from redis import Redis
from redis.exceptions import LockError, RedisError, WatchError

from backend.isnet.versions import BASE
from backend.learning.cycle_lock import Holder
from backend.learning.pointers import PointerState, PointersUnavailable
from backend.redaction import redact
from backend.settings import Settings

T = TypeVar("T")
FINGERPRINT_S = 1.0
"""How stale a serving process's view of the current versions may be (another host's switch)."""
SWITCH_LOCK_S = 30.0
"""Longest a switch may hold its lock (a switch reads a few keys and may fetch a version's records)."""


class RedisPointers:
    """Every lineage's pointers of one shared store, in one Redis."""

    def __init__(self, redis: Redis, namespace: str, lock_ttl: float = 60.0, where: str = "Redis") -> None:
        self.redis = redis
        self.ns = namespace
        self.lock_ttl = lock_ttl
        self.where = where
        self._memo: dict[tuple[str, ...], tuple[float, tuple[Any, ...]]] = {}
        self._memo_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisPointers:
        redis = Redis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=10,
                               health_check_interval=30)
        return cls(redis, f"isnet:store:{settings.model_store}", settings.store_lock_ttl,
                   redact(settings.redis_url))

    def _key(self, lineage: str, what: str) -> str:
        return f"{self.ns}:lineage:{lineage}:{what}"

    def _unavailable(self, doing: str, exc: Exception) -> PointersUnavailable:
        return PointersUnavailable(f"Redis at {self.where} unreachable while {doing}: {type(exc).__name__}: {exc}")

    @staticmethod
    def _text(value: Any) -> str | None:
        if value is None:
            return None
        text = value.decode() if isinstance(value, bytes) else str(value)
        return text or None

    @staticmethod
    def _record(value: Any) -> dict[str, Any]:
        try:
            data = json.loads(value) if value else {}
        except (TypeError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def read(self, lineage: str) -> tuple[str | None, dict[str, Any]]:
        try:
            own, record = self.redis.mget([self._key(lineage, "current"), self._key(lineage, "switches")])
        except RedisError as exc:
            raise self._unavailable(f"reading lineage {lineage}", exc) from exc
        return self._text(own), self._record(record)

    def update(self, lineage: str, change: Callable[[PointerState], T]) -> T:
        keys = [self._key(lineage, "current"), self._key(lineage, "switches"), self._key(BASE, "current")]
        try:
            with self.switch_lock(lineage), self.redis.pipeline() as pipe:
                while True:
                    try:
                        pipe.watch(*keys)
                        own, record, base = pipe.mget(keys)
                        state = PointerState(own=self._text(own), record=_normalised(self._record(record)),
                                             base=self._text(base) if lineage != BASE else None)
                        result = change(state)
                        if not state.changed:
                            pipe.unwatch()
                            return result
                        pipe.multi()
                        if state.own is None:
                            pipe.delete(keys[0])
                        else:
                            pipe.set(keys[0], state.own)
                        pipe.set(keys[1], json.dumps(state.record))
                        if state.retired is not None:
                            pipe.set(self._key(lineage, "retired"), state.retired)
                        pipe.sadd(f"{self.ns}:lineages", lineage)
                        pipe.execute()
                        with self._memo_lock:
                            self._memo.clear()
                        return result
                    except WatchError:
                        continue  # another host switched it meanwhile: judge again on what is current now
        except RedisError as exc:
            raise self._unavailable(f"switching lineage {lineage}", exc) from exc

    def fingerprint(self, lineages: Sequence[str]) -> tuple[Any, ...]:
        """The lineages' current names, read at most every :data:`FINGERPRINT_S` per process (every
        ``/predict`` asks; a switch made in this process is seen at once)."""
        key = tuple(lineages)
        now = time.monotonic()
        with self._memo_lock:
            known = self._memo.get(key)
        if known is not None and now - known[0] < FINGERPRINT_S:
            return known[1]
        try:
            value = tuple(self.redis.mget([self._key(lineage, "current") for lineage in lineages]))
        except RedisError as exc:
            raise self._unavailable("reading the current versions", exc) from exc
        with self._memo_lock:
            self._memo[key] = (now, value)
        return value

    @contextlib.contextmanager
    def switch_lock(self, lineage: str) -> Iterator[None]:
        lock = self.redis.lock(self._key(lineage, "switch"), timeout=SWITCH_LOCK_S, blocking_timeout=4 * SWITCH_LOCK_S,
                               thread_local=False)
        try:
            if not lock.acquire(blocking=True):
                raise PointersUnavailable(f"lineage {lineage}'s switch lock in {self.where} was held for over "
                                          f"{4 * SWITCH_LOCK_S:.0f} s; try again")
        except RedisError as exc:
            raise self._unavailable(f"locking lineage {lineage}", exc) from exc
        try:
            yield
        finally:
            with contextlib.suppress(LockError, RedisError):
                lock.release()

    def holder(self, lineage: str) -> Holder | None:
        """Who holds the lineage's cycle lock, as the holder recorded it (None: nobody, or unreadable)."""
        with contextlib.suppress(RedisError, ValueError, KeyError, TypeError):
            data = json.loads(self.redis.get(self._key(lineage, "cycle:holder")) or b"null")
            return Holder(str(data["what"]), int(data["pid"]), str(data["host"]), str(data["since"]))
        return None

    @contextlib.contextmanager
    def cycle_lock(self, lineage: str, what: str, on_wait: Callable[[Any], None] | None = None) -> Iterator[bool]:
        lock = self.redis.lock(self._key(lineage, "cycle"), timeout=self.lock_ttl, thread_local=False)
        holder_key = self._key(lineage, "cycle:holder")
        try:
            waited = not lock.acquire(blocking=False)
            if waited:
                if on_wait is not None:
                    on_wait(self.holder(lineage))
                lock.acquire(blocking=True)
            record = {"what": what, "pid": os.getpid(), "host": socket.gethostname(),
                      "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            self.redis.set(holder_key, json.dumps(record), px=int(self.lock_ttl * 1000))
        except RedisError as exc:
            raise self._unavailable(f"taking lineage {lineage}'s cycle lock", exc) from exc
        stop = threading.Event()

        def renew() -> None:  # while this process lives; a killed host stops renewing and the lock expires
            while not stop.wait(self.lock_ttl / 3):
                with contextlib.suppress(LockError, RedisError):
                    lock.extend(self.lock_ttl, replace_ttl=True)
                    self.redis.pexpire(holder_key, int(self.lock_ttl * 1000))

        renewer = threading.Thread(target=renew, daemon=True, name=f"isnet-cycle-lock-{lineage}")
        renewer.start()
        try:
            yield waited
        finally:
            stop.set()
            renewer.join(timeout=5)
            with contextlib.suppress(LockError, RedisError):
                self.redis.delete(holder_key)
                lock.release()

    def lineages(self) -> list[str]:
        try:
            members = self.redis.smembers(f"{self.ns}:lineages")
        except RedisError as exc:
            raise self._unavailable("listing lineages", exc) from exc
        return sorted(self._text(m) or "" for m in members if self._text(m))


def _normalised(record: dict[str, Any]) -> dict[str, Any]:
    previous = [p for p in record.get("previous", []) if isinstance(p, str)]
    switches = [s for s in record.get("switches", []) if isinstance(s, dict)]
    return {"previous": previous, "switches": switches}
