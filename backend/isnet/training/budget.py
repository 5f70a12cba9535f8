"""Wall time of a cycle: how many steps fit, when to stop, and the learning rate that knows it.

Why a clock and not a step count: the same cycle takes 9 s a step on one CPU and 0.3 s on a
GPU, and a team pressing "Start training" wants it done in a known time. A cycle measures
what it can before training (the champion's evaluation gives the per-image inference time,
writing its report the cost of the reports), keeps that much for after training, and runs
segmentation steps until the next one would end past what is left; the learning-rate
schedule decays towards the step count that this estimate allows, re-estimated every step.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

SAFETY = 0.97
"""Share of the budget planned for: the rest absorbs noise in the estimates (another process
taking the CPU for a while, a slower last step)."""

GT_SHARE = 0.25
"""Most of the budget the GT encoder stage may take when it is not cached (it stops earlier at
max F 0.99); the report says when this cut it short."""

EVAL_SHARE = 0.2
"""Most of the budget scoring one model (champion, then challenger) on the held-out images may
take: on an idle machine every held-out image fits; on a busy one the first images in a stable
order do, and the report says how many of how many."""

RECENT = 5
"""Step times the estimate of the next one is based on (recent ones follow a busy machine)."""


@dataclass
class StepTimer:
    """Durations of the steps run so far and a cautious estimate of the next one."""

    durations: list[float] = field(default_factory=list)

    def add(self, seconds: float) -> None:
        self.durations.append(seconds)

    def estimate(self) -> float:
        """The larger of the recent mean and the overall median (0 before the first step).

        The first step is often slower (allocations); the median keeps it from dominating, the
        recent mean follows a machine that got busier."""
        if not self.durations:
            return 0.0
        recent = self.durations[-RECENT:]
        return max(statistics.fmean(recent), statistics.median(self.durations))


@dataclass
class Budget:
    """The wall-clock plan of one cycle; ``seconds == 0`` means unbounded."""

    seconds: float
    started: float = field(default_factory=time.monotonic)
    clock: Callable[[], float] = time.monotonic
    after_training: float = 0.0
    """Seconds kept for what follows training (challenger evaluation, writing, engines)."""

    @classmethod
    def minutes(cls, minutes: float, clock: Callable[[], float] = time.monotonic) -> Budget:
        return cls(minutes * 60.0, clock(), clock)

    @property
    def bounded(self) -> bool:
        return self.seconds > 0

    def elapsed(self) -> float:
        return self.clock() - self.started

    def training_left(self) -> float:
        """Seconds training may still use (inf when unbounded, never below 0)."""
        if not self.bounded:
            return math.inf
        return max(0.0, self.seconds * SAFETY - self.after_training - self.elapsed())

    def gt_left(self, stage_started: float) -> float:
        """Seconds the GT encoder stage (started at ``stage_started`` on this clock) may still use:
        its share of the budget, within what training has."""
        if not self.bounded:
            return math.inf
        used = self.clock() - stage_started
        return max(0.0, min(self.training_left(), self.seconds * GT_SHARE - used))

    def images_that_fit(self, seconds_per_image: float) -> int | None:
        """How many images one model can be scored on within :data:`EVAL_SHARE` (None: unbounded)."""
        if not self.bounded or seconds_per_image <= 0:
            return None
        return int(self.seconds * EVAL_SHARE // seconds_per_image)

    def steps_left(self, step_seconds: float) -> int | None:
        """Steps that fit in what training has left (None while no step time is known)."""
        if not self.bounded:
            return None
        if step_seconds <= 0:
            return None
        return int(self.training_left() // step_seconds)

    def eta(self, training_seconds_left: float) -> float | None:
        """Seconds to the end of the cycle if training takes ``training_seconds_left`` more."""
        remaining = max(0.0, training_seconds_left) + self.after_training
        return None if math.isinf(remaining) else round(remaining, 1)


def learning_rate(step: int, total: int, peak: float, schedule: str, warmup: int, floor: float) -> float:
    """Learning rate of step ``step`` (0-based) of ``total`` planned steps.

    ``cosine``: linear warm-up from ``peak / warmup`` over ``warmup`` steps (Adam's first
    updates are full-size whatever the gradient, so they start small), then half a cosine from
    ``peak`` down to ``peak * floor`` at the last planned step. ``constant``: ``peak``.
    """
    if schedule == "constant":
        return peak
    warm = min(warmup, max(0, total // 4))
    if step < warm:
        return peak * (step + 1) / warm
    span = max(1, total - warm - 1)
    progress = min(1.0, max(0.0, (step - warm) / span))
    low = peak * floor
    return low + (peak - low) * 0.5 * (1.0 + math.cos(math.pi * progress))


def planned_steps(done: int, cap: int, budget: Budget, timer: StepTimer, first_guess: int = 100) -> int:
    """The step count the schedule aims at: ``cap`` when set and no budget binds, else what the
    measured step time says fits (before any measurement: ``first_guess`` or ``cap``)."""
    left = budget.steps_left(timer.estimate())
    if left is None:
        if not budget.bounded:
            return cap
        return cap or max(done + 1, first_guess)
    total = done + left
    return min(total, cap) if cap else max(total, done)
