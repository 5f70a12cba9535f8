"""Calibration images: which ones, and the exact tensors the served engine will see.

Why its own module: int8 ranges are only as good as the data they were measured on, so by
default they are the images the backend itself served (a retrained version: its cycle's
training images), never a dataset a user may not have. The images go through
:func:`backend.images.load_image` and :func:`backend.isnet.processing.preprocess`, the
functions serving uses, so calibration and serving cannot drift apart.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np

from backend.images import IMAGE_SUFFIXES, ImageError, load_image
from backend.isnet.calibration_sample import sample_dir, sample_images
from backend.isnet.engines.config import ConfigError, EngineConfig
from backend.isnet.processing import preprocess
from backend.isnet.versions import BASE
from backend.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


MIN_SERVED_IMAGES = 16
"""Fewer served images than this (or than ``get_data_num``, if smaller) give ranges too rough to build on."""


def calibration_folder(config: EngineConfig, settings: Settings, lineage: str = BASE) -> tuple[Path, bool]:
    """The folder int8 calibrates on, and whether it is the served sample.

    In order: ``--calib DIR`` or the build file's ``dataset.path``, ``ISNET_CALIB_DIR``, else the
    images the backend segmented with ``lineage``'s versions (:mod:`backend.isnet.calibration_sample`):
    a fresh install has no other data, and those are the images the engine will serve.
    """
    if config.calib_dir is not None:
        return config.calib_dir, False
    if settings.calib_dir:
        return Path(settings.calib_dir).expanduser(), False
    return sample_dir(settings, lineage), True


class CalibrationPending(ConfigError):
    """int8 would calibrate on the served sample, which is still too small: wait, or give a folder."""


def served_images_needed(config: EngineConfig) -> int:
    return min(MIN_SERVED_IMAGES, config.calib_num)


def _served_images(folder: Path, config: EngineConfig) -> list[Path]:
    """The served sample, or an error saying what to do when it is still too small."""
    files = sample_images(folder)
    needed = served_images_needed(config)
    if len(files) < needed:
        raise CalibrationPending(
            f"int8 calibrates on images the backend has served, and {folder} holds {len(files)} "
            f"(at least {needed} needed): serve some images first (Retrieve predictions in Label Studio, "
            f"with ISNET_ENGINE=auto or onnx-fp32), or pass --calib DIR (or set ISNET_CALIB_DIR) "
            "to calibrate on a folder of your own images"
        )
    return files


def _folder_images(folder: Path, config: EngineConfig) -> list[Path]:
    """Every image under ``folder`` (recursively, sorted), of ``dataset.sampler.suffix`` if given."""
    if not folder.is_dir():
        raise ConfigError(f"calibration folder {folder} does not exist (pass --calib DIR or set ISNET_CALIB_DIR)")
    suffixes = {f".{config.calib_suffix.lower()}"} if config.calib_suffix else IMAGE_SUFFIXES
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise ConfigError(f"no calibration images ({', '.join(sorted(suffixes))}) in {folder}")
    return files


def select_images(config: EngineConfig, settings: Settings, lineage: str = BASE) -> list[Path]:
    """``get_data_num`` images spread evenly over the calibration folder's sorted images.

    Evenly spread rather than the first N: datasets are often sorted by source or class, and
    the ranges should see all of it. The choice is deterministic, so a rebuild is identical.
    Which folder: :func:`calibration_folder`.
    """
    folder, served = calibration_folder(config, settings, lineage)
    files = _served_images(folder, config) if served else _folder_images(folder, config)
    return spread(files, config.calib_num)


def spread(items: list[T], count: int) -> list[T]:
    """``count`` of ``items`` spread evenly, in order (all of them when there are fewer)."""
    count = min(count, len(items))
    return [items[i * len(items) // count] for i in range(count)]


def link_images(images: list[Path], folder: Path) -> Path:
    """The images side by side in ``folder`` (symlinks; a name used twice gets its index): a
    calibration folder made of images that live in several places."""
    used: set[str] = set()
    for n, image in enumerate(images):
        name = image.name if image.name not in used else f"{n:06d}-{image.name}"
        used.add(name)
        os.symlink(image.resolve(), folder / name)
    return folder


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
