"""``ISNET_ENGINE=onnx-int8`` on a fresh install: int8 calibrates on served images and none were served
yet. The server must still start and answer, with fp32, say so, and move to int8 once enough images
were served (built in the background, so requests never wait for it)."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest

from backend.isnet.calibration_sample import sample_dir
from backend.isnet.engines.calibration import MIN_SERVED_IMAGES
from backend.service import inference
from backend.service.inference import InferenceService, VersionWatcher
from backend.settings import Settings
from tests.paths import DUTS_TR

IMAGE = np.full((48, 64, 3), 120, np.uint8)


@pytest.fixture
def settings(random_checkpoint, tmp_path) -> Settings:
    return Settings(home=tmp_path / "home", weights=str(random_checkpoint), model_dir_env=str(tmp_path / "models"),
                    engine="onnx-int8", input_size=64, calib_dir="", threads=1)


@pytest.fixture
def service(settings, monkeypatch):
    monkeypatch.setattr(inference, "HOUSEKEEPING_S", 0.2)
    service = InferenceService(settings, VersionWatcher(settings))
    service.start(warmup=False)
    yield service
    service.stop()


def test_int8_without_served_images_serves_fp32_and_says_why(service):
    outcome = service.predict([IMAGE], time.monotonic() + 60)
    assert outcome.masks[0] is not None and outcome.masks[0].shape == IMAGE.shape[:2]
    described = service.describe()
    assert described["engine"] == "onnx-fp32" and "calibration images" in described["engine_fallback"]


@pytest.mark.slow
def test_once_enough_images_were_served_int8_is_built_in_the_background_and_served(service, settings):
    service.predict([IMAGE], time.monotonic() + 60)
    folder = sample_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    for image in sorted((DUTS_TR / "images").glob("*.jpg"))[:MIN_SERVED_IMAGES]:
        shutil.copy(image, folder / image.name)

    deadline = time.monotonic() + 300
    while service.describe()["engine"] != "onnx-int8" and time.monotonic() < deadline:
        assert service.predict([IMAGE], time.monotonic() + 60).masks[0] is not None  # fp32 answers meanwhile
        time.sleep(0.5)
    described = service.describe()
    assert described["engine"] == "onnx-int8" and "engine_fallback" not in described, described
    assert service.upgrades.started == 1


@pytest.mark.slow
def test_a_failed_background_build_is_reported_and_fp32_keeps_serving(random_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(inference, "HOUSEKEEPING_S", 0.2)
    settings = Settings(home=tmp_path / "home", weights=str(random_checkpoint), model_dir_env=str(tmp_path / "models"),
                        engine="auto", input_size=64, calib_dir="", threads=1, auto_int8_after=3, calib_sample=3)
    folder = sample_dir(settings)
    folder.mkdir(parents=True)
    for name in ("a", "b", "c"):  # served images that turned out unreadable: nothing to calibrate on
        (folder / f"{name}.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    service = InferenceService(settings, VersionWatcher(settings))
    service.start(warmup=False)
    try:
        deadline = time.monotonic() + 300
        while "failed" not in service.describe().get("engine_upgrade", "") and time.monotonic() < deadline:
            assert service.predict([IMAGE], time.monotonic() + 60).masks[0] is not None
            time.sleep(0.2)
        described = service.describe()
        assert "the background int8 build failed" in described.get("engine_upgrade", ""), described
        assert described["engine"] == "onnx-fp32" and service.upgrades.started == 1
        assert service.predict([IMAGE], time.monotonic() + 60).masks[0] is not None
    finally:
        service.stop()
