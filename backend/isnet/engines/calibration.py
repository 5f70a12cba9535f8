"""Calibration images: which ones, and the exact tensors the served engine will see.

Why its own module: int8 ranges are only as good as the data they were measured on. The
images go through :func:`backend.isnet.images.load_image` and
:func:`backend.isnet.segmenter.preprocess`, the functions serving uses, so calibration and
serving cannot drift apart.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from backend.isnet.engines.config import ConfigError, EngineConfig
from backend.isnet.images import IMAGE_SUFFIXES, ImageError, load_image
from backend.isnet.segmenter import preprocess

log = logging.getLogger(__name__)


def select_images(config: EngineConfig) -> list[Path]:
    """``get_data_num`` images spread evenly over the folder's sorted images (recursively).

    Evenly spread rather than the first N: datasets are often sorted by source or class, and
    the ranges should see all of it. The choice is deterministic, so a rebuild is identical.
    """
    folder = config.calib_dir
    if folder is None:
        raise ConfigError(
            "int8 needs calibration images: set dataset.path in the build file, pass --calib DIR, "
            "or set ISNET_CALIB_DIR"
        )
    if not folder.is_dir():
        raise ConfigError(f"calibration folder {folder} does not exist")
    suffixes = {f".{config.calib_suffix.lower()}"} if config.calib_suffix else IMAGE_SUFFIXES
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise ConfigError(f"no calibration images ({', '.join(sorted(suffixes))}) in {folder}")
    count = min(config.calib_num, len(files))
    return [files[i * len(files) // count] for i in range(count)]


def fingerprint(paths: list[Path]) -> str:
    """Names and sizes of the chosen images: a changed calibration set means a new engine."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{path.name}\0{path.stat().st_size}\n".encode())
    return digest.hexdigest()[:16]


def batches(paths: list[Path], size: int, batch: int, max_pixels: int) -> Iterator[np.ndarray]:
    """float32 ``[n, 3, size, size]`` batches of preprocessed images, unreadable ones skipped."""
    pending: list[np.ndarray] = []
    for path in paths:
        try:
            pending.append(preprocess(load_image(path, max_pixels), size))
        except ImageError as exc:
            log.warning("calibration image skipped: %s", exc)
            continue
        if len(pending) == batch:
            yield np.stack(pending)
            pending = []
    if pending:
        yield np.stack(pending)
