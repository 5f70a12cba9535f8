"""End to end against a real Label Studio 1.23: smart tools on the 3000x2000 bike photo.

A project with BrushLabels plus smart RectangleLabels and KeypointLabels, the backend connected
with "Use for interactive preannotation" on, and the editor's calls made as the editor makes them:
``POST /api/ml/{id}/interactive-annotating {"task", "context"}``. Label Studio forwards each to the
backend's ``/predict`` and answers with the first result, which it does not store.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from backend.labelstudio.rle import rle_to_mask
from tests.paths import DIS_DEMO_IMAGES

pytestmark = pytest.mark.slow

CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="tag" toName="image"><Label value="Foreground"/><Label value="Bike"/></BrushLabels>'
    '<RectangleLabels name="box" toName="image" smart="true"><Label value="Bike"/></RectangleLabels>'
    '<KeypointLabels name="point" toName="image" smart="true"><Label value="Bike"/></KeypointLabels></View>'
)
IMAGE = DIS_DEMO_IMAGES / "bike.jpeg"
WIDTH, HEIGHT = 3000, 2000
RECT = (14.0, 0.5, 78.0, 95.5)  # x, y, width, height in percent: around the bike, with a little room
IOU_BAR = 0.85


@dataclass
class Session:
    """The project, the backend's ML id, the task, and a way to prompt like the editor."""

    label_studio: object
    ml_id: int
    task_id: int

    def prompt(self, *regions: dict) -> dict:
        body = {"task": self.task_id, "context": {"result": list(regions)}}
        return self.label_studio.api("POST", f"/api/ml/{self.ml_id}/interactive-annotating", json=body)


def rectangle(x: float, y: float, w: float, h: float) -> dict:
    return {"id": "r1", "from_name": "box", "to_name": "image", "type": "rectanglelabels",
            "original_width": WIDTH, "original_height": HEIGHT, "image_rotation": 0,
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": ["Bike"]}}


def keypoint(x_px: int, y_px: int, positive: bool) -> dict:
    return {"id": f"k{x_px}", "from_name": "point", "to_name": "image", "type": "keypointlabels",
            "original_width": WIDTH, "original_height": HEIGHT, "image_rotation": 0, "is_positive": positive,
            "value": {"x": 100 * x_px / WIDTH, "y": 100 * y_px / HEIGHT, "width": 0.3, "keypointlabels": ["Bike"]}}


def mask_of(region: dict) -> np.ndarray:
    return rle_to_mask(region["value"]["rle"], region["original_height"], region["original_width"]) > 0


def rect_pixels() -> tuple[int, int, int, int]:
    x, y, w, h = RECT
    return (int(x * WIDTH / 100), int(y * HEIGHT / 100), int(np.ceil((x + w) * WIDTH / 100)),
            int(np.ceil((y + h) * HEIGHT / 100)))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> np.ndarray:
    """``isnet predict --size 1024`` of the photo, thresholded at 0.5."""
    out = tmp_path_factory.mktemp("isnet-predict")
    subprocess.run([sys.executable, "-m", "backend.cli", "predict", str(IMAGE), "--out", str(out), "--size", "1024",
                    "--engine", "torch"], check=True, capture_output=True)
    return np.asarray(Image.open(out / "bike.png")) > 127.5


@pytest.fixture(scope="module")
def session(label_studio, serve_backend, tmp_path_factory):
    backend = serve_backend({
        "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.legacy_token,
        "ISNET_ENGINE": "torch", "ISNET_WEIGHTS": "", "MODEL_DIR": str(tmp_path_factory.mktemp("models")),
    })
    project = label_studio.create_project("e2e interactive", CONFIG)
    (task_id,) = label_studio.upload_images(project, [IMAGE])
    ml = label_studio.connect_backend(project, backend.url, is_interactive=True)
    yield Session(label_studio, ml["id"], task_id)
    label_studio.api("DELETE", f"/api/ml/{ml['id']}", expect=(200, 204))


@pytest.fixture(scope="module")
def boxed(session) -> dict:
    return session.prompt(rectangle(*RECT))


def only_region(answer: dict) -> dict:
    assert "errors" not in answer, answer
    (region,) = answer["data"]["result"]
    return region


def test_label_studio_answers_a_rectangle_with_a_full_size_brush_region_with_its_label(boxed):
    region = only_region(boxed)
    assert region["type"] == "brushlabels"
    assert (region["original_width"], region["original_height"]) == (WIDTH, HEIGHT)
    assert region["value"]["brushlabels"] == ["Bike"]


def test_the_mask_lies_inside_the_rectangle(boxed):
    mask = mask_of(only_region(boxed))
    x0, y0, x1, y1 = rect_pixels()
    outside = mask.copy()
    outside[y0:y1, x0:x1] = False
    assert mask.any() and not outside.any()


def test_the_mask_matches_isnet_predict_inside_the_rectangle(boxed, reference):
    x0, y0, x1, y1 = rect_pixels()
    mask, ref = mask_of(only_region(boxed))[y0:y1, x0:x1], reference[y0:y1, x0:x1]
    iou = np.logical_and(mask, ref).sum() / np.logical_or(mask, ref).sum()
    assert iou >= IOU_BAR, iou


def test_a_positive_and_a_negative_click_keep_one_part_and_cut_off_another(session, boxed, reference):
    ys, xs = np.nonzero(reference)
    frame = (int(np.median(xs)), int(np.median(ys[xs == int(np.median(xs))])))  # on the bike, near its middle
    rear = (int(np.percentile(xs, 2)), int(np.median(ys[xs == int(np.percentile(xs, 2))])))  # rear tyre
    assert reference[frame[1], frame[0]] and reference[rear[1], rear[0]]
    answer = session.prompt(rectangle(*RECT), keypoint(*frame, positive=True), keypoint(*rear, positive=False))
    before, after = mask_of(only_region(boxed)), mask_of(only_region(answer))
    assert after[frame[1], frame[0]]
    assert before[rear[1], rear[0]] and not after[rear[1], rear[0]]
    assert after.sum() < before.sum()
