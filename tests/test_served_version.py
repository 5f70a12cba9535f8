"""``/setup`` reports the version actually served: a ``CURRENT`` that names a version whose
checkpoint cannot be loaded leaves the last good version in service, and that one is what
``/setup``, ``/health`` and the predictions name (Label Studio decides duplicates by the version
``/setup`` reports). A real ISNet (random weights) at 64 px, loaded by the torch engine."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from backend.isnet.versions import CHECKPOINT_FILE
from backend.learning.registry import ModelRegistry
from backend.model import ISNetModel
from backend.server.app import create_app
from backend.settings import Settings

CONFIG = ('<View><Image name="image" value="$image"/>'
          '<BrushLabels name="tag" toName="image"><Label value="Foreground"/></BrushLabels></View>')
IMAGE = np.full((40, 60, 3), 100, np.uint8)


@pytest.fixture
def settings(random_checkpoint, tmp_path) -> Settings:
    return Settings(home=tmp_path / "home", weights=str(random_checkpoint), input_size=64, engine="torch",
                    label_studio_api_key="", model_dir_env=str(tmp_path / "models"))


def add_version(registry: ModelRegistry, checkpoint: Path | bytes) -> str:
    """A version whose checkpoint is ``checkpoint`` (linked) or these bytes."""
    name = registry.new_version_name()
    directory = registry.versions_dir / name
    directory.mkdir(parents=True)
    if isinstance(checkpoint, bytes):
        (directory / CHECKPOINT_FILE).write_bytes(checkpoint)
    else:
        os.symlink(checkpoint, directory / CHECKPOINT_FILE)
    return name


@pytest.fixture
def good(settings, random_checkpoint) -> str:
    registry = ModelRegistry(settings)
    name = add_version(registry, random_checkpoint)
    registry.promote(name, how="use")
    return name


@pytest.fixture
def model(settings, good) -> Iterator[ISNetModel]:
    model = ISNetModel(settings)
    model.setup()
    yield model
    assert model.service is not None
    model.service.stop()


def setup_version(client, project: str | None = None) -> str:
    body = {"schema": CONFIG, **({"project": project} if project else {})}
    answer = client.post("/setup", json=body)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    return answer.get_json()["model_version"]


def test_a_current_version_that_fails_to_load_is_never_reported_by_setup(settings, model, good, random_checkpoint):
    client = create_app(settings, model).test_client()
    registry = ModelRegistry(settings)
    broken = add_version(registry, random_checkpoint.read_bytes()[:4096])  # a truncated checkpoint
    registry.promote(broken, how="use")
    assert registry.current_name() == broken

    assert setup_version(client) == good
    assert setup_version(client, "5.1") == good  # a project that follows the base lineage
    assert client.get("/health").get_json()["model_version"] == good
    assert model.service is not None
    outcome = model.service.predict([IMAGE], time.monotonic() + 60)
    assert outcome.model_version == good and outcome.masks[0] is not None  # what /setup said is what answers
    assert broken in model.service.describe()["failed_to_load"]  # /metrics says which version and why

    fixed = add_version(registry, random_checkpoint)  # a version that loads is reported once current
    registry.promote(fixed, how="use")
    assert setup_version(client) == fixed


def test_a_project_whose_own_version_fails_to_load_reports_the_version_serving_it(settings, model, good,
                                                                                   random_checkpoint):
    client = create_app(settings, model).test_client()
    p5 = ModelRegistry(settings, "p5")
    broken = add_version(p5, random_checkpoint.read_bytes()[:4096])
    p5.promote(broken, how="use")
    assert setup_version(client, "5.1") == good  # the base's version answers its requests meanwhile
    assert setup_version(client, "6.1") == good
