"""A smart-tool request takes at most ``ISNET_MAX_PROMPTS`` regions: more are refused at once, with the
reason, before the image is fetched or any region is grouped (Flask test client, an untrained network)."""

from __future__ import annotations

import time

import pytest

from backend.model import ISNetModel
from backend.server.app import create_app
from backend.settings import Settings

CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="tag" toName="image"><Label value="Foreground"/></BrushLabels>'
    '<RectangleLabels name="box" toName="image" smart="true"><Label value="Foreground"/></RectangleLabels>'
    '<KeypointLabels name="point" toName="image" smart="true"><Label value="Foreground"/></KeypointLabels></View>'
)
DEADLINE_S = 1.0  # before the bound, 10,000 prompts held the request for its whole budget (30 s here)


@pytest.fixture(scope="module")
def model(image_host, random_checkpoint, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    settings = Settings(weights=str(random_checkpoint), input_size=64, interactive_size=64, engine="torch",
                        device="cpu", label_studio_url=image_host.url, label_studio_api_key="",
                        model_dir_env=str(home / "models"), home=home, predict_budget=30, max_prompts=50)
    model = ISNetModel(settings)
    model.setup()
    yield model
    model.service.stop()


def regions(n: int) -> list[dict]:
    """``n`` smart-tool regions: boxes and clicks spread over the image, as an editor would send them."""
    out = []
    for i in range(n):
        x, y = (i * 7) % 90, (i * 13) % 90
        if i % 2:
            out.append({"from_name": "box", "to_name": "image", "type": "rectanglelabels",
                        "value": {"x": x, "y": y, "width": 8, "height": 8, "rectanglelabels": ["Foreground"]}})
        else:
            out.append({"from_name": "point", "to_name": "image", "type": "keypointlabels", "is_positive": True,
                        "value": {"x": x + 1, "y": y + 1, "keypointlabels": ["Foreground"]}})
    return out


def ask(client, context_regions: list[dict]):
    body = {"tasks": [{"id": 1, "data": {"image": "/0003.jpeg"}, "project": 1}], "project": "1.1795550339",
            "label_config": CONFIG, "params": {"context": {"result": context_regions}}}
    return client.post("/predict", json=body)


def test_ten_thousand_prompts_are_refused_within_a_second_with_the_reason(model, image_host):
    client = create_app(model.settings, model).test_client()
    many = regions(10_000)
    started = time.monotonic()
    response = ask(client, many)
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.get_data(as_text=True)
    (entry,) = response.get_json()["results"]
    assert entry["result"] == []
    assert "10000 regions" in entry["rejected_prompts"][0] and "ISNET_MAX_PROMPTS" in entry["rejected_prompts"][0]
    assert elapsed < DEADLINE_S, f"{elapsed:.2f} s"


def test_a_context_within_the_bound_is_still_segmented(model):
    client = create_app(model.settings, model).test_client()
    (entry,) = ask(client, regions(2)).get_json()["results"]
    assert "rejected_prompts" not in entry
    assert entry["result"], entry  # one box and one click: at least one brush region
