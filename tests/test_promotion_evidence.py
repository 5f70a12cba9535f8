"""Promotion on evidence: the paired per-image bootstrap, "too small to judge", and the forgetting
guard, from unit cases up to cycles on real butterfly images and masks."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.isnet.training import TrainOptions
from backend.isnet.training.tiny import TINY
from backend.learning import run_cycle
from backend.learning.promotion import decide, paired_bootstrap
from backend.learning.registry import ModelRegistry
from tests.paths import SHARED

BUTTERFLIES = SHARED / "data" / "butterflies" / "train"


def test_the_bootstrap_interval_is_seeded_and_brackets_the_mean_change():
    rng = np.random.default_rng(3)
    champion = rng.uniform(0.02, 0.08, 40)
    challenger = champion - 0.01 + rng.normal(0, 0.004, 40)
    first, again = paired_bootstrap(champion, challenger), paired_bootstrap(champion, challenger)
    assert first == again and first.resamples == 2000 and first.confidence == 0.95
    assert first.ci_low < first.mean_change < first.ci_high < 0 and first.better
    noise = paired_bootstrap(champion, champion + rng.normal(0, 0.004, 40))
    assert noise.ci_low < 0 < noise.ci_high and not noise.better and not noise.worse


def test_a_held_out_split_too_small_to_judge_keeps_the_champion_and_says_so():
    champion, challenger = [0.05] * 12, [0.01] * 12  # a large gain, on too few images
    evidence = paired_bootstrap(champion, challenger, min_n=30)
    decision = decide("bootstrap", {"mae": 0.05}, {"mae": 0.01}, evidence)
    assert evidence.too_small and not decision.promote and decision.verdict == "too small to judge"
    assert decision.reason.startswith("rejected: too small to judge: 12 held-out images, at least 30 needed")
    assert decision.to_dict()["evidence"]["too_small"] is True
    # The mean rules still decide by their means, and say the split is too small.
    by_mean = decide("mae_not_worse", {"mae": 0.05}, {"mae": 0.01}, evidence)
    assert by_mean.promote and "too small to judge" in by_mean.reason


def test_the_guard_blocks_only_a_significant_loss_on_enough_earlier_images():
    better = paired_bootstrap([0.05] * 40, list(np.linspace(0.03, 0.04, 40)))
    worse_old = paired_bootstrap([0.02] * 40, list(np.linspace(0.03, 0.05, 40)))
    assert not decide("bootstrap", {"mae": 0.05}, {"mae": 0.035}, better, worse_old).promote
    assert not decide("mae_not_worse", {"mae": 0.05}, {"mae": 0.035}, better, worse_old).promote
    assert decide("always", {"mae": 0.05}, {"mae": 0.035}, better, worse_old).promote
    few_old = paired_bootstrap([0.02] * 5, [0.04] * 5)
    kept = decide("bootstrap", {"mae": 0.05}, {"mae": 0.035}, better, few_old)
    assert kept.promote and "too few to judge" in kept.reason


def test_a_cycle_with_too_few_held_out_images_records_the_documented_decision(tiny_settings, tiny_pairs):
    images, masks = tiny_pairs(8)
    options = TrainOptions(iters=2, size=64, batch=2, lr=1e-3, device="cpu", amp=False, feature_loss="off",
                           anchors="none")
    report = run_cycle((images, masks), tiny_settings, options, networks=TINY)
    assert not report.promoted and report.decision.verdict == "too small to judge"
    assert ModelRegistry(tiny_settings).current_name() is None
    cycle = json.loads((report.directory / "cycle.json").read_text())
    evidence = cycle["decision"]["evidence"]
    assert evidence["n"] == len(report.held_out) < 30 and evidence["too_small"] and evidence["min_n"] == 30
    assert {"mean_change", "ci_low", "ci_high", "resamples", "seed"} <= evidence.keys()
    row = json.loads((report.directory / "history.json").read_text())["cycles"][-1]
    assert row["evidence"]["n"] == evidence["n"] and row["promote"] is False


def _pairs(names: list[str], root: Path, invert: bool) -> tuple[Path, Path]:
    """``root/{images,masks}`` holding these butterflies (images linked; masks as labelled or inverted)."""
    images, masks = root / "images", root / "masks"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    for name in names:
        os.symlink(BUTTERFLIES / "images" / f"{name}.jpg", images / f"{name}.jpg")
        mask = np.asarray(Image.open(BUTTERFLIES / "masks" / f"{name}.png").convert("L"))
        Image.fromarray(255 - mask if invert else mask).save(masks / f"{name}.png")
    return images, masks


@pytest.mark.skipif(not (BUTTERFLIES / "images").is_dir(), reason="shared butterflies data not available")
def test_the_forgetting_guard_rejects_a_challenger_that_fixes_new_labels_but_breaks_old_ones(tiny_settings, tmp_path):
    """Cycle 1 learns the butterflies as labelled. Cycle 2's labels are the inverse (a team that
    redefined its masks): its challenger is clearly better on its own held-out images, and the
    rule alone would promote it, but it is far worse on cycle 1's held-out images."""
    names = sorted(p.stem for p in (BUTTERFLIES / "images").iterdir())[::3][:112]
    old_train, old_held = _pairs(names[:32], tmp_path / "a", False), _pairs(names[32:56], tmp_path / "a-held", False)
    new_train, new_held = _pairs(names[56:88], tmp_path / "b", True), _pairs(names[88:112], tmp_path / "b-held", True)
    options = TrainOptions(iters=80, size=64, batch=4, lr=3e-2, device="cpu", amp=False, feature_loss="off",
                           min_heldout=20, budget_min=5, anchors="none")

    first = run_cycle(old_train, tiny_settings, dataclasses.replace(options, promote_rule="always"),
                      held_out=old_held, networks=TINY)
    assert first.promoted
    second = run_cycle(new_train, tiny_settings, options, held_out=new_held, networks=TINY)

    decision = second.decision
    assert decision.evidence.better, decision.evidence  # it does fix the new labels ...
    assert decide("bootstrap", second.metrics["champion"], second.metrics["challenger"], decision.evidence).promote
    assert decision.guard is not None and decision.guard.n == 24 and decision.guard.worse  # ... and breaks the old
    assert not second.promoted and decision.verdict == "forgetting" and "forgetting guard" in decision.reason
    assert ModelRegistry(tiny_settings).current_name() == first.version
    cycle = json.loads((second.directory / "cycle.json").read_text())
    assert cycle["earlier"]["count"] == 24 and set(cycle["earlier"]["keys"]) == set(names[32:56])
    assert cycle["decision"]["guard"]["ci_low"] > 0
