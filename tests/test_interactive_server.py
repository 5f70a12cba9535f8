"""Interactive prompts through ``/predict`` (Flask test client, the real ISNet weights at 320, real HTTP fetches).

Label Studio sends a box or clicks as a one-task ``/predict`` whose ``params.context`` holds the
annotator's regions, and hands the first answer to the editor.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from backend.labelstudio.rle import rle_to_mask
from backend.model import ISNetModel
from backend.server.app import create_app
from backend.settings import Settings
from tests.paths import DIS_DEMO_IMAGES

CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="tag" toName="image"><Label value="Foreground"/><Label value="Alpaca"/></BrushLabels>'
    '<RectangleLabels name="box" toName="image" smart="true"><Label value="Alpaca"/><Label value="Fence"/>'
    "</RectangleLabels>"
    '<KeypointLabels name="point" toName="image" smart="true"><Label value="Alpaca"/></KeypointLabels></View>'
)
IMAGE = "/0003.jpeg"  # 650x434, an alpaca's head
WIDTH, HEIGHT = Image.open(DIS_DEMO_IMAGES / "0003.jpeg").size


@pytest.fixture(scope="module")
def model(image_host, tmp_path_factory) -> ISNetModel:
    home = tmp_path_factory.mktemp("home")
    settings = Settings(input_size=320, interactive_size=320, engine="torch", label_studio_url=image_host.url,
                        label_studio_api_key="", model_dir_env=str(home / "models"))
    model = ISNetModel(settings)
    model.setup()
    yield model
    model.service.stop()


@pytest.fixture(scope="module")
def client(model):
    return create_app(model.settings, model).test_client()


def rectangle(x, y, w, h, label="Alpaca", **extra):
    return {"from_name": "box", "to_name": "image", "type": "rectanglelabels", "original_width": WIDTH,
            "original_height": HEIGHT, "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0,
                                                 "rectanglelabels": [label]}, **extra}


def keypoint(x, y, positive=True):
    return {"from_name": "point", "to_name": "image", "type": "keypointlabels", "original_width": WIDTH,
            "original_height": HEIGHT, "is_positive": positive,
            "value": {"x": x, "y": y, "width": 0.6, "keypointlabels": ["Alpaca"]}}


def prompt(client, *regions, task_id=1, image=IMAGE):
    body = {"tasks": [{"id": task_id, "data": {"image": image}, "project": 1}], "project": "1.1795550339",
            "label_config": CONFIG, "params": {"login": None, "password": None, "context": {"result": list(regions)}}}
    response = client.post("/predict", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    (entry,) = response.get_json()["results"]
    return entry


def mask_of(region) -> np.ndarray:
    return rle_to_mask(region["value"]["rle"], region["original_height"], region["original_width"]) > 0


def test_a_box_gives_one_brush_region_at_the_images_full_size(client):
    (region,) = prompt(client, rectangle(10, 0, 70, 99))["result"]
    assert (region["type"], region["from_name"], region["to_name"]) == ("brushlabels", "tag", "image")
    assert (region["original_width"], region["original_height"]) == (WIDTH, HEIGHT)
    assert mask_of(region).mean() > 0.2


def test_the_region_carries_the_rectangles_label_when_brushlabels_has_it(client):
    (region,) = prompt(client, rectangle(10, 0, 70, 99, label="Alpaca"))["result"]
    assert region["value"]["brushlabels"] == ["Alpaca"]


def test_a_rectangle_label_brushlabels_lacks_gives_the_default_label(client):
    (region,) = prompt(client, rectangle(10, 0, 70, 99, label="Fence"))["result"]
    assert region["value"]["brushlabels"] == ["Foreground"]


def test_nothing_outside_the_rectangle_is_kept(client):
    (region,) = prompt(client, rectangle(30, 20, 30, 40))["result"]
    mask = mask_of(region)
    x0, y0, x1, y1 = int(0.3 * WIDTH), int(0.2 * HEIGHT), int(np.ceil(0.6 * WIDTH)), int(np.ceil(0.6 * HEIGHT))
    assert mask[y0:y1, x0:x1].any()
    outside = mask.copy()
    outside[y0:y1, x0:x1] = False
    assert not outside.any()


def test_a_negative_click_removes_part_of_the_boxs_mask(client):
    box = rectangle(10, 0, 70, 99)
    (whole,) = prompt(client, box)["result"]
    (cut,) = prompt(client, box, keypoint(45, 40), keypoint(45, 90, positive=False))["result"]
    before, after = mask_of(whole), mask_of(cut)
    assert after[int(0.4 * HEIGHT), int(0.45 * WIDTH)]
    assert before[int(0.9 * HEIGHT), int(0.45 * WIDTH)] and not after[int(0.9 * HEIGHT), int(0.45 * WIDTH)]
    assert after.sum() < before.sum()


def test_a_second_prompt_on_the_same_image_does_not_fetch_or_decode_it_again(client, model):
    prompt(client, rectangle(10, 0, 70, 99), task_id=7)
    misses = model.interactive.memory.misses
    prompt(client, rectangle(20, 10, 50, 80), task_id=7)
    assert model.interactive.memory.misses == misses


@pytest.mark.parametrize(
    "regions",
    [
        [rectangle(10, 10, 0, 50)],  # zero size
        [rectangle(150, 10, 20, 20)],  # outside the image
        [keypoint(120, 50)],  # keypoint outside the image
        [rectangle(10, 10, 50, 50, label="Zebra")],  # unknown label
        [rectangle(10, 10, 50, 50, to_name="other")],  # another image tag
        [{"type": "rectanglelabels", "value": "x"}],  # malformed region
    ],
)
def test_a_bad_prompt_gets_an_empty_result_and_a_logged_reason(client, regions, caplog):
    with caplog.at_level(logging.WARNING):
        entry = prompt(client, *regions)
    assert entry["result"] == []
    assert entry["rejected_prompts"]
    assert any("interactive prompt ignored" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("context", [{"result": "not a list"}, {"result": [1, 2]}])
def test_a_malformed_context_is_not_a_500(client, context):
    body = {"tasks": [{"id": 1, "data": {"image": IMAGE}}], "label_config": CONFIG, "params": {"context": context}}
    response = client.post("/predict", json=body)
    assert response.status_code == 200
    assert response.get_json()["results"][0]["result"] == []


def test_a_prompt_on_an_image_that_cannot_be_fetched_gets_an_empty_result(client):
    entry = prompt(client, rectangle(10, 10, 50, 50), image="/missing.jpeg", task_id=99)
    assert entry["result"] == []


def test_a_box_whose_crop_is_the_whole_image_runs_no_second_inference(client, model):
    # The box plus its margin covers the whole 650x434 image: its crop is the whole-image input,
    # predicted once for the first prompt and kept with the decoded image.
    first = prompt(client, rectangle(8, 6, 84, 88), task_id=77)
    images_before = model.service.images_done
    second = prompt(client, rectangle(9, 7, 82, 86), task_id=77)
    assert model.service.images_done == images_before
    assert first["result"] and second["result"]
    assert mask_of(second["result"][0]).sum() <= mask_of(first["result"][0]).sum()
