"""The promotion rules: the challenger replaces the champion only when the rule allows, and says why
(the default, `bootstrap`, and the forgetting guard: tests/test_promotion_evidence.py)."""

from __future__ import annotations

import math

import pytest

from backend.learning.promotion import decide, parse_rule

CHAMPION = {"mae": 0.050, "sm": 0.85, "avgfmeasure": 0.80}


def test_the_mean_rule_promotes_a_challenger_whose_held_out_mae_is_not_worse():
    assert decide("mae_not_worse", CHAMPION, {**CHAMPION, "mae": 0.040}).promote
    assert decide("mae_not_worse", CHAMPION, dict(CHAMPION)).promote


def test_the_mean_rule_rejects_a_worse_mae_and_states_both_numbers():
    decision = decide("mae_not_worse", CHAMPION, {**CHAMPION, "mae": 0.061})
    assert not decision.promote
    assert decision.reason.startswith("rejected:")
    assert "0.06100" in decision.reason and "0.05000" in decision.reason
    assert (decision.champion, decision.challenger) == (0.050, 0.061)


def test_better_rules_need_a_strict_improvement_in_the_metric_s_own_direction():
    assert not decide("mae_better", CHAMPION, dict(CHAMPION)).promote
    assert decide("sm_better", CHAMPION, {**CHAMPION, "sm": 0.86}).promote
    assert not decide("sm_not_worse", CHAMPION, {**CHAMPION, "sm": 0.84}).promote


def test_always_and_never_ignore_the_numbers():
    assert decide("always", CHAMPION, {"mae": 1.0}).promote
    assert not decide("never", CHAMPION, {"mae": 0.0}).promote


def test_a_missing_or_nan_metric_is_a_rejection_not_a_crash():
    assert not decide("mae_not_worse", CHAMPION, {"mae": math.nan}).promote
    assert not decide("avgem_not_worse", CHAMPION, CHAMPION).promote


def test_an_unknown_rule_is_refused_up_front():
    with pytest.raises(ValueError, match="unknown promotion rule"):
        parse_rule("mae_maybe")


def test_the_default_rule_is_the_paired_bootstrap(monkeypatch):
    from backend.settings import Settings

    monkeypatch.delenv("ISNET_PROMOTE_RULE", raising=False)
    assert Settings().promote_rule == "bootstrap" and parse_rule("bootstrap").kind == "bootstrap"
    decision = decide("bootstrap", CHAMPION, {**CHAMPION, "mae": 0.040})  # means alone are not evidence
    assert not decision.promote and "no per-image held-out MAE" in decision.reason
