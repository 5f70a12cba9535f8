"""One retraining cycle per lineage at a time on this host: an exclusive ``flock`` on the
lineage's ``.cycle.lock`` (``MODEL_DIR/.cycle.lock`` for the base, ``MODEL_DIR/lineages/<L>/``
for a project's).

Why a file lock: cycles are started by RQ workers, by the no-Redis server's child processes (one
set per gunicorn worker) and by ``isnet train``, and the only thing they all share is the
lineage's directory. A second cycle of the same lineage waits for the first, then starts from
the version the first left current, so it is judged against that one and its promotion cannot
race it; cycles of different lineages never wait for each other. The kernel drops the lock when
its process ends, even by SIGKILL, so a crashed cycle never leaves a stale lock. The file names
who holds it (what, pid, host, since) for the message of whoever waits. Within one thread the
lock is re-entrant: a Label Studio-fed job takes it before it exports the labels, and its cycle
takes it again. (The Redis lock of :mod:`backend.jobs.retrain_queue` orders RQ jobs across hosts.)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

LOCK_FILE = ".cycle.lock"

_guard = threading.Lock()
_held: dict[Path, int] = {}
"""Lock file -> the thread of this process that holds it."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lineage's cycle lock, as its lock file says."""

    what: str
    pid: int
    host: str
    since: str

    def describe(self) -> str:
        return f"{self.what} (pid {self.pid} on {self.host}, since {self.since})"


def lock_path(home: Path) -> Path:
    return Path(home) / LOCK_FILE


def holder(home: Path) -> Holder | None:
    """Who holds the lock of the lineage whose directory is ``home`` (None: nobody, or unreadable)."""
    try:
        data = json.loads(lock_path(home).read_text())
        return Holder(str(data["what"]), int(data["pid"]), str(data["host"]), str(data["since"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def held_here(home: Path) -> bool:
    """Whether this thread holds the lock of the lineage whose directory is ``home`` already."""
    try:
        path = lock_path(home).resolve()
    except OSError:
        return False
    with _guard:
        return _held.get(path) == threading.get_ident()


@contextlib.contextmanager
def hold(home: Path, what: str, on_wait: Callable[[Holder | None], None] | None = None) -> Iterator[bool]:
    """Hold the cycle lock of the lineage whose directory is ``home``, waiting for it if another
    cycle holds it (``on_wait`` is told who, once, before waiting). Yields whether it waited."""
    path = lock_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    path = path.resolve()
    me = threading.get_ident()
    with _guard:
        inner = _held.get(path) == me  # this thread holds it already (the job around its cycle)
    if inner:
        yield False
        return
    fd, waited = _take(path, what, on_wait)
    with _guard:
        _held[path] = me
    try:
        yield waited
    finally:
        with _guard:
            _held.pop(path, None)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # nobody holds it now
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _take(path: Path, what: str, on_wait: Callable[[Holder | None], None] | None) -> tuple[int, bool]:
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            waited = False
        except BlockingIOError:
            if on_wait is not None:
                on_wait(holder(path.parent))
            fcntl.flock(fd, fcntl.LOCK_EX)  # the kernel wakes this when the holder ends or dies
            waited = True
        record = {"what": what, "pid": os.getpid(), "host": socket.gethostname(),
                  "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd, waited
