"""Stage 2 (the segmenter, with intermediate supervision) and the two stages run in order
with a resumable training state.

Why the state is one dict written every ``checkpoint_every`` steps: a worker can be killed
at any time (deploys, OOM, a user cancelling); the cycle that picks the work up again
loads the latest state and continues from its step, drawing the same batches (see
``batch_indices``), instead of paying for the whole stage again.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from backend.isnet.training.batchnorm import freeze, set_train_mode
from backend.isnet.training.data import Pair, batch_indices, sample_batch
from backend.isnet.training.gt_encoder import GTEncoderResult, train_gt_encoder
from backend.isnet.training.losses import segmentation_loss
from backend.isnet.training.options import TrainOptions
from backend.isnet.training.progress import ProgressFn, emit

STREAM = 2
STATE_FORMAT = 1
MAX_BAD_STEPS = 10
"""Consecutive non-finite losses after which the stage gives up (a diverged run)."""

SaveStateFn = Callable[[dict[str, Any]], None]


class TrainingError(RuntimeError):
    """Training cannot go on (no usable data, diverged); the message says why."""


@dataclass
class TrainingResult:
    gt: GTEncoderResult | None
    steps: int
    losses: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    """Wall time of the segmentation steps run by this process (not of resumed ones)."""
    images_per_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        def mean(key: str, part: list[dict[str, float]]) -> float | None:
            values = [row[key] for row in part if key in row and math.isfinite(row[key])]
            return round(float(np.mean(values)), 5) if values else None

        window = max(1, min(50, len(self.losses) // 5 or 1))
        head, tail = self.losses[:window], self.losses[-window:]
        return {
            "steps": self.steps,
            "gt_encoder": self.gt.to_dict() if self.gt else None,
            "seconds": round(self.seconds, 2),
            "images_per_s": round(self.images_per_s, 4),
            "loss_first": {k: mean(k, head) for k in ("loss", "bce", "tar", "feat")},
            "loss_last": {k: mean(k, tail) for k in ("loss", "bce", "tar", "feat")},
        }


def train_segmenter(
    model: nn.Module,
    gt_encoder: nn.Module | None,
    pairs: Sequence[Pair],
    options: TrainOptions,
    *,
    start_step: int = 0,
    optimizer_state: dict[str, Any] | None = None,
    scaler_state: dict[str, Any] | None = None,
    losses: list[dict[str, float]] | None = None,
    progress: ProgressFn | None = None,
    save: Callable[[int, torch.optim.Optimizer, torch.amp.GradScaler, list[dict[str, float]]], None] | None = None,
) -> tuple[int, list[dict[str, float]], float]:
    """Fine-tune ``model`` in place for ``options.iters`` steps; ``(steps, losses, seconds)``.

    Side-output BCE plus, when ``gt_encoder`` is given and the feature loss is on, the distance
    between the model's six decoder features and the frozen encoder's features of the same
    (cropped, flipped) masks. BatchNorm as ``options.bn`` says (see :mod:`.batchnorm`).
    """
    device = options.device
    dtype = torch.float16
    model.to(device)
    set_train_mode(model, options.bn)
    use_features = options.uses_features and gt_encoder is not None
    if use_features:
        freeze(gt_encoder.to(device))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=options.lr, betas=(0.9, 0.999), eps=1e-8)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    scaler = torch.amp.GradScaler("cuda", enabled=bool(options.amp))
    if scaler_state:
        scaler.load_state_dict(scaler_state)
    losses = list(losses or [])
    bad = 0
    started = time.perf_counter()
    for step in range(start_step, options.iters):
        indices = batch_indices(len(pairs), options.batch, step, options.seed, STREAM)
        rng = np.random.default_rng([options.seed, STREAM, step, 1])
        side, crop, min_scale = options.geometry(step)
        images, masks = sample_batch(pairs, indices, side, crop, rng, options.flip, min_scale)
        images, masks = images.to(device), masks.to(device)
        with torch.autocast(torch.device(device).type, dtype=dtype, enabled=bool(options.amp)):
            sides, features = model(images)
            gt_features = None
            if use_features:
                with torch.no_grad():
                    gt_features = gt_encoder(masks)[1]
        parts = segmentation_loss(sides, masks, features if use_features else None, gt_features,
                                  options.feature_loss, options.feature_weight)
        optimizer.zero_grad(set_to_none=True)
        if not math.isfinite(float(parts.total.detach())):
            bad += 1
            if bad >= MAX_BAD_STEPS:
                raise TrainingError(f"loss was not finite for {bad} steps in a row (step {step + 1}); lower the lr")
            continue
        bad = 0
        scaler.scale(parts.total).backward()
        scaler.step(optimizer)
        scaler.update()
        row = {"step": step + 1, **{k: round(v, 6) for k, v in parts.as_dict().items()}}
        losses.append(row)
        emit(progress, "segmenter", step + 1, options.iters, parts.as_dict())
        if save is not None and (step + 1) % options.checkpoint_every == 0 and step + 1 < options.iters:
            save(step + 1, optimizer, scaler, losses)
    model.eval()
    return options.iters, losses, time.perf_counter() - started


def run_training(
    model: nn.Module,
    gt_encoder: nn.Module | None,
    pairs: Sequence[Pair],
    options: TrainOptions,
    *,
    gt_encoder_warm: bool = False,
    state: dict[str, Any] | None = None,
    save_state: SaveStateFn | None = None,
    progress: ProgressFn | None = None,
) -> TrainingResult:
    """GT encoder stage (when the feature loss is on), then the segmentation stage.

    ``state`` is a training state saved earlier by ``save_state`` (same options and data):
    the weights it holds are loaded and the run continues at its stage and step.
    ``gt_encoder_warm`` says the encoder was carried over from the previous version (it is
    checked before being trained further).
    """
    if not pairs:
        raise TrainingError("no readable training pairs")
    state = dict(state or {})
    stage = state.get("stage", "gt_encoder" if options.uses_features else "segmenter")
    if state:
        model.load_state_dict(state["model"])
        if gt_encoder is not None and state.get("gt_encoder") is not None:
            gt_encoder.load_state_dict(state["gt_encoder"])
    gt_result: GTEncoderResult | None = None
    if state.get("gt") is not None:
        gt_result = GTEncoderResult(**{k: state["gt"][k] for k in ("steps", "max_f", "reached", "checks")})
    if stage == "trained":  # killed while evaluating or writing: only that is left to do
        return TrainingResult(gt_result, int(state["step"]), list(state.get("losses", [])))

    def snapshot(stage_name: str, **extra: Any) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT, "stage": stage_name, "model": model.state_dict(),
            "gt_encoder": gt_encoder.state_dict() if gt_encoder is not None else None,
            "gt": gt_result.to_dict() if gt_result else None, "options": options.to_dict(), **extra,
        }

    if options.uses_features and gt_encoder is not None and stage == "gt_encoder":
        def save_gt(step: int, optimizer: torch.optim.Optimizer, extra: dict[str, Any]) -> None:
            if save_state is not None:
                save_state(snapshot("gt_encoder", gt_step=step, optimizer=optimizer.state_dict(), **extra))

        gt_result = train_gt_encoder(
            gt_encoder, pairs, options,
            start_step=int(state.get("gt_step", 0)),
            optimizer_state=state.get("optimizer") if state.get("stage") == "gt_encoder" else None,
            checks=state.get("gt_checks"), check_first=gt_encoder_warm and not state,
            progress=progress, save=save_gt,
        )
        stage = "segmenter"
        state = {}
        if save_state is not None:
            save_state(snapshot("segmenter", step=0))

    def save_seg(step: int, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 losses: list[dict[str, float]]) -> None:
        if save_state is not None:
            save_state(snapshot("segmenter", step=step, optimizer=optimizer.state_dict(),
                                scaler=scaler.state_dict(), losses=losses))

    resumed = state.get("stage") == "segmenter"
    start = int(state.get("step", 0)) if resumed else 0
    steps, losses, seconds = train_segmenter(
        model, gt_encoder if options.uses_features else None, pairs, options,
        start_step=start,
        optimizer_state=state.get("optimizer") if resumed else None,
        scaler_state=state.get("scaler") if resumed else None,
        losses=state.get("losses") if resumed else None,
        progress=progress, save=save_seg,
    )
    if save_state is not None:
        save_state(snapshot("trained", step=steps, losses=losses))
    done = steps - start
    return TrainingResult(gt_result, steps, losses, seconds, done * options.batch / seconds if seconds > 0 else 0.0)
