"""int8 calibration: which images, and the very tensors serving feeds the engine."""

import shutil

import numpy as np
import pytest

from backend.isnet.engines.calibration import batches, fingerprint, select_images
from backend.isnet.engines.config import ConfigError, default_config
from backend.isnet.images import load_image
from backend.isnet.segmenter import preprocess
from backend.settings import load
from tests.paths import DIS_DEMO_IMAGES, DUTS_TR


def test_calibration_images_are_spread_evenly_over_the_folder():
    config = default_config("int8", DUTS_TR / "images").override(num=4)
    everything = sorted((DUTS_TR / "images").glob("*.jpg"))
    assert select_images(config) == [everything[0], everything[75], everything[150], everything[225]]


def test_fewer_images_than_asked_uses_them_all(tmp_path):
    for image in sorted((DUTS_TR / "images").glob("*.jpg"))[:3]:
        shutil.copy(image, tmp_path / image.name)
    assert len(select_images(default_config("int8", tmp_path))) == 3


def test_int8_without_calibration_images_says_how_to_give_them():
    with pytest.raises(ConfigError, match="--calib"):
        select_images(default_config("int8"))


def test_another_image_set_changes_the_fingerprint():
    config = default_config("int8", DUTS_TR / "images")
    assert fingerprint(select_images(config.override(num=4))) != fingerprint(select_images(config.override(num=5)))


def test_calibration_tensors_are_the_served_preprocessing():
    paths = sorted(DIS_DEMO_IMAGES.iterdir())
    first = next(batches(paths, 64, 2, load().max_pixels))
    expected = np.stack([preprocess(load_image(p, load().max_pixels), 64) for p in paths])
    np.testing.assert_array_equal(first, expected)
