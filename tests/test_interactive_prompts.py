"""Smart-tool regions from Label Studio's interactive context, as the prompts the backend segments."""

from __future__ import annotations

import pytest

from backend.geometry import Box
from backend.labelstudio.config import parse_label_config
from backend.labelstudio.prompts import PromptError, parse_prompts

CONFIG = (
    '<View><Image name="image" value="$image"/><Image name="other" value="$other"/>'
    '<BrushLabels name="tag" toName="image"><Label value="Foreground"/><Label value="Bike"/></BrushLabels>'
    '<RectangleLabels name="box" toName="image" smart="true"><Label value="Bike"/><Label value="Car"/>'
    "</RectangleLabels>"
    '<KeypointLabels name="point" toName="image" smart="true"><Label value="Bike"/><Label value="Car"/>'
    "</KeypointLabels></View>"
)
TARGET = parse_label_config(CONFIG)
WIDTH, HEIGHT = 3000, 2000


def rectangle(x, y, w, h, label="Bike", **extra):
    return {"from_name": "box", "to_name": "image", "type": "rectanglelabels", "original_width": WIDTH,
            "original_height": HEIGHT, "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0,
                                                 "rectanglelabels": [label]}, **extra}


def keypoint(x, y, positive=True, label="Bike", **extra):
    return {"from_name": "point", "to_name": "image", "type": "keypointlabels", "original_width": WIDTH,
            "original_height": HEIGHT, "is_positive": positive,
            "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": [label]}, **extra}


def parse(*regions):
    return parse_prompts({"result": list(regions)}, CONFIG, TARGET, WIDTH, HEIGHT)


def test_a_rectangle_in_percent_becomes_a_box_in_pixels():
    (obj,) = parse(rectangle(10, 20, 50, 25)).objects
    assert obj.box == Box(300, 400, 1800, 900)
    assert obj.clicks == []


def test_a_rectangle_label_that_brushlabels_has_names_the_region():
    (obj,) = parse(rectangle(10, 20, 50, 25, label="Bike")).objects
    assert obj.label == "Bike"


def test_a_rectangle_label_that_brushlabels_lacks_falls_back_to_the_default_label():
    (obj,) = parse(rectangle(10, 20, 50, 25, label="Car")).objects
    assert obj.label == TARGET.label == "Foreground"


def test_a_rotated_rectangle_is_segmented_in_its_bounding_box():
    region = rectangle(50, 10, 20, 20)
    region["value"]["rotation"] = 90
    (obj,) = parse(region).objects
    assert obj.box is not None
    assert (obj.box.x0, obj.box.x1) == pytest.approx((WIDTH * 0.5 - HEIGHT * 0.2, WIDTH * 0.5))
    assert (obj.box.y0, obj.box.y1) == pytest.approx((HEIGHT * 0.1, HEIGHT * 0.1 + WIDTH * 0.2))


def test_a_rectangle_partly_outside_the_image_is_clipped():
    (obj,) = parse(rectangle(80, 90, 40, 40)).objects
    assert obj.box == Box(2400, 1800, 3000, 2000)


def test_clicks_inside_a_rectangle_refine_it():
    (obj,) = parse(rectangle(10, 10, 50, 50), keypoint(20, 20), keypoint(30, 30, positive=False)).objects
    assert [(c.x, c.y, c.positive) for c in obj.clicks] == [(600, 400, True), (900, 600, False)]


def test_a_click_goes_to_the_smallest_rectangle_that_holds_it():
    big, small = rectangle(0, 0, 90, 90), rectangle(10, 10, 20, 20)
    objects = parse(big, small, keypoint(15, 15)).objects
    assert [len(o.clicks) for o in objects] == [0, 1]


def test_clicks_outside_every_rectangle_make_an_object_of_their_own_with_their_label():
    objects = parse(keypoint(20, 20, label="Bike"), keypoint(25, 25, positive=False)).objects
    (obj,) = objects
    assert obj.box is None
    assert obj.label == "Bike"
    assert [c.positive for c in obj.clicks] == [True, False]


@pytest.mark.parametrize(
    ("region", "reason"),
    [
        (rectangle(10, 10, 0, 20), "no area"),
        (rectangle(10, 10, 20, -5), "no area"),
        (rectangle(120, 10, 20, 20), "outside the image"),
        (rectangle(-50, 10, 20, 20), "outside the image"),
        (keypoint(101, 50), "outside the image"),
        (keypoint(50, -1), "outside the image"),
        (rectangle(10, 10, 20, 20, label="Zebra"), "not a label"),
        (keypoint(10, 10, label="Zebra"), "not a label"),
        ({**rectangle(10, 10, 20, 20), "to_name": "other"}, "image tag 'other'"),
        ({**rectangle(10, 10, 20, 20), "from_name": "nope"}, "not a <rectanglelabels> tag"),
        ({**rectangle(10, 10, 20, 20), "type": "polygonlabels"}, "not a rectangle or a keypoint"),
        ({"type": "rectanglelabels"}, "not a result object"),
        ("a string", "not a result object"),
        (rectangle("10", 10, 20, 20), "not a number"),
    ],
)
def test_a_bad_prompt_is_dropped_with_its_reason(region, reason):
    prompts = parse(region)
    assert prompts.objects == []
    (rejected,) = prompts.rejected
    assert reason in rejected


def test_a_bad_prompt_does_not_drop_the_good_ones():
    prompts = parse(rectangle(10, 10, 0, 0), rectangle(10, 10, 20, 20))
    assert len(prompts.objects) == 1
    assert len(prompts.rejected) == 1


@pytest.mark.parametrize("context", [None, [], {"result": "x"}, {"results": []}, "context"])
def test_a_malformed_context_is_a_prompt_error(context):
    with pytest.raises(PromptError):
        parse_prompts(context, CONFIG, TARGET, WIDTH, HEIGHT)
