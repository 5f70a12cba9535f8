"""Which model version each lineage serves, and how that changes: promote, use, roll back.

Why lineages: Label Studio keeps a ``model_version`` per project and names the project in every
call, and one project's house rule (stems left out of butterflies) must never reach another's
masks. So every project has a lineage of its own (``p<id>``; several projects may share one,
:mod:`backend.learning.lineages`), and a lineage that has never switched follows the **base**
lineage: the pretrained weights, or what ``isnet model use --base`` set. Everything that needs
"the current model" of a project asks ``ModelRegistry(settings, lineage)``.

Layout (see :mod:`backend.isnet.versions`): versions are shared (any version may seed any
lineage); each lineage has its own ``CURRENT`` and ``switches.json``, the base's at the top of
``MODEL_DIR`` exactly where a single-model ``MODEL_DIR`` kept them, so an existing one keeps
serving what it served, now as the base.

"Previous" for :meth:`ModelRegistry.rollback`: every switch (a cycle's promotion or ``isnet model
use``) pushes the version it replaces; a rollback pops the most recent one that still exists, so
repeated rollbacks walk back through the versions served before. A project lineage's first
switch pushes "follow the base", so rolling it back far enough makes it follow the base again.
A lineage without that record rolls back to the version the current one was trained from.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from backend import atomic
from backend.isnet.versions import (
    BASE,
    CHECKPOINT_FILE,
    LINEAGES_DIR,
    ModelVersion,
    VersionStore,
    check_lineage,
    lineage_dir,
    lineage_of,
)
from backend.isnet.weights import WeightsError
from backend.learning import cycle_lock, pointers
from backend.learning.history import read_record
from backend.learning.pointers import PointerState
from backend.settings import Settings

CURRENT_FILE = "CURRENT"
SWITCHES_FILE = "switches.json"
RETIRED_FILE = "RETIRED"
LOCK_FILE = ".switch.lock"
T = TypeVar("T")
FOLLOW_BASE = ""
"""On a project lineage's rollback stack: "follow the base lineage again"."""
MAX_SWITCHES = 200
"""Switches kept in ``switches.json`` (and depth of the rollback stack): enough for any audit."""

__all__ = ["BASE", "CHECKPOINT_FILE", "ModelRegistry", "ModelVersion", "NoPreviousVersion", "PromotionConflict",
           "VersionInfo"]


@dataclass(frozen=True)
class VersionInfo:
    """One version as ``isnet model list`` and ``GET /versions`` describe it."""

    name: str
    created: str | None
    """UTC ISO time: the cycle's record, else the checkpoint's modification time."""
    current: bool
    pretrained: bool
    parent: str | None = None
    """The version it was trained from (its cycle's champion)."""
    metrics: dict[str, float] | None = None
    """Its held-out metrics at ``size``, as its cycle measured them."""
    size: int | None = None
    promoted_by_cycle: bool | None = None
    lineage: str = BASE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class NoPreviousVersion(LookupError):
    """``rollback`` found no earlier version to go back to; the message says why."""


class PromotionConflict(RuntimeError):
    """The lineage's current version is no longer the one a cycle was judged against."""


def _utc_mtime(path: Path) -> str | None:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(timespec="microseconds")
    except OSError:
        return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


class ModelRegistry:
    """One lineage's view of the shared versions: its current one, its switches, its rollback."""

    def __init__(self, settings: Settings, lineage: str = BASE) -> None:
        self.settings = settings
        self.lineage = check_lineage(lineage) if lineage != BASE else BASE
        self.store = VersionStore(settings)
        self.root = settings.model_dir
        self.home = lineage_dir(settings, self.lineage)
        self.versions_dir = self.store.versions_dir
        self.current_file = self.home / CURRENT_FILE
        self.switches_file = self.home / SWITCHES_FILE
        self.shared = pointers.shared(settings)

    def for_lineage(self, lineage: str) -> ModelRegistry:
        return ModelRegistry(self.settings, lineage)

    @property
    def pointer_files(self) -> list[Path]:
        """The files whose change can change what this lineage serves (its own and the base's pointer)."""
        base = self.root / CURRENT_FILE
        return [self.current_file] if self.current_file == base else [self.current_file, base]

    def shared_fingerprint(self) -> tuple[Any, ...] | None:
        """With a shared store: a value that changes when this lineage's (or the base's) pointer
        changes on any host (one Redis round trip); None without one (see :attr:`pointer_files`)."""
        if self.shared is None:
            return None
        return self.shared.fingerprint([self.lineage] if self.lineage == BASE else [self.lineage, BASE])

    def pretrained(self) -> ModelVersion:
        return self.store.pretrained()

    def get(self, name: str) -> ModelVersion:
        return self.store.get(name)

    def list_versions(self) -> list[ModelVersion]:
        return self.store.list_versions()

    def record_dirs(self) -> list[Path]:
        """Every version directory, those whose weights retention removed included: where the
        cycles' records (history, the forgetting guard's images) are read from."""
        return self.store.directories()

    def own_current_name(self) -> str | None:
        """What this lineage's own ``CURRENT`` names; None while it follows the base."""
        if self.shared is not None:
            return self.shared.read(self.lineage)[0]
        try:
            return self.current_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    @property
    def follows_base(self) -> bool:
        return self.lineage != BASE and self.own_current_name() is None

    def current_name(self) -> str | None:
        """The promoted version's name: the lineage's own, else (a project lineage) the base's."""
        own = self.own_current_name()
        if own or self.lineage == BASE:
            return own
        return ModelRegistry(self.settings).current_name()

    def current(self) -> ModelVersion:
        """The promoted version, or the pretrained weights when nothing was promoted."""
        name = self.current_name()
        return self.get(name) if name else self.pretrained()

    def current_or_pretrained_name(self) -> str | None:
        """What ``CURRENT`` names (even if it is broken), else the pretrained version's name,
        else None (no weights): the current version's name without loading anything."""
        name = self.current_name()
        if name:
            return name
        with contextlib.suppress(WeightsError, OSError, KeyError):
            return self.pretrained().name
        return None

    def promote(self, name: str, how: str = "promote", expected: str | None = None) -> ModelVersion:
        """Make ``name`` this lineage's current version with one atomic rename; servers notice on
        their next request. ``expected``: the champion a cycle was judged against; when another
        version is current by now (a rollback, a ``use`` or another cycle meanwhile), nothing
        changes and :class:`PromotionConflict` says what is current.

        The version it replaces is pushed onto the rollback stack (``how`` names the switch in
        ``switches.json``: ``promote`` for a cycle, ``use`` for ``isnet model use``). With a shared
        store the version is published there first, so every host can fetch what it is told to serve;
        while the store is unreachable it waits up to ``ISNET_STORE_WAIT``, then raises ``OSError``
        with nothing switched.
        """
        version = self.get(name)
        self.store.publish(name, wait=self.settings.store_wait)  # the store down: the promotion waits for it

        def change(state: PointerState) -> None:
            self.get(name)  # again under the lock: retention may have removed it meanwhile
            before = self._resolved(state)
            if expected is not None and before != expected:
                raise PromotionConflict(f"{before} is current in lineage {self.lineage}, not {expected} that "
                                        f"{name} was judged against; {name} is kept but not promoted")
            following = self.lineage != BASE and state.own is None
            if before == name and not following:
                return
            state.own = name
            pushed = FOLLOW_BASE if following else before
            if pushed is not None:
                state.record["previous"] = [*state.record["previous"], pushed][-MAX_SWITCHES:]
            self._log_switch(state, before, name, how)

        self._update(change)
        return version

    def rollback(self) -> tuple[ModelVersion, str | None]:
        """Go back to the previously current version (see the module docstring for "previous").

        Returns the version now current and the one it replaced; :class:`NoPreviousVersion`
        when there is nothing to go back to. Versions deleted since are skipped.
        """
        found: list[str | None] = []

        def change(state: PointerState) -> str | None:
            before = self._resolved(state)
            found[:] = [before]
            stack = list(state.record["previous"])
            state.record["previous"] = stack
            while stack:
                name = stack.pop()
                if name == FOLLOW_BASE and self.lineage != BASE:
                    state.own = None
                    self._log_switch(state, before, self._resolved(state) or "", "rollback to base")
                    return None
                if name != before and self._exists(name):
                    return self._switch_back(state, before, name)
            following = self.lineage != BASE and state.own is None
            parent = self.info(before).parent if before and self._exists(before) else None
            if parent and parent != before and self._exists(parent) and not following:
                return self._switch_back(state, before, parent)
            follows = " (it follows the base lineage; roll that back with --base)" if following else ""
            raise NoPreviousVersion(
                f"nothing to roll back to in lineage {self.lineage}{follows}: no earlier current version is recorded "
                f"in {self._switches_where} and {before or 'the current version'} was not trained from another version"
            )

        name = self._update(change)
        return (self.get(name) if name else self.current()), found[0]

    def retire(self) -> str | None:
        """Stop serving this project lineage (its project was deleted): its pointer is set aside as
        ``RETIRED`` and the lineage follows the base again; its versions stay for retention to remove.
        The version it served, or None when it had none of its own."""
        if self.lineage == BASE:
            raise ValueError("the base lineage cannot be retired")

        def change(state: PointerState) -> str | None:
            own = state.own
            if own is None:
                return None
            state.retired = own
            state.own = None
            self._log_switch(state, own, self._resolved(state) or "", "retire")
            return own

        return self._update(change)

    def switches(self) -> dict[str, Any]:
        """``{"previous": [names, oldest first], "switches": [{"at", "from", "to", "how"}, ...]}``."""
        data = self.shared.read(self.lineage)[1] if self.shared is not None else _read_json(self.switches_file)
        previous = [p for p in data.get("previous", []) if isinstance(p, str)]
        log = [s for s in data.get("switches", []) if isinstance(s, dict)]
        return {"previous": previous, "switches": log}

    @property
    def _switches_where(self) -> str:
        return f"the shared switches of {self.settings.model_store}" if self.shared is not None \
            else str(self.switches_file)

    def _resolved(self, state: PointerState) -> str | None:
        """What ``current_or_pretrained_name`` says for this state."""
        name = state.own or (state.base if self.lineage != BASE else None)
        if name:
            return name
        with contextlib.suppress(WeightsError, OSError, KeyError):
            return self.pretrained().name
        return None

    def _switch_back(self, state: PointerState, before: str | None, name: str) -> str:
        state.own = name
        self._log_switch(state, before, name, "rollback")
        return name

    @staticmethod
    def _log_switch(state: PointerState, before: str | None, after: str, how: str) -> None:
        entry = {"at": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
                 "from": before, "to": after, "how": how}
        state.record["switches"] = [*state.record["switches"], entry][-MAX_SWITCHES:]
        state.changed = True

    def _update(self, change: Callable[[PointerState], T]) -> T:
        """Run ``change`` on this lineage's pointers under its switch lock and store what it changed:
        the shared pointers' compare-and-swap with a store, else the files (``CURRENT`` first)."""
        if self.shared is not None:
            return self.shared.update(self.lineage, change)
        with self._switch_lock():
            base = ModelRegistry(self.settings).own_current_name() if self.lineage != BASE else None
            state = PointerState(own=self.own_current_name(), record=self.switches(), base=base)
            result = change(state)
            if state.changed:
                if state.retired is not None:
                    atomic.write_text(self.home / RETIRED_FILE, state.retired + "\n")
                if state.own is None:
                    self.current_file.unlink(missing_ok=True)
                else:
                    atomic.write_text(self.current_file, state.own + "\n")
                atomic.write_text(self.switches_file, json.dumps(state.record, indent=2) + "\n")
            return result

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """Hold this lineage's switch lock: nothing switches its version meanwhile (retention decides under it)."""
        return self.shared.switch_lock(self.lineage) if self.shared is not None else self._switch_lock()

    @contextlib.contextmanager
    def cycle_lock(self, what: str, on_wait: Callable[[cycle_lock.Holder | None], None] | None = None
                   ) -> Iterator[bool]:
        """Hold this lineage's one-cycle lock (:mod:`backend.learning.cycle_lock`), on this host and,
        with a shared store, across hosts; re-entrant within a thread. Yields whether it waited."""
        inner = cycle_lock.held_here(self.home)
        with cycle_lock.hold(self.home, what, on_wait=on_wait) as waited:
            if self.shared is None or inner:
                yield waited
                return
            with self.shared.cycle_lock(self.lineage, what, on_wait) as waited_shared:
                yield waited or waited_shared

    @contextlib.contextmanager
    def _switch_lock(self) -> Iterator[None]:
        """One switch of this lineage at a time (a cycle promoting while someone runs ``isnet model use``)."""
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.home / LOCK_FILE, "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    def _exists(self, name: str) -> bool:
        try:
            self.get(name)
        except (KeyError, WeightsError, OSError):
            return False
        return True

    def lineages(self) -> list[str]:
        """The base and every lineage that has a directory of its own."""
        folder = self.root / LINEAGES_DIR
        found = {d.name for d in folder.iterdir() if d.is_dir()} if folder.is_dir() else set()
        if self.shared is not None:
            found.update(name for name in self.shared.lineages() if name != BASE)
        return [BASE, *sorted(found)]

    def catalogue(self, only_lineage: bool = False) -> list[VersionInfo]:
        """Versions: this lineage's current one first, the other retrained ones newest first, the
        pretrained weights last; ``only_lineage`` keeps this lineage's own versions (and the current
        one). Without usable pretrained weights they are left out rather than failing."""
        current = self.current_or_pretrained_name()
        infos = [self._info(v, current) for v in self.list_versions()]
        if only_lineage:
            infos = [i for i in infos if i.lineage == self.lineage or i.current]
        infos.sort(key=lambda i: (i.created or "", i.name), reverse=True)
        with contextlib.suppress(WeightsError, OSError, KeyError):
            infos.append(self._pretrained_info(self.pretrained(), current))
        return sorted(infos, key=lambda i: not i.current)  # stable: newest first after the current one

    def version_names(self) -> list[str]:
        """Every lineage's versions, newest first, the pretrained weights last: what Label Studio's
        version list shows (it asks without a project)."""
        infos = self.catalogue()
        trained = sorted((i for i in infos if not i.pretrained), key=lambda i: (i.created or "", i.name), reverse=True)
        return [i.name for i in trained] + [i.name for i in infos if i.pretrained]

    def info(self, name: str) -> VersionInfo:
        """One version's description; ``KeyError`` for an unknown name."""
        version = self.get(name)
        current = self.current_or_pretrained_name()
        if version.checkpoint != version.directory / CHECKPOINT_FILE:  # the pretrained weights live in the cache
            return self._pretrained_info(version, current)
        return self._info(version, current)

    @staticmethod
    def _pretrained_info(version: ModelVersion, current: str | None) -> VersionInfo:
        return VersionInfo(version.name, _utc_mtime(version.checkpoint), version.name == current, True)

    @staticmethod
    def _info(version: ModelVersion, current: str | None) -> VersionInfo:
        """A retrained version's description, from its cycle's record where there is one."""
        record = read_record(version.directory) or {}
        champion = record.get("champion") if isinstance(record.get("champion"), dict) else {}
        challenger = record.get("challenger") if isinstance(record.get("challenger"), dict) else {}
        decision = record.get("decision") if isinstance(record.get("decision"), dict) else {}
        metrics = challenger.get("metrics") if isinstance(challenger.get("metrics"), dict) else None
        return VersionInfo(
            name=version.name,
            created=record.get("created") or _utc_mtime(version.checkpoint),
            current=version.name == current,
            pretrained=False,
            parent=champion.get("name"),
            metrics=metrics,
            size=record.get("size"),
            promoted_by_cycle=decision.get("promote") if decision else None,
            lineage=str(record.get("lineage") or lineage_of(version.name)),
        )

    def new_version_name(self) -> str:
        """A fresh, sortable name in this lineage: ``isnet-[<lineage>-]ft-YYYYmmdd-HHMMSS-<6 hex>`` (UTC)."""
        return self.store.new_name(self.lineage)
