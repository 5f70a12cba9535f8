"""``ISNET_ENGINE=auto`` moves itself to int8: built on the images the backend served, measured against
fp32 on the served images its calibration did not see, and served only when within budget and faster.

Real ISNet weights at 1024, the serving default: the budget is about the real network's numbers.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from backend.isnet.calibration_sample import sample_dir
from backend.isnet.engines.config import default_config
from backend.isnet.engines.selection import Measurements
from backend.isnet.engines.store import EngineStore
from backend.isnet.measurement.measure import Sample, measure_engines
from backend.isnet.measurement.served import DATASET_PREFIX, split
from backend.isnet.versions import VersionStore
from backend.settings import Settings
from tests.paths import DUTS_TR
from tests.test_server import predict_body

PHOTOS = 24
SWITCH_DEADLINE_S = 300  # the bar: int8 within 5 minutes of the 24th photo


def photos(count: int = PHOTOS) -> list[Path]:
    return sorted((DUTS_TR / "images").glob("*.jpg"))[:count]


def has_fast_int8() -> bool:
    """A CPU whose int8 kernels are fast (VNNI or AMX): there int8 must be measured faster than fp32."""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return any(flag in flags for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))


def test_every_third_served_image_is_kept_out_of_calibration_to_measure_on():
    images = [Path(f"{i:02d}.jpg") for i in range(24)]
    calibration, measured = split(images)
    assert len(calibration) == 16 and len(measured) == 8
    assert not set(calibration) & set(measured) and sorted(calibration + measured) == images


@pytest.mark.slow
def test_a_broken_int8_engine_is_measured_out_of_budget_and_fp32_stays_served(tmp_path):
    # Deliberately broken: calibrated on noise, and the first convolution and the logits
    # quantised too (onnxruntime's default, which the recipe avoids for a reason).
    settings = Settings(model_dir_env=str(tmp_path / "models"), calib_dir="", input_size=1024)
    version = VersionStore(settings).pretrained()
    noise = tmp_path / "noise"
    noise.mkdir()
    for i in range(4):
        pixels = np.random.default_rng(i).integers(0, 256, (320, 320, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(noise / f"noise-{i}.png")
    broken = dataclasses.replace(default_config("int8", noise), skip_conv_layers=())
    EngineStore(version, settings).build(broken)
    held_out = [Sample(p) for p in split(photos())[1][:4]]

    measured = measure_engines(version, settings, ["onnx-fp32", "onnx-int8"], held_out, 1024, "served:test")

    assert measured["onnx-fp32"]["avgfmeasure"] - measured["onnx-int8"]["avgfmeasure"] > 0.005
    chosen, why = Measurements(version).choose(1024)
    assert chosen == "onnx-fp32" and "onnx-int8 out of budget" in why


@pytest.mark.slow
def test_a_fresh_install_serves_int8_after_24_photos_within_five_minutes(serve_backend, image_host, tmp_path):
    home = tmp_path / "home"
    backend = serve_backend({  # default engine (auto) and sizes; the real weights from the shared cache
        "MODEL_DIR": str(home / "models"), "LABEL_STUDIO_URL": image_host.url, "LABEL_STUDIO_API_KEY": "",
        "ISNET_CALIB_DIR": "",
    })
    assert requests.get(backend.url + "/health", timeout=5).json()["engine"] == "onnx-fp32"
    for photo in photos():
        url = image_host.add(f"auto-int8-{photo.name}", photo.read_bytes())
        answer = requests.post(backend.url + "/predict", json=predict_body(url), timeout=120)
        assert answer.status_code == 200 and answer.json()["results"][0]["result"], answer.text

    deadline = time.monotonic() + SWITCH_DEADLINE_S
    while True:  # measured on served images: the reason names them
        health = requests.get(backend.url + "/health", timeout=5).json()
        if DATASET_PREFIX in health.get("engine_reason", "") or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert DATASET_PREFIX in health.get("engine_reason", ""), (health, backend.log()[-3000:])
    if has_fast_int8():
        assert health["engine"] == "onnx-int8", health
    answer = requests.post(backend.url + "/predict", json=predict_body(image_host.url + "/bike.jpeg"), timeout=120)
    assert answer.status_code == 200 and answer.json()["results"][0]["result"]
    assert len(list(sample_dir(Settings(model_dir_env=str(home / "models"))).glob("*.jpg"))) >= PHOTOS

