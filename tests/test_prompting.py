"""Boxes and clicks choose one object's mask (backend.isnet.prompting).

The geometry is what is under test here, so the "network" is a brightness threshold that sees
exactly the crop it is given; the real network on real images is in tests/test_interactive_server.py
and tests/test_e2e_interactive.py.
"""

from __future__ import annotations

import numpy as np

from backend.geometry import Box, Click
from backend.isnet.prompting import apply_clicks, expand, segment_box, segment_object


class Bright:
    """Confidence 255 on bright pixels of whatever crop it is shown; records the crops' shapes."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, int]] = []

    def __call__(self, crops):
        self.shapes.extend(c.shape[:2] for c in crops)
        return [np.where(c.mean(axis=2) > 128, 255, 0).astype(np.uint8) for c in crops]


def scene() -> np.ndarray:
    """A 200x300 dark image with three bright squares: two left, one right."""
    image = np.zeros((200, 300, 3), np.uint8)
    image[20:60, 20:60] = 255   # A
    image[120:180, 20:80] = 255  # B
    image[50:150, 180:280] = 255  # C
    return image


def test_expand_adds_the_margin_on_each_side_and_clips_to_the_image():
    assert expand(Box(100, 50, 200, 150), 0.1, 300, 200) == (90, 40, 210, 160)
    assert expand(Box(0, 0, 100, 100), 0.5, 120, 120) == (0, 0, 120, 120)


def test_expand_keeps_a_crop_of_a_tiny_box_at_least_32_pixels():
    x0, y0, x1, y1 = expand(Box(100, 100, 102, 101), 0.0, 300, 200)
    assert 32 <= x1 - x0 <= 33 and 32 <= y1 - y0 <= 33


def test_a_box_runs_the_network_on_its_crop_with_the_margin():
    net = Bright()
    segment_box(scene(), Box(180, 50, 280, 150), net, margin=0.2)
    assert net.shapes == [(140, 140)]  # 100x100 plus 20 on each side


def test_nothing_outside_the_box_is_kept():
    prob = segment_box(scene(), Box(10, 10, 50, 50), Bright(), margin=0.5)
    assert prob[20:50, 20:50].min() == 255
    assert prob[50:, :].max() == 0 and prob[:, 50:].max() == 0


def test_a_positive_click_keeps_only_the_part_under_it():
    prob = Bright()([scene()])[0]
    apply_clicks(prob, [Click(30, 30)], 0.5)
    assert prob[20:60, 20:60].min() == 255
    assert prob[120:180, 20:80].max() == 0 and prob[50:150, 180:280].max() == 0


def test_a_negative_click_removes_the_part_under_it():
    prob = Bright()([scene()])[0]
    apply_clicks(prob, [Click(200, 100, positive=False)], 0.5)
    assert prob[50:150, 180:280].max() == 0
    assert prob[20:60, 20:60].min() == 255 and prob[120:180, 20:80].min() == 255


def test_a_negative_click_on_the_positive_clicks_part_cuts_off_only_what_is_nearer_to_it():
    prob = Bright()([scene()])[0]
    apply_clicks(prob, [Click(190, 100), Click(270, 100, positive=False)], 0.5)
    assert prob[50:150, 180:229].min() == 255  # nearer the positive click (x = 190)
    assert prob[50:150, 231:280].max() == 0  # nearer the negative click (x = 270)


def test_a_positive_click_on_background_runs_the_network_around_the_click():
    image = scene()
    net = Bright()
    prob = np.zeros(image.shape[:2], np.uint8)  # the first answer missed the object entirely
    apply_clicks(prob, [Click(40, 150)], 0.5, image, net)
    assert len(net.shapes) == 1 and net.shapes[0][0] < 200
    assert prob[130:170, 30:70].min() == 255  # B found under the click
    assert prob[20:60, 20:60].max() == 0  # A is not under the click


def test_clicks_inside_a_box_stay_inside_it():
    image = scene()
    prob = segment_object(image, Bright(), Box(0, 0, 100, 200), [Click(30, 30)], margin=0.0)
    assert prob[20:60, 20:60].min() == 255
    assert prob[120:180, 20:80].max() == 0  # B is inside the box but not under the click
    assert prob[:, 100:].max() == 0


def test_without_a_box_the_clicks_choose_from_the_whole_image_prediction():
    image = scene()
    net = Bright()
    whole = net([image])[0]
    net.shapes.clear()
    prob = segment_object(image, net, clicks=[Click(200, 100)], whole=lambda: whole)
    assert net.shapes == []  # the cached whole-image answer was enough
    assert prob[50:150, 180:280].min() == 255 and prob[:, :150].max() == 0
    assert whole[20:60, 20:60].min() == 255  # the cached answer itself is left as it was


def single_object_scene() -> np.ndarray:
    """A 200x300 dark image with one bright rectangle, what ISNet would take for "the" foreground."""
    image = np.zeros((200, 300, 3), np.uint8)
    image[50:150, 100:220] = 255
    return image


def test_a_box_that_frames_the_whole_images_foreground_is_answered_from_the_whole_image():
    image, net = single_object_scene(), Bright()
    whole = np.where(image.mean(axis=2) > 128, 200, 0).astype(np.uint8)  # told apart from the crop's 255
    prob = segment_box(image, Box(88, 40, 232, 160), net, whole=lambda: whole)
    assert net.shapes == []  # no crop was run
    assert prob[50:150, 100:220].min() == 200 and prob[:40].max() == 0


def test_a_box_around_one_of_several_objects_runs_on_its_crop():
    image, net = scene(), Bright()
    whole = Bright()([image])[0]  # the whole image's foreground is all three squares
    prob = segment_box(image, Box(170, 40, 290, 160), net, margin=0.2, whole=lambda: whole)
    assert net.shapes == [(168, 154)]  # 120 plus 24 a side, clipped at the right edge
    assert prob[50:150, 180:280].min() == 255 and prob[:, :170].max() == 0


def test_a_box_holding_the_foreground_but_far_larger_than_it_runs_on_its_crop():
    image, net = np.zeros((200, 300, 3), np.uint8), Bright()
    image[80:110, 130:170] = 255  # a small object: 2 % of the box below
    whole = np.where(image.mean(axis=2) > 128, 200, 0).astype(np.uint8)
    segment_box(image, Box(0, 0, 300, 200), net, whole=lambda: whole)
    assert len(net.shapes) == 1
