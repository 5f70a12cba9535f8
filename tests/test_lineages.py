"""A model lineage per Label Studio project: a project's cycle promotes into its own lineage only,
a project without one follows the base, and a lineage is judged on its own cycles alone."""

from __future__ import annotations

import dataclasses
import json

import pytest

from backend.isnet.training import TrainOptions
from backend.isnet.training.data import holdout_score
from backend.isnet.training.tiny import TINY
from backend.isnet.versions import BASE, lineage_of
from backend.learning import run_cycle
from backend.learning.lineages import lineage_for, project_id
from backend.learning.registry import ModelRegistry, NoPreviousVersion, PromotionConflict
from backend.learning.share import choose_share
from backend.settings import Settings

OPTIONS = TrainOptions(iters=4, size=64, crop=32, batch=2, lr=1e-3, device="cpu", amp=False, gt_max_iters=2,
                       gt_check_every=2, gt_target_f=1.1, checkpoint_every=3, anchors="none", promote_rule="always")


def test_label_studio_project_forms_all_name_the_same_lineage():
    settings = Settings()
    assert {project_id(p) for p in (7, "7", "7.1795550339", {"id": 7, "title": "x"})} == {7}
    assert project_id(None) is None and project_id("") is None and project_id(True) is None
    assert lineage_for("7.1795550339", settings) == "p7" and lineage_for(None, settings) == BASE


def test_projects_can_share_a_lineage_or_all_use_the_base():
    shared = Settings(project_lineages=("12=shop", "13=shop"))
    assert lineage_for(12, shared) == lineage_for("13.99", shared) == "shop" and lineage_for(14, shared) == "p14"
    assert lineage_for(5, Settings(project_lineages=("*=base",))) == BASE
    with pytest.raises(ValueError, match="ISNET_PROJECT_LINEAGES"):
        lineage_for(1, Settings(project_lineages=("twelve=shop",)))


def test_a_project_cycle_promotes_into_its_lineage_and_leaves_every_other_one_alone(tiny_settings, tiny_pairs):
    images, masks = tiny_pairs(8)
    base, p7, p8 = (ModelRegistry(tiny_settings, lineage) for lineage in (BASE, "p7", "p8"))
    pretrained = base.current().name
    report = run_cycle((images, masks), tiny_settings, OPTIONS, networks=TINY, registry=p7)

    assert report.promoted and report.version.startswith("isnet-p7-ft-") and lineage_of(report.version) == "p7"
    assert p7.current().name == report.version
    assert base.current().name == pretrained and p8.current().name == pretrained and p8.follows_base
    assert json.loads((report.directory / "cycle.json").read_text())["lineage"] == "p7"
    assert (p7.home / "history.json").is_file() and not (base.root / "history.json").exists()


def test_a_project_without_its_own_lineage_follows_what_the_base_serves(tiny_settings, tiny_pairs):
    images, masks = tiny_pairs(8)
    base = ModelRegistry(tiny_settings)
    report = run_cycle((images, masks), tiny_settings, OPTIONS, networks=TINY, registry=base)
    assert ModelRegistry(tiny_settings, "p9").current().name == report.version == base.current().name


def test_rolling_a_project_back_to_its_start_makes_it_follow_the_base_again(tiny_settings, tiny_pairs):
    images, masks = tiny_pairs(8)
    p7 = ModelRegistry(tiny_settings, "p7")
    report = run_cycle((images, masks), tiny_settings, OPTIONS, networks=TINY, registry=p7)
    assert not p7.follows_base
    version, before = p7.rollback()
    assert before == report.version and p7.follows_base and version.name == ModelRegistry(tiny_settings).current().name
    with pytest.raises(NoPreviousVersion, match="follows the base"):
        p7.rollback()


def test_any_version_can_seed_another_project(tiny_settings, tiny_pairs):
    images, masks = tiny_pairs(8)
    report = run_cycle((images, masks), tiny_settings, OPTIONS, networks=TINY,
                       registry=ModelRegistry(tiny_settings, "p7"))
    p8 = ModelRegistry(tiny_settings, "p8")
    p8.promote(report.version, how="use")
    assert p8.current().name == report.version and ModelRegistry(tiny_settings).current().name != report.version


def test_a_promotion_judged_against_a_champion_that_is_no_longer_current_is_refused(tiny_settings, tiny_pairs):
    images, masks = tiny_pairs(8)
    p7 = ModelRegistry(tiny_settings, "p7")
    first = run_cycle((images, masks), tiny_settings, OPTIONS, networks=TINY, registry=p7)
    p7.rollback()
    with pytest.raises(PromotionConflict, match="not"):
        p7.promote(first.version, expected=first.version)
    assert p7.follows_base


def test_the_forgetting_guard_uses_only_the_lineage_s_own_earlier_cycles(tiny_settings, tiny_pairs):
    images, masks = tiny_pairs(10)
    run_cycle((images, masks), tiny_settings, OPTIONS, networks=TINY, registry=ModelRegistry(tiny_settings, "p7"))
    other = run_cycle((images, masks), tiny_settings, dataclasses.replace(OPTIONS, holdout_fraction=0.5),
                      networks=TINY, registry=ModelRegistry(tiny_settings, "p8"))
    assert other.earlier is None  # p7's held-out images never judge p8


def test_a_project_cycle_keeps_the_share_its_held_out_images_favour_and_records_it(tiny_settings, tiny_pairs):
    images, masks = tiny_pairs(10)
    report = run_cycle((images, masks), tiny_settings, dataclasses.replace(OPTIONS, holdout_fraction=0.5),
                       networks=TINY, registry=ModelRegistry(tiny_settings, "p7"))
    share = json.loads((report.directory / "cycle.json").read_text())["interpolation"]
    assert share["method"] == "evidence" and share["lam"] in (0.0, 0.5, 1.0)
    assert set(share["mean_mae"]) == {"0", "0.5", "1"} and len(share["folds"]) == 2
    best = min(share["mean_mae"], key=lambda k: (share["mean_mae"][k], float(k)))
    assert float(best) == share["lam"]


def test_each_half_is_judged_with_the_share_the_other_half_chose():
    keys = sorted("abcdefgh", key=holdout_score)
    first, second = keys[0::2], keys[1::2]  # the halves, as the hash orders them
    per_share = {0.0: {k: 0.1 for k in keys},
                 0.5: {k: 0.05 if k in first else 0.2 for k in keys},   # good on the first half only
                 1.0: {k: 0.3 if k in first else 0.02 for k in keys}}   # good on the second half only
    choice = choose_share(per_share)
    assert [f["lam"] for f in choice.folds] == [1.0, 0.5]  # each half gets what the other half favours
    assert all(choice.crossfit[k] == 0.3 for k in first) and all(choice.crossfit[k] == 0.2 for k in second)
    assert choice.lam == 0.0  # on all images neither share beats the champion (0.125, 0.16 vs 0.1)


def test_a_share_that_helps_nowhere_keeps_the_champion():
    per_share = {0.0: {k: 0.1 for k in "abcdef"}, 0.5: {k: 0.2 for k in "abcdef"}, 1.0: {k: 0.3 for k in "abcdef"}}
    choice = choose_share(per_share)
    assert choice.lam == 0.0 and choice.crossfit == per_share[0.0]
