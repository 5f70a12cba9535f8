"""What a model version is on disk: a checkpoint in a directory of its own, named by its lineage.

Why here and not with the registry: engines are built and cached per version, and the served
calibration sample is kept per lineage, so ISNet itself must know where a version's files and a
lineage's files live. Which version a lineage serves (its ``CURRENT`` pointer, switches,
promotion) is the retraining application's business: :mod:`backend.learning.registry`.

Layout under ``MODEL_DIR``::

    versions/<name>/checkpoint.pth   every lineage's versions, immutable once written
    lineages/<lineage>/              a project lineage's pointer, switches, status, history, sample
    CURRENT, switches.json, ...      the base lineage's (where a single-model MODEL_DIR kept them)

With ``ISNET_MODEL_STORE`` the versions live in the object store (:mod:`backend.isnet.remote`) and
``versions/`` is their cache on this host: a version is downloaded (checked by sha256) when first
asked for, and a version written here is published with :meth:`VersionStore.publish`.

Names: ``isnet-pretrained-<12 hex of the sha256>`` for the pretrained weights,
``isnet-ft-<UTC time>-<6 hex>`` for the base lineage's retrained versions and
``isnet-<lineage>-ft-<UTC time>-<6 hex>`` for another lineage's (``isnet-p7-ft-...`` for project 7).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from backend.isnet import remote
from backend.isnet.weights import WeightCache, WeightsError, sha256_file
from backend.settings import Settings

log = logging.getLogger(__name__)

PRETRAINED_PREFIX = "isnet-pretrained-"
TRAINED_PREFIX = "isnet-ft-"
CHECKPOINT_FILE = "checkpoint.pth"
BASE = "base"
"""The lineage every project without one of its own follows (and requests without a project)."""
LINEAGES_DIR = "lineages"
FETCHED_MARK = ".from-store"
"""In a cached version's directory: it was fetched from ``ISNET_MODEL_STORE`` (not written here)."""
_LINEAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9_]{0,39}$")
_TRAINED_NAME = re.compile(r"^isnet-([a-z0-9][a-z0-9_]{0,39})-ft-\d{8}-\d{6}-[0-9a-f]+$")


@dataclass(frozen=True)
class ModelVersion:
    name: str
    checkpoint: Path
    directory: Path
    """Where artefacts for this version (engines, reports) are written."""

    @property
    def lineage(self) -> str:
        return lineage_of(self.name)


def check_lineage(name: str) -> str:
    """A lineage name: lower-case letters, digits and ``_``, at most 40 (it goes into version names)."""
    if not _LINEAGE_NAME.match(name) or name in ("ft", "pretrained"):
        raise ValueError(f"{name!r} is not a lineage name: use lower-case letters, digits and _ (at most 40)")
    return name


def lineage_of(version_name: str) -> str:
    """The lineage a version's name says it was trained in (the pretrained weights are the base's)."""
    match = _TRAINED_NAME.match(version_name)
    return match.group(1) if match else BASE


def lineage_dir(settings: Settings, lineage: str) -> Path:
    """Where a lineage keeps its files: ``MODEL_DIR`` itself for the base (a single-model MODEL_DIR
    written before lineages existed is the base lineage unchanged), else ``MODEL_DIR/lineages/<name>``."""
    return settings.model_dir if lineage == BASE else settings.model_dir / LINEAGES_DIR / check_lineage(lineage)


_DIGESTS: dict[tuple[str, int, int], str] = {}


def _digest(path: Path) -> str:
    """sha256 of a checkpoint, memoised on (path, mtime, size): ``/versions`` asks often."""
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_file(path)
    return _DIGESTS[key]


class VersionStore:
    """Every version under ``MODEL_DIR/versions``, and the pretrained weights as a version."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.versions_dir = settings.model_dir / "versions"
        self.objects = remote.objects(settings)

    def pretrained(self) -> ModelVersion:
        """The pretrained weights as a version; :class:`WeightsError` when they are not there."""
        cache = WeightCache(self.settings)
        checkpoint = cache.path()
        if not checkpoint.is_file():
            raise WeightsError(f"no checkpoint at {checkpoint}; run `isnet weights fetch`")
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
        if self.objects is not None and not name.startswith(PRETRAINED_PREFIX) and self._fetch(name) \
                and checkpoint.is_file():  # retention may have removed its weights from the store
            return ModelVersion(name, checkpoint, directory)
        if name.startswith(PRETRAINED_PREFIX):
            pre = self.pretrained()
            if name == pre.name:
                return pre
        raise KeyError(f"no model version {name!r} in {self.versions_dir}")

    def list_versions(self) -> list[ModelVersion]:
        """Complete versions under ``versions/``, oldest name first (trained names sort by time).

        Hidden directories (a cycle's ``.staging-*`` work in progress) are never versions.
        """
        shared = self._sync_records()
        if not self.versions_dir.is_dir():
            return []
        found = []
        for directory in sorted(self.versions_dir.iterdir()):
            if directory.name.startswith(".") or not ((directory / CHECKPOINT_FILE).is_file()
                                                      or directory.name in shared):
                continue
            found.append(ModelVersion(directory.name, directory / CHECKPOINT_FILE, directory))
        return found

    def directories(self) -> list[Path]:
        """Every version directory, oldest name first, with or without its checkpoint: retention
        (:mod:`backend.learning.retention`) removes old versions' weights and keeps their reports."""
        self._sync_records()
        if not self.versions_dir.is_dir():
            return []
        return [d for d in sorted(self.versions_dir.iterdir()) if d.is_dir() and not d.name.startswith(".")]

    def new_name(self, lineage: str = BASE) -> str:
        """A fresh, sortable name in ``lineage`` (UTC time and 6 random hex digits), unused so far."""
        prefix = TRAINED_PREFIX if lineage == BASE else f"isnet-{check_lineage(lineage)}-ft-"
        while True:
            name = f"{prefix}{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"
            if not (self.versions_dir / name).exists():
                return name

    # -- the shared store (ISNET_MODEL_STORE) -----------------------------------------------

    def publish(self, name: str, wait: float = 0.0) -> int:
        """Upload version ``name`` from this host's cache to the store (the files it lacks); the
        number of files uploaded, 0 without a store. A version is published before any lineage
        may serve it, so every host can fetch what a pointer names. ``wait``: seconds to keep trying
        while the store is unreachable (backing off up to 30 s), then :class:`remote.StoreUnavailable`."""
        if self.objects is None or name.startswith(PRETRAINED_PREFIX):
            return 0
        directory = self.versions_dir / name
        if not (directory / CHECKPOINT_FILE).is_file():
            raise KeyError(f"no model version {name!r} in {self.versions_dir} to publish")
        deadline, pause = time.monotonic() + wait, 1.0
        while True:
            try:
                return self.objects.upload(name, directory)
            except remote.StoreUnavailable as exc:
                if time.monotonic() + pause > deadline:
                    raise
                log.warning("%s; waiting %.0f s to publish %s", exc, pause, name)
                time.sleep(pause)
                pause = min(30.0, pause * 2)

    def stored(self, name: str) -> dict[str, dict[str, object]]:
        """The files the store holds of version ``name`` (path -> sha256, size); empty without a store."""
        if self.objects is None:
            return {}
        return self.objects.files(name) or {}

    def unpublish(self, name: str, path: str | None = None) -> None:
        """Remove version ``name`` from the store (``path``: only that file or folder of it); retention's
        removals reach every host this way, whose caches then no longer find those weights."""
        if self.objects is not None:
            self.objects.delete(name, None if path is None else [path])

    def _fetch(self, name: str, light: bool = False) -> bool:
        """Download ``name`` from the store into the cache; False when the store has no such version.

        Files land in a hidden directory first and are moved into ``versions/<name>`` one by one, the
        checkpoint last, so a version is complete in the cache once its checkpoint is there."""
        assert self.objects is not None
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        work = self.versions_dir / f".fetch-{name}-{secrets.token_hex(4)}"
        try:
            try:
                self.objects.download(name, work, light=light)
            except KeyError:
                return False
            final = self.versions_dir / name
            (work / FETCHED_MARK).touch()  # a copy of the store's: evict_unshared may drop it
            files = sorted((p for p in work.rglob("*") if p.is_file()), key=lambda p: p.name == CHECKPOINT_FILE)
            for path in files:
                target = final / path.relative_to(work)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
            return True
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def evict_unshared(self) -> list[str]:
        """With a store: drop from this host's cache what retention removed from the store (a version
        whole, or its weights and engines), so every host's cache stays as bounded as the store. Only
        copies fetched from the store are touched, never a version written here and not yet published.
        What was removed; an unreachable store removes nothing."""
        if self.objects is None or not self.versions_dir.is_dir():
            return []
        removed = []
        for directory in sorted(self.versions_dir.iterdir()):
            if directory.name.startswith(".") or not (directory / FETCHED_MARK).is_file():
                continue
            try:
                stored = self.objects.files(directory.name)
            except remote.StoreUnavailable:
                return removed
            if stored is None:
                shutil.rmtree(directory, ignore_errors=True)
                removed.append(str(directory))
            elif CHECKPOINT_FILE not in stored and (directory / CHECKPOINT_FILE).exists():
                (directory / CHECKPOINT_FILE).unlink(missing_ok=True)
                shutil.rmtree(directory / "engines", ignore_errors=True)
                removed.append(str(directory / CHECKPOINT_FILE))
        if removed:
            log.info("model cache: removed %d item(s) the store no longer holds: %s", len(removed), ", ".join(removed))
        return removed

    def _sync_records(self) -> set[str]:
        """With a store: every version it holds has at least its records here (its weights come
        with :meth:`get`), so listings and histories see what other hosts trained; the store's
        version names. Without a store, or while it is unreachable: nothing (the cache only)."""
        if self.objects is None:
            return set()
        try:
            names = self.objects.names()
        except remote.StoreUnavailable:
            return set()
        for name in names:
            if not (self.versions_dir / name).is_dir():
                self._fetch(name, light=True)
        return set(names)
