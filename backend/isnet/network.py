"""The ISNet networks of the DIS paper: the segmenter (ISNetDIS) and the GT encoder.

Both are U^2-Net style stacks of residual U-blocks (RSU). The official code spells out
RSU7, RSU6, RSU5, RSU4 and RSU4F as five near-identical classes; here one `RSU` class is
parametrised by its height and by whether it replaces pooling with dilation ("F").
Module names are chosen so that ``state_dict()`` keys and shapes equal the official ones
(``fixtures/isnet_state_dict_manifest.json``): official ``isnet.pth`` files load with
``strict=True``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def upsample_like(src: Tensor, like: Tensor) -> Tensor:
    """Bilinear resize to ``like``'s spatial size (align_corners=False, as the official code)."""
    return F.interpolate(src, size=like.shape[2:], mode="bilinear", align_corners=False)


def _pool(x: Tensor) -> Tensor:
    return F.max_pool2d(x, 2, stride=2, ceil_mode=True)


class REBNCONV(nn.Module):
    """3x3 (dilated) conv -> BatchNorm -> ReLU; attribute names fixed by the checkpoints."""

    def __init__(self, in_ch: int, out_ch: int, dilation: int = 1) -> None:
        super().__init__()
        self.conv_s1 = nn.Conv2d(in_ch, out_ch, 3, padding=dilation, dilation=dilation)
        self.bn_s1 = nn.BatchNorm2d(out_ch)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn_s1(self.conv_s1(x)), inplace=True)


class RSU(nn.Module):
    """Residual U-block of ``height`` levels.

    Encoder convs ``rebnconv1..rebnconv{height}``, decoder convs ``rebnconv{height-1}d..1d``.
    A pooled block (RSU7..RSU4) halves the resolution after each encoder level but the last
    two, whose bottom conv is dilated by 2; a ``dilated`` block (RSU4F) keeps resolution and
    dilates by 1, 2, 4, 8 instead.
    """

    def __init__(self, height: int, in_ch: int, mid_ch: int, out_ch: int, dilated: bool = False) -> None:
        super().__init__()
        self.height = height
        self.dilated = dilated
        self.rebnconvin = REBNCONV(in_ch, out_ch)
        for level in range(1, height + 1):
            self.add_module(
                f"rebnconv{level}",
                REBNCONV(out_ch if level == 1 else mid_ch, mid_ch, self._dilation(level, encoder=True)),
            )
        for level in range(height - 1, 0, -1):
            self.add_module(
                f"rebnconv{level}d",
                REBNCONV(2 * mid_ch, out_ch if level == 1 else mid_ch, self._dilation(level, encoder=False)),
            )

    def _dilation(self, level: int, encoder: bool) -> int:
        if self.dilated:
            return 2 ** (level - 1)
        return 2 if encoder and level == self.height else 1

    def forward(self, x: Tensor) -> Tensor:
        hxin = self.rebnconvin(x)
        skips: list[Tensor] = []
        hx = hxin
        for level in range(1, self.height + 1):
            hx = getattr(self, f"rebnconv{level}")(hx)
            skips.append(hx)
            if not self.dilated and level < self.height - 1:
                hx = _pool(hx)
        hx = skips[-1]
        for level in range(self.height - 1, 0, -1):
            hx = getattr(self, f"rebnconv{level}d")(torch.cat((hx, skips[level - 1]), 1))
            if not self.dilated and level > 1:
                hx = upsample_like(hx, skips[level - 2])
        return hx + hxin


# (height, dilated, in, mid, out) of encoder stages 1..6 and decoder stages 5d..1d.
_DIS_ENCODER = [(7, False, 64, 32, 64), (6, False, 64, 32, 128), (5, False, 128, 64, 256),
                (4, False, 256, 128, 512), (4, True, 512, 256, 512), (4, True, 512, 256, 512)]
_DIS_DECODER = [(4, True, 1024, 256, 512), (4, False, 1024, 128, 256), (5, False, 512, 64, 128),
                (6, False, 256, 32, 64), (7, False, 128, 16, 64)]
_GT_ENCODER = [(7, False, 16, 16, 64), (6, False, 64, 16, 64), (5, False, 64, 32, 128),
               (4, False, 128, 32, 256), (4, True, 256, 64, 512), (4, True, 512, 64, 512)]
_SIDE_CHANNELS = [64, 64, 128, 256, 512, 512]


def _add_stages(module: nn.Module, names: list[str], specs: list[tuple[int, bool, int, int, int]]) -> None:
    for name, (height, dilated, in_ch, mid_ch, out_ch) in zip(names, specs, strict=True):
        module.add_module(name, RSU(height, in_ch, mid_ch, out_ch, dilated))


def _add_sides(module: nn.Module, out_ch: int) -> None:
    for i, ch in enumerate(_SIDE_CHANNELS, start=1):
        module.add_module(f"side{i}", nn.Conv2d(ch, out_ch, 3, padding=1))


def _encode(module: nn.Module, hx: Tensor) -> list[Tensor]:
    """Run stage1..stage6 with pooling in between; return the six stage outputs."""
    features = []
    for i in range(1, 7):
        if i > 1:
            hx = _pool(hx)
        hx = getattr(module, f"stage{i}")(hx)
        features.append(hx)
    return features


def _side_outputs(module: nn.Module, features: list[Tensor], like: Tensor) -> list[Tensor]:
    """Six sigmoid maps at ``like``'s size. The sigmoid runs in fp32 even under bf16/fp16 autocast:
    a reduced-precision probability rounds to exactly 0 or 1 far from the logit's limit, and the
    BCE gradient there explodes."""
    return [
        torch.sigmoid(upsample_like(getattr(module, f"side{i}")(f), like).float())
        for i, f in enumerate(features, start=1)
    ]


class ISNetDIS(nn.Module):
    """The segmentation network.

    ``forward`` returns ``(side_outputs, decoder_features)``: six sigmoid maps at the input's
    size (the first is the one that is served) and the six decoder feature maps that the
    intermediate supervision compares with the GT encoder's.
    """

    def __init__(self, in_ch: int = 3, out_ch: int = 1) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_ch, 64, 3, stride=2, padding=1)
        _add_stages(self, [f"stage{i}" for i in range(1, 7)], _DIS_ENCODER)
        _add_stages(self, [f"stage{i}d" for i in range(5, 0, -1)], _DIS_DECODER)
        _add_sides(self, out_ch)

    def decode(self, x: Tensor) -> list[Tensor]:
        """Decoder features ``[hx1d, hx2d, hx3d, hx4d, hx5d, hx6]`` (finest first)."""
        enc = _encode(self, self.conv_in(x))
        hx = enc[5]
        decoded = [hx]
        for i in range(5, 0, -1):
            hx = getattr(self, f"stage{i}d")(torch.cat((upsample_like(hx, enc[i - 1]), enc[i - 1]), 1))
            decoded.append(hx)
        return decoded[::-1]

    def forward(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        features = self.decode(x)
        return _side_outputs(self, features, x), features

    def predict(self, x: Tensor) -> Tensor:
        """Only the served output (first side output after sigmoid): skips five side heads."""
        hx1d = self.decode(x)[0]
        return torch.sigmoid(upsample_like(self.side1(hx1d), x))


class GTStem(nn.Module):
    """The GT encoder's stride-2 input conv (conv -> BN -> ReLU)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class ISNetGTEncoder(nn.Module):
    """Encodes ground-truth masks into the feature space the segmenter is supervised in.

    ``forward`` returns ``(side_outputs, features)`` like :class:`ISNetDIS`; its six stage
    features have the shapes of ISNetDIS's six decoder features.
    """

    def __init__(self, in_ch: int = 1, out_ch: int = 1) -> None:
        super().__init__()
        self.conv_in = GTStem(in_ch, 16)
        _add_stages(self, [f"stage{i}" for i in range(1, 7)], _GT_ENCODER)
        _add_sides(self, out_ch)

    def forward(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        features = _encode(self, self.conv_in(x))
        return _side_outputs(self, features, x), features
