"""Model versions kept in a shared object store (``ISNET_MODEL_STORE``), ``MODEL_DIR`` their cache.

Why an interface here and the client elsewhere: ISNet must find a version's files (to load it,
to build its engines), so :class:`backend.isnet.versions.VersionStore` fills ``MODEL_DIR`` from
the store on first use; but ISNet knows no network client. The S3 client lives in
:mod:`backend.store`, which each program's entry point connects (:func:`install`). Without
``ISNET_MODEL_STORE`` nothing here is used and ``MODEL_DIR`` is the only copy, as before.

A version in the store is immutable files under ``versions/<name>/`` plus a manifest naming each
file's sha256 and size, written after them: a version exists in the store once its manifest
does, and every download is checked against it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

from backend.settings import Settings

log = logging.getLogger(__name__)


class StoreUnavailable(OSError):
    """The object store cannot be reached (or refused us); the message says which and why."""


class VersionObjects(Protocol):
    """What ISNet and the retraining application need of the shared store of versions."""

    url: str

    def names(self) -> list[str]:
        """Versions whose manifest is in the store."""

    def upload(self, name: str, directory: Path) -> int:
        """Put ``directory``'s files that the store lacks, then the manifest; the files uploaded."""

    def download(self, name: str, directory: Path, light: bool = False) -> None:
        """Fetch the version's files into ``directory`` (new or partly filled), each checked by
        sha256; ``light``: its records only (no weights, no engines). ``KeyError`` when unknown."""

    def files(self, name: str) -> dict[str, dict[str, object]] | None:
        """The version's manifest (path -> ``{"sha256", "size"}``), or None when the store lacks it."""

    def delete(self, name: str, files: list[str] | None = None) -> None:
        """Remove the version (``files``: only these files or folders of it, the manifest rewritten)."""

    def check(self) -> None:
        """Raise :class:`StoreUnavailable` when the store cannot be reached."""

    def pull(self, folder: str, local: Path) -> int:
        """Download the files of the shared ``folder`` (a cache: immutable files named by content)
        that ``local`` lacks; how many."""

    def push(self, folder: str, local: Path) -> int:
        """Upload the files of ``local`` that the shared ``folder`` lacks; how many."""

    def remove(self, folder: str, names: list[str]) -> None:
        """Remove these files (or folders, with all they hold) of the shared ``folder``."""

    def put_file(self, rel: str, path: Path) -> bool:
        """Upload one file of ``MODEL_DIR`` under its relative path ``rel`` unless the store has it."""

    def get_file(self, rel: str, path: Path) -> bool:
        """Download the file stored as ``rel`` to ``path``; False when the store lacks it."""


_connect: Callable[[Settings], VersionObjects] | None = None
_connected: dict[str, VersionObjects] = {}


def install(connect: Callable[[Settings], VersionObjects]) -> None:
    """Tell ISNet how to reach ``ISNET_MODEL_STORE`` (:func:`backend.store.connect` does)."""
    global _connect
    _connect = connect
    _connected.clear()


def share_folder(settings: Settings, folder: str, local: Path, direction: str) -> int:
    """With a store: ``pull`` the shared ``folder`` into ``local`` or ``push`` ``local`` to it (the GT
    encoder cache, so any worker reuses what another trained). A cache: an unreachable store is
    logged and skipped, never an error. 0 without a store."""
    found = objects(settings)
    if found is None:
        return 0
    try:
        return found.pull(folder, local) if direction == "pull" else found.push(folder, local)
    except StoreUnavailable as exc:
        log.warning("the shared %s are not synchronised: %s", folder, exc)
        return 0


def share_files(settings: Settings, paths: Iterable[Path], direction: str) -> int:
    """With a store: ``push`` these files of ``MODEL_DIR`` to it, or ``pull`` those missing here, by
    their path relative to ``MODEL_DIR`` (the held-out images of label snapshots that the forgetting
    guard of a later cycle, on any worker, reads). Files outside ``MODEL_DIR`` stay this host's. A
    cache: an unreachable store is logged and skipped. How many moved; 0 without a store."""
    found = objects(settings)
    if found is None:
        return 0
    root = settings.model_dir.resolve()
    moved = 0
    try:
        for path in dict.fromkeys(Path(p) for p in paths):
            try:
                rel = path.resolve().relative_to(root).as_posix()
            except ValueError:
                continue
            if direction == "push" and path.is_file():
                moved += found.put_file(rel, path)
            elif direction == "pull" and not path.exists():
                moved += found.get_file(rel, path)
    except StoreUnavailable as exc:
        log.warning("snapshot files are not synchronised with the store: %s", exc)
    return moved


def objects(settings: Settings) -> VersionObjects | None:
    """The shared store of versions, or None without ``ISNET_MODEL_STORE`` (``MODEL_DIR`` only)."""
    if not settings.model_store:
        return None
    found = _connected.get(settings.model_store)
    if found is None:
        if _connect is None:
            raise RuntimeError("ISNET_MODEL_STORE is set but this program did not connect to it "
                               "(backend.store.connect(settings) at its start)")
        found = _connected.setdefault(settings.model_store, _connect(settings))
    return found
