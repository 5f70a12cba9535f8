"""int8 calibration: which images (a given folder, ISNET_CALIB_DIR, else the served sample), and
the very tensors serving feeds the engine."""

import shutil

import numpy as np
import pytest

from backend.images import load_image
from backend.isnet.calibration_sample import sample_dir
from backend.isnet.engines.calibration import MIN_SERVED_IMAGES, batches, fingerprint, select_images
from backend.isnet.engines.config import ConfigError, default_config
from backend.isnet.processing import preprocess
from backend.settings import Settings, load
from tests.paths import DIS_DEMO_IMAGES, DUTS_TR


@pytest.fixture
def settings(tmp_path) -> Settings:
    """A fresh install: no ISNET_CALIB_DIR, nothing served yet."""
    return Settings(home=tmp_path / "home", model_dir_env=str(tmp_path / "models"), calib_dir="")


def served(settings: Settings, count: int) -> list[str]:
    """``count`` DUTS-TR images put where the served sample lives; their names."""
    folder = sample_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for image in sorted((DUTS_TR / "images").glob("*.jpg"))[:count]:
        shutil.copy(image, folder / image.name)
        names.append(image.name)
    return names


def test_calibration_images_are_spread_evenly_over_the_folder(settings):
    config = default_config("int8", DUTS_TR / "images").override(num=4)
    everything = sorted((DUTS_TR / "images").glob("*.jpg"))
    assert select_images(config, settings) == [everything[0], everything[75], everything[150], everything[225]]


def test_fewer_images_than_asked_uses_them_all(tmp_path, settings):
    for image in sorted((DUTS_TR / "images").glob("*.jpg"))[:3]:
        shutil.copy(image, tmp_path / image.name)
    assert len(select_images(default_config("int8", tmp_path), settings)) == 3


def test_a_fresh_install_says_to_serve_images_first_or_pass_calib(settings):
    with pytest.raises(ConfigError, match="serve some images first") as error:
        select_images(default_config("int8"), settings)
    assert "--calib DIR" in str(error.value) and str(sample_dir(settings)) in str(error.value)
    assert "holds 0" in str(error.value)


def test_too_few_served_images_say_how_many_there_are_and_are_needed(settings):
    served(settings, 3)
    with pytest.raises(ConfigError, match=f"holds 3 \\(at least {MIN_SERVED_IMAGES} needed\\)"):
        select_images(default_config("int8"), settings)


def test_without_a_folder_int8_calibrates_on_the_served_images(settings):
    names = served(settings, MIN_SERVED_IMAGES)
    chosen = select_images(default_config("int8").override(num=4), settings)
    assert len(chosen) == 4 and {p.name for p in chosen} <= set(names)
    assert all(p.parent == sample_dir(settings) for p in chosen)


def test_a_small_calibration_count_needs_only_that_many_served_images(settings):
    served(settings, 2)
    assert len(select_images(default_config("int8").override(num=2), settings)) == 2


def test_isnet_calib_dir_comes_before_the_served_images(settings):
    served(settings, MIN_SERVED_IMAGES)
    env = Settings(home=settings.home, model_dir_env=settings.model_dir_env, calib_dir=str(DUTS_TR / "images"))
    chosen = select_images(default_config("int8").override(num=2), env)
    assert all(p.parent == DUTS_TR / "images" for p in chosen)


def test_calib_dir_overrides_isnet_calib_dir_and_the_served_images(settings):
    served(settings, MIN_SERVED_IMAGES)
    env = Settings(home=settings.home, model_dir_env=settings.model_dir_env, calib_dir=str(DUTS_TR / "images"))
    chosen = select_images(default_config("int8").override(calib_dir=DIS_DEMO_IMAGES), env)
    assert {p.parent for p in chosen} == {DIS_DEMO_IMAGES}


def test_a_missing_calib_folder_is_named(tmp_path, settings):
    with pytest.raises(ConfigError, match="nowhere does not exist"):
        select_images(default_config("int8", tmp_path / "nowhere"), settings)


def test_another_image_set_changes_the_fingerprint(settings):
    config = default_config("int8", DUTS_TR / "images")
    assert (fingerprint(select_images(config.override(num=4), settings))
            != fingerprint(select_images(config.override(num=5), settings)))


def test_calibration_tensors_are_the_served_preprocessing():
    paths = sorted(DIS_DEMO_IMAGES.iterdir())
    first = next(batches(paths, 64, 2, load().max_pixels))
    expected = np.stack([preprocess(load_image(p, load().max_pixels), 64) for p in paths])
    np.testing.assert_array_equal(first, expected)
