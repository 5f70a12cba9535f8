"""A promoted version gets its champion's serving engines, int8 calibrated on the cycle's own images.

An untrained ISNet (the weights do not matter, the engines' provenance does), two training
steps at 64 px and an int8 recipe calibrated on two images, so the cycle stays short.
"""

from __future__ import annotations

import json

import pytest

from backend.isnet.engines.config import default_config
from backend.isnet.engines.selection import Measurements
from backend.isnet.engines.store import EngineStore, sidecar_of
from backend.isnet.training import TrainOptions
from backend.learning import run_cycle
from backend.learning.registry import ModelRegistry
from backend.settings import Settings
from tests.paths import DUTS_TR

pytestmark = pytest.mark.slow  # ONNX export and int8 calibration of the full network, twice

OPTIONS = TrainOptions(iters=2, size=64, crop=32, batch=2, lr=1e-5, device="cpu", amp=False, gt_max_iters=2,
                       gt_check_every=2, gt_target_f=1.1, promote_rule="always", anchors="none")


@pytest.fixture
def settings(random_checkpoint, tmp_path) -> Settings:
    return Settings(home=tmp_path / "home", model_dir_env=str(tmp_path / "models"), weights=str(random_checkpoint),
                    device="cpu", threads=2, input_size=64, engine="torch")


def records(store: EngineStore) -> dict[str, dict]:
    return {a.config.dtype: json.loads(sidecar_of(a.path).read_text()) for a in store.scan()[0]}


def test_a_promoted_version_gets_the_champion_s_engines_with_int8_calibrated_on_its_training_images(
        settings, tiny_pairs):
    registry = ModelRegistry(settings)
    champion = registry.current()
    EngineStore(champion, settings).build(default_config("int8", DUTS_TR / "images").override(num=2))
    images, masks = tiny_pairs(6)

    report = run_cycle((images, masks), settings, OPTIONS)

    assert report.promoted and registry.current_name() == report.version
    built = records(EngineStore(registry.current(), settings))
    assert set(built) == {"fp32", "int8"} and all(r["model_version"] == report.version for r in built.values())
    assert set(built["int8"]["calibration"]["images"]) <= {p.name for p in images.iterdir()}
    assert report.engines["calibration_images"] == report.train_count


def test_a_champion_without_engines_leaves_nothing_to_rebuild(settings, tiny_pairs):
    images, masks = tiny_pairs(6)
    report = run_cycle((images, masks), settings, OPTIONS)
    assert report.promoted
    assert report.engines == {"built": [], "reason": f"{report.champion} had no built engines and ISNET_ENGINE=torch"}


def test_under_auto_a_promoted_version_arrives_with_fp32_and_int8_measured_on_its_held_out_images(
        settings, tiny_pairs):
    settings = settings.replace(engine="auto")
    images, masks = tiny_pairs(6)

    report = run_cycle((images, masks), settings, OPTIONS)

    assert report.promoted
    measured = report.engines["measured"]
    assert set(measured) == {"onnx-fp32", "onnx-int8"}
    assert all(m["dataset"] == f"held-out:{report.version}" and m["images"] == len(report.held_out)
               for m in measured.values())
    version = ModelRegistry(settings).current()
    assert Measurements(version).choose(settings.input_size)[0] == report.engines["auto"]
    assert {a.config.dtype for a in EngineStore(version, settings).scan()[0]} == {"fp32", "int8"}
