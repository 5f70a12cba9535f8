"""The real pretrained ISNet reproduces the official DIS demo results."""

import numpy as np
import pytest
from PIL import Image

from backend.cli import main
from tests.paths import DIS_DEMO_IMAGES, DIS_DEMO_REFERENCE


@pytest.fixture(scope="module")
def masks_1024(tmp_path_factory):
    out = tmp_path_factory.mktemp("masks")
    assert main(["predict", str(DIS_DEMO_IMAGES), "--out", str(out), "--size", "1024", "--engine", "torch"]) == 0
    return out


@pytest.mark.parametrize("name", ["bike", "0003"])
def test_masks_at_1024_match_the_official_demo_outputs(masks_1024, name):
    ours = np.asarray(Image.open(masks_1024 / f"{name}.png").convert("L"), dtype=np.float64)
    official = np.asarray(Image.open(DIS_DEMO_REFERENCE / f"{name}.png").convert("L"), dtype=np.float64)
    assert ours.shape == official.shape
    assert np.abs(ours - official).mean() / 255 <= 0.003
