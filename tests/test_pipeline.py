"""One task-prediction pipeline: ``/predict`` and background pre-annotation share it, and its cache.

A real stand-in Label Studio, the server's model without Redis, an untrained ISNet at 64x64.
"""

from __future__ import annotations

import pytest

from backend.jobs import hooks, local
from backend.model import ISNetModel
from backend.settings import Settings
from tests.conftest import FAKE_LS_TOKEN
from tests.test_inflight import new_project
from tests.test_preannotate import BRUSH_CONFIG, png


@pytest.fixture
def model(random_checkpoint, fake_label_studio, tmp_path):
    fake_label_studio.label_config = BRUSH_CONFIG
    fake_label_studio.images["a.png"] = png()
    settings = Settings(home=tmp_path, weights=str(random_checkpoint), input_size=64, engine="torch", device="cpu",
                        model_dir_env=str(tmp_path / "models"), label_studio_url=fake_label_studio.url,
                        label_studio_api_key=FAKE_LS_TOKEN, predict_batch=2, preannotate_batch=4, ls_retries=2,
                        ls_backoff=0.01, ls_timeout=5, redis_url="")
    local.reset()
    model = ISNetModel(settings)
    model.setup()
    yield model
    local.reset()
    model.service.stop()


def test_background_preannotation_writes_what_predict_computed_without_running_the_network_again(
        model, fake_label_studio):
    ls, project = fake_label_studio, new_project()
    ids = ls.add_tasks(project, "/img/a.png", 3)
    answers = model.predict([ls.tasks[i] for i in ids], label_config=BRUSH_CONFIG)
    assert all(a.get("result") for a in answers)
    images_run = model.service.images_done

    hooks.enqueue_preannotation(f"{project}.1700000000", ids, model.model_version, model.settings)
    assert local.current_runner().wait_idle(60)

    written = [ls.predictions_of(i) for i in ids]
    assert [len(w) for w in written] == [1, 1, 1]
    assert [w[0]["result"][0]["value"] for w in written] == [a["result"][0]["value"] for a in answers]
    assert model.service.images_done == images_run  # every result came from the one cache
    assert model.stats.get("cache.hits") >= len(ids)


def test_predict_answers_from_what_background_preannotation_computed(model, fake_label_studio):
    ls, project = fake_label_studio, new_project()
    (done,) = ls.add_tasks(project, "/img/a.png", 1)
    hooks.enqueue_preannotation(f"{project}.1700000000", [done], model.model_version, model.settings)
    assert local.current_runner().wait_idle(60)
    images_run = model.service.images_done

    (opened,) = ls.add_tasks(project, "/img/a.png", 1)  # another task showing the same image
    (answer,) = model.predict([ls.tasks[opened]], label_config=BRUSH_CONFIG)

    assert answer["result"][0]["value"] == ls.predictions_of(done)[0]["result"][0]["value"]
    assert model.service.images_done == images_run
