"""A confidence mask becomes the brush result Label Studio 1.23 stores and shows."""

import json

import numpy as np
import pytest
from label_studio_sdk.converter import brush
from PIL import Image

from backend.labelstudio.config import BrushTarget
from backend.labelstudio.results import brush_result, prediction_score, result_to_mask
from tests.paths import DIS_DEMO_REFERENCE, DUTS_TE

TARGET = BrushTarget(from_name="tag", to_name="image", value_key="image", label="Foreground")


def _blob(height: int = 48, width: int = 64) -> np.ndarray:
    """A soft-edged confidence map: 230 in a rectangle, 100 around it, 0 elsewhere."""
    mask = np.zeros((height, width), np.uint8)
    mask[8:40, 10:50] = 100
    mask[12:36, 14:46] = 230
    return mask


def test_one_brushlabels_region_with_the_keys_label_studio_writes():
    result, _ = brush_result(_blob(), TARGET, 0.5)
    assert len(result) == 1
    region = result[0]
    assert set(region) == {
        "id", "from_name", "to_name", "type", "original_width", "original_height", "image_rotation", "value"
    }  # fmt: skip
    assert (region["from_name"], region["to_name"], region["type"]) == ("tag", "image", "brushlabels")
    assert (region["original_width"], region["original_height"], region["image_rotation"]) == (64, 48, 0)
    assert set(region["value"]) == {"format", "rle", "brushlabels"}
    assert region["value"]["format"] == "rle" and region["value"]["brushlabels"] == ["Foreground"]
    assert isinstance(region["id"], str) and region["id"]


def test_rle_is_the_sdk_encoding_of_the_thresholded_mask():
    mask = _blob()
    result, _ = brush_result(mask, TARGET, 0.5)
    assert result[0]["value"]["rle"] == brush.mask2rle(np.where(mask > 127, 255, 0).astype(np.uint8))


def _soft_disc(edge_width: float, size: int = 96) -> np.ndarray:
    """A disc of radius 30 whose confidence falls from 255 to 0 over about ``edge_width`` pixels."""
    yy, xx = np.mgrid[:size, :size]
    distance = np.hypot(yy - size / 2, xx - size / 2) - 30.0
    return np.round(255.0 / (1.0 + np.exp(distance * 4.0 / edge_width))).astype(np.uint8)


def _mean_decisiveness(mask: np.ndarray) -> float:
    return float(np.mean(np.abs(2.0 * mask / 255.0 - 1.0)))


def test_score_is_the_mean_decisiveness_of_all_pixels():
    mask = np.random.default_rng(0).integers(0, 256, (37, 53), dtype=np.uint8)
    _, score = brush_result(mask, TARGET, 0.5)
    assert score == pytest.approx(_mean_decisiveness(mask), abs=1e-9)
    assert prediction_score(mask, 0.5) == score


def test_a_confident_mask_scores_above_a_hesitant_one_so_ascending_order_shows_the_hesitant_first():
    sharp, soft, blurred = (brush_result(_soft_disc(width), TARGET, 0.5)[1] for width in (1.0, 6.0, 20.0))
    assert 1.0 >= sharp > soft > blurred >= 0.0
    _, binary = brush_result(np.where(_soft_disc(1.0) > 127, 255, 0).astype(np.uint8), TARGET, 0.5)
    assert binary == 1.0


def test_score_stays_in_0_1_from_the_surest_to_the_least_sure_mask():
    for level in (128, 140, 200, 254, 255):
        score = prediction_score(np.full((10, 10), level, np.uint8), 0.5)
        assert 0.0 <= score <= 1.0
    assert prediction_score(np.full((10, 10), 128, np.uint8), 0.5) == pytest.approx(0.0, abs=0.01)
    assert prediction_score(np.full((10, 10), 255, np.uint8), 0.5) == 1.0


def test_the_threshold_decides_the_region_not_the_score():
    mask = _blob()
    (high_region,), high = brush_result(mask, TARGET, 0.5)
    (low_region,), low = brush_result(mask, TARGET, 0.3)  # now the 100-ring is inside as well
    assert high_region["value"]["rle"] != low_region["value"]["rle"]
    assert high == low


def test_nothing_above_the_threshold_scores_zero_however_sure_the_background():
    assert prediction_score(np.zeros((20, 30), np.uint8), 0.5) == 0.0
    assert prediction_score(np.array([[127, 0]], np.uint8), 0.5) == 0.0
    assert prediction_score(np.array([[128, 0]], np.uint8), 0.5) > 0.0  # strictly above, as the region


def test_a_3000x2000_mask_is_scored_on_a_sample_of_rows_close_to_all_of_them():
    mask = np.asarray(Image.open(DIS_DEMO_REFERENCE / "bike.png").convert("L"))
    assert mask.shape == (2000, 3000)
    assert prediction_score(mask, 0.5) == pytest.approx(_mean_decisiveness(mask), abs=1e-3)


def test_score_of_a_strided_view_is_the_score_of_its_copy():
    mask = _soft_disc(6.0)
    assert prediction_score(mask[:, ::3], 0.5) == prediction_score(mask[:, ::3].copy(), 0.5)


def test_threshold_is_strictly_above_on_the_0_1_scale():
    mask = np.array([[127, 128]], np.uint8)  # 127/255 < 0.5 < 128/255
    result, _ = brush_result(mask, TARGET, 0.5)
    assert result_to_mask(result[0]).tolist() == [[0, 255]]


def test_all_background_gives_no_region_and_score_zero():
    assert brush_result(np.zeros((20, 30), np.uint8), TARGET, 0.5) == ([], 0.0)
    assert brush_result(np.full((20, 30), 127, np.uint8), TARGET, 0.5) == ([], 0.0)


def test_region_ids_differ_between_results():
    first, _ = brush_result(_blob(), TARGET, 0.5)
    second, _ = brush_result(_blob(), TARGET, 0.5)
    assert first[0]["id"] != second[0]["id"]


def test_result_is_json_serialisable_with_plain_numbers():
    result, score = brush_result(_blob(), TARGET, 0.5)
    payload = json.loads(json.dumps({"result": result, "score": score}))
    assert payload["result"] == result and isinstance(payload["score"], float)


def test_real_mask_round_trips_through_the_result():
    path = sorted((DUTS_TE / "masks").glob("*.png"))[0]
    soft = np.asarray(Image.open(path).convert("L"))
    result, score = brush_result(soft, TARGET, 0.5)
    assert result_to_mask(result[0]).tolist() == np.where(soft > 127, 255, 0).tolist()
    assert 0.5 < score <= 1.0


def test_a_result_label_studio_sent_decodes_to_its_mask():
    mask = np.zeros((48, 64), np.uint8)
    mask[10:20, 5:30] = 255
    sent = {
        "from_name": "tag", "to_name": "image", "type": "brushlabels", "original_width": 64, "original_height": 48,
        "image_rotation": 0, "value": {"format": "rle", "rle": brush.mask2rle(mask), "brushlabels": ["Foreground"]},
    }  # fmt: skip
    assert np.array_equal(result_to_mask(sent), mask)


def test_a_result_without_rle_or_size_is_a_value_error():
    with pytest.raises(ValueError, match="not an RLE brush result"):
        result_to_mask({"value": {"rectanglelabels": ["A"]}})
    with pytest.raises(ValueError, match="original_width"):
        result_to_mask({"value": {"format": "rle", "rle": [0]}})


@pytest.mark.parametrize("threshold", [-0.1, 1.0, 2.0])
def test_threshold_outside_0_1_is_refused(threshold):
    with pytest.raises(ValueError, match="threshold"):
        brush_result(_blob(), TARGET, threshold)


def test_mask_must_be_2d_uint8_confidence():
    with pytest.raises(ValueError, match="uint8"):
        brush_result(np.zeros((4, 4), np.float32), TARGET, 0.5)
    with pytest.raises(ValueError, match="2-D"):
        brush_result(np.zeros((4, 4, 1), np.uint8), TARGET, 0.5)
