"""Writing a version so that it appears complete or not at all, and can be resumed.

A cycle works in a hidden sibling of its final directory, ``.staging-<name>``, guarded by an
exclusive ``flock`` on ``.staging-<name>.lock``. Only when every file is written is the
directory renamed to its final name (one atomic ``rename`` in the same parent), so readers
never see a partial version. If the worker dies (even by SIGKILL) the kernel drops its lock:
the next cycle finds the unlocked staging directory and either resumes from the training
state saved in it (same data and options: same fingerprint) or deletes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from backend.isnet.versions import lineage_of
from backend.isnet.weights import save_torch_atomic

PREFIX = ".staging-"
STATE_FILE = "state.pth"
FINGERPRINT_FILE = "fingerprint.json"


class StagingError(RuntimeError):
    pass


class StagingArea:
    """The hidden working directory of one version-to-be."""

    def __init__(self, final: Path) -> None:
        self.final = Path(final)
        self.path = self.final.parent / f"{PREFIX}{self.final.name}"
        self.lock_path = self.final.parent / f"{PREFIX}{self.final.name}.lock"
        self._lock_fd: int | None = None

    # -- locking -----------------------------------------------------------------------

    def try_lock(self) -> bool:
        """Take the exclusive lock without waiting; False when another live process holds it."""
        self.final.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def release(self, remove_lock_file: bool = False) -> None:
        if self._lock_fd is None:
            return
        if remove_lock_file:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.lock_path)
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)
        self._lock_fd = None

    # -- life cycle ----------------------------------------------------------------------

    def create(self, fingerprint: str, meta: dict[str, Any]) -> None:
        """Start afresh (the caller holds the lock); any leftover of the same name is removed."""
        if self.final.exists():
            raise StagingError(f"{self.final} already exists; versions are never overwritten")
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir(parents=True)
        (self.path / FINGERPRINT_FILE).write_text(json.dumps({"fingerprint": fingerprint, **meta}, indent=2))

    def fingerprint(self) -> str | None:
        try:
            return json.loads((self.path / FINGERPRINT_FILE).read_text()).get("fingerprint")
        except (OSError, json.JSONDecodeError, AttributeError):
            return None

    @property
    def state_path(self) -> Path:
        return self.path / STATE_FILE

    def save_state(self, state: dict[str, Any]) -> None:
        save_torch_atomic(state, self.state_path)

    def load_state(self) -> dict[str, Any] | None:
        try:
            return torch.load(self.state_path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            return None
        except Exception:  # a state from another torch version, a disk error: start over
            return None

    def commit(self) -> Path:
        """Drop the training state and rename the directory to its final name (atomic)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.state_path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path / FINGERPRINT_FILE)
        if self.final.exists():
            raise StagingError(f"{self.final} already exists; versions are never overwritten")
        os.rename(self.path, self.final)
        _fsync_dir(self.final.parent)
        self.release(remove_lock_file=True)
        return self.final

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self.release(remove_lock_file=True)

    # -- finding leftovers -----------------------------------------------------------------

    @classmethod
    def adopt(cls, parent: Path, fingerprint: str, only: str | None = None, clean: bool = True,
              lineage: str | None = None) -> StagingArea | None:
        """An abandoned staging directory under ``parent`` with this fingerprint and a saved
        state, now locked by the caller; abandoned ones that do not match are deleted when
        ``clean``. ``only`` restricts the search to one final name, ``lineage`` to the versions
        that lineage names (another lineage's interrupted cycle is left for it to resume)."""
        if not parent.is_dir():
            return None
        found: StagingArea | None = None
        names = [f"{PREFIX}{only}"] if only else sorted(p.name for p in parent.iterdir() if p.name.startswith(PREFIX))
        if lineage is not None and not only:
            names = [n for n in names if lineage_of(n[len(PREFIX):].removesuffix(".lock")) == lineage]
        for name in names:
            if name.endswith(".lock") or not (parent / name).is_dir():
                continue
            area = cls(parent / name[len(PREFIX):])
            if not area.try_lock():
                continue  # a live cycle is working there
            if found is None and area.fingerprint() == fingerprint and area.state_path.is_file():
                found = area
                continue
            if clean:
                area.discard()
            else:
                area.release()
        if clean and not only:
            for lock in parent.glob(f"{PREFIX}*.lock"):
                area = cls(parent / lock.name[len(PREFIX):-len(".lock")])
                if lineage is not None and lineage_of(area.final.name) != lineage:
                    continue
                if not area.path.exists() and area.try_lock():
                    area.release(remove_lock_file=True)
        return found


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
