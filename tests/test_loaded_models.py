"""One inference thread serves every project's lineage: each job runs its lineage's current version,
at most ``ISNET_MAX_LOADED_MODELS`` versions stay loaded (least recently used evicted), and projects
on the same version share one loaded model. A stand-in engine answers a constant per version, so the
answer says which version ran; no network is needed to show which one that is."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import pytest

from backend.isnet.segmenter import Segmenter
from backend.isnet.versions import CHECKPOINT_FILE, ModelVersion
from backend.learning.registry import ModelRegistry
from backend.service.inference import InferenceService, VersionWatcher
from backend.settings import Settings

IMAGE = np.full((40, 60, 3), 100, np.uint8)


class VersionEngine:
    """Answers foreground on the top ``level`` share of the rows: the version's own mask."""

    precision = "fp32"

    def __init__(self, level: float) -> None:
        self.name, self.level = "stand-in", level

    def predict(self, batch: np.ndarray) -> np.ndarray:
        out = np.zeros((batch.shape[0], 1, batch.shape[2], batch.shape[3]), np.float32)
        out[:, :, : round(self.level * batch.shape[2])] = 1.0
        return out

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "precision": self.precision}


LEVELS = {"p1": 0.9, "p2": 0.2, "p3": 0.6}


@pytest.fixture
def settings(random_checkpoint, tmp_path) -> Settings:
    settings = Settings(home=tmp_path / "home", weights=str(random_checkpoint), model_dir_env=str(tmp_path / "m"),
                        input_size=64, max_loaded_models=2)
    for lineage in LEVELS:  # one version per project lineage
        registry = ModelRegistry(settings, lineage)
        name = registry.new_version_name()
        (registry.versions_dir / name).mkdir(parents=True)
        os.symlink(random_checkpoint, registry.versions_dir / name / CHECKPOINT_FILE)
        registry.promote(name, how="use")
    return settings


@pytest.fixture
def service(settings):
    loads: list[str] = []

    def loader(_: Settings, version: ModelVersion) -> Segmenter:
        loads.append(version.name)
        return Segmenter(VersionEngine(LEVELS.get(version.lineage, 0.5)), 64)

    service = InferenceService(settings, VersionWatcher(settings), loader)
    service.start(warmup=False)
    service.loads = loads  # type: ignore[attr-defined]
    yield service
    service.stop()


def mask_level(service: InferenceService, lineage: str) -> float:
    outcome = service.predict([IMAGE], time.monotonic() + 30, lineage=lineage)
    assert outcome.model_version.startswith(f"isnet-{lineage}-ft-"), outcome.model_version
    return float(outcome.masks[0].mean()) / 255


def test_each_job_runs_its_own_lineage_s_version(service):
    levels = {lineage: mask_level(service, lineage) for lineage in LEVELS}
    assert levels["p1"] > levels["p3"] > levels["p2"] > 0  # 0.9, 0.6 and 0.2 of the rows


def test_at_most_the_configured_number_of_models_stay_loaded_the_least_recently_used_going_first(service):
    for lineage in ("p1", "p2", "p1", "p3"):
        mask_level(service, lineage)
    loaded = service.models.names()
    assert len(loaded) == 2 and all("-p2-" not in name for name in loaded)  # p2 was the least recently used
    assert service.models.evictions == 2  # the base loaded at start, then p2
    mask_level(service, "p2")
    assert service.models.loads == len(service.loads) == 5


def test_projects_on_the_same_version_share_one_loaded_model(service, settings):
    p1 = ModelRegistry(settings, "p1").current().name
    ModelRegistry(settings, "p9").promote(p1, how="use")
    mask_level(service, "p1")
    before = service.models.loads
    service.predict([IMAGE], time.monotonic() + 30, lineage="p9")
    assert service.models.loads == before


def test_a_version_that_fails_to_load_keeps_the_lineage_on_what_it_served(service, settings, random_checkpoint):
    first = mask_level(service, "p1")
    registry = ModelRegistry(settings, "p1")
    broken = registry.new_version_name()
    (registry.versions_dir / broken).mkdir()
    os.symlink(random_checkpoint, registry.versions_dir / broken / CHECKPOINT_FILE)
    real_loader = service.models._loader

    def failing(s: Settings, version: ModelVersion) -> Segmenter:
        if version.name == broken:
            raise RuntimeError("corrupt checkpoint")
        return real_loader(s, version)

    service.models._loader = failing
    registry.promote(broken, how="use")
    outcome = service.predict([IMAGE], time.monotonic() + 30, lineage="p1")
    assert outcome.model_version != broken and float(outcome.masks[0].mean()) / 255 == first


def test_a_retired_lineage_is_unloaded(service, settings):
    mask_level(service, "p3")
    version = ModelRegistry(settings, "p3").current().name
    service.forget("p3")
    mask_level(service, "p1")
    assert version not in service.models.names()
