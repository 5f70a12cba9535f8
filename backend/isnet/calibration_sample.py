"""A small sample of the images the backend really segmented: what int8 calibrates on by default.

Why: int8 ranges should be measured on the team's own images, and a fresh install has no other
images. After each successful prediction the caller offers the decoded image; a background
thread keeps up to ``ISNET_CALIB_SAMPLE`` distinct ones (by pixel hash), downsized to a longer
side of :data:`MAX_SIDE`, as JPEG files named by that hash in ``MODEL_DIR/calibration`` (the
base lineage's; a project lineage keeps its own, see :func:`sample_dir`).
``MODEL_DIR`` rather than ``ISNET_HOME``: it is the writable volume the server and the workers
share (``ISNET_HOME`` is read-only in the Docker image).

Offering never blocks the request: when the sample is full, or the thread is still busy with
earlier images, the image is skipped. Delete the folder to start a new sample.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import logging
import queue
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from backend import atomic
from backend.isnet.versions import BASE, lineage_dir
from backend.settings import Settings

log = logging.getLogger(__name__)

SAMPLE_DIR = "calibration"
MAX_SIDE = 1024
"""Longer side of a kept image: int8 is calibrated at 320 by default, at most at 1024."""
SUFFIX = ".jpg"
JPEG_QUALITY = 90
PENDING = 4
"""Images waiting for the writer thread at most; more are skipped (bounds the memory they hold)."""


def sample_dir(settings: Settings, lineage: str = BASE) -> Path:
    """Where a lineage's served sample lives: ``MODEL_DIR/calibration`` for the base lineage,
    ``MODEL_DIR/lineages/<lineage>/calibration`` for a project's: a version calibrates on the
    images of the lineage that serves it, never on another project's."""
    return lineage_dir(settings, lineage) / SAMPLE_DIR


def sample_images(folder: Path) -> list[Path]:
    """The kept images, sorted by name (a hash, so the order is unrelated to when they came)."""
    return sorted(folder.glob(f"*{SUFFIX}")) if folder.is_dir() else []


def content_hash(image: np.ndarray) -> str:
    """The pixels' identity: the same picture decoded twice gets the same name."""
    digest = hashlib.sha256(f"{image.shape}{image.dtype}".encode())
    digest.update(np.ascontiguousarray(image).data)
    return digest.hexdigest()[:24]


def downsized_jpeg(image: np.ndarray, max_side: int = MAX_SIDE) -> bytes:
    """``image`` (RGB uint8) with its longer side at most ``max_side``, as JPEG bytes."""
    picture = Image.fromarray(image).convert("RGB")
    picture.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


class CalibrationSample:
    """The bounded folder of served images, filled by one daemon thread per process."""

    def __init__(self, folder: Path, limit: int) -> None:
        self.folder = folder
        self.limit = limit
        self._pending: queue.Queue[np.ndarray] = queue.Queue(PENDING)
        self._full = limit <= 0 or len(sample_images(folder)) >= limit
        self._thread = threading.Thread(target=self._run, name="isnet-calibration-sample", daemon=True)
        self._thread.start()

    @property
    def full(self) -> bool:
        return self._full

    def offer(self, image: np.ndarray) -> bool:
        """Hand ``image`` to the writer; False when it is skipped (sample full, writer busy)."""
        if self._full:
            return False
        try:
            self._pending.put_nowait(image)
        except queue.Full:
            return False
        return True

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """True once every offered image is written or skipped (tests, shutdown)."""
        done = threading.Event()
        threading.Thread(target=lambda: (self._pending.join(), done.set()), daemon=True).start()
        return done.wait(timeout)

    def _run(self) -> None:
        while True:
            image = self._pending.get()
            try:
                self._keep(image)
            except Exception:  # a full disk or an odd array costs this image, never the server
                log.exception("served image not kept for int8 calibration")
            finally:
                self._pending.task_done()

    def _keep(self, image: np.ndarray) -> None:
        """Write ``image`` unless it is there already or the folder is full (checked under a lock:
        several server processes share the folder)."""
        if self._full:
            return
        path = self.folder / f"{content_hash(image)}{SUFFIX}"
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            kept = len(sample_images(self.folder))
            if kept < self.limit and not path.exists():
                # a build listing the folder sees the whole file or none; losing one to a crash costs nothing
                atomic.write_bytes(path, downsized_jpeg(image), fsync=False, suffix=".tmp")
                kept += 1
            self._full = kept >= self.limit
        if self._full:
            log.info("int8 calibration sample complete: %d served images in %s", kept, self.folder)


_lock = threading.Lock()
_samples: dict[tuple[Path, int], CalibrationSample] = {}


def sample_for(settings: Settings, lineage: str = BASE) -> CalibrationSample:
    """This process's sample of ``lineage`` (one writer thread per folder)."""
    key = (sample_dir(settings, lineage), settings.calib_sample)
    with _lock:
        if key not in _samples:
            _samples[key] = CalibrationSample(*key)
        return _samples[key]


def offer(image: np.ndarray | None, settings: Settings, lineage: str = BASE) -> bool:
    """Offer an image the backend has just segmented with a version of ``lineage`` to that lineage's
    int8 calibration sample; never blocks."""
    if image is None or settings.calib_sample <= 0:
        return False
    return sample_for(settings, lineage).offer(image)
