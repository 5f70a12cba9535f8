"""Stage 1 of the DIS training: a GT encoder that reconstructs the ground-truth masks.

Why: the paper's intermediate supervision needs a target for the segmenter's feature maps.
The GT encoder is trained to encode masks and decode them back through its six side outputs
(BCE), so its features carry exactly what the masks hold; once it fits the training masks
(max F-measure >= 0.99, the official stopping test) it is frozen and its features become the
targets of stage 2. Trained from scratch (or from the previous version's encoder), it uses
ordinary train-mode BatchNorm and the official Adam learning rate of 1e-3.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from backend.isnet.training.budget import Budget, StepTimer
from backend.isnet.training.data import Pair, batch_indices, centre_views, sample_batch
from backend.isnet.training.losses import all_finite, gradients_finite, reconstruction_loss
from backend.isnet.training.options import TrainOptions
from backend.isnet.training.progress import ProgressFn, emit

BETA2 = 0.3
STREAM = 1
"""Random stream of this stage (the segmentation stage uses another), see ``batch_indices``."""

SaveFn = Callable[[int, torch.optim.Optimizer, dict[str, Any]], None]


@dataclass
class GTEncoderResult:
    steps: int
    max_f: float
    reached: bool
    """Whether ``max_f`` reached the target; when the cap stopped it, training still goes on
    (a slightly imperfect target is still a useful constraint) and the report says so."""
    checks: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    stopped_by: str = ""
    """``target`` (max F reached), ``cap`` (``gt_max_iters``), ``budget`` (its share of the
    cycle's wall time) or ``cache`` (not trained: a cached encoder already fits these masks)."""
    source: str = "scratch"
    """Where the encoder started: ``scratch``, ``champion`` (the current version's), ``cache``
    (an encoder cached for exactly these masks) or ``refreshed`` (cached for a similar set)."""

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "max_f": self.max_f, "reached": self.reached, "checks": self.checks,
                "seconds": round(self.seconds, 2), "stopped_by": self.stopped_by, "source": self.source}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GTEncoderResult:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def max_f_measure(probs: torch.Tensor, masks: torch.Tensor, beta2: float = BETA2) -> float:
    """Max over 256 thresholds of the F-measure of dataset-mean precision and recall.

    As the official validation: each prediction min-max normalised, ground truth binarised
    at 0.5, precision and recall per image and threshold, averaged over images, then
    ``F = (1 + b2) P R / (b2 P + R)``. Masks without foreground are left out (no recall).
    """
    precisions, recalls = [], []
    for prob, mask in zip(probs.float(), masks.float(), strict=True):
        gt = (mask > 0.5).flatten()
        positives = int(gt.sum())
        if positives == 0:
            continue
        p = prob.flatten()
        lo, hi = p.min(), p.max()
        p = (p - lo) / (hi - lo) if hi > lo else torch.zeros_like(p)
        levels = (p * 255).round().long().clamp_(0, 255)
        all_hist = torch.bincount(levels, minlength=256).flip(0).cumsum(0).flip(0)
        tp_hist = torch.bincount(levels[gt], minlength=256).flip(0).cumsum(0).flip(0)
        precisions.append(tp_hist.double() / all_hist.double().clamp(min=1))
        recalls.append(tp_hist.double() / positives)
    if not precisions:
        return 0.0
    pre, rec = torch.stack(precisions).mean(0), torch.stack(recalls).mean(0)
    f = (1 + beta2) * pre * rec / (beta2 * pre + rec).clamp(min=1e-8)
    return float(f.max())


@torch.no_grad()
def evaluate_reconstruction(encoder: nn.Module, views: torch.Tensor, batch: int, device: str) -> float:
    """Max F of the encoder's first side output on ``views`` (eval mode, then back to train)."""
    was_training = encoder.training
    encoder.eval()
    probs = []
    for start in range(0, len(views), batch):
        chunk = views[start:start + batch].to(device)
        probs.append(encoder(chunk)[0][0].float().cpu())
    encoder.train(was_training)
    return max_f_measure(torch.cat(probs), views)


def eval_subset(pairs: Sequence[Pair], count: int) -> list[Pair]:
    """A fixed, evenly spread subset of the training masks that have foreground."""
    usable = [p for p in pairs if p.mask.max() > 127]
    if len(usable) <= count:
        return usable
    return [usable[i] for i in np.linspace(0, len(usable) - 1, count).round().astype(int)]


def train_gt_encoder(
    encoder: nn.Module,
    pairs: Sequence[Pair],
    options: TrainOptions,
    *,
    start_step: int = 0,
    optimizer_state: dict[str, Any] | None = None,
    checks: list[dict[str, float]] | None = None,
    check_first: bool = False,
    progress: ProgressFn | None = None,
    save: SaveFn | None = None,
    budget: Budget | None = None,
) -> GTEncoderResult:
    """Train ``encoder`` in place until it fits the masks, ``options.gt_max_iters`` steps, or the
    stage's share of ``budget`` (whichever comes first).

    ``check_first`` measures before any step (an encoder carried over from the cache or the
    previous version often fits already and then costs no training). ``save(step, optimizer,
    extra)`` is called every ``options.checkpoint_every`` steps so the stage can be resumed.
    """
    budget = budget or Budget(0.0)
    options = options.resolved()
    device = options.device
    encoder.to(device).train()
    optimizer = torch.optim.Adam(encoder.parameters(), lr=options.gt_lr, betas=(0.9, 0.999), eps=1e-8)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    scaler = torch.amp.GradScaler("cuda", enabled=options.grad_scaling)
    views = centre_views(eval_subset(pairs, options.gt_eval_items), *options.check_view)
    checks = list(checks or [])
    cap = options.gt_max_iters
    started = time.perf_counter()

    check_seconds: list[float] = []

    def check(step: int, loss: float) -> float:
        tick = time.perf_counter()
        f = evaluate_reconstruction(encoder, views, max(options.batch, 4), device)
        checks.append({"step": step, "max_f": round(f, 5), "loss": round(loss, 5)})
        emit(progress, "gt_encoder", step, cap, {"max_f": f},
             f"step {step}: max F {f:.4f} on {len(views)} training masks")
        check_seconds.append(time.perf_counter() - tick)
        return f

    if not len(views):
        return GTEncoderResult(start_step, 0.0, False, checks, 0.0, "no masks with foreground")
    f = checks[-1]["max_f"] if checks else 0.0
    if check_first and start_step == 0:
        f = check(0, float("nan"))
    step = start_step
    running: list[float] = []
    timer = StepTimer()
    stage_started = budget.clock()

    def next_cost() -> float:
        """The next step, plus the check that follows it when one is due (a forward of every
        view, about a third of a step each, until one was timed)."""
        due = (step + 1) % options.gt_check_every == 0 or step + 1 == cap
        checking = (check_seconds[-1] if check_seconds else len(views) * timer.estimate() / 3) if due else 0.0
        return timer.estimate() + checking

    while f < options.gt_target_f and step < cap and next_cost() < budget.gt_left(stage_started):
        tick = time.perf_counter()
        indices = batch_indices(len(pairs), options.batch, step, options.seed, STREAM)
        rng = np.random.default_rng([options.seed, STREAM, step, 1])
        side, crop, min_scale = options.geometry(step)
        _, masks = sample_batch(pairs, indices, side, crop, rng, options.flip, min_scale, with_images=False)
        masks = masks.to(device)
        with torch.autocast(torch.device(device).type, dtype=options.autocast_dtype, enabled=bool(options.amp)):
            sides, _ = encoder(masks)
        optimizer.zero_grad(set_to_none=True)
        parts = reconstruction_loss(sides, masks) if all_finite(sides) else None
        if parts is None:  # a bad reduced-precision step is skipped, as the fp16 loss scaler would
            step += 1
            continue
        scaler.scale(parts.total).backward()
        if options.grad_scaling or gradients_finite(optimizer):
            scaler.step(optimizer)
            scaler.update()
        step += 1
        running.append(parts.bce)
        timer.add(time.perf_counter() - tick)
        emit(progress, "gt_encoder", step, cap, {"bce": parts.bce, "tar": parts.target})
        if step % options.gt_check_every == 0 or step == cap:
            f = check(step, float(np.mean(running[-options.gt_check_every:])))
        if save is not None and step % options.checkpoint_every == 0 and f < options.gt_target_f:
            save(step, optimizer, {"gt_checks": checks})
    # Cut by the budget between checks, the encoder is used as it is and reported with its last check
    # (measuring it again would cost a check the budget does not have).
    reached = f >= options.gt_target_f
    stopped_by = "target" if reached else ("cap" if step >= cap else "budget")
    return GTEncoderResult(step, f, reached, checks, time.perf_counter() - started, stopped_by)
