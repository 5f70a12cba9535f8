"""The losses of the DIS paper: deep supervision of six side outputs, plus feature-level
intermediate supervision against the frozen GT encoder.

Why computed in float32 outside autocast: the networks return probabilities (sigmoid
applied inside), and ``binary_cross_entropy`` on fp16 probabilities is both refused by
autocast and numerically poor; casting the six maps and features up costs little.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from backend.isnet.training.options import FEATURE_LOSSES


@dataclass
class LossParts:
    """``total`` is optimised; the rest is for progress bars and the cycle report."""

    total: Tensor
    bce: float
    """Sum of the six side-output BCEs."""
    target: float
    """BCE of the first (served) side output alone: the official code's "tar" loss."""
    feature: float = 0.0
    """Weighted sum of the six feature distances (0 when intermediate supervision is off)."""

    def as_dict(self) -> dict[str, float]:
        return {"loss": float(self.total.detach()), "bce": self.bce, "tar": self.target, "feat": self.feature}


def side_bce(sides: Sequence[Tensor], target: Tensor) -> tuple[Tensor, Tensor]:
    """``(sum of BCEs, BCE of side 1)``; a side at another size gets the target resized to it."""
    target = target.float()
    total = target.new_zeros(())
    first = total
    with torch.autocast(target.device.type, enabled=False):
        for i, side in enumerate(sides):
            tgt = target
            if side.shape[-2:] != target.shape[-2:]:
                tgt = F.interpolate(target, size=side.shape[-2:], mode="bilinear", align_corners=False)
            loss = F.binary_cross_entropy(side.float(), tgt)
            total = total + loss
            if i == 0:
                first = loss
    return total, first


def feature_distance(pred: Tensor, target: Tensor, mode: str) -> Tensor:
    """Distance between one segmenter feature map and the GT encoder's of the same shape.

    ``kl`` follows the official code: KL(softmax over channels of the target || of the
    prediction), averaged over every element.
    """
    if pred.shape != target.shape:
        raise ValueError(f"feature shapes differ: segmenter {tuple(pred.shape)} vs GT encoder {tuple(target.shape)}")
    pred, target = pred.float(), target.float().detach()
    if mode == "mse":
        return F.mse_loss(pred, target)
    if mode == "l1":
        return F.l1_loss(pred, target)
    if mode == "smooth_l1":
        return F.smooth_l1_loss(pred, target)
    if mode == "kl":
        # Element-wise mean, as nn.KLDivLoss(size_average=True) in the official code.
        return F.kl_div(F.log_softmax(pred, dim=1), F.softmax(target, dim=1), reduction="none").mean()
    raise ValueError(f"unknown feature loss {mode!r}; valid: {', '.join(m for m in FEATURE_LOSSES if m != 'off')}")


def feature_loss(pred_features: Sequence[Tensor], target_features: Sequence[Tensor], mode: str) -> Tensor:
    """Sum of :func:`feature_distance` over the six levels (finest first)."""
    if len(pred_features) != len(target_features):
        raise ValueError(f"{len(pred_features)} segmenter feature maps vs {len(target_features)} GT encoder ones")
    with torch.autocast(pred_features[0].device.type, enabled=False):
        return sum((feature_distance(p, t, mode) for p, t in zip(pred_features, target_features, strict=True)),
                   pred_features[0].new_zeros((), dtype=torch.float32))


def all_finite(tensors: Iterable[Tensor | None]) -> bool:
    """Whether every given tensor is free of NaN and inf. bf16 autocast has no loss scaler to
    catch a bad step, so outputs and gradients are checked here and such a step is skipped."""
    return all(bool(torch.isfinite(t).all()) for t in tensors if t is not None)


def gradients_finite(optimizer: torch.optim.Optimizer) -> bool:
    """:func:`all_finite` over the gradients of every parameter ``optimizer`` updates."""
    return all_finite(p.grad for group in optimizer.param_groups for p in group["params"])


def reconstruction_loss(sides: Sequence[Tensor], masks: Tensor) -> LossParts:
    """GT encoder stage: the masks reconstructed from themselves through the six sides."""
    total, first = side_bce(sides, masks)
    return LossParts(total, float(total.detach()), float(first.detach()))


def segmentation_loss(
    sides: Sequence[Tensor],
    masks: Tensor,
    features: Sequence[Tensor] | None = None,
    gt_features: Sequence[Tensor] | None = None,
    mode: str = "mse",
    weight: float = 1.0,
) -> LossParts:
    """Segmentation stage: side BCEs plus ``weight`` times the feature loss (when features are given)."""
    bce, first = side_bce(sides, masks)
    if mode == "off" or features is None or gt_features is None:
        return LossParts(bce, float(bce.detach()), float(first.detach()))
    feat = weight * feature_loss(features, gt_features, mode)
    return LossParts(bce + feat, float(bce.detach()), float(first.detach()), float(feat.detach()))
