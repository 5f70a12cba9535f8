"""Weight interpolation after training: the challenger keeps its anchor photos' masks within the limit."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from backend.isnet.training import TrainOptions
from backend.isnet.training.tiny import TINY, TinySegmenter
from backend.learning import run_cycle
from backend.learning.interpolation import (
    BUILTIN_PHOTOS,
    anchor_paths,
    choose,
    drift,
    interpolate,
    interpolate_towards,
    load_anchors,
    predict_masks,
)

OPTIONS = TrainOptions(iters=6, size=64, crop=32, batch=2, lr=1e-3, device="cpu", amp=False, gt_max_iters=4,
                       gt_check_every=2, gt_target_f=1.1, checkpoint_every=3, promote_rule="always")


def _tiny(seed: int) -> TinySegmenter:
    torch.manual_seed(seed)
    return TinySegmenter().eval()


def test_interpolation_mixes_floating_point_weights_and_takes_counters_from_the_trained_model():
    start = {"w": torch.zeros(3), "n": torch.tensor(1)}
    end = {"w": torch.full((3,), 4.0), "n": torch.tensor(7)}
    mixed = interpolate(start, end, 0.25)
    assert torch.equal(mixed["w"], torch.full((3,), 1.0))
    assert int(mixed["n"]) == 7
    assert torch.equal(interpolate(start, end, 0.0)["w"], start["w"])
    assert torch.equal(interpolate(start, end, 1.0)["w"], end["w"])


def test_the_search_finds_the_largest_mix_within_the_limit():
    lam, value, tried = choose(lambda lam: 0.01 * lam, max_drift=0.004)
    assert value <= 0.004
    assert lam == 0.375  # 0.4375 (the next sixteenth) would move the masks by 0.0044
    assert [t[0] for t in tried] == [1.0, 0.5, 0.25, 0.375, 0.4375]


def test_a_challenger_within_the_limit_is_kept_whole():
    lam, _value, tried = choose(lambda lam: 0.0005 * lam, max_drift=0.002)
    assert (lam, len(tried)) == (1.0, 1)


def test_the_builtin_anchors_are_real_photos_and_none_turns_the_step_off(tmp_path):
    images = load_anchors("builtin", 64_000_000)
    assert len(images) == len(BUILTIN_PHOTOS)
    assert all(image.ndim == 3 and image.shape[2] == 3 and min(image.shape[:2]) >= 256 for image in images)
    assert anchor_paths("none") == [] and anchor_paths("off") == []
    with pytest.raises(FileNotFoundError, match="ISNET_TRAIN_ANCHORS"):
        anchor_paths(str(tmp_path / "missing"))


def test_an_unreadable_anchor_image_is_left_out(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg at all")
    good = anchor_paths("builtin")[0]
    (tmp_path / good.name).write_bytes(good.read_bytes())
    assert len(load_anchors(str(tmp_path), 64_000_000)) == 1


def test_the_mixed_challenger_moves_the_anchor_masks_by_at_most_the_limit():
    anchors = load_anchors("builtin", 64_000_000)
    champion, trained = _tiny(0), _tiny(0)
    torch.manual_seed(1)
    trained.load_state_dict({k: v + 0.3 * v.std() * torch.randn_like(v) if v.is_floating_point() and v.numel() > 1
                             else v for k, v in champion.state_dict().items()})
    reference = predict_masks(champion, anchors, 64)
    moved = drift(predict_masks(trained, anchors, 64), reference)
    assert moved > 0.005  # a challenger that forgets

    limit = moved / 3
    result = interpolate_towards(trained, champion.state_dict(), anchors, reference, limit, 64)
    assert 0 < result.lam < 1 and result.drift <= limit
    assert drift(predict_masks(trained, anchors, 64), reference) == pytest.approx(result.drift)
    assert result.anchors == len(anchors) and len(result.tried) == 5


def test_a_cycle_records_the_mix_and_with_a_zero_limit_ships_the_champion_weights(tiny_settings, tiny_pairs):
    images, masks = tiny_pairs(8)
    report = run_cycle((images, masks), tiny_settings, dataclasses.replace(OPTIONS, anchor_drift=0.0), networks=TINY)

    cycle = json.loads((report.directory / "cycle.json").read_text())
    assert cycle["interpolation"]["lam"] == 0.0 and cycle["interpolation"]["anchors"] == len(BUILTIN_PHOTOS)
    shipped = torch.load(report.directory / "checkpoint.pth", weights_only=True)["model"]
    pretrained = torch.load(tiny_settings.weights, weights_only=True)
    assert all(torch.equal(shipped[k], v) for k, v in pretrained.items())


def test_without_anchors_a_cycle_keeps_the_trained_weights_whole(tiny_settings, tiny_pairs):
    images, masks = tiny_pairs(8)
    report = run_cycle((images, masks), tiny_settings, dataclasses.replace(OPTIONS, anchors="none"), networks=TINY)
    assert report.interpolation["lam"] == 1.0 and report.interpolation["anchors"] == 0
    shipped = torch.load(report.directory / "checkpoint.pth", weights_only=True)["model"]
    pretrained = torch.load(tiny_settings.weights, weights_only=True)
    assert not all(torch.equal(shipped[k], v) for k, v in pretrained.items())


def test_the_progress_of_the_step_ends_complete_when_the_challenger_is_kept_whole_at_once():
    anchors = load_anchors("builtin", 64_000_000)[:2]
    champion = _tiny(0)
    reference = predict_masks(champion, anchors, 64)
    events = []
    result = interpolate_towards(_tiny(0), champion.state_dict(), anchors, reference, 0.01, 64,
                                 progress=events.append)
    assert result.lam == 1.0 and len(result.tried) == 1
    assert events[-1].stage == "interpolate" and events[-1].step == events[-1].total == 1
