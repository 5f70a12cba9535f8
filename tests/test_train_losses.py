"""The paper's losses: six side-output BCEs plus a selectable feature-level distance."""

from __future__ import annotations

import pytest
import torch

from backend.isnet.network import ISNetDIS, ISNetGTEncoder
from backend.isnet.training.losses import feature_loss, segmentation_loss, side_bce


@pytest.fixture(scope="module")
def real_features():
    """The six decoder features of ISNetDIS and the six GT encoder features, for one 64x64 input."""
    torch.manual_seed(0)
    with torch.no_grad():
        _, dis = ISNetDIS().eval()(torch.rand(1, 3, 64, 64))
        _, gt = ISNetGTEncoder().eval()(torch.rand(1, 1, 64, 64))
    return dis, gt


@pytest.mark.parametrize("mode", ["mse", "l1", "smooth_l1", "kl"])
def test_feature_loss_compares_matching_isnet_features_in_every_mode(real_features, mode):
    dis, gt = real_features
    loss = feature_loss(dis, gt, mode)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
    assert feature_loss(gt, gt, mode) == pytest.approx(0.0, abs=1e-6)


def test_feature_loss_refuses_features_of_another_shape(real_features):
    dis, gt = real_features
    with pytest.raises(ValueError, match="feature shapes differ"):
        feature_loss(dis, [*gt[:5], gt[5][:, :256]], "mse")


def test_unknown_feature_loss_is_refused(real_features):
    dis, gt = real_features
    with pytest.raises(ValueError, match="unknown feature loss"):
        feature_loss(dis, gt, "cosine")


def test_side_bce_sums_six_sides_and_reports_the_served_one():
    target = (torch.rand(2, 1, 16, 16) > 0.5).float()
    sides = [torch.full_like(target, 0.5) for _ in range(6)]
    total, first = side_bce(sides, target)
    assert first.item() == pytest.approx(torch.log(torch.tensor(2.0)).item(), rel=1e-5)
    assert total.item() == pytest.approx(6 * first.item(), rel=1e-5)


def test_feature_term_is_weighted_and_only_present_when_on(real_features):
    dis, gt = real_features
    target = torch.rand(1, 1, 64, 64)
    sides = [torch.full_like(target, 0.5) for _ in range(6)]
    off = segmentation_loss(sides, target, dis, gt, mode="off")
    on = segmentation_loss(sides, target, dis, gt, mode="mse", weight=0.5)
    assert off.feature == 0 and off.total.item() == pytest.approx(off.bce)
    assert on.feature == pytest.approx(0.5 * feature_loss(dis, gt, "mse").item(), rel=1e-5)
    assert on.total.item() == pytest.approx(on.bce + on.feature, rel=1e-5)
