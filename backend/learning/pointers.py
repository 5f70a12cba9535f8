"""Lineage pointers shared by several hosts: which version each lineage serves, its switches, its locks.

Why an interface: on one host a lineage's ``CURRENT`` file, its ``switches.json`` and two
``flock``s are enough (:mod:`backend.learning.registry` keeps them so). With ``ISNET_MODEL_STORE``
hosts share no disk, so the pointers, the history and the locks live in Redis
(:mod:`backend.store.pointers`, connected by each program's entry point with :func:`install`);
the retraining application knows no Redis, only this interface. Correctness never rests on the
object store's conditional writes, which S3-compatible servers implement unevenly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from backend.settings import Settings

T = TypeVar("T")


class PointersUnavailable(OSError):
    """The shared pointers (Redis) cannot be reached; the message says where and why."""


@dataclass
class PointerState:
    """One lineage's pointers as a switch sees them; a change edits them and marks ``changed``."""

    own: str | None
    """The lineage's own current version; None: it follows the base lineage."""
    record: dict[str, Any]
    """``{"previous": [...], "switches": [...]}`` as in ``switches.json``."""
    base: str | None = None
    """The base lineage's own current version (for a project lineage that follows it)."""
    retired: str | None = None
    """Set by a retirement: the version the lineage served, kept aside."""
    changed: bool = field(default=False)


class SharedPointers(Protocol):
    """Pointers and locks of every lineage, the same for every host."""

    def read(self, lineage: str) -> tuple[str | None, dict[str, Any]]:
        """The lineage's own current version (None: follows the base) and its switch record."""

    def update(self, lineage: str, change: Callable[[PointerState], T]) -> T:
        """Run ``change`` on the lineage's state and store what it changed, atomically: when another
        host switched the lineage (or the base) meanwhile, ``change`` runs again on the new state.
        An exception from ``change`` stores nothing."""

    def fingerprint(self, lineages: Sequence[str]) -> tuple[Any, ...]:
        """A cheap value that changes whenever one of these lineages' pointers changes."""

    def cycle_lock(self, lineage: str, what: str,
                   on_wait: Callable[[Any], None] | None = None) -> contextlib.AbstractContextManager[bool]:
        """Hold the lineage's one-cycle lock across hosts (released if its holder dies); yields
        whether it waited."""

    def switch_lock(self, lineage: str) -> contextlib.AbstractContextManager[None]:
        """Hold the lineage's switch lock across hosts (retention decides under it)."""

    def lineages(self) -> list[str]:
        """Lineages that have pointers."""


_connect: Callable[[Settings], SharedPointers] | None = None
_connected: dict[tuple[str, str], SharedPointers] = {}


def install(connect: Callable[[Settings], SharedPointers]) -> None:
    """Tell the registry how to reach the shared pointers (:func:`backend.store.connect` does)."""
    global _connect
    _connect = connect
    _connected.clear()


def shared(settings: Settings) -> SharedPointers | None:
    """The shared pointers, or None without ``ISNET_MODEL_STORE`` (the files in ``MODEL_DIR``)."""
    if not settings.model_store:
        return None
    key = (settings.model_store, settings.redis_url)
    found = _connected.get(key)
    if found is None:
        if _connect is None:
            raise RuntimeError("ISNET_MODEL_STORE is set but this program did not connect to it "
                               "(backend.store.connect(settings) at its start)")
        found = _connected.setdefault(key, _connect(settings))
    return found
