"""Whether a retrained model (the challenger) replaces the current one (the champion).

Why a rule and not a judgement call: retraining runs unattended in a worker, so the
decision must be mechanical, stated in the report with its numbers, and configurable
(``ISNET_PROMOTE_RULE``).

The default, ``bootstrap``, decides on evidence rather than on two means of a handful of
images: for every held-out image it takes the paired change ``challenger MAE - champion
MAE`` (the same image, the same size), and resamples those changes (2000 times, seeded) for
a 95 % confidence interval of their mean. The challenger is promoted when the whole interval
is below 0: it is better, beyond what the choice of held-out images explains.

- With fewer than ``min_heldout`` (30) held-out images the interval says little; the report
  says "too small to judge" and the champion stays (label more, or lower
  ``ISNET_PROMOTE_MIN_HELDOUT`` knowingly).
- The forgetting guard applies the same paired test to earlier cycles' held-out images that
  this cycle neither trained nor judged on: a challenger significantly worse there (the
  interval wholly above 0, on at least ``min_heldout`` images) is rejected, whatever it
  gained on the new labels. It applies to every rule except ``always`` and ``never``.

The mean rules (``mae_not_worse``, ``sm_better``, ...) remain for who wants them; the
interval is computed and reported for them too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

LOWER_IS_BETTER = frozenset({"mae", "hce"})
KNOWN_METRICS = ("mae", "sm", "wfm", "maxfmeasure", "avgfmeasure", "adpfmeasure", "maxem", "avgem", "adpem", "hce")


RESAMPLES = 2000
CONFIDENCE = 0.95
SEED = 0


@dataclass(frozen=True)
class Evidence:
    """The paired per-image MAE change (challenger - champion) on one set of images."""

    n: int
    mean_change: float
    ci_low: float
    ci_high: float
    improved: int
    """Images on which the challenger's MAE is lower."""
    worsened: int
    min_n: int
    confidence: float = CONFIDENCE
    resamples: int = RESAMPLES
    seed: int = SEED

    @property
    def too_small(self) -> bool:
        return self.n < self.min_n

    @property
    def better(self) -> bool:
        """The challenger is better beyond the resampling noise (the interval is below 0)."""
        return not self.too_small and self.ci_high < 0

    @property
    def worse(self) -> bool:
        """The challenger is worse beyond the resampling noise (the interval is above 0)."""
        return not self.too_small and self.ci_low > 0

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "too_small": self.too_small}

    def describe(self) -> str:
        return (f"MAE change {self.mean_change:+.5f} (95% CI {self.ci_low:+.5f} to {self.ci_high:+.5f}) on "
                f"{self.n} images, {self.improved} better and {self.worsened} worse")


def paired_bootstrap(champion: Sequence[float], challenger: Sequence[float], min_n: int = 30,
                     resamples: int = RESAMPLES, confidence: float = CONFIDENCE, seed: int = SEED) -> Evidence:
    """Percentile bootstrap CI of the mean of ``challenger[i] - champion[i]`` (seeded: the same
    numbers give the same interval)."""
    if len(champion) != len(challenger):
        raise ValueError("paired values must have the same length")
    diff = np.asarray(challenger, np.float64) - np.asarray(champion, np.float64)
    n = len(diff)
    if n == 0:
        return Evidence(0, math.nan, math.nan, math.nan, 0, 0, min_n, confidence, resamples, seed)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Evidence(n, float(diff.mean()), float(low), float(high), int((diff < 0).sum()), int((diff > 0).sum()),
                    min_n, confidence, resamples, seed)


def evidence_from(per_item: Mapping[str, Mapping[str, float]], min_n: int) -> Evidence:
    """:func:`paired_bootstrap` over the items scored for both ``champion`` and ``challenger``."""
    keys = sorted(k for k, v in per_item.items() if "champion" in v and "challenger" in v)
    return paired_bootstrap([per_item[k]["champion"] for k in keys], [per_item[k]["challenger"] for k in keys], min_n)


@dataclass(frozen=True)
class Rule:
    kind: str
    """``always``, ``never``, ``bootstrap``, ``not_worse`` or ``better``."""
    metric: str | None = None
    text: str = ""


def parse_rule(text: str) -> Rule:
    """``bootstrap``, ``always``, ``never``, or ``<metric>_not_worse`` / ``<metric>_better``."""
    value = text.strip().lower()
    if value in ("always", "never"):
        return Rule(value, None, value)
    if value == "bootstrap":
        return Rule(value, "mae", value)
    for kind in ("not_worse", "better"):
        suffix = "_" + kind
        if value.endswith(suffix) and value[: -len(suffix)] in KNOWN_METRICS:
            return Rule(kind, value[: -len(suffix)], value)
    raise ValueError(
        f"unknown promotion rule {text!r}: use bootstrap, always, never, or <metric>_not_worse / <metric>_better "
        f"with a metric among {', '.join(KNOWN_METRICS)}"
    )


@dataclass(frozen=True)
class Decision:
    promote: bool
    rule: str
    reason: str
    metric: str | None = None
    champion: float | None = None
    challenger: float | None = None
    evidence: Evidence | None = None
    """The paired per-image MAE change on this cycle's held-out images."""
    guard: Evidence | None = None
    """The same on earlier cycles' held-out images (the forgetting guard); None when there were none."""
    verdict: str = ""
    """``better``, ``not better``, ``too small to judge``, ``forgetting`` or the rule's own word."""

    def to_dict(self) -> dict[str, object]:
        out = {k: v for k, v in asdict(self).items() if k not in ("evidence", "guard")}
        out["evidence"] = self.evidence.to_dict() if self.evidence else None
        out["guard"] = self.guard.to_dict() if self.guard else None
        return out


def decide(rule: Rule | str, champion: Mapping[str, float], challenger: Mapping[str, float],
           evidence: Evidence | None = None, guard: Evidence | None = None) -> Decision:
    """Apply ``rule`` to the held-out metrics and per-image ``evidence``, then the forgetting
    ``guard``; the reason quotes the numbers it rests on."""
    rule = parse_rule(rule) if isinstance(rule, str) else rule
    if rule.kind == "always":
        return Decision(True, rule.text, "promoted: the rule 'always' promotes every challenger",
                        evidence=evidence, guard=guard, verdict="always")
    if rule.kind == "never":
        return Decision(False, rule.text, "rejected: the rule 'never' keeps the champion",
                        evidence=evidence, guard=guard, verdict="never")
    decision = _bootstrap(rule, champion, challenger, evidence) if rule.kind == "bootstrap" \
        else _by_means(rule, champion, challenger, evidence)
    return _apply_guard(decision, guard)


def _bootstrap(rule: Rule, champion: Mapping[str, float], challenger: Mapping[str, float],
               evidence: Evidence | None) -> Decision:
    old, new = champion.get("mae"), challenger.get("mae")
    if evidence is None or evidence.n == 0 or not math.isfinite(evidence.mean_change):
        return Decision(False, rule.text, "rejected: no per-image held-out MAE to judge by", "mae", old, new,
                        evidence, verdict="no evidence")
    if evidence.too_small:
        return Decision(False, rule.text, f"rejected: too small to judge: {evidence.n} held-out images, at least "
                        f"{evidence.min_n} needed (the champion stays; {evidence.describe()})", "mae", old, new,
                        evidence, verdict="too small to judge")
    if evidence.better:
        return Decision(True, rule.text, f"promoted: the challenger is better on the held-out images: "
                        f"{evidence.describe()}", "mae", old, new, evidence, verdict="better")
    return Decision(False, rule.text, f"rejected: no evidence that the challenger is better (the interval must "
                    f"be below 0): {evidence.describe()}", "mae", old, new, evidence, verdict="not better")


def _apply_guard(decision: Decision, guard: Evidence | None) -> Decision:
    """Reject a challenger that is significantly worse on earlier held-out images."""
    if guard is None or guard.n == 0:
        return replace(decision, guard=guard)
    if guard.worse:
        reason = (f"rejected: forgetting guard: worse on {guard.n} earlier held-out images "
                  f"({guard.describe()}); " + decision.reason.split(": ", 1)[-1])
        return replace(decision, promote=False, reason=reason, guard=guard, verdict="forgetting")
    note = "too few to judge" if guard.too_small else "not significantly worse"
    return replace(decision, guard=guard, reason=f"{decision.reason}; earlier held-out images: {note} "
                   f"({guard.describe()})")


def _by_means(rule: Rule, champion: Mapping[str, float], challenger: Mapping[str, float],
              evidence: Evidence | None) -> Decision:
    metric = rule.metric or "mae"
    old, new = champion.get(metric), challenger.get(metric)
    if old is None or new is None or not math.isfinite(old) or not math.isfinite(new):
        return Decision(False, rule.text, f"rejected: held-out {metric} is missing or not finite "
                        f"(champion {old}, challenger {new})", metric, old, new, evidence, verdict="missing")
    lower = metric in LOWER_IS_BETTER
    if rule.kind == "not_worse":
        ok = new <= old if lower else new >= old
        verb = "is not worse than" if ok else "is worse than"
    else:
        ok = new < old if lower else new > old
        verb = "is better than" if ok else "is not better than"
    direction = "lower" if lower else "higher"
    reason = (f"{'promoted' if ok else 'rejected'}: challenger held-out {metric} {new:.5f} {verb} the "
              f"champion's {old:.5f} ({direction} is better; rule {rule.text})")
    if evidence is not None and evidence.n:
        small = "; too small to judge" if evidence.too_small else ""
        reason += f"; per image: {evidence.describe()}{small}"
    return Decision(ok, rule.text, reason, metric, old, new, evidence, verdict=verb)
