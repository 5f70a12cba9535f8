"""The ML backend protocol as Label Studio 1.23 speaks it (Flask test client, real model, real HTTP fetches).

An untrained network at 64x64 stands in for ISNet: these tests are about the protocol, not masks.
"""

from __future__ import annotations

import pytest

from backend.labelstudio.rle import rle_to_mask
from backend.model import ISNetModel
from backend.server.app import create_app
from backend.settings import Settings

BRUSH_CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="tag" toName="image"><Label value="Foreground"/></BrushLabels></View>'
)
NO_BRUSH_CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<RectangleLabels name="box" toName="image"><Label value="Car"/></RectangleLabels></View>'
)


@pytest.fixture(scope="module")
def settings(random_checkpoint, image_host, tmp_path_factory) -> Settings:
    home = tmp_path_factory.mktemp("home")
    return Settings(home=home, weights=str(random_checkpoint), input_size=64, engine="torch",
                    label_studio_url=image_host.url, label_studio_api_key="", model_dir_env=str(home / "models"))


@pytest.fixture(scope="module")
def model(settings) -> ISNetModel:
    model = ISNetModel(settings)
    model.setup()
    yield model
    model.service.stop()


@pytest.fixture(scope="module")
def client(settings, model):
    return create_app(settings, model).test_client()


def predict_body(*images: str, config: str = BRUSH_CONFIG) -> dict:
    tasks = [{"id": i + 1, "data": {"image": url}, "project": 1} for i, url in enumerate(images)]
    return {"tasks": tasks, "project": "1.1795550339", "label_config": config,
            "params": {"login": None, "password": None, "context": None}}


def test_health_reports_status_model_version_engine_and_device(client, model):
    body = client.get("/health").get_json()
    assert body["status"] == "UP"
    assert body["model_version"] == model.model_version
    assert body["engine"] == "torch" and body["device"] == "cpu"


def test_setup_reports_the_model_version(client, model):
    response = client.post("/setup", json={"project": "1.1795550339", "schema": BRUSH_CONFIG,
                                            "hostname": "http://127.0.0.1:8080", "access_token": "x" * 40})
    assert response.status_code == 200
    assert response.get_json() == {"model_version": model.model_version}


def test_setup_refuses_a_config_without_brush_labels_and_says_so(client):
    response = client.post("/setup", json={"project": "1.1", "schema": NO_BRUSH_CONFIG})
    assert response.status_code == 400
    assert "BrushLabels" in response.get_json()["error"]


def test_predict_answers_one_brush_result_per_task_in_order_at_full_resolution(client, model):
    body = client.post("/predict", json=predict_body("/bike.jpeg", "/0003.jpeg")).get_json()
    assert len(body["results"]) == 2
    sizes = []
    for entry in body["results"]:
        assert entry["model_version"] == model.model_version
        (region,) = entry["result"]
        assert (region["from_name"], region["to_name"], region["type"]) == ("tag", "image", "brushlabels")
        assert region["value"]["brushlabels"] == ["Foreground"]
        w, h = region["original_width"], region["original_height"]
        assert rle_to_mask(region["value"]["rle"], h, w).shape == (h, w)
        sizes.append((w, h))
    assert sizes == [(3000, 2000), (650, 434)]


def test_predict_of_an_empty_task_list_answers_no_results(client):
    response = client.post("/predict", json={"tasks": [], "label_config": BRUSH_CONFIG})
    assert response.status_code == 200
    assert response.get_json() == {"results": []}


@pytest.mark.parametrize("path", ["/predict", "/setup", "/webhook"])
def test_malformed_json_is_a_400_that_says_so(client, path):
    response = client.post(path, data='{"tasks": [', content_type="application/json")
    assert response.status_code == 400
    assert "not valid JSON" in response.get_json()["error"]


def test_predict_without_tasks_is_a_400_that_says_so(client):
    response = client.post("/predict", json={"label_config": BRUSH_CONFIG})
    assert response.status_code == 400
    assert '"tasks"' in response.get_json()["error"]


def test_a_repeated_image_is_answered_from_the_cache(client, model):
    client.post("/predict", json=predict_body("/0003.jpeg"))
    hits = model.stats.get("cache.hits")
    images = model.service.images_done
    body = client.post("/predict", json=predict_body("/0003.jpeg")).get_json()
    assert model.stats.get("cache.hits") == hits + 1
    assert model.service.images_done == images
    assert body["results"][0]["result"][0]["original_width"] == 650


def test_a_cached_result_takes_the_tag_names_of_the_asking_project(client):
    client.post("/predict", json=predict_body("/0003.jpeg"))
    other = BRUSH_CONFIG.replace('name="tag"', 'name="mask"').replace('value="Foreground"', 'value="Object"')
    body = client.post("/predict", json=predict_body("/0003.jpeg", config=other)).get_json()
    (region,) = body["results"][0]["result"]
    assert region["from_name"] == "mask" and region["value"]["brushlabels"] == ["Object"]


@pytest.mark.parametrize("action", ["ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED",
                                    "ANNOTATIONS_DELETED", "START_TRAINING", "TASKS_CREATED"])
def test_webhook_routes_label_studio_events_to_fit_and_says_what_became_of_them(client, model, action):
    response = client.post("/webhook", json={"action": action, "project": {"id": 7, "title": "p"}})
    assert response.status_code == 200
    body = response.get_json()  # no Redis and no LABEL_STUDIO_API_KEY: the in-process worker could do nothing
    assert (body["status"], body["action"]) == ("skipped", action)
    assert body["reason"].startswith("no LABEL_STUDIO_API_KEY")
    assert model.events[-1]["action"] == action and model.events[-1]["project"] == 7


def test_webhook_accepts_and_ignores_other_actions(client):
    response = client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 7}})
    assert response.status_code == 200
    assert response.get_json()["status"] == "ignored"


def test_webhook_without_an_action_is_a_400(client):
    response = client.post("/webhook", json={"project": {"id": 7}})
    assert response.status_code == 400
    assert "action" in response.get_json()["error"]


def test_metrics_count_requests_predictions_and_the_model_version(client, model):
    client.post("/predict", json=predict_body("/0003.jpeg"))
    body = client.get("/metrics.json").get_json()
    assert body["model_version"] == model.model_version
    assert body["counters"]["requests.POST /predict 200"] >= 1
    assert body["counters"]["predict.tasks"] >= 1
    assert "cache.hits" in body["counters"]
    assert body["inference"]["images"] >= 1
    assert isinstance(body["last_errors"], list)


def test_every_response_carries_a_request_id_and_keeps_a_sane_one_it_was_given(client):
    assert len(client.get("/health").headers["X-Request-Id"]) >= 8
    assert client.get("/health", headers={"X-Request-Id": "ls-abc-123"}).headers["X-Request-Id"] == "ls-abc-123"
    assert client.get("/health", headers={"X-Request-Id": "bad id; rm"}).headers["X-Request-Id"] != "bad id; rm"


def test_an_unknown_route_is_a_json_404(client):
    response = client.get("/nope")
    assert response.status_code == 404
    assert "error" in response.get_json()


@pytest.fixture(scope="module")
def guarded_client(settings, model):
    guarded = settings.replace(basic_auth_user="ls", basic_auth_pass="s3cret")
    return create_app(guarded, model).test_client()


PROTECTED = [("GET", "/"), ("POST", "/setup"), ("GET", "/versions"), ("POST", "/predict"), ("POST", "/webhook"),
             ("GET", "/metrics"), ("GET", "/nope")]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_with_basic_auth_set_a_request_without_it_is_refused(guarded_client, method, path):
    response = guarded_client.open(path, method=method, json={"action": "START_TRAINING", "project": {"id": 7}})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic")


def test_with_basic_auth_set_health_alone_is_served_without_it(guarded_client):
    assert guarded_client.get("/health").status_code == 200


def test_with_basic_auth_set_wrong_credentials_are_refused(guarded_client):
    assert guarded_client.get("/metrics", auth=("ls", "wrong")).status_code == 401


def test_with_basic_auth_set_the_right_credentials_are_served(guarded_client):
    assert guarded_client.get("/metrics", auth=("ls", "s3cret")).status_code == 200
