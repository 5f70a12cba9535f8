"""The server moves itself to a faster engine: int8 built and measured in the background.

Why: a fresh install serves fp32 (``auto`` has nothing measured yet), which is 2.6 times slower
than int8 on a CPU with VNNI. Once a lineage has served ``ISNET_AUTO_INT8_AFTER`` images, the
version serving it gets an int8 engine calibrated and measured on them
(:mod:`backend.isnet.measurement.served`), and ``auto`` then serves whatever the measurement chose.
``ISNET_ENGINE=onnx-int8`` that had to serve fp32 while too few images were served gets its
int8 engine the same way.

Why a child process at a lower CPU priority: calibrating takes a minute or two of every core,
and an annotator waiting for a mask must not notice. The inference thread only looks at files
(a few ``stat`` calls and a small JSON read) and loads the new engine when the child is done.
One child at a time per server process; a failed one is retried after :data:`RETRY_FAILED_S`.
"""

from __future__ import annotations

import fcntl
import logging
import multiprocessing
import os
import time
from dataclasses import dataclass
from typing import Any

from backend.isnet.engines import AUTO, choose_engine
from backend.isnet.engines.calibration import served_images_needed
from backend.isnet.engines.config import default_config
from backend.isnet.engines.selection import Measurements
from backend.isnet.engines.store import EngineStore
from backend.isnet.measurement.served import ready, served_count, threshold
from backend.isnet.segmenter import Segmenter
from backend.isnet.versions import ModelVersion
from backend.settings import Settings

log = logging.getLogger(__name__)

RETRY_FAILED_S = 900.0
"""A child that failed (say, out of memory) is tried again for the same version after this long."""
NICENESS = 10
LOG_FILE = "engine-upgrade.log"
"""In the version's directory: what the last background build printed."""


def stale(settings: Settings, version: ModelVersion, segmenter: Segmenter) -> bool:
    """Whether ``segmenter`` no longer runs the engine this version should be served with: ``auto``
    chose another engine since it was loaded, or an explicit engine it fell back from exists now."""
    wanted = choose_engine(settings.engine, version, segmenter.size)[0]
    if segmenter.fallback:
        dtype = wanted.removeprefix("onnx-")
        return any(a.serves(dtype) for a in EngineStore(version, settings).scan()[0])
    return settings.engine == AUTO and wanted != segmenter.engine.name


def _child(settings: Settings, name: str, build_only: bool, size: int) -> None:
    """The background build (in a spawned process): int8 built, and measured unless ``build_only``."""
    from backend.isnet.measurement.served import upgrade
    from backend.learning.registry import ModelRegistry

    os.nice(NICENESS)
    version = ModelRegistry(settings).get(name)
    version.directory.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(version.directory / LOG_FILE, mode="a")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    # Several server processes (WORKERS > 1) may start one each: the first does the work, the
    # others wait for it and find it done.
    with open(version.directory / ".engine-upgrade.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if build_only:
            EngineStore(version, settings).engine_file("int8")
        elif Measurements(version).reference(size) is None:
            outcome = upgrade(version, settings, size)
            log.info("auto for %s: %s (%s)", name, outcome["auto"], outcome["why"])


@dataclass
class _Run:
    version: str
    process: Any
    started: float
    since: str


class EngineUpgrades:
    """Background engine builds for the versions one server process serves."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._run: _Run | None = None
        self._failed: dict[str, tuple[float, str]] = {}
        self.started = 0

    def review(self, version: ModelVersion, segmenter: Segmenter) -> bool:
        """Start ``version``'s background build when it is due; True when the version should be
        loaded again now (its engine changed)."""
        self._reap()
        if stale(self.settings, version, segmenter):
            return True
        build_only = self._wants(version, segmenter)
        if build_only is not None and self._run is None and not self._recently_failed(version.name):
            self._start(version, build_only, segmenter.size)
        return False

    def _wants(self, version: ModelVersion, segmenter: Segmenter) -> bool | None:
        """None when nothing is to be built for ``version``; else whether to build without measuring."""
        if self.settings.engine == AUTO:
            unmeasured = Measurements(version).reference(segmenter.size) is None
            return False if unmeasured and ready(self.settings, version) else None
        if segmenter.fallback:
            needed = served_images_needed(default_config(self.settings.engine.removeprefix("onnx-")))
            return True if served_count(self.settings, version) >= needed else None
        return None

    def _recently_failed(self, name: str) -> bool:
        failed = self._failed.get(name)
        return failed is not None and time.monotonic() - failed[0] < RETRY_FAILED_S

    def _start(self, version: ModelVersion, build_only: bool, size: int) -> None:
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no copy of the server's threads
        process = context.Process(target=_child, args=(self.settings, version.name, build_only, size),
                                  name=f"isnet-engine-upgrade-{version.name}", daemon=True)
        process.start()
        self._run = _Run(version.name, process, time.monotonic(), time.strftime("%H:%M:%S UTC", time.gmtime()))
        self.started += 1
        log.info("building %s for %s in the background (pid %s, %d served images)",
                 "int8" if build_only else "int8 and measuring it against fp32", version.name, process.pid,
                 served_count(self.settings, version))

    def _reap(self) -> None:
        run = self._run
        if run is None or run.process.is_alive():
            return
        run.process.join()
        self._run = None
        if run.process.exitcode != 0:
            reason = f"exit code {run.process.exitcode} (see {LOG_FILE} in the version's directory)"
            self._failed[run.version] = (time.monotonic(), reason)
            log.error("background engine build for %s failed: %s", run.version, reason)
        else:
            log.info("background engine build for %s done in %.0f s", run.version, time.monotonic() - run.started)

    def status(self, version: ModelVersion, segmenter: Segmenter) -> str | None:
        """In words, for ``/health``: what is being done for ``version``'s engine, or still awaited."""
        run = self._run
        if run is not None and run.version == version.name:
            return f"building int8 in the background since {run.since}"
        failed = self._failed.get(version.name)
        if failed is not None:
            return f"the background int8 build failed: {failed[1]}"
        if self.settings.engine != AUTO or Measurements(version).reference(segmenter.size) is not None:
            return None
        if threshold(self.settings) == 0:
            return "int8 is never built in the background (ISNET_AUTO_INT8_AFTER=0)"
        return (f"int8 is built and measured after {threshold(self.settings)} served images "
                f"({served_count(self.settings, version)} so far)")

    def stop(self) -> None:
        run = self._run
        if run is not None and run.process.is_alive():
            run.process.terminate()
            run.process.join(timeout=10)
