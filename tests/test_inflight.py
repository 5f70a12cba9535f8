"""Tasks in flight: handed to background pre-annotation, left alone by ``/predict`` until written.

The registry on a real Redis (127.0.0.1:6379, a key prefix of each test's own) and in memory must
agree; ``/predict`` (Flask test client, an untrained ISNet at 64x64) answers held tasks without a
``result``; a job turns holds into written marks and releases what it could not do.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterator

import pytest
from redis import Redis

from backend.jobs import hooks, inflight, local
from backend.jobs.inflight import InFlight, MemoryInFlight, MemoryTable, RedisInFlight
from backend.jobs.preannotate import preannotate_tasks
from backend.labelstudio.client import LabelStudioClient, LabelStudioDown
from backend.labelstudio.fetch import ImageFetcher
from backend.model import ISNetModel
from backend.pipeline import TaskPipeline
from backend.server.app import create_app
from backend.service.inference import DirectInference
from backend.settings import Settings
from tests import labelstudio_server
from tests.conftest import FAKE_LS_TOKEN
from tests.test_preannotate import BRUSH_CONFIG, png

REDIS_URL = "redis://127.0.0.1:6379/0"
_projects = itertools.count(7000)


def new_project() -> int:
    """A project id no other test uses: the in-memory table is shared by the whole process."""
    return next(_projects)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    prefix = f"isnet-test-inflight-{uuid.uuid4().hex[:8]}"
    yield prefix
    connection = Redis.from_url(REDIS_URL)
    for key in connection.scan_iter(f"{prefix}:*"):
        connection.delete(key)


@pytest.fixture(params=["memory", "redis"])
def registry(request, redis_prefix) -> InFlight:
    if request.param == "memory":
        return MemoryInFlight(MemoryTable(), pending_ttl=60, written_ttl=30)
    return RedisInFlight(Redis.from_url(REDIS_URL), redis_prefix, pending_ttl=60, written_ttl=30)


# -- the registry ---------------------------------------------------------------------------------


def test_holds_become_written_marks_or_are_released_per_project_version_and_task(registry):
    registry.hold(1, "v1", [10, 11, 12])
    registry.written(1, "v1", [11])
    registry.release(1, "v1", [12])
    assert registry.states(1, "v1", [10, 11, 12, 13]) == {10: "pending", 11: "written"}
    assert registry.held(1, "v1", [10, 11, 12]) == {10, 11}
    assert registry.held(1, "v2", [10, 11]) == set(), "another version is another prediction"
    assert registry.held(2, "v1", [10, 11]) == set(), "another project's task 10 is another task"
    assert registry.held(1, "v1", []) == set()


def test_redis_and_memory_give_the_same_answers_to_the_same_calls(redis_prefix):
    memory = MemoryInFlight(MemoryTable(), pending_ttl=60)
    redis = RedisInFlight(Redis.from_url(REDIS_URL), redis_prefix, pending_ttl=60)
    steps = [("hold", 3, "a", [1, 2, 3, 4]), ("written", 3, "a", [2, 5]), ("release", 3, "a", [3]),
             ("hold", 3, "b", [1]), ("release", 4, "a", [1]), ("hold", 3, "a", [5])]
    for name, project, version, ids in steps:
        for registry in (memory, redis):
            getattr(registry, name)(project, version, ids)
        for project_, version_ in itertools.product((3, 4), ("a", "b")):
            assert memory.states(project_, version_, range(7)) == redis.states(project_, version_, range(7))
    assert memory.states(3, "a", range(7)) == {1: "pending", 2: "written", 4: "pending", 5: "pending"}


def test_a_hold_and_a_written_mark_expire_in_memory():
    clock = FakeClock()
    registry = MemoryInFlight(MemoryTable(clock), pending_ttl=600, written_ttl=130)
    registry.hold(1, "v", [1])
    registry.written(1, "v", [2])
    clock.now += 129
    assert registry.held(1, "v", [1, 2]) == {1, 2}
    clock.now += 2
    assert registry.held(1, "v", [1, 2]) == {1}, "the written mark outlives one /predict only"
    clock.now += 600
    assert registry.held(1, "v", [1, 2]) == set(), "a killed worker cannot hold a task for ever"
    registry.hold(1, "v", [3])
    assert list(registry.table.entries) == ["1:v:3"], "expired entries are swept"


def test_a_hold_expires_in_redis(redis_prefix):
    registry = RedisInFlight(Redis.from_url(REDIS_URL), redis_prefix, pending_ttl=0.3)
    registry.hold(1, "v", [1])
    assert registry.held(1, "v", [1]) == {1}
    deadline = time.monotonic() + 5
    while registry.held(1, "v", [1]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert registry.held(1, "v", [1]) == set()


def test_redis_unreachable_answers_nothing_held_at_once_and_raises_nothing():
    settings = Settings(redis_url=f"redis://127.0.0.1:{labelstudio_server.free_port()}/0", redis_timeout=0.2)
    registry = inflight.registry(settings)
    start = time.monotonic()
    registry.hold(1, "v", [1])
    assert registry.held(1, "v", [1]) == set()
    registry.release(1, "v", [1])
    assert time.monotonic() - start < 3


def test_without_redis_every_caller_shares_one_table_and_with_redis_the_queue_names_the_keys():
    one, two = Settings(redis_url="", inflight_ttl=5), Settings(redis_url="", inflight_ttl=9)
    project = new_project()
    inflight.registry(one).hold(project, "v", [1])
    assert inflight.registry(two).held(project, "v", [1]) == {1}
    assert inflight.registry(two).pending_ttl == 9
    queued = Settings(redis_url=REDIS_URL, queue_name="q1")
    assert isinstance(inflight.registry(queued), RedisInFlight)
    assert inflight.registry(queued).prefix == "isnet:q1:inflight"


# -- /predict leaves held tasks alone -------------------------------------------------------------


@pytest.fixture(scope="module")
def settings(random_checkpoint, image_host, tmp_path_factory) -> Settings:
    home = tmp_path_factory.mktemp("home")
    return Settings(home=home, weights=str(random_checkpoint), input_size=64, engine="torch", device="cpu",
                    label_studio_url=image_host.url, label_studio_api_key="", model_dir_env=str(home / "models"),
                    redis_url="")


@pytest.fixture(scope="module")
def model(settings) -> Iterator[ISNetModel]:
    model = ISNetModel(settings)
    model.setup()
    yield model
    model.service.stop()


@pytest.fixture(scope="module")
def client(settings, model):
    return create_app(settings, model).test_client()


def predict(client, project: int, ids: list[int], image: str = "/0003.jpeg") -> list[dict]:
    tasks = [{"id": i, "data": {"image": image}, "project": project} for i in ids]
    body = {"tasks": tasks, "project": f"{project}.1795550339", "label_config": BRUSH_CONFIG}
    response = client.post("/predict", json=body)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["results"]


def test_predict_answers_a_held_task_without_result_and_does_not_hand_it_over_again(client, model, settings):
    project = new_project()
    inflight.registry(settings).hold(project, model.model_version, [2])
    handed = hooks.recorded()["preannotation_tasks"]
    results = predict(client, project, [1, 2, 3])
    assert ["result" in r for r in results] == [True, False, True]
    assert results[1] == {"model_version": model.model_version, "score": 0.0}
    assert hooks.recorded()["preannotation_tasks"] == handed, "a held task is not handed over twice"


def test_a_written_mark_keeps_predict_away_and_a_released_task_is_predicted_again(client, model, settings):
    project = new_project()
    registry = inflight.registry(settings)
    registry.written(project, model.model_version, [1])
    registry.hold(project, model.model_version, [2])
    assert ["result" in r for r in predict(client, project, [1, 2])] == [False, False]
    registry.release(project, model.model_version, [2])
    assert ["result" in r for r in predict(client, project, [1, 2])] == [False, True]


def test_a_hold_under_another_version_does_not_keep_predict_away(client, model, settings):
    project = new_project()
    inflight.registry(settings).hold(project, "some-older-version", [1])
    assert "result" in predict(client, project, [1])[0]


# -- a job settles its tasks' holds -----------------------------------------------------------------


@pytest.fixture(scope="module")
def job_settings(random_checkpoint, tmp_path_factory) -> Settings:
    home = tmp_path_factory.mktemp("job-home")
    return Settings(home=home, weights=str(random_checkpoint), input_size=64, engine="torch", device="cpu",
                    model_dir_env=str(home / "models"), label_studio_api_key=FAKE_LS_TOKEN, predict_batch=2,
                    preannotate_batch=4, ls_retries=2, ls_backoff=0.01, ls_timeout=5, redis_url="")


@pytest.fixture(scope="module")
def predictor(job_settings) -> DirectInference:
    return DirectInference(job_settings)


@pytest.fixture
def ls(fake_label_studio):
    fake_label_studio.label_config = BRUSH_CONFIG
    fake_label_studio.images["a.png"] = png()
    return fake_label_studio


def run_job(ls, settings: Settings, predictor, project: int, ids: list[int], registry: InFlight):
    client = LabelStudioClient(ls.url, LabelStudioClient.from_settings(settings).auth, settings.ls_retries,
                               settings.ls_backoff, settings.ls_timeout, sleep=lambda _: None)
    pipeline = TaskPipeline(settings, predictor, ImageFetcher(settings, client.auth))
    return preannotate_tasks(project, ids, client=client, pipeline=pipeline, settings=settings,
                             held_version=predictor.model_version, inflight=registry)


def test_a_job_marks_what_it_wrote_and_releases_what_failed(ls, job_settings, predictor):
    project = new_project()
    ids = ls.add_tasks(project, "/img/a.png", 3)
    del ls.tasks[ids[2]]  # deleted in Label Studio after it was handed over
    registry = MemoryInFlight(MemoryTable(), pending_ttl=60)
    registry.hold(project, predictor.model_version, ids)
    outcome = run_job(ls, job_settings.replace(label_studio_url=ls.url), predictor, project, ids,
                      registry)
    assert (outcome.done, outcome.failed) == (2, 1)
    assert registry.states(project, predictor.model_version, ids) == {ids[0]: "written", ids[1]: "written"}


def test_a_task_predicted_meanwhile_is_not_written_again_and_stays_marked(ls, job_settings, predictor):
    project = new_project()
    ids = ls.add_tasks(project, "/img/a.png", 2)
    ls.predictions.append({"id": 900, "task": ids[0], "result": [], "model_version": predictor.model_version})
    registry = MemoryInFlight(MemoryTable(), pending_ttl=60)
    registry.hold(project, predictor.model_version, ids)
    outcome = run_job(ls, job_settings.replace(label_studio_url=ls.url), predictor, project, ids,
                      registry)
    assert (outcome.done, outcome.skipped) == (1, 1)
    assert [len(ls.predictions_of(i)) for i in ids] == [1, 1]
    assert registry.held(project, predictor.model_version, ids) == set(ids)


def test_a_job_stopped_by_label_studio_down_releases_its_tasks(ls, job_settings, predictor):
    project = new_project()
    ids = ls.add_tasks(project, "/img/a.png", 2)
    ls.down = True
    registry = MemoryInFlight(MemoryTable(), pending_ttl=60)
    registry.hold(project, predictor.model_version, ids)
    with pytest.raises(LabelStudioDown):
        run_job(ls, job_settings.replace(label_studio_url=ls.url), predictor, project, ids, registry)
    assert registry.held(project, predictor.model_version, ids) == set()


def test_tasks_dropped_by_a_full_in_process_queue_are_released(job_settings, predictor):
    local.reset()
    settings = job_settings.replace(local_queue=2, label_studio_url="http://127.0.0.1:9")
    project = new_project()
    inflight.registry(settings).hold(project, "v", [1, 2, 3, 4])
    runner = local.LocalRunner(settings)
    runner.submit(project, [[1, 2], [3, 4]], "v")
    assert runner.dropped == 2
    assert inflight.registry(settings).held(project, "v", [3, 4]) == set()
    local.reset()


def test_deferred_tasks_are_held_until_the_in_process_job_wrote_them_once(ls, job_settings):
    local.reset()
    settings = job_settings.replace(label_studio_url=ls.url)
    model = ISNetModel(settings)
    model.setup()
    try:
        project = new_project()
        ids = ls.add_tasks(project, "/img/a.png", 3)
        tasks = [{"id": i, "data": {"image": "/img/a.png"}, "project": project} for i in ids]
        first = model.predict(tasks, label_config=BRUSH_CONFIG, project=f"{project}.1", deadline=time.monotonic())
        assert all("result" not in a for a in first), "no budget: every task is handed over"
        again = model.predict(tasks, label_config=BRUSH_CONFIG, project=f"{project}.1")
        assert all("result" not in a for a in again), "handed over, so left to the background"
        assert local.current_runner().wait_idle(60)
        assert [len(ls.predictions_of(i)) for i in ids] == [1, 1, 1]
        states = inflight.registry(settings).states(project, model.model_version, ids)
        assert states == dict.fromkeys(ids, "written")
    finally:
        model.service.stop()
        local.reset()
