"""The model between Label Studio JSON and masks: budget, deferral, caching, version switches."""

from __future__ import annotations

import os
import time

import pytest

from backend.jobs import hooks
from backend.learning.registry import CHECKPOINT_FILE, ModelRegistry
from backend.model import ISNetModel
from backend.settings import Settings

CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="tag" toName="image"><Label value="Foreground"/></BrushLabels></View>'
)


@pytest.fixture
def settings(random_checkpoint, image_host, tmp_path) -> Settings:
    return Settings(home=tmp_path, weights=str(random_checkpoint), input_size=64, engine="torch",
                    label_studio_url=image_host.url, label_studio_api_key="", model_dir_env=str(tmp_path / "models"),
                    predict_batch=4)


@pytest.fixture
def model(settings):
    model = ISNetModel(settings)
    model.setup()
    yield model
    model.service.stop()


def tasks(*paths: str) -> list[dict]:
    return [{"id": 100 + i, "data": {"image": p}, "project": 3} for i, p in enumerate(paths)]


def distinct_images(image_host, n: int) -> list[str]:
    """``n`` different small images (distinct bytes, so none is a cache hit for another)."""
    import io

    from PIL import Image

    paths = []
    for i in range(n):
        buf = io.BytesIO()
        Image.new("RGB", (48, 32), (i * 9 % 256, 100, 200)).save(buf, "PNG")
        paths.append(image_host.add(f"model-{os.getpid()}-{time.monotonic_ns()}-{i}.png", buf.getvalue()))
    return paths


def test_tasks_past_the_budget_get_no_result_and_are_handed_to_background_preannotation(model, image_host):
    answers = model.predict(tasks("/0003.jpeg", "/bike.jpeg"), label_config=CONFIG, project="3.17",
                            deadline=time.monotonic())
    assert [sorted(a) for a in answers] == [["model_version", "score"]] * 2
    assert all(a["model_version"] == model.model_version for a in answers)
    handed = hooks.recorded()["last_preannotation"]
    assert handed["task_ids"] == (100, 101) and handed["project"] == "3.17"
    assert handed["model_version"] == model.model_version


def warmed_up(model: ISNetModel) -> ISNetModel:
    """The start-up measurement done, so nothing overwrites a speed a test sets."""
    deadline = time.monotonic() + 60
    while model.service.images_done < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    return model


def test_only_as_many_images_as_the_measured_speed_fits_are_predicted(model, image_host):
    warmed_up(model).service.seconds_per_image = 5.0  # as if each image took 5 s: 11 s of budget fit two
    answers = model.predict(tasks(*distinct_images(image_host, 6)), label_config=CONFIG,
                            deadline=time.monotonic() + 11)
    assert ["result" in a for a in answers] == [True, True, False, False, False, False]
    assert hooks.recorded()["last_preannotation"]["task_ids"] == (102, 103, 104, 105)


def test_a_task_that_fails_gets_an_empty_result_and_the_next_task_is_still_predicted(model, image_host):
    answers = model.predict(tasks("/missing.png", "/0003.jpeg"), label_config=CONFIG)
    assert answers[0]["result"] == [] and answers[0]["model_version"] == model.model_version
    assert answers[1]["result"][0]["original_width"] == 650


def test_the_same_bytes_under_another_url_are_not_predicted_twice(model, image_host):
    copy = image_host.add(f"copy-{time.monotonic_ns()}.jpeg", (image_host.root / "0003.jpeg").read_bytes())
    model.predict(tasks("/0003.jpeg"), label_config=CONFIG)
    done = model.service.images_done
    answers = model.predict(tasks(copy), label_config=CONFIG)
    assert model.service.images_done == done
    assert answers[0]["result"][0]["original_height"] == 434


def test_a_promoted_version_is_loaded_and_named_in_the_next_predictions(model, settings, random_checkpoint):
    registry = ModelRegistry(settings)
    version_dir = registry.versions_dir / "isnet-ft-test"
    version_dir.mkdir(parents=True)
    os.symlink(random_checkpoint, version_dir / CHECKPOINT_FILE)
    registry.promote("isnet-ft-test")
    assert model.model_version == "isnet-ft-test"
    answers = model.predict(tasks("/0003.jpeg"), label_config=CONFIG)
    assert answers[0]["model_version"] == "isnet-ft-test"
    assert model.service.reloads == 1


def test_a_broken_model_pointer_keeps_the_last_good_version_in_service(model, settings):
    before = model.model_version
    registry = ModelRegistry(settings)
    registry.root.mkdir(parents=True, exist_ok=True)
    registry.current_file.write_text("no-such-version\n")
    assert model.model_version == before
    assert "no-such-version" in model.watcher.last_error


def test_fit_records_an_event_and_answers_what_became_of_it_at_once(model):
    start = time.monotonic()
    answer = model.fit("START_TRAINING", {"action": "START_TRAINING", "project": {"id": 5}})
    assert time.monotonic() - start < 0.5
    assert (answer["status"], answer["action"]) == ("skipped", "START_TRAINING")  # no LABEL_STUDIO_API_KEY here
    assert hooks.recorded()["last_event"]["project_id"] == 5


def test_the_token_setup_carries_reaches_the_fetcher_the_pipeline_uses(model):
    model.use_label_studio_token("0123456789abcdef0123456789abcdef01234567")
    token = {"Authorization": "Token 0123456789abcdef0123456789abcdef01234567"}
    assert model.pipeline(7).fetcher.auth.headers() == model.pipeline().fetcher.auth.headers() == token


def test_a_configured_api_key_is_not_replaced_by_the_token_setup_carries(settings):
    model = ISNetModel(settings.replace(label_studio_api_key="configured-key"))
    model.use_label_studio_token("another-key")
    assert model.fetcher.auth.api_key == "configured-key"
