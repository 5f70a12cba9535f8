"""A few-thousand-parameter pair of networks with ISNet's training contract.

Why it exists: the cycle machinery (data, losses, stages, resume, evaluation, promotion,
atomic versions) is the same whatever the weights, and checking it with the real 44 M
parameter ISNet costs seconds per step on a CPU. Tests, and anyone debugging a cycle on a
laptop, use :data:`TINY`; nothing in serving ever does.

Both networks produce six feature maps at strides 2, 4, ..., 64 with equal channel counts,
as ISNetDIS's decoder and ISNetGTEncoder's stages do, so the feature loss applies unchanged.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backend.isnet.training.networks import Networks

CHANNELS = (8, 8, 16, 16, 16, 16)


class _Block(nn.Module):
    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1)
        # He initialisation keeps activations alive through the stack even with BatchNorm
        # frozen at identity (as fine-tuning runs it), so a few steps visibly lower the loss.
        nn.init.kaiming_normal_(self.conv.weight, nonlinearity="relu")
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


class _Tiny(nn.Module):
    def __init__(self, in_ch: int) -> None:
        super().__init__()
        chans = (in_ch, *CHANNELS)
        self.blocks = nn.ModuleList(_Block(a, b) for a, b in itertools.pairwise(chans))
        self.sides = nn.ModuleList(nn.Conv2d(c, 1, 3, padding=1) for c in CHANNELS)

    def features(self, x: Tensor) -> list[Tensor]:
        out = []
        for block in self.blocks:
            x = block(x)
            out.append(x)
        return out

    def forward(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        feats = self.features(x)
        sides = [torch.sigmoid(F.interpolate(side(f), size=x.shape[2:], mode="bilinear", align_corners=False).float())
                 for side, f in zip(self.sides, feats, strict=True)]
        return sides, feats

    def predict(self, x: Tensor) -> Tensor:
        return self.forward(x)[0][0]


class TinySegmenter(_Tiny):
    def __init__(self) -> None:
        super().__init__(3)


class TinyGTEncoder(_Tiny):
    def __init__(self) -> None:
        super().__init__(1)


TINY = Networks(TinySegmenter, TinyGTEncoder, "tiny")
