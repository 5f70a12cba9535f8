"""The two training stages on real masks, with tiny networks (the weights do not matter here)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from backend.isnet.training.batchnorm import batchnorm_layers
from backend.isnet.training.data import Dataset, load_pairs
from backend.isnet.training.gt_encoder import max_f_measure, train_gt_encoder
from backend.isnet.training.options import TrainOptions
from backend.isnet.training.tiny import TinyGTEncoder, TinySegmenter
from backend.isnet.training.trainer import segmenter_step, train_segmenter

OPTIONS = TrainOptions(size=64, crop=32, batch=4, device="cpu", amp=False, gt_check_every=10_000,
                       checkpoint_every=10_000)


@pytest.fixture(scope="module")
def pairs(duts_tr):
    torch.set_num_threads(1)
    items = Dataset.from_folders(duts_tr / "images", duts_tr / "masks").items[:8]
    return load_pairs(items, 64_000_000, 64)[0]


def _losses(events, key):
    return [e.values[key] for e in events if key in e.values]


def test_perfect_reconstruction_has_max_f_one_and_noise_less():
    masks = (torch.rand(3, 1, 32, 32) > 0.5).float()
    assert max_f_measure(masks, masks) == pytest.approx(1.0)
    assert max_f_measure(torch.rand(3, 1, 32, 32), masks) < 0.9


def test_gt_encoder_reconstruction_loss_decreases(pairs):
    torch.manual_seed(0)
    events = []
    options = dataclasses.replace(OPTIONS, gt_max_iters=40, gt_target_f=1.1)
    result = train_gt_encoder(TinyGTEncoder(), pairs, options, progress=events.append)
    bce = _losses(events, "bce")
    assert result.steps == 40 and not result.reached
    assert np.mean(bce[-10:]) < 0.9 * np.mean(bce[:10])


def test_gt_encoder_stops_as_soon_as_it_fits_the_training_masks(pairs):
    torch.manual_seed(0)
    options = dataclasses.replace(OPTIONS, gt_max_iters=200, gt_check_every=5, gt_target_f=0.5)
    result = train_gt_encoder(TinyGTEncoder(), pairs, options)
    assert result.reached and result.max_f >= 0.5
    assert result.steps < 200 and result.steps % 5 == 0
    assert result.checks[-1]["max_f"] == pytest.approx(result.max_f, abs=1e-4)


@pytest.mark.parametrize("feature_loss", ["mse", "off"])
def test_segmentation_stage_loss_decreases(pairs, feature_loss):
    torch.manual_seed(0)
    encoder = TinyGTEncoder()
    train_gt_encoder(encoder, pairs, dataclasses.replace(OPTIONS, gt_max_iters=20, gt_target_f=1.1))
    events = []
    # The feature term at the paper's weight 1 (the default 0.02 lets the side BCE dominate), to see it fall.
    options = dataclasses.replace(OPTIONS, iters=60, lr=1e-2, feature_loss=feature_loss, feature_weight=1.0)
    run = train_segmenter(TinySegmenter(), encoder, pairs, options, progress=events.append)
    steps, losses = run.steps, run.losses
    assert steps == 60 and len(losses) == 60 and run.stopped_by == "iters"
    total = [row["loss"] for row in losses]
    assert np.mean(total[-10:]) < 0.95 * np.mean(total[:10])
    if feature_loss == "off":
        assert all(row["feat"] == 0 for row in losses)
    else:
        assert np.mean([r["feat"] for r in losses[-10:]]) < 0.95 * np.mean([r["feat"] for r in losses[:10]])
    assert {"loss", "bce", "tar", "feat"} <= set(events[-1].values)


def test_a_step_reports_each_phase_in_order_to_its_timing_hook(pairs):
    """``bench/train.py`` times the trainer's own step through this hook, not a copy of it."""
    torch.manual_seed(0)
    model = TinySegmenter()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    phases = []
    parts = segmenter_step(model, TinyGTEncoder(), pairs, OPTIONS.resolved(), 0, optimizer,
                           torch.amp.GradScaler("cuda", enabled=False), phases.append)
    assert parts is not None and parts.feature > 0
    assert phases == ["data", "forward", "feature loss", "losses", "backward", "optimizer"]


def test_frozen_batchnorm_keeps_the_pretrained_normalisation(pairs):
    """Folded checkpoints have identity BatchNorms; fine-tuning must not re-estimate them."""
    torch.manual_seed(0)
    model = TinySegmenter()
    before = {k: v.clone() for k, v in model.state_dict().items() if "bn" in k}
    options = dataclasses.replace(OPTIONS, iters=5, lr=1e-2, feature_loss="off")
    train_segmenter(model, None, pairs, options)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(v, after[k]) for k, v in TinySegmenter().state_dict().items() if "conv" in k)
    assert all(not layer.training for layer in batchnorm_layers(model))


def test_multi_scale_training_feeds_whole_images_at_each_scale_in_turn(pairs):
    """``scales`` replaces crops: step k sees the whole image resized to scales[k % len]."""
    seen = []

    class Recording(TinySegmenter):
        def forward(self, x):
            seen.append(tuple(x.shape[-2:]))
            return super().forward(x)

    options = dataclasses.replace(OPTIONS, iters=5, lr=1e-3, feature_loss="off", scales=(64, 32))
    train_segmenter(Recording(), None, pairs, options)
    assert seen == [(64, 64), (32, 32), (64, 64), (32, 32), (64, 64)]
    assert options.geometry(1) == (32, 32, 1.0) and options.check_view == (64, 64)


def test_scales_are_checked_like_input_sizes():
    with pytest.raises(ValueError):
        dataclasses.replace(OPTIONS, scales=(64, 33)).validate()


def test_training_scales_come_from_the_environment(monkeypatch):
    from backend.settings import load

    monkeypatch.setenv("ISNET_TRAIN_SCALES", "1024, 320")
    options = TrainOptions.from_settings(load())
    assert options.scales == (1024, 320) and options.geometry(0) == (1024, 1024, 1.0)
