"""Decoding any image a user may hand us into the RGB uint8 array ISNet expects.

Why this is its own module: the same rules (EXIF orientation, odd modes, a pixel limit against
decompression bombs, one clear error type) must hold for the CLI, the Label Studio backend
and the training data loader alike.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Our own limit is checked before decoding; PIL's bomb check would only fire later and with
# a less helpful message, so it is switched off in favour of ours.
Image.MAX_IMAGE_PIXELS = None

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"})


class ImageError(ValueError):
    """An image that cannot be used; the message says why in words a user understands."""


class ImageTooLarge(ImageError):
    """More pixels than ``ISNET_MAX_PIXELS``: refused before decoding (decompression bombs)."""


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels carry arbitrary colours; show the model what a viewer sees.
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")


def _to_gray(img: Image.Image) -> np.ndarray:
    if img.mode.startswith("I;16"):
        return np.round(np.asarray(img, dtype=np.float64) / 257.0).astype(np.uint8)
    if img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        return np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # A transparent-background export (black everywhere, the object opaque): alpha is the mask.
        rgba = np.asarray(img.convert("RGBA"))
        if rgba[..., :3].max() == 0:
            return rgba[..., 3].copy()
    return np.array(img.convert("L"), dtype=np.uint8)


def _decode(source: str | Path | bytes | BinaryIO, max_pixels: int, label: str, kind: str,
            convert: Callable[[Image.Image], np.ndarray]) -> np.ndarray:
    """Open, check the pixel limit from the header, decode fully, apply EXIF orientation and
    ``convert``; every failure becomes an :class:`ImageError` with a reason (``label: `` first
    when a label is given)."""
    prefix = f"{label}: " if label else ""
    stream: str | Path | BinaryIO = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(stream) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ImageTooLarge(
                        f"{prefix}{width}x{height} = {width * height:,} pixels is over the limit of "
                        f"{max_pixels:,} (ISNET_MAX_PIXELS); refused as a possible decompression bomb"
                    )
                if width == 0 or height == 0:
                    raise ImageError(f"{prefix}{kind} has no pixels")
                img.load()
                return convert(ImageOps.exif_transpose(img))
    except ImageError:
        raise
    except FileNotFoundError as exc:
        raise ImageError(f"{prefix}no such file") from exc
    except IsADirectoryError as exc:
        raise ImageError(f"{prefix}is a directory") from exc
    except PermissionError as exc:
        raise ImageError(f"{prefix}permission denied") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{prefix}not an image, or a format that is not supported") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(f"{prefix}corrupt or truncated {kind} ({exc})") from exc


def _label(source: object, name: str | None) -> str:
    if name is not None:
        return name
    return str(source) if isinstance(source, (str, Path)) else "image"


def load_image(source: str | Path | bytes | BinaryIO, max_pixels: int, name: str | None = None) -> np.ndarray:
    """RGB ``uint8`` array ``H x W x 3`` with EXIF orientation applied.

    Grayscale, palette, RGBA/LA, 16-bit, float and CMYK inputs are converted. Raises
    :class:`ImageTooLarge` above ``max_pixels`` (checked from the header, before decoding)
    and :class:`ImageError` for anything that is not a complete, decodable image.
    """
    return _decode(source, max_pixels, _label(source, name), "image",
                   lambda img: np.array(_to_rgb(img), dtype=np.uint8))


def load_mask(source: str | Path | bytes | BinaryIO, max_pixels: int, name: str | None = None) -> np.ndarray:
    """``H x W`` uint8 0-255 mask: luma of colour masks (what ``cv2.imread(GRAYSCALE)`` gives,
    as PySODEvalToolkit reads them), 16-bit scaled to 8 bits, the alpha channel of a black,
    transparent-background export, EXIF orientation applied. Same limits and errors as
    :func:`load_image`; ``name=""`` leaves the label out of the messages."""
    return _decode(source, max_pixels, _label(source, name), "mask", _to_gray)


def find_images(paths: list[Path]) -> list[Path]:
    """Files as given plus, for each folder, its image files (recursively, sorted)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            found.append(path)
    return found
