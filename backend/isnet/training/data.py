"""Labelled pairs for training: finding them, reading them, holding some out, sampling crops.

Why the serving transform is reused here: the network must see at training time exactly the
pixels it sees when serving (RGB, bilinear resize to ``size x size``, ``/255 - 0.5``), only
cropped. Training on crops of the ``size x size`` image keeps the scale of objects that of
serving (ISNet at 1024 is much better than at 320), while the crop keeps a CPU step affordable.

Why every problem becomes a :class:`Skipped` entry: corrected labels come from people and
exports; one unreadable file must cost that item, be listed in the cycle report, and never
stop the cycle.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from backend.images import IMAGE_SUFFIXES, ImageError, load_image, load_mask
from backend.isnet.processing import MEAN, STD

MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".jpg", ".jpeg", ".pgm", ".ppm")
# Image and mask of one item may differ in resolution (an export at another scale) but not in
# shape: another aspect ratio means a wrong pairing or a rotation, and training on it would
# teach the model a misplaced mask.
_ASPECT_TOLERANCE = 0.02


@dataclass(frozen=True)
class Item:
    """One labelled example. ``key`` is its stable identity (file stem, or a Label Studio task
    id): the hold-out split hashes it, so an item keeps its side of the split forever."""

    key: str
    image: Path
    mask: Path


@dataclass(frozen=True)
class Skipped:
    """An item (or a lone file) left out, and why, in words for the cycle report."""

    key: str
    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"key": self.key, "path": self.path, "reason": self.reason}


@dataclass
class Dataset:
    """Items plus the problems found while pairing them (files without a partner, duplicates)."""

    items: list[Item]
    skipped: list[Skipped] = field(default_factory=list)

    @classmethod
    def from_folders(cls, images: Path, masks: Path) -> Dataset:
        """Pair ``images/**/NAME.*`` with ``masks/**/NAME.*`` by file stem (as ``isnet predict`` names masks)."""
        for role, folder in (("images", images), ("masks", masks)):
            if not Path(folder).is_dir():
                raise FileNotFoundError(f"{role} folder {folder} does not exist or is not a folder")
        image_index, skipped = _index(Path(images), IMAGE_SUFFIXES, "image")
        mask_index, mask_skipped = _index(Path(masks), MASK_SUFFIXES, "mask")
        skipped += mask_skipped
        items = [Item(k, image_index[k], mask_index[k]) for k in sorted(image_index.keys() & mask_index.keys())]
        skipped += [Skipped(k, str(image_index[k]), "no mask with this name")
                    for k in sorted(image_index.keys() - mask_index.keys())]
        skipped += [Skipped(k, str(mask_index[k]), "no image with this name")
                    for k in sorted(mask_index.keys() - image_index.keys())]
        return cls(items, skipped)

    def __len__(self) -> int:
        return len(self.items)


def _index(folder: Path, suffixes: Iterable[str], role: str) -> tuple[dict[str, Path], list[Skipped]]:
    allowed = {s.lower() for s in suffixes}
    by_stem: dict[str, list[Path]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in allowed):
        by_stem.setdefault(path.stem, []).append(path)
    index = {stem: paths[0] for stem, paths in by_stem.items() if len(paths) == 1}
    skipped = [
        Skipped(stem, str(p), f"{len(paths)} {role} files share the name {stem!r}")
        for stem, paths in sorted(by_stem.items()) if len(paths) > 1 for p in paths
    ]
    return index, skipped


# --------------------------------------------------------------------------- hold-out split


def holdout_score(key: str) -> float:
    """A number in [0, 1) fixed by ``key`` alone, so adding items never moves existing ones."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2.0**64


def split_holdout(items: Sequence[Item], fraction: float) -> tuple[list[Item], list[Item]]:
    """``(train, held_out)``: an item is held out when its :func:`holdout_score` is below ``fraction``.

    With very few items the hash may hold none out; then the item with the lowest score is
    held out (the one that joins the hash-based set first as the fraction grows), so a cycle
    can always compare champion and challenger.
    """
    held = [it for it in items if holdout_score(it.key) < fraction]
    if fraction > 0 and not held and len(items) >= 2:
        held = [min(items, key=lambda it: holdout_score(it.key))]
    held_keys = {it.key for it in held}
    return [it for it in items if it.key not in held_keys], held


# --------------------------------------------------------------------------- reading


def read_mask(path: Path, max_pixels: int) -> np.ndarray:
    """``H x W`` uint8 0-255 (see :func:`backend.images.load_mask`)."""
    return load_mask(path, max_pixels)


@dataclass(frozen=True)
class Pair:
    """A decoded item: RGB ``uint8 H x W x 3`` and mask ``uint8 H x W`` of the same size.

    Images larger than the serving input are stored already resized to ``size x size`` (what
    the network sees anyway); smaller ones at their own size, resized per sample. That bounds
    memory to ``min(H*W, size^2) * 4`` bytes per item.
    """

    key: str
    image: np.ndarray
    mask: np.ndarray


def read_pair(item: Item, max_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """Image and mask at the image's size; raises :class:`ImageError` saying what is wrong."""
    image = load_image(item.image, max_pixels)
    mask = read_mask(item.mask, max_pixels)
    (ih, iw), (mh, mw) = image.shape[:2], mask.shape
    if (ih, iw) != (mh, mw):
        if abs(iw / ih - mw / mh) > _ASPECT_TOLERANCE * (iw / ih):
            raise ImageError(f"{item.mask}: mask is {mw}x{mh} but the image is {iw}x{ih} (another shape)")
        mask = _resize_uint8(mask[None], ih, iw)[0]
    return image, mask


def _resize_uint8(arr: np.ndarray, height: int, width: int) -> np.ndarray:
    """``C x H x W`` uint8 -> ``C x height x width`` uint8, bilinear as the serving resize."""
    x = torch.from_numpy(np.ascontiguousarray(arr)).float()[None]
    x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    return x[0].round_().clamp_(0, 255).to(torch.uint8).numpy()


def load_pairs(items: Sequence[Item], max_pixels: int, size: int) -> tuple[list[Pair], list[Skipped]]:
    """Decode every item once (for training); unreadable ones are skipped with their reason."""
    pairs: list[Pair] = []
    skipped: list[Skipped] = []
    for item in items:
        try:
            image, mask = read_pair(item, max_pixels)
        except (ImageError, OSError, ValueError) as exc:
            skipped.append(Skipped(item.key, str(item.image), str(exc)))
            continue
        if image.shape[0] * image.shape[1] > size * size:
            image = _resize_uint8(image.transpose(2, 0, 1), size, size).transpose(1, 2, 0)
            mask = _resize_uint8(mask[None], size, size)[0]
        pairs.append(Pair(item.key, np.ascontiguousarray(image), np.ascontiguousarray(mask)))
    return pairs, skipped


def check_readable(items: Sequence[Item], max_pixels: int) -> tuple[list[Item], list[Skipped]]:
    """Held-out items are re-read at evaluation time (at full size); here only checked, so the
    report lists unreadable ones before any training time is spent."""
    ok: list[Item] = []
    skipped: list[Skipped] = []
    for item in items:
        try:
            read_pair(item, max_pixels)
        except (ImageError, OSError, ValueError) as exc:
            skipped.append(Skipped(item.key, str(item.image), str(exc)))
            continue
        ok.append(item)
    return ok, skipped


# --------------------------------------------------------------------------- sampling


def batch_indices(n: int, batch: int, step: int, seed: int, stream: int) -> list[int]:
    """Items of batch ``step``: shuffled epochs, a function of (seed, stream, step) only, so a
    resumed run draws exactly the batches the interrupted one would have."""
    out = []
    for position in range(step * batch, step * batch + batch):
        epoch, offset = divmod(position, n)
        out.append(int(np.random.default_rng([seed, stream, epoch]).permutation(n)[offset]))
    return out


def _to_square(pair: Pair, side: int, with_image: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
    mask = torch.from_numpy(pair.mask)[None, None].float()
    mask = F.interpolate(mask, size=(side, side), mode="bilinear", align_corners=False)[0] / 255.0
    if not with_image:
        return None, mask
    image = torch.from_numpy(pair.image).permute(2, 0, 1)[None].float()
    image = F.interpolate(image, size=(side, side), mode="bilinear", align_corners=False)[0]
    return (image / 255.0 - MEAN) / STD, mask


def sample_batch(
    pairs: Sequence[Pair],
    indices: Sequence[int],
    size: int,
    crop: int,
    rng: np.random.Generator,
    flip: bool = True,
    min_scale: float = 1.0,
    with_images: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``(images [B,3,crop,crop] normalised or None, masks [B,1,crop,crop] in 0..1)``.

    Each sample: resize to ``size`` (or a jittered side when ``min_scale < 1``), random
    ``crop x crop`` window, random horizontal flip; image and mask identically.
    """
    images: list[torch.Tensor] = []
    masks: list[torch.Tensor] = []
    for index in indices:
        side = size
        if min_scale < 1.0:
            low = max(crop, round(min_scale * size / 32) * 32)
            side = int(rng.integers(low // 32, size // 32 + 1)) * 32
        image, mask = _to_square(pairs[index], side, with_images)
        y, x = (int(rng.integers(0, side - crop + 1)) for _ in range(2))
        do_flip = flip and bool(rng.random() < 0.5)
        mask = mask[:, y:y + crop, x:x + crop]
        masks.append(mask.flip(-1) if do_flip else mask)
        if image is not None:
            image = image[:, y:y + crop, x:x + crop]
            images.append(image.flip(-1) if do_flip else image)
    return (torch.stack(images) if with_images else None), torch.stack(masks)


def centre_views(pairs: Sequence[Pair], size: int, crop: int) -> torch.Tensor:
    """Deterministic ``[N,1,crop,crop]`` centre crops of the masks at ``size`` (GT encoder checks)."""
    offset = (size - crop) // 2
    return torch.stack([_to_square(p, size, False)[1][:, offset:offset + crop, offset:offset + crop] for p in pairs])
