"""`isnet predict`: a mask per image, and every failure named without losing the others."""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from backend.cli import main
from backend.isnet.network import ISNetDIS
from tests.paths import DIS_DEMO_IMAGES


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    """Where only the plumbing is under test, an untrained network at a tiny size will do."""
    path = tmp_path_factory.mktemp("weights") / "random.pth"
    torch.manual_seed(0)
    torch.save(ISNetDIS().state_dict(), path)
    return path


@pytest.fixture
def tiny(monkeypatch, random_weights):
    monkeypatch.setenv("ISNET_WEIGHTS", str(random_weights))
    monkeypatch.setenv("ISNET_ENGINE", "torch")
    return ["--size", "64"]


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(DIS_DEMO_IMAGES, folder)
    return folder


def test_a_folder_gives_one_mask_per_image_at_original_size(tiny, images, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["predict", str(images), "--out", str(out), *tiny]) == 0
    assert Image.open(out / "bike.png").size == (3000, 2000)
    assert Image.open(out / "0003.png").size == (650, 434)
    assert Image.open(out / "bike.png").mode == "L"
    assert "2 mask(s) written" in capsys.readouterr().out


def test_a_corrupt_image_is_reported_and_the_others_still_get_masks(tiny, images, tmp_path, capsys):
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 garbage")
    out = tmp_path / "out"
    assert main(["predict", str(images), "--out", str(out), *tiny]) == 1
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "corrupt or truncated" in err
    assert sorted(p.name for p in out.iterdir()) == ["0003.png", "bike.png"]


def test_a_decompression_bomb_is_refused_with_the_limit_named(tiny, images, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ISNET_MAX_PIXELS", "1000000")
    assert main(["predict", str(images / "bike.jpeg"), "--out", str(tmp_path / "out"), *tiny]) == 1
    assert "over the limit of 1,000,000 (ISNET_MAX_PIXELS)" in capsys.readouterr().err


def test_an_input_size_that_is_not_a_multiple_of_32_is_refused(random_weights, monkeypatch, images, tmp_path, capsys):
    monkeypatch.setenv("ISNET_WEIGHTS", str(random_weights))
    assert main(["predict", str(images), "--out", str(tmp_path / "o"), "--size", "100"]) == 2
    assert "multiple of 32" in capsys.readouterr().err


def test_no_images_is_an_error(tiny, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), *tiny]) == 2
    assert "no images found" in capsys.readouterr().err


def test_missing_weights_are_a_clear_error(monkeypatch, images, tmp_path, capsys):
    monkeypatch.setenv("ISNET_WEIGHTS", str(tmp_path / "absent.pth"))
    assert main(["predict", str(images), "--out", str(tmp_path / "o"), "--size", "64"]) == 2
    assert "no checkpoint at" in capsys.readouterr().err


def test_masks_are_full_range_grayscale(tiny, images, tmp_path):
    out = tmp_path / "out"
    main(["predict", str(images / "0003.jpeg"), "--out", str(out), *tiny])
    mask = np.asarray(Image.open(out / "0003.png"))
    assert mask.min() == 0 and mask.max() >= 254
