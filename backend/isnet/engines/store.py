"""Built engine files, cached per model version, and the only door to them.

Layout under the model version's directory::

    engines/<dtype>-<config hash>.onnx    the engine
    engines/<same name>.json              its sidecar, written last

The sidecar records the sha256 of the file, the model version and the full build config. A
file is served only when all of them match (the file's bytes, this version, the hash in its
name and the hash of the recorded config); anything else is a crash, a truncated copy, a file
from another version or a hand edit, and it is deleted and rebuilt, never served.

Why the hash: a different recipe (calibration mode, size or images for int8) is a different
file, and building the same recipe again finds the cached one. Every graph has dynamic batch,
height and width, so one file serves 320 and 1024; an int8 file is calibrated at one size
(320 by default, see :data:`~backend.isnet.engines.config.CALIBRATION_SIZE`). When several files
of one precision verify, the newest is served.
"""

from __future__ import annotations

import fcntl
import json
import logging
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from backend import atomic
from backend.isnet.engines.base import EngineError
from backend.isnet.engines.config import FORMAT, EngineConfig, default_config
from backend.isnet.versions import ModelVersion
from backend.isnet.weights import sha256_file
from backend.settings import Settings

log = logging.getLogger(__name__)

ENGINES_DIR = "engines"
_ENGINE_FILE = re.compile(r"(fp32|fp16|int8)-[0-9a-f]{16}\.(onnx|json)")
"""Engine files and sidecars; anything else in the folder (locks, temporary files) is not ours to judge."""
# sha256 of engine files already checked in this process, keyed by (path, mtime, size, digest):
# a server loads its engine at start and again on every model switch.
_VERIFIED: dict[tuple[str, int, int, str], bool] = {}


@dataclass(frozen=True)
class Artefact:
    """A verified engine file and its sidecar record."""

    path: Path
    record: dict[str, Any]

    @property
    def config(self) -> EngineConfig:
        return EngineConfig.from_json(self.record["config"])

    def serves(self, dtype: str) -> bool:
        return self.config.dtype == dtype


def sidecar_of(path: Path) -> Path:
    return path.with_suffix(".json")


def _sha256_memo(path: Path, expected: str) -> bool:
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size, expected)
    if key not in _VERIFIED:
        _VERIFIED[key] = sha256_file(path) == expected
    return _VERIFIED[key]


def smoke_test(path: Path, size: int) -> None:
    """Load the file and run one image: a build that cannot serve is never recorded."""
    from backend.isnet.engines.onnx_engine import OnnxEngine

    out = OnnxEngine(path, "build-check", "?").predict(np.zeros((1, 3, size, size), np.float32))
    if out.shape != (1, 1, size, size) or not np.isfinite(out).all() or out.min() < 0 or out.max() > 1:
        raise EngineError(f"built engine {path.name} gives {out.shape} outputs outside [0, 1]")


class EngineStore:
    """The engines of one model version: find a verified file, or build it."""

    def __init__(self, version: ModelVersion, settings: Settings) -> None:
        self.version = version
        self.settings = settings
        self.dir = version.directory / ENGINES_DIR

    # -- what is there ----------------------------------------------------------------------

    def path_for(self, config: EngineConfig, calibration: str = "") -> Path:
        return self.dir / f"{config.dtype}-{config.digest(calibration)}.onnx"

    def problem(self, path: Path) -> str | None:
        """Why ``path`` must not be served, or None when it verifies."""
        try:
            record = json.loads(sidecar_of(path).read_text())
            config = EngineConfig.from_json(record["config"])
            expected = config.digest(record["calibration"]["fingerprint"])
            recorded = (record["format"], record["model_version"], record["config_hash"], record["sha256"])
        except FileNotFoundError:
            return "no sidecar (interrupted build or copied file)"
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, EngineError) as exc:
            return f"unreadable sidecar ({exc.__class__.__name__}: {exc})"
        fmt, version, config_hash, digest = recorded
        if fmt != FORMAT:
            return f"built by engine format {fmt}, this code builds format {FORMAT}"
        if version != self.version.name:
            return f"built for model version {version!r}, not {self.version.name!r}"
        if config_hash != expected or path.name != self.path_for(config, record["calibration"]["fingerprint"]).name:
            return "sidecar config does not match the file name's hash"
        if not path.is_file():
            return "file missing"
        if not _sha256_memo(path, digest):
            return "sha256 differs from the one recorded at build time (corrupt or replaced)"
        return None

    def scan(self) -> tuple[list[Artefact], dict[Path, str]]:
        """Verified artefacts (newest first) and, for every other engine file, what is wrong."""
        good: list[Artefact] = []
        bad: dict[Path, str] = {}
        paths = {p.with_suffix(".onnx") for p in self.dir.glob("*") if _ENGINE_FILE.fullmatch(p.name)}
        for path in sorted(paths):
            reason = self.problem(path)
            if reason is None:
                good.append(Artefact(path, json.loads(sidecar_of(path).read_text())))
            else:
                bad[path] = reason
        good.sort(key=lambda a: a.record.get("built_at", ""), reverse=True)
        return good, bad

    def discard(self, path: Path, reason: str) -> EngineConfig | None:
        """Delete a file that failed verification; return its recorded config to rebuild it."""
        log.warning("engine %s is not served (%s): deleting it and rebuilding", path.name, reason)
        config = None
        with suppress(OSError, json.JSONDecodeError, KeyError, TypeError, ValueError, EngineError):
            config = EngineConfig.from_json(json.loads(sidecar_of(path).read_text())["config"])
        for stale in (path, sidecar_of(path)):
            stale.unlink(missing_ok=True)
        return config

    # -- serving ----------------------------------------------------------------------------

    def engine_file(self, dtype: str) -> Path:
        """A verified file for ``dtype``, the newest one built; built when there is none.

        Broken files are deleted; one whose recorded config could still be read is rebuilt with
        that config (so a custom build comes back as it was), otherwise the default recipe is
        built, int8 calibrated as :func:`~backend.isnet.engines.calibration.calibration_folder` says.
        """
        for artefact in self.scan()[0]:
            if artefact.serves(dtype):
                return artefact.path
        rebuild = None
        with self._lock():  # a file another process is just finishing has no sidecar yet
            for path, reason in self.scan()[1].items():
                config = self.discard(path, reason)
                if config is not None and config.dtype == dtype:
                    rebuild = config
        calib = Path(self.settings.calib_dir).expanduser() if self.settings.calib_dir else None
        return self.build(rebuild or default_config(dtype, calib))

    # -- building ---------------------------------------------------------------------------

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """One build at a time per version, across processes (several server workers start together)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".build.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def build(self, config: EngineConfig, force: bool = False) -> Path:
        """Build ``config`` for this version unless a verified identical file exists; return its path."""
        from backend.isnet.engines import calibration

        int8 = config.dtype == "int8"
        images = calibration.select_images(config, self.settings, self.version.lineage) if int8 else []
        fingerprint = calibration.fingerprint(images) if images else ""
        dst = self.path_for(config, fingerprint)
        # fp16 and int8 are made from the fp32 export; get it before taking the lock.
        source = None if config.dtype == "fp32" else self.build(default_config("fp32"))
        with self._lock():
            if not force and self.problem(dst) is None:
                return dst
            self._remove_leftovers()
            start = time.perf_counter()
            with atomic.replacing(dst, suffix=".tmp") as tmp:
                self._make(config, source, tmp, images)
                smoke_test(tmp, config.size)
            self._record(dst, config, images, fingerprint, time.perf_counter() - start)
        log.info("built %s for %s in %.0f s", dst.name, self.version.name, time.perf_counter() - start)
        return dst

    def _remove_leftovers(self) -> None:
        """Temporary files of builds that were killed (only ever called under the build lock)."""
        for stale in self.dir.glob(".*"):
            if stale.name != ".build.lock":
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink(missing_ok=True)

    def _make(self, config: EngineConfig, source: Path | None, tmp: Path, images: list[Path]) -> None:
        from backend.isnet.engines import export

        if config.dtype == "fp32":
            from backend.isnet.weights import load_model

            export.export_fp32(load_model(self.version.checkpoint), tmp)
        elif config.dtype == "fp16":
            export.convert_fp16(source, tmp)
        else:
            from backend.isnet.engines.calibration import batches
            from backend.isnet.engines.quantize import quantize_int8

            data = batches(images, config.size, config.batch, self.settings.max_pixels)
            quantize_int8(source, tmp, config, data, total=len(images))

    def _record(self, path: Path, config: EngineConfig, images: list[Path], fingerprint: str, seconds: float) -> None:
        import onnxruntime
        import torch

        record = {
            "format": FORMAT,
            "file": path.name,
            "engine": config.engine_name,
            "model_version": self.version.name,
            "sha256": sha256_file(path),
            "bytes": path.stat().st_size,
            "config_hash": config.digest(fingerprint),
            "config": config.to_json(),
            "calibration": {"fingerprint": fingerprint, "images": [p.name for p in images]},
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "build_seconds": round(seconds, 1),
            "libraries": {"onnxruntime": onnxruntime.__version__, "torch": torch.__version__},
        }
        atomic.write_json(sidecar_of(path), record)

    def rebuild_from(self, previous: EngineStore, calib_dir: Path | None) -> list[Path]:
        """Build for this version every engine ``previous`` had, int8 calibrated on ``calib_dir``.

        Called when retraining promotes a new version: its engines are the old version's
        recipes, calibrated on that cycle's training images.
        """
        built = []
        for artefact in previous.scan()[0]:
            config = artefact.config
            if config.dtype == "int8" and calib_dir is not None:
                config = config.override(calib_dir=calib_dir)
            built.append(self.build(config))
        return built
