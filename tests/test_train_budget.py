"""The wall-time budget of a cycle: it stops in time, the step count and the learning rate follow
the measured step time, and the progress (stage, step, ETA, loss) is visible to ``GET /metrics.json``."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import time

import pytest

from backend.isnet.training import TrainOptions
from backend.isnet.training.budget import Budget, StepTimer, learning_rate, planned_steps
from backend.isnet.training.progress import STATUS_FILE
from backend.isnet.training.tiny import TINY
from backend.jobs.retrain_status import latest_report
from backend.learning import run_cycle
from backend.learning.cycle import _warm_up

BUDGET_S = 12.0
OPTIONS = TrainOptions(iters=0, budget_min=BUDGET_S / 60, size=64, batch=2, lr=1e-3, device="cpu",
                       gt_max_iters=4, gt_check_every=2, gt_target_f=1.1, checkpoint_every=50, promote_rule="always")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_tiny_cycle_with_a_budget_of_seconds_stops_in_time_and_uses_it(tiny_settings, tiny_pairs):
    images, masks = tiny_pairs(10)
    _warm_up()  # the imports a first cycle in a process pays once (seconds) are not what is measured here
    events = []
    started = time.monotonic()
    report = run_cycle((images, masks), tiny_settings, OPTIONS, networks=TINY, progress=events.append)
    wall = time.monotonic() - started

    assert wall <= 1.1 * BUDGET_S, f"the cycle took {wall:.1f} s of a {BUDGET_S:.0f} s budget"
    assert report.training["stopped_by"] == "budget"
    assert wall >= 0.5 * BUDGET_S, f"the cycle stopped after {wall:.1f} s, far inside its {BUDGET_S:.0f} s budget"
    assert report.training["steps"] > 20  # milliseconds a step: the budget, not a count, ended training
    assert report.budget["minutes"] == pytest.approx(BUDGET_S / 60) and report.budget["after_training_s"] > 0
    stages = [e.stage for e in events]
    assert stages.index("champion") < stages.index("segmenter") < stages.index("evaluate")
    segmenter = [e for e in events if e.stage == "segmenter"]
    assert all(e.eta_s is not None and e.eta_s >= 0 for e in segmenter)
    assert {"loss", "bce", "lr"} <= segmenter[-1].values.keys()
    assert segmenter[-1].total - segmenter[-1].step <= 1  # the plan converged on the steps it got


def test_iters_caps_a_cycle_that_the_budget_would_let_run_longer(tiny_settings, tiny_pairs):
    images, masks = tiny_pairs(6)
    report = run_cycle((images, masks), tiny_settings, dataclasses.replace(OPTIONS, iters=7, budget_min=5),
                       networks=TINY)
    assert report.training["steps"] == 7 and report.training["stopped_by"] == "iters"


def test_metrics_shows_the_running_cycle_s_stage_step_eta_and_loss_then_its_decision(tiny_settings, tiny_pairs):
    images, masks = tiny_pairs(6)
    seen = []
    status_path = tiny_settings.model_dir / STATUS_FILE

    def look(event):
        if (event.stage == "segmenter" and event.step == 3) or (event.stage == "champion" and event.step == 1):
            seen.append(latest_report(tiny_settings))

    options = dataclasses.replace(OPTIONS, iters=4, budget_min=5)
    report = run_cycle((images, masks), tiny_settings, options, networks=TINY, progress=look)

    scoring, running = seen[0]["cycle"], seen[1]["cycle"]
    assert scoring["stage"] == "champion" and 0 < scoring["eta_s"] <= 300  # before training: the budget's bound
    assert running["status"] == "running" and running["stage"] == "segmenter" and running["version"] == report.version
    assert running["step"] >= 1 and running["total"] >= running["step"] and running["eta_s"] is not None
    assert "loss" in running["values"]
    done = json.loads(status_path.read_text())
    assert done["status"] == "done" and done["decision"]["rule"] == "always" and done["steps"] == 4
    assert latest_report(tiny_settings)["cycle"]["decision"]["evidence"]["n"] == len(report.held_out)


def test_the_step_count_follows_the_measured_step_time():
    clock = FakeClock()
    budget = Budget(100.0, clock(), clock, after_training=10.0)
    timer = StepTimer()
    assert planned_steps(0, 0, budget, timer, first_guess=40) == 40  # nothing measured yet
    for _ in range(3):
        clock.now += 2.0
        timer.add(2.0)
    # 97 s planned (safety) - 10 s after training - 6 s used = 81 s: 40 more steps of 2 s.
    assert planned_steps(3, 0, budget, timer) == 3 + 40
    assert planned_steps(3, 20, budget, timer) == 20  # --iters caps it
    timer.add(8.0)  # the machine got busy: the recent mean (3.5 s) follows
    clock.now += 8.0
    assert planned_steps(4, 0, budget, timer) == 4 + int((97 - 10 - 14) // 3.5)
    assert Budget(0.0).steps_left(1.0) is None and math.isinf(Budget(0.0).training_left())


def test_the_cosine_schedule_warms_up_then_decays_to_the_floor_at_the_planned_end():
    lrs = [learning_rate(step, 40, 1e-5, "cosine", 5, 0.3) for step in range(40)]
    assert lrs[0] == pytest.approx(2e-6) and lrs[4] == pytest.approx(1e-5)
    assert all(a >= b for a, b in itertools.pairwise(lrs[4:]))
    assert lrs[-1] == pytest.approx(3e-6)
    assert learning_rate(3, 40, 1e-5, "constant", 5, 0.1) == 1e-5
    # Re-planned to more steps, the same step gets a larger rate (the decay stretches).
    assert learning_rate(20, 80, 1e-5, "cosine", 5, 0.1) > learning_rate(20, 40, 1e-5, "cosine", 5, 0.1)


def test_on_a_slow_machine_the_held_out_images_that_fit_are_scored_and_the_report_says_so(
        tiny_settings, tiny_pairs, monkeypatch):
    images, masks = tiny_pairs(16)
    # As if one prediction took 1 s: a 30 s budget gives scoring 6 s (20 %) per model.
    monkeypatch.setattr("backend.learning.cycle.seconds_per_image", lambda *a, **k: 1.0)
    options = dataclasses.replace(OPTIONS, iters=2, budget_min=0.5, holdout_fraction=0.6, promote_rule="bootstrap")
    report = run_cycle((images, masks), tiny_settings, options, networks=TINY)
    available = report.budget["held_out_available"]
    assert available > 6 and report.budget["held_out_scored"] == len(report.held_out) == 6
    assert f"6 of {available} held-out images scored within the budget" in report.decision.reason


def test_the_gt_encoder_stage_stops_at_its_share_of_the_budget_without_a_last_check(duts_tr):
    import torch

    from backend.isnet.training.data import Dataset, load_pairs
    from backend.isnet.training.gt_encoder import train_gt_encoder
    from backend.isnet.training.tiny import TinyGTEncoder

    pairs = load_pairs(Dataset.from_folders(duts_tr / "images", duts_tr / "masks").items[:4], 64_000_000, 64)[0]
    options = dataclasses.replace(OPTIONS, gt_max_iters=100_000, gt_check_every=100_000, gt_target_f=1.1)
    torch.manual_seed(0)
    train_gt_encoder(TinyGTEncoder(), pairs, dataclasses.replace(options, gt_max_iters=2))  # first-call costs
    budget = Budget.minutes(0.2)  # 12 s: the GT encoder may take a quarter, 3 s
    started = time.monotonic()
    result = train_gt_encoder(TinyGTEncoder(), pairs, options, budget=budget)
    assert result.stopped_by == "budget" and result.steps > 1 and not result.reached
    assert result.checks == [] and time.monotonic() - started < 4.5
