"""Pre-annotation jobs: chunked, idempotent, and patient with Label Studio, strict with its 4xx.

A real HTTP server stands in for Label Studio (``fake_label_studio`` in conftest) and an
untrained ISNet at 64x64 predicts: these tests are about what is written where, not masks.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from backend.jobs.preannotate import preannotate_tasks
from backend.jobs.queue import chunks, job_id
from backend.labelstudio.client import LabelStudioClient, LabelStudioDown, TaskRejected
from backend.labelstudio.config import BrushTarget
from backend.labelstudio.fetch import ImageFetcher
from backend.labelstudio.results import brush_result
from backend.pipeline import TaskPipeline
from backend.service.inference import DirectInference
from backend.settings import Settings
from tests.conftest import FAKE_LS_TOKEN

BRUSH_CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="tag" toName="image"><Label value="Foreground"/></BrushLabels></View>'
)
PROJECT = 3


def png(width: int = 40, height: int = 30) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width, 3), np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def base_settings(random_checkpoint, tmp_path_factory) -> Settings:
    home = tmp_path_factory.mktemp("home")
    return Settings(home=home, weights=str(random_checkpoint), input_size=64, engine="torch", device="cpu",
                    model_dir_env=str(home / "models"), label_studio_api_key=FAKE_LS_TOKEN, predict_batch=2,
                    preannotate_batch=4, ls_retries=4, ls_backoff=0.01, ls_timeout=5)


@pytest.fixture(scope="module")
def predictor(base_settings) -> DirectInference:
    return DirectInference(base_settings)


@pytest.fixture
def ls(fake_label_studio):
    fake_label_studio.label_config = BRUSH_CONFIG
    fake_label_studio.images["a.png"] = png()
    return fake_label_studio


@pytest.fixture
def settings(base_settings, ls) -> Settings:
    return base_settings.replace(label_studio_url=ls.url)


def run(ls, settings, predictor, task_ids, sleeps=None):
    client = LabelStudioClient(ls.url, LabelStudioClient.from_settings(settings).auth, settings.ls_retries,
                               settings.ls_backoff, settings.ls_timeout,
                               sleep=(sleeps.append if sleeps is not None else lambda _: None))
    return preannotate_tasks(PROJECT, task_ids, client=client, settings=settings,
                             pipeline=TaskPipeline(settings, predictor, ImageFetcher(settings, client.auth))), client


def test_tasks_are_split_into_chunks_of_the_configured_size_without_duplicates():
    assert chunks(list(range(1, 11)), 4) == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
    assert chunks([5, 5, 6], 16) == [[5, 6]]
    assert chunks([], 16) == []


def test_the_same_chunk_and_version_always_get_the_same_job_id():
    assert job_id(1, "v1", [1, 2]) == job_id(1, "v1", [1, 2])
    assert job_id(1, "v1", [1, 2]) != job_id(1, "v2", [1, 2])
    assert ":" not in job_id(1, "v1", [1, 2])


def test_every_task_gets_one_brush_prediction_of_the_current_version(ls, settings, predictor):
    ids = ls.add_tasks(PROJECT, "/img/a.png", 5)
    outcome, _ = run(ls, settings, predictor, ids)
    assert (outcome.done, outcome.skipped, outcome.failed, outcome.total) == (5, 0, 0, 5)
    for task_id in ids:
        (prediction,) = ls.predictions_of(task_id)
        assert prediction["model_version"] == predictor.model_version
        assert 0.0 <= prediction["score"] <= 1.0
        assert prediction["result"], "an untrained network's min-max normalised map still has a region"
        for region in prediction["result"]:
            assert (region["from_name"], region["to_name"], region["type"]) == ("tag", "image", "brushlabels")
            assert (region["original_width"], region["original_height"]) == (40, 30)


def test_a_task_already_predicted_by_the_current_version_is_skipped(ls, settings, predictor):
    ids = ls.add_tasks(PROJECT, "/img/a.png", 3)
    ls.predictions.append({"id": 99, "task": ids[0], "result": [], "model_version": predictor.model_version})
    ls.predictions.append({"id": 98, "task": ids[1], "result": [], "model_version": "an-older-version"})
    outcome, _ = run(ls, settings, predictor, ids)
    assert (outcome.done, outcome.skipped) == (2, 1)
    assert len(ls.predictions_of(ids[0])) == 1
    assert len(ls.predictions_of(ids[1])) == 2  # the older version's prediction does not count


def test_running_a_chunk_again_writes_nothing_new(ls, settings, predictor):
    ids = ls.add_tasks(PROJECT, "/img/a.png", 3)
    run(ls, settings, predictor, ids)
    outcome, _ = run(ls, settings, predictor, ids)
    assert (outcome.done, outcome.skipped) == (0, 3)
    assert len(ls.predictions) == 3


def test_5xx_from_label_studio_is_retried_with_doubling_backoff(ls, settings, predictor):
    (task_id,) = ls.add_tasks(PROJECT, "/img/a.png", 1)
    ls.failures["POST /api/predictions/"] = 2
    sleeps: list[float] = []
    outcome, client = run(ls, settings, predictor, [task_id], sleeps)
    assert outcome.done == 1 and len(ls.predictions_of(task_id)) == 1
    assert client.retried == 2
    assert sleeps == [0.01, 0.02]


def test_label_studio_down_through_every_retry_raises_so_the_job_is_retried_later(ls, settings, predictor):
    ids = ls.add_tasks(PROJECT, "/img/a.png", 2)
    ls.down = True
    with pytest.raises(LabelStudioDown):
        run(ls, settings, predictor, ids)
    ls.down = False
    outcome, _ = run(ls, settings, predictor, ids)
    assert outcome.done == 2


def test_a_deleted_task_is_recorded_as_failed_and_the_others_are_written(ls, settings, predictor):
    ids = ls.add_tasks(PROJECT, "/img/a.png", 3)
    del ls.tasks[ids[1]]
    sleeps: list[float] = []
    outcome, _ = run(ls, settings, predictor, ids, sleeps)
    assert (outcome.done, outcome.failed) == (2, 1)
    assert f"task {ids[1]}" in outcome.errors[0] and "deleted" in outcome.errors[0]
    assert sleeps == []  # nothing was retried
    assert not any(r.startswith("GET /api/tasks/") and r != "GET /api/tasks/" for r in ls.requests)


def test_a_prediction_rejected_with_a_4xx_is_recorded_and_not_retried(ls, settings, predictor):
    ids = ls.add_tasks(PROJECT, "/img/a.png", 2)
    ls.rejections["POST /api/predictions/"] = 1
    sleeps: list[float] = []
    outcome, _ = run(ls, settings, predictor, ids, sleeps)
    assert (outcome.done, outcome.failed) == (1, 1)
    assert "HTTP 400" in outcome.errors[0]
    assert sleeps == []


def test_a_bad_token_fails_every_task_at_once(ls, settings, predictor):
    ids = ls.add_tasks(PROJECT, "/img/a.png", 2)
    bad = settings.replace(label_studio_api_key="wrong-token")
    outcome, _ = run(ls, bad, predictor, ids)
    assert (outcome.done, outcome.failed) == (0, 2)
    assert "401" in outcome.errors[0]
    with pytest.raises(TaskRejected):
        LabelStudioClient.from_settings(bad).project(PROJECT)


def test_a_task_whose_image_cannot_be_fetched_gets_an_empty_prediction_once(ls, settings, predictor):
    (task_id,) = ls.add_tasks(PROJECT, "/img/missing.png", 1)
    outcome, _ = run(ls, settings, predictor, [task_id])
    assert outcome.failed == 1
    (prediction,) = ls.predictions_of(task_id)
    assert prediction["result"] == [] and prediction["score"] == 0.0
    outcome, _ = run(ls, settings, predictor, [task_id])
    assert outcome.skipped == 1


def test_the_score_is_lower_for_hesitant_pixels_so_ascending_order_shows_the_least_sure_first():
    target = BrushTarget("tag", "image", "image", "Object")
    sure = np.where(np.arange(100 * 100).reshape(100, 100) % 2, 255, 0).astype(np.uint8)
    unsure = np.where(np.arange(100 * 100).reshape(100, 100) % 2, 150, 0).astype(np.uint8)
    _, sure_score = brush_result(sure, target, 0.5)
    _, unsure_score = brush_result(unsure, target, 0.5)
    assert sure_score == pytest.approx(1.0)
    assert 0.0 < unsure_score < sure_score
