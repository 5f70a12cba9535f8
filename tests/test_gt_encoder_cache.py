"""The GT encoder is cached per labelled set: reused when the masks are unchanged, refreshed when a
few are new, trained afresh when the set (or the recipe) is another."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
from PIL import Image

from backend.isnet.training import TrainOptions
from backend.isnet.training.gt_cache import CACHE_DIR
from backend.isnet.training.tiny import TINY
from backend.learning import run_cycle

# A target the tiny encoder reaches within its first checks, so a cached entry is a finished one.
OPTIONS = TrainOptions(iters=2, size=64, batch=2, lr=1e-3, device="cpu", amp=False, gt_max_iters=40, gt_check_every=2,
                       gt_target_f=0.6, promote_rule="never", anchors="none")


def _gt_steps(events) -> list[int]:
    return [e.step for e in events if e.stage == "gt_encoder" and "bce" in e.values]


def test_a_second_cycle_on_the_same_masks_reuses_the_cached_encoder_without_training_it(
        tiny_settings, tiny_pairs, duts_tr, tmp_path):
    images, masks = tiny_pairs(8)
    held = (tmp_path / "held" / "images", tmp_path / "held" / "masks")
    for folder in held:
        folder.mkdir(parents=True)
    for image in sorted((duts_tr / "images").iterdir())[-2:]:
        shutil.copy(image, held[0] / image.name)
        shutil.copy(duts_tr / "masks" / f"{image.stem}.png", held[1] / f"{image.stem}.png")
    first = run_cycle((images, masks), tiny_settings, OPTIONS, held_out=held, networks=TINY)
    gt = first.training["gt_encoder"]
    assert gt["source"] == "scratch" and gt["steps"] > 0 and gt["reached"]
    cached = sorted(p.name for p in (tiny_settings.model_dir / CACHE_DIR).iterdir())
    assert len(cached) == 2 and cached[0].endswith(".json") and cached[1].endswith(".pth")

    # The same masks under other file names (as a new Label Studio snapshot has): the content decides.
    for folder in (images, masks):
        for path in folder.iterdir():
            path.rename(path.with_name("renamed-" + path.name))
    events = []
    second = run_cycle((images, masks), tiny_settings, OPTIONS, held_out=held, networks=TINY, progress=events.append)
    gt = second.training["gt_encoder"]
    assert gt["source"] == "cache" and gt["steps"] == 0 and gt["stopped_by"] == "cache"
    assert _gt_steps(events) == []
    assert sorted(p.name for p in (tiny_settings.model_dir / CACHE_DIR).iterdir()) == cached


def test_the_cache_hit_is_exact_for_an_unchanged_set_and_a_refresh_when_a_few_masks_are_new(
        tiny_settings, tiny_pairs, duts_tr):
    images, masks = tiny_pairs(8)
    run_cycle((images, masks), tiny_settings, OPTIONS, networks=TINY)
    events = []
    again = run_cycle((images, masks), tiny_settings, OPTIONS, networks=TINY, progress=events.append)
    assert again.training["gt_encoder"]["source"] == "cache" and _gt_steps(events) == []

    extra = sorted((duts_tr / "images").iterdir())[20]
    shutil.copy(extra, images / extra.name)
    shutil.copy(duts_tr / "masks" / f"{extra.stem}.png", masks / f"{extra.stem}.png")
    events = []
    grown = run_cycle((images, masks), tiny_settings, OPTIONS, networks=TINY, progress=events.append)
    gt = grown.training["gt_encoder"]
    assert gt["source"] == "refreshed"
    assert gt["checks"][0]["step"] == 0  # checked before any training: it may already fit
    assert any("refreshing cached GT encoder" in e.message for e in events)


def test_changed_masks_or_another_recipe_train_a_new_encoder(tiny_settings, tiny_pairs):
    images, masks = tiny_pairs(8)
    run_cycle((images, masks), tiny_settings, OPTIONS, networks=TINY)
    other_size = run_cycle((images, masks), tiny_settings, dataclasses.replace(OPTIONS, size=96), networks=TINY)
    assert other_size.training["gt_encoder"]["source"] == "scratch"

    for path in masks.iterdir():  # every mask redrawn: none is in a cached set
        mask = np.asarray(Image.open(path).convert("L"))
        Image.fromarray(255 - mask).save(path)
    redrawn = run_cycle((images, masks), tiny_settings, OPTIONS, networks=TINY)
    assert redrawn.training["gt_encoder"]["source"] == "scratch"


def test_without_a_cached_encoder_the_champion_s_own_encoder_is_checked_first(tiny_settings, tiny_pairs):
    images, masks = tiny_pairs(8)
    first = run_cycle((images, masks), tiny_settings, dataclasses.replace(OPTIONS, promote_rule="always"),
                      networks=TINY)
    assert first.promoted
    shutil.rmtree(tiny_settings.model_dir / CACHE_DIR)  # e.g. a MODEL_DIR copied without its cache
    second = run_cycle((images, masks), tiny_settings, OPTIONS, networks=TINY)
    gt = second.training["gt_encoder"]
    assert gt["source"] == "champion" and gt["checks"][0]["step"] == 0 and gt["steps"] == 0  # it already fits
