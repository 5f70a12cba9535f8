"""Which networks a cycle builds and how a version's checkpoint becomes them.

Why a seam: the cycle logic (staging, resume, evaluation, promotion) does not depend on
ISNet's 44 M parameters, and exercising it with the real networks costs seconds per step on
a CPU. Production uses :data:`ISNET`; tests and machinery benchmarks pass
:data:`backend.isnet.training.tiny.TINY`, whose forward has the same contract.

Contract of a segmenter: ``forward(x [B,3,H,W]) -> (six sigmoid maps [B,1,H,W], six feature
maps)`` and ``predict(x) -> [B,1,H,W]``; of a GT encoder: ``forward(mask [B,1,H,W]) -> (six
sigmoid maps, six feature maps shaped like the segmenter's)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from backend.isnet.network import ISNetDIS, ISNetGTEncoder
from backend.isnet.weights import WeightsError, extract_state_dict, load_state_dict_strict


@dataclass(frozen=True)
class Networks:
    segmenter: Callable[[], nn.Module]
    gt_encoder: Callable[[], nn.Module]
    name: str = "isnet"

    def load(self, checkpoint: Path) -> tuple[nn.Module, Mapping[str, torch.Tensor] | None]:
        """The segmenter from ``checkpoint`` (eval mode) and the GT encoder state stored with it, if any."""
        obj = read_checkpoint(checkpoint)
        model = self.segmenter()
        load_state_dict_strict(model, extract_state_dict(obj))
        gt_state = obj.get("gt_encoder") if isinstance(obj, Mapping) else None
        return model.eval(), gt_state

    def new_gt_encoder(self, state: Mapping[str, torch.Tensor] | None = None) -> tuple[nn.Module, bool]:
        """A GT encoder, from ``state`` when it fits (``True``) or freshly initialised (``False``)."""
        encoder = self.gt_encoder()
        if state is not None:
            try:
                load_state_dict_strict(encoder, state)
                return encoder, True
            except WeightsError:
                encoder = self.gt_encoder()
        return encoder, False


def read_checkpoint(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise WeightsError(f"no checkpoint at {path}") from exc
    except Exception as exc:  # torch raises many kinds for a bad file
        raise WeightsError(f"cannot read checkpoint {path}: {exc}") from exc


ISNET = Networks(ISNetDIS, ISNetGTEncoder, "isnet")
