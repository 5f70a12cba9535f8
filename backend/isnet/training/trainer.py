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
from backend.isnet.training.budget import Budget, StepTimer, learning_rate, planned_steps
from backend.isnet.training.data import Pair, batch_indices, sample_batch
from backend.isnet.training.gt_encoder import GTEncoderResult, train_gt_encoder
from backend.isnet.training.losses import LossParts, all_finite, gradients_finite, segmentation_loss
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
    stopped_by: str = ""
    """``iters`` (the cap), ``budget`` (the next step would have ended past the wall-time
    budget) or ``resumed`` (a resumed cycle that had finished training)."""
    step_seconds: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        def mean(key: str, part: list[dict[str, float]]) -> float | None:
            values = [row[key] for row in part if key in row and math.isfinite(row[key])]
            return round(float(np.mean(values)), 5) if values else None

        window = max(1, min(50, len(self.losses) // 5 or 1))
        head, tail = self.losses[:window], self.losses[-window:]
        times = self.step_seconds
        return {
            "steps": self.steps,
            "stopped_by": self.stopped_by,
            "gt_encoder": self.gt.to_dict() if self.gt else None,
            "seconds": round(self.seconds, 2),
            "images_per_s": round(self.images_per_s, 4),
            "step_seconds": {"mean": round(float(np.mean(times)), 3), "median": round(float(np.median(times)), 3),
                             "max": round(float(np.max(times)), 3)} if times else None,
            "loss_first": {k: mean(k, head) for k in ("loss", "bce", "tar", "feat")},
            "loss_last": {k: mean(k, tail) for k in ("loss", "bce", "tar", "feat")},
        }


@dataclass
class SegmenterRun:
    """What :func:`train_segmenter` did."""

    steps: int
    losses: list[dict[str, float]]
    seconds: float
    stopped_by: str
    step_seconds: list[float]


def _another_step(step: int, options: TrainOptions, budget: Budget, timer: StepTimer) -> str:
    """Empty when step ``step`` (0-based) may run, else why not: ``iters`` or ``budget``."""
    if options.iters and step >= options.iters:
        return "iters"
    if budget.bounded and (budget.training_left() <= 0 or timer.estimate() > budget.training_left()):
        return "budget"
    return ""


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
    budget: Budget | None = None,
) -> SegmenterRun:
    """Fine-tune ``model`` in place until ``options.iters`` steps or the budget's training time.

    Side-output BCE plus, when ``gt_encoder`` is given and the feature loss is on, the distance
    between the model's six decoder features and the frozen encoder's features of the same
    (flipped) masks. BatchNorm as ``options.bn`` says (see :mod:`.batchnorm`). The learning rate
    of each step follows ``options.schedule`` towards the step count the budget allows.
    """
    options = options.resolved()
    device = options.device
    budget = budget or Budget(0.0)
    model.to(device)
    set_train_mode(model, options.bn)
    use_features = options.uses_features and gt_encoder is not None
    if use_features:
        freeze(gt_encoder.to(device))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=options.lr, betas=(0.9, 0.999), eps=1e-8)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    scaler = torch.amp.GradScaler("cuda", enabled=options.grad_scaling)
    if scaler_state:
        scaler.load_state_dict(scaler_state)
    losses = list(losses or [])
    bad = 0
    timer = StepTimer()
    started = time.perf_counter()
    step = start_step
    while not (stopped_by := _another_step(step, options, budget, timer)):
        tick = time.perf_counter()
        total = planned_steps(step, options.iters, budget, timer)
        lr = learning_rate(step, total, options.lr, options.schedule, options.warmup, options.lr_floor)
        for group in optimizer.param_groups:
            group["lr"] = lr
        parts = segmenter_step(model, gt_encoder if use_features else None, pairs, options, step, optimizer, scaler)
        step += 1
        timer.add(time.perf_counter() - tick)
        if parts is None:
            bad += 1
            if bad >= MAX_BAD_STEPS:
                raise TrainingError(f"loss was not finite for {bad} steps in a row (step {step}); lower the lr")
            continue
        bad = 0
        values = {**parts.as_dict(), "lr": lr}
        losses.append({"step": step, **{k: round(v, 6) if k != "lr" else v for k, v in values.items()}})
        total = planned_steps(step, options.iters, budget, timer)
        emit(progress, "segmenter", step, total, values,
             eta_s=budget.eta((total - step) * timer.estimate()) if budget.bounded else None)
        if save is not None and step % options.checkpoint_every == 0 and not (options.iters and step >= options.iters):
            save(step, optimizer, scaler, losses)
    model.eval()
    return SegmenterRun(step, losses, time.perf_counter() - started, stopped_by, timer.durations)


def _no_lap(phase: str) -> None:
    pass


def segmenter_step(model: nn.Module, gt_encoder: nn.Module | None, pairs: Sequence[Pair], options: TrainOptions,
                   step: int, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   lap: Callable[[str], None] = _no_lap) -> LossParts | None:
    """One optimizer step on batch ``step``; None (and no update) when the loss is not finite.

    ``options`` must be resolved. ``lap(phase)`` is called as each phase ends (``data``,
    ``forward``, ``feature loss``: the GT encoder on the masks, ``losses``: the side BCEs and
    feature distances, ``backward``, ``optimizer``), so ``bench/train.py`` times this very step.
    """
    device = options.device
    indices = batch_indices(len(pairs), options.batch, step, options.seed, STREAM)
    rng = np.random.default_rng([options.seed, STREAM, step, 1])
    side, crop, min_scale = options.geometry(step)
    images, masks = sample_batch(pairs, indices, side, crop, rng, options.flip, min_scale)
    images, masks = images.to(device), masks.to(device)
    lap("data")
    with torch.autocast(torch.device(device).type, dtype=options.autocast_dtype, enabled=bool(options.amp)):
        sides, features = model(images)
        lap("forward")
        gt_features = None
        if gt_encoder is not None:
            with torch.no_grad():
                gt_features = gt_encoder(masks)[1]
        lap("feature loss")
    optimizer.zero_grad(set_to_none=True)
    if not all_finite(sides):
        return None
    parts = segmentation_loss(sides, masks, features if gt_encoder is not None else None, gt_features,
                              options.feature_loss, options.feature_weight)
    if not math.isfinite(float(parts.total.detach())):
        return None
    lap("losses")
    scaler.scale(parts.total).backward()
    lap("backward")
    if not options.grad_scaling and not gradients_finite(optimizer):
        optimizer.zero_grad(set_to_none=True)
        return None
    scaler.step(optimizer)
    scaler.update()
    lap("optimizer")
    return parts


def run_training(
    model: nn.Module,
    gt_encoder: nn.Module | None,
    pairs: Sequence[Pair],
    options: TrainOptions,
    *,
    gt_encoder_warm: bool = False,
    gt_ready: GTEncoderResult | None = None,
    on_gt_trained: Callable[[nn.Module, GTEncoderResult], None] | None = None,
    state: dict[str, Any] | None = None,
    save_state: SaveStateFn | None = None,
    progress: ProgressFn | None = None,
    budget: Budget | None = None,
) -> TrainingResult:
    """GT encoder stage (when the feature loss is on), then the segmentation stage.

    ``state`` is a training state saved earlier by ``save_state`` (same options and data):
    the weights it holds are loaded and the run continues at its stage and step.
    ``gt_encoder_warm`` says the encoder was carried over (from the cache or the previous
    version): it is checked before being trained further. ``gt_ready`` says it already fits
    these masks (a cache hit): the stage is skipped. ``on_gt_trained`` receives the encoder
    once its stage ends (to cache it). ``budget`` bounds both stages in wall time.
    """
    if not pairs:
        raise TrainingError("no readable training pairs")
    budget = budget or Budget(0.0)
    state = dict(state or {})
    stage = state.get("stage", "gt_encoder" if options.uses_features else "segmenter")
    if state:
        model.load_state_dict(state["model"])
        if gt_encoder is not None and state.get("gt_encoder") is not None:
            gt_encoder.load_state_dict(state["gt_encoder"])
    gt_result: GTEncoderResult | None = GTEncoderResult.from_dict(state["gt"]) if state.get("gt") else None
    if stage == "trained":  # killed while evaluating or writing: only that is left to do
        return TrainingResult(gt_result, int(state["step"]), list(state.get("losses", [])), stopped_by="resumed")

    def snapshot(stage_name: str, **extra: Any) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT, "stage": stage_name, "model": model.state_dict(),
            "gt_encoder": gt_encoder.state_dict() if gt_encoder is not None else None,
            "gt": gt_result.to_dict() if gt_result else None, "options": options.to_dict(), **extra,
        }

    if options.uses_features and gt_encoder is not None and stage == "gt_encoder":
        if gt_ready is not None and not state:
            gt_result = gt_ready
        else:
            gt_result = _gt_stage(gt_encoder, pairs, options, state, gt_encoder_warm, progress, budget,
                                  lambda step, extra: save_state(snapshot("gt_encoder", gt_step=step, **extra))
                                  if save_state is not None else None)
            if on_gt_trained is not None:
                on_gt_trained(gt_encoder, gt_result)
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
    run = train_segmenter(
        model, gt_encoder if options.uses_features else None, pairs, options,
        start_step=start,
        optimizer_state=state.get("optimizer") if resumed else None,
        scaler_state=state.get("scaler") if resumed else None,
        losses=state.get("losses") if resumed else None,
        progress=progress, save=save_seg, budget=budget,
    )
    if save_state is not None:
        save_state(snapshot("trained", step=run.steps, losses=run.losses))
    done = run.steps - start
    rate = done * options.batch / run.seconds if run.seconds > 0 else 0.0
    return TrainingResult(gt_result, run.steps, run.losses, run.seconds, rate, run.stopped_by, run.step_seconds)


def _gt_stage(encoder: nn.Module, pairs: Sequence[Pair], options: TrainOptions, state: dict[str, Any], warm: bool,
              progress: ProgressFn | None, budget: Budget,
              save: Callable[[int, dict[str, Any]], None]) -> GTEncoderResult:
    """Train (or resume training) the GT encoder, saving resumable states through ``save``."""
    def save_gt(step: int, optimizer: torch.optim.Optimizer, extra: dict[str, Any]) -> None:
        save(step, {"optimizer": optimizer.state_dict(), **extra})

    return train_gt_encoder(
        encoder, pairs, options,
        start_step=int(state.get("gt_step", 0)),
        optimizer_state=state.get("optimizer") if state.get("stage") == "gt_encoder" else None,
        checks=state.get("gt_checks"), check_first=warm and not state,
        progress=progress, save=save_gt, budget=budget,
    )
