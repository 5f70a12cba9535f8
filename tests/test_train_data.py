"""Training data: pairing, the hold-out split, skipping broken items, serving-scale crops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from backend.isnet.processing import preprocess
from backend.isnet.training.data import Dataset, Item, batch_indices, load_pairs, sample_batch, split_holdout


def test_holdout_split_is_disjoint_about_a_fifth_and_stable_when_items_are_added(duts_tr):
    items = Dataset.from_folders(duts_tr / "images", duts_tr / "masks").items
    train, held = split_holdout(items[:200], 0.2)
    assert {it.key for it in train}.isdisjoint({it.key for it in held})
    assert len(train) + len(held) == 200
    assert 0.12 < len(held) / 200 < 0.28
    grown_train, grown_held = split_holdout(items, 0.2)
    assert {it.key for it in held} <= {it.key for it in grown_held}
    assert {it.key for it in train} <= {it.key for it in grown_train}
    assert split_holdout(list(reversed(items)), 0.2)[1] == list(reversed(grown_held))


def test_a_tiny_dataset_still_holds_one_item_out():
    items = [Item(f"k{i}", Path(f"{i}.jpg"), Path(f"{i}.png")) for i in range(3)]
    train, held = split_holdout(items, 0.2)
    assert len(held) == 1 and len(train) == 2


def test_unreadable_or_unpaired_files_are_skipped_and_listed(tiny_pairs):
    images, masks = tiny_pairs(3)
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (masks / "corrupt.png").write_bytes((masks / next(masks.iterdir()).name).read_bytes())
    first_mask = sorted(masks.iterdir())[0]
    (images / "truncated.jpg").write_bytes(next(images.glob("ILSVRC*")).read_bytes())
    (masks / "truncated.png").write_bytes(first_mask.read_bytes()[:200])
    (images / "lonely.jpg").write_bytes(next(images.glob("ILSVRC*")).read_bytes())

    data = Dataset.from_folders(images, masks)
    assert [(s.key, s.reason) for s in data.skipped] == [("lonely", "no mask with this name")]
    pairs, skipped = load_pairs(data.items, 64_000_000, 64)
    assert len(pairs) == 3
    assert {s.key for s in skipped} == {"corrupt", "truncated"}
    assert all(s.reason for s in skipped)


def test_training_crops_are_windows_of_the_serving_input(duts_tr):
    items = Dataset.from_folders(duts_tr / "images", duts_tr / "masks").items[:2]
    pairs, _ = load_pairs(items, 64_000_000, 128)
    rng = np.random.default_rng(3)
    images, masks = sample_batch(pairs, [0], size=128, crop=64, rng=rng, flip=False)
    assert images.shape == (1, 3, 64, 64) and masks.shape == (1, 1, 64, 64)
    served = torch.from_numpy(preprocess(pairs[0].image, 128))
    rng = np.random.default_rng(3)
    y, x = (int(rng.integers(0, 128 - 64 + 1)) for _ in range(2))
    torch.testing.assert_close(images[0], served[:, y:y + 64, x:x + 64], atol=1e-5, rtol=0)
    assert masks.min() >= 0 and masks.max() <= 1


def test_batches_depend_only_on_seed_and_step_so_a_resumed_run_draws_the_same_ones():
    first = [batch_indices(10, 3, step, seed=0, stream=2) for step in range(8)]
    again = [batch_indices(10, 3, step, seed=0, stream=2) for step in range(4, 8)]
    assert first[4:] == again
    one_epoch = [i for batch in first for i in batch][:10]
    assert sorted(one_epoch) == list(range(10))  # every item once per epoch


def test_scale_jitter_is_off_by_default_and_still_yields_crop_sized_windows_when_on(duts_tr):
    items = Dataset.from_folders(duts_tr / "images", duts_tr / "masks").items[:3]
    pairs, _ = load_pairs(items, 64_000_000, 256)
    rng = np.random.default_rng(0)
    images, masks = sample_batch(pairs, [0, 1, 2, 0], size=256, crop=64, rng=rng, min_scale=0.25)
    assert images.shape == (4, 3, 64, 64) and masks.shape == (4, 1, 64, 64)
