"""Model versions: which weights are served, under which name.

Why a registry: Label Studio decides whether a task needs predicting again by comparing
``model_version`` strings, engines are cached per version, and retraining promotes new
versions. Everything that needs "the current model" asks here.

Layout under ``MODEL_DIR``::

    versions/<name>/checkpoint.pth   immutable once written (plus metrics, engines, ...)
    CURRENT                          the promoted version's name (replaced atomically)

With no promoted version, the pretrained weights from the cache are served as
``isnet-pretrained-<first 12 hex of their sha256>``.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from backend.isnet.weights import WeightCache, sha256_file
from backend.settings import Settings

PRETRAINED_PREFIX = "isnet-pretrained-"
CHECKPOINT_FILE = "checkpoint.pth"
CURRENT_FILE = "CURRENT"
TRAINED_PREFIX = "isnet-ft-"


@dataclass(frozen=True)
class ModelVersion:
    name: str
    checkpoint: Path
    directory: Path
    """Where artefacts for this version (engines, reports) are written."""


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

    def pretrained(self) -> ModelVersion:
        cache = WeightCache(self.settings)
        checkpoint = cache.path()
        digest = sha256_file(checkpoint) if self.settings.weights else cache.manifest()["checkpoint_sha256"]
        name = PRETRAINED_PREFIX + digest[:12]
        return ModelVersion(name, checkpoint, self.versions_dir / name)

    def get(self, name: str) -> ModelVersion:
        pre = self.pretrained()
        if name == pre.name:
            return pre
        directory = self.versions_dir / name
        checkpoint = directory / CHECKPOINT_FILE
        if not checkpoint.is_file():
            raise KeyError(f"no model version {name!r} in {self.versions_dir}")
        return ModelVersion(name, checkpoint, directory)

    def current_name(self) -> str | None:
        try:
            return self.current_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    def current(self) -> ModelVersion:
        """The promoted version, or the pretrained weights when nothing was promoted."""
        name = self.current_name()
        return self.get(name) if name else self.pretrained()

    def promote(self, name: str) -> ModelVersion:
        """Make ``name`` current with one atomic rename; servers notice on their next request."""
        version = self.get(name)
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".CURRENT.")
        with os.fdopen(fd, "w") as fh:
            fh.write(name + "\n")
        os.replace(tmp, self.current_file)
        return version

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

    def new_version_name(self, prefix: str = TRAINED_PREFIX) -> str:
        """A fresh, sortable name: ``isnet-ft-YYYYmmdd-HHMMSS-<6 hex>`` (UTC), unused so far."""
        while True:
            name = f"{prefix}{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"
            if not (self.versions_dir / name).exists():
                return name
