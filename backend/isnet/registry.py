"""Model versions: which weights are served, under which name.

Why a registry: Label Studio decides whether a task needs predicting again by comparing
``model_version`` strings, engines are cached per version, and retraining promotes new
versions. Everything that needs "the current model" asks here.

Layout under ``MODEL_DIR``::

    versions/<name>/checkpoint.pth   immutable once written (plus metrics, engines, ...)
    CURRENT                          the promoted version's name (replaced atomically)
    switches.json                    every switch of CURRENT, and the stack ``rollback`` pops

With no promoted version, the pretrained weights from the cache are served as
``isnet-pretrained-<first 12 hex of their sha256>``.

"Previous" for :meth:`ModelRegistry.rollback`: every switch (a cycle's promotion or
``isnet model use``) pushes the version it replaces; a rollback pops the most recent one that
still exists, so repeated rollbacks walk back through the versions served before, and
``use`` goes forward again. A ``MODEL_DIR`` without that record (one written before it
existed, or a hand-edited ``CURRENT``) rolls back to the version the current one was trained
from (its cycle's champion).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from backend import atomic
from backend.isnet.weights import WeightCache, WeightsError, sha256_file
from backend.settings import Settings

PRETRAINED_PREFIX = "isnet-pretrained-"
CHECKPOINT_FILE = "checkpoint.pth"
CURRENT_FILE = "CURRENT"
TRAINED_PREFIX = "isnet-ft-"
SWITCHES_FILE = "switches.json"
LOCK_FILE = ".switch.lock"
METRICS_FILE = "metrics.json"
"""Each retraining cycle's record in its version directory (see ``backend.isnet.training.history``)."""
MAX_SWITCHES = 200
"""Switches kept in ``switches.json`` (and depth of the rollback stack): enough for any audit."""


@dataclass(frozen=True)
class ModelVersion:
    name: str
    checkpoint: Path
    directory: Path
    """Where artefacts for this version (engines, reports) are written."""


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class NoPreviousVersion(LookupError):
    """``rollback`` found no earlier version to go back to; the message says why."""


_DIGESTS: dict[tuple[str, int, int], str] = {}


def _digest(path: Path) -> str:
    """sha256 of a checkpoint, memoised on (path, mtime, size): ``/versions`` asks often."""
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_file(path)
    return _DIGESTS[key]


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
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.model_dir

    @property
    def versions_dir(self) -> Path:
        return self.root / "versions"

    @property
    def current_file(self) -> Path:
        return self.root / CURRENT_FILE

    @property
    def switches_file(self) -> Path:
        return self.root / SWITCHES_FILE

    def pretrained(self) -> ModelVersion:
        cache = WeightCache(self.settings)
        checkpoint = cache.path()
        digest = _digest(checkpoint) if self.settings.weights else cache.manifest()["checkpoint_sha256"]
        name = PRETRAINED_PREFIX + digest[:12]
        return ModelVersion(name, checkpoint, self.versions_dir / name)

    def get(self, name: str) -> ModelVersion:
        """The version called ``name``; ``KeyError`` saying where it was looked for if there is none.

        Retrained versions are looked up first, so they resolve even without pretrained weights.
        A name is one plain directory name: hidden ones (a cycle's staging area) and paths are refused.
        """
        if not name or name.startswith(".") or "/" in name or os.sep in name:
            raise KeyError(f"{name!r} is not a model version name")
        directory = self.versions_dir / name
        checkpoint = directory / CHECKPOINT_FILE
        if checkpoint.is_file():
            return ModelVersion(name, checkpoint, directory)
        if name.startswith(PRETRAINED_PREFIX):
            pre = self.pretrained()
            if name == pre.name:
                return pre
        raise KeyError(f"no model version {name!r} in {self.versions_dir}")

    def current_name(self) -> str | None:
        try:
            return self.current_file.read_text().strip() or None
        except FileNotFoundError:
            return None

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

    def promote(self, name: str, how: str = "promote") -> ModelVersion:
        """Make ``name`` current with one atomic rename; servers notice on their next request.

        The version it replaces is pushed onto the rollback stack (``how`` names the switch in
        ``switches.json``: ``promote`` for a cycle, ``use`` for ``isnet model use``).
        """
        version = self.get(name)
        with self._switch_lock():
            before = self.current_or_pretrained_name()
            if before == name:
                return version
            atomic.write_text(self.current_file, name + "\n")
            record = self.switches()
            if before:
                record["previous"] = [*record["previous"], before][-MAX_SWITCHES:]
            self._log_switch(record, before, name, how)
        return version

    def rollback(self) -> tuple[ModelVersion, str | None]:
        """Go back to the previously current version (see the module docstring for "previous").

        Returns the version now current and the one it replaced; :class:`NoPreviousVersion`
        when there is nothing to go back to. Versions deleted since are skipped.
        """
        with self._switch_lock():
            before = self.current_or_pretrained_name()
            record = self.switches()
            stack = record["previous"]
            while stack:
                name = stack.pop()
                if name != before and self._exists(name):
                    return self._switch_back(record, before, name), before
            parent = self.info(before).parent if before and self._exists(before) else None
            if parent and parent != before and self._exists(parent):
                return self._switch_back(record, before, parent), before
        raise NoPreviousVersion(
            f"nothing to roll back to: no earlier current version is recorded in {self.switches_file} "
            f"and {before or 'the current version'} was not trained from another version"
        )

    def switches(self) -> dict[str, Any]:
        """``{"previous": [names, oldest first], "switches": [{"at", "from", "to", "how"}, ...]}``."""
        data = _read_json(self.switches_file)
        previous = [p for p in data.get("previous", []) if isinstance(p, str)]
        log = [s for s in data.get("switches", []) if isinstance(s, dict)]
        return {"previous": previous, "switches": log}

    def _switch_back(self, record: dict[str, Any], before: str | None, name: str) -> ModelVersion:
        atomic.write_text(self.current_file, name + "\n")
        self._log_switch(record, before, name, "rollback")
        return self.get(name)

    def _log_switch(self, record: dict[str, Any], before: str | None, after: str, how: str) -> None:
        entry = {"at": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
                 "from": before, "to": after, "how": how}
        record["switches"] = [*record["switches"], entry][-MAX_SWITCHES:]
        atomic.write_text(self.switches_file, json.dumps(record, indent=2) + "\n")

    @contextlib.contextmanager
    def _switch_lock(self) -> Iterator[None]:
        """One switch at a time (a cycle promoting while someone runs ``isnet model use``)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK_FILE, "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    def _exists(self, name: str) -> bool:
        try:
            self.get(name)
        except (KeyError, WeightsError, OSError):
            return False
        return True

    def list_versions(self) -> list[ModelVersion]:
        """Complete versions under ``versions/``, oldest name first (trained names sort by time).

        Hidden directories (a cycle's ``.staging-*`` work in progress) are never versions.
        """
        if not self.versions_dir.is_dir():
            return []
        found = []
        for directory in sorted(self.versions_dir.iterdir()):
            if directory.name.startswith(".") or not (directory / CHECKPOINT_FILE).is_file():
                continue
            found.append(ModelVersion(directory.name, directory / CHECKPOINT_FILE, directory))
        return found

    def catalogue(self, current: str | None = None) -> list[VersionInfo]:
        """Every version: ``current`` first (default: the registry's), the other retrained ones
        newest first, the pretrained weights last. Without usable pretrained weights they are
        left out rather than failing the list."""
        current = current or self.current_or_pretrained_name()
        infos = [self._info(v, current) for v in self.list_versions()]
        infos.sort(key=lambda i: (i.created or "", i.name), reverse=True)
        with contextlib.suppress(WeightsError, OSError, KeyError):
            infos.append(self._pretrained_info(self.pretrained(), current))
        return sorted(infos, key=lambda i: not i.current)

    def version_names(self, current: str | None = None) -> list[str]:
        """The names of :meth:`catalogue`, in its order: what Label Studio's version list shows."""
        return [info.name for info in self.catalogue(current)]

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
        """A retrained version's description, from its cycle's ``metrics.json`` where there is one."""
        record = _read_json(version.directory / METRICS_FILE)
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
        )

    def new_version_name(self, prefix: str = TRAINED_PREFIX) -> str:
        """A fresh, sortable name: ``isnet-ft-YYYYmmdd-HHMMSS-<6 hex>`` (UTC), unused so far."""
        while True:
            name = f"{prefix}{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"
            if not (self.versions_dir / name).exists():
                return name
