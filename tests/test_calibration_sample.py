"""The served-image sample int8 calibrates on by default: bounded, distinct, downsized, written off the
request path, and enough for ``isnet engine build deploy/engines/isnet_int8.yaml`` on a fresh install.

An untrained network at 64x64 serves (Flask test client, real HTTP image fetches); the int8 build
calibrates at 64 on 2 images so it stays short.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from backend.cli import main
from backend.isnet.calibration_sample import MAX_SIDE, CalibrationSample, offer, sample_dir, sample_for, sample_images
from backend.isnet.engines.store import EngineStore, sidecar_of
from backend.learning.registry import ModelRegistry
from backend.model import ISNetModel
from backend.server.app import create_app
from backend.settings import Settings
from tests.paths import REPO
from tests.test_server import predict_body

INT8_FILE = str(REPO / "deploy" / "engines" / "isnet_int8.yaml")
LIMIT = 3


def picture(seed: int, width: int = 48, height: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(picture(seed)).save(buffer, "PNG")
    return buffer.getvalue()


# -- the sample itself -------------------------------------------------------------------------


def test_distinct_images_are_kept_once_each_up_to_the_limit(tmp_path):
    sample = CalibrationSample(tmp_path / "sample", LIMIT)
    for seed in (1, 1, 2, 2, 3, 4, 5):
        sample.offer(picture(seed))
        assert sample.wait_idle()
    assert len(sample_images(tmp_path / "sample")) == LIMIT
    assert sample.full and sample.offer(picture(6)) is False
    assert sorted(p.name for p in (tmp_path / "sample").iterdir()) == sorted(
        [".lock", *(p.name for p in sample_images(tmp_path / "sample"))])  # no temporary file left


def test_a_large_image_is_kept_downsized_as_jpeg(tmp_path):
    sample = CalibrationSample(tmp_path, LIMIT)
    sample.offer(picture(7, width=3000, height=1500))
    assert sample.wait_idle()
    (kept,) = sample_images(tmp_path)
    with Image.open(kept) as image:
        assert (image.format, image.size) == ("JPEG", (MAX_SIDE, MAX_SIDE // 2))


def test_a_full_folder_stays_full_for_the_next_process(tmp_path):
    first = CalibrationSample(tmp_path, 2)
    for seed in (1, 2):
        first.offer(picture(seed))
        assert first.wait_idle()
    assert CalibrationSample(tmp_path, 2).full


def test_isnet_calib_sample_0_keeps_nothing(tmp_path):
    settings = Settings(home=tmp_path, model_dir_env=str(tmp_path / "models"), calib_sample=0)
    assert offer(picture(1), settings) is False
    assert not sample_dir(settings).exists()


# -- through the server ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def settings(random_checkpoint, image_host, home) -> Settings:
    return Settings(home=home, weights=str(random_checkpoint), input_size=64, engine="torch", device="cpu",
                    label_studio_url=image_host.url, label_studio_api_key="", model_dir_env=str(home / "models"),
                    calib_dir="", calib_sample=LIMIT)


@pytest.fixture(scope="module")
def client(settings):
    model = ISNetModel(settings)
    model.setup()
    yield create_app(settings, model).test_client()
    model.service.stop()


@pytest.fixture(scope="module")
def served(client, settings, image_host):
    """Two distinct images served (one of them twice), then three more: the sample after each step."""
    first = [image_host.add(f"calib-{seed}.png", png(seed)) for seed in (11, 12)]
    more = [image_host.add(f"calib-{seed}.png", png(seed)) for seed in (13, 14, 15)]
    steps = []
    for paths in ([*first, first[0]], more):
        body = client.post("/predict", json=predict_body(*paths)).get_json()
        assert all(entry["result"] for entry in body["results"])
        assert sample_for(settings).wait_idle()
        steps.append([p.name for p in sample_images(sample_dir(settings))])
    return steps


@pytest.fixture
def cli_env(monkeypatch, settings, random_checkpoint):
    """``isnet`` reads the environment: the same home, weights and sample as the server above."""
    env = {"ISNET_HOME": str(settings.home), "MODEL_DIR": settings.model_dir_env,
           "ISNET_WEIGHTS": str(random_checkpoint), "ISNET_DEVICE": "cpu", "ISNET_INPUT_SIZE": "64",
           "ISNET_ENGINE": "torch", "ISNET_CALIB_SAMPLE": str(LIMIT)}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("ISNET_CALIB_DIR", raising=False)


def test_the_images_the_server_segmented_are_kept_once_each_and_bounded(served):
    after_two, after_five = served
    assert len(after_two) == 2  # the repeated image is kept once
    assert len(after_five) == LIMIT and set(after_two) <= set(after_five)


def test_a_fresh_install_is_told_to_serve_images_first_or_pass_calib(monkeypatch, tmp_path, random_checkpoint,
                                                                     capsys):
    monkeypatch.setenv("ISNET_HOME", str(tmp_path))
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("ISNET_WEIGHTS", str(random_checkpoint))
    monkeypatch.delenv("ISNET_CALIB_DIR", raising=False)
    assert main(["engine", "build", INT8_FILE, "--size", "64", "--num", "2"]) == 2
    error = capsys.readouterr().err
    assert "serve some images first" in error and "--calib DIR" in error


def test_calib_overrides_the_served_images(served, cli_env, tmp_path, capsys):
    assert main(["engine", "build", INT8_FILE, "--size", "64", "--num", "2", "--calib", str(tmp_path / "mine")]) == 2
    assert f"calibration folder {tmp_path / 'mine'} does not exist" in capsys.readouterr().err


@pytest.mark.slow  # ONNX export and int8 calibration of the full network
def test_the_deploy_int8_file_builds_on_the_served_images_without_any_dataset_path(served, cli_env, settings,
                                                                                    client):
    assert main(["engine", "build", INT8_FILE, "--size", "64", "--num", "2"]) == 0
    store = EngineStore(ModelRegistry(settings).current(), settings)
    (int8,) = [a for a in store.scan()[0] if a.config.dtype == "int8"]
    record = json.loads(sidecar_of(int8.path).read_text())
    assert record["config"]["calib_dir"] is None
    assert len(record["calibration"]["images"]) == 2 and set(record["calibration"]["images"]) <= set(served[-1])
    body = client.post("/predict", json=predict_body("/0003.jpeg")).get_json()
    assert body["results"][0]["result"]  # the server goes on serving after the build
