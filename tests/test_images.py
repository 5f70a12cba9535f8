"""Every kind of image a user may have decodes to the RGB array ISNet expects, or fails clearly."""

import io

import numpy as np
import pytest
from PIL import Image

from backend.images import ImageError, ImageTooLarge, find_images, load_image
from tests.paths import DIS_DEMO_IMAGES

LIMIT = 64_000_000


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_jpeg_decodes_to_rgb_uint8_at_full_size():
    arr = load_image(DIS_DEMO_IMAGES / "bike.jpeg", LIMIT)
    assert arr.shape == (2000, 3000, 3) and arr.dtype == np.uint8


def test_exif_orientation_is_honoured():
    img = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    arr = load_image(_encode(img, "JPEG", exif=exif), LIMIT)
    assert arr.shape == (40, 20, 3)


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "1"])
def test_non_rgb_modes_become_rgb(mode):
    img = Image.new("RGB", (16, 12), (30, 120, 200)).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    arr = load_image(_encode(img, fmt), LIMIT)
    assert arr.shape == (12, 16, 3) and arr.dtype == np.uint8


def test_transparent_pixels_are_shown_on_white():
    img = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    img.putpixel((0, 0), (255, 0, 0, 255))
    arr = load_image(_encode(img, "PNG"), LIMIT)
    assert arr[0, 0].tolist() == [255, 0, 0]
    assert arr[4, 4].tolist() == [255, 255, 255]


def test_sixteen_bit_grayscale_is_scaled_not_clipped():
    img = Image.fromarray(np.full((6, 6), 32768, dtype=np.uint16))
    arr = load_image(_encode(img, "PNG"), LIMIT)
    assert arr.shape == (6, 6, 3) and 126 <= int(arr[0, 0, 0]) <= 129


def test_non_image_bytes_are_refused_with_a_reason():
    with pytest.raises(ImageError, match="not an image"):
        load_image(b"<html>not an image</html>", LIMIT, name="page.jpg")


def test_truncated_jpeg_is_refused_with_a_reason():
    data = (DIS_DEMO_IMAGES / "0003.jpeg").read_bytes()
    with pytest.raises(ImageError, match="corrupt or truncated"):
        load_image(data[: len(data) // 2], LIMIT, name="half.jpeg")


def test_image_over_the_pixel_limit_is_refused_before_decoding():
    with pytest.raises(ImageTooLarge, match=r"6,000,000 pixels is over the limit of 1,000,000"):
        load_image(DIS_DEMO_IMAGES / "bike.jpeg", 1_000_000)


def test_missing_file_is_reported_by_name(tmp_path):
    with pytest.raises(ImageError, match=r"nope\.png: no such file"):
        load_image(tmp_path / "nope.png", LIMIT)


def test_folders_are_searched_for_images_only(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.png", "a.JPG", "sub/c.webp", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in find_images([tmp_path])] == ["a.JPG", "b.png", "c.webp"]
