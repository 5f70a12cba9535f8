"""Whether a retrained model (the challenger) replaces the current one (the champion).

Why a rule and not a judgement call: retraining runs unattended in a worker, so the
decision must be mechanical, stated in the report with its numbers, and configurable
(``ISNET_PROMOTE_RULE``). The default, ``mae_not_worse``, promotes when the challenger's
held-out MAE is at most the champion's: the champion was measured on the same held-out items
at the same size, so equal or better means the corrected labels did not hurt.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

LOWER_IS_BETTER = frozenset({"mae", "hce"})
KNOWN_METRICS = ("mae", "sm", "wfm", "maxfmeasure", "avgfmeasure", "adpfmeasure", "maxem", "avgem", "adpem", "hce")


@dataclass(frozen=True)
class Rule:
    kind: str
    """``always``, ``never``, ``not_worse`` or ``better``."""
    metric: str | None = None
    text: str = ""


def parse_rule(text: str) -> Rule:
    """``always``, ``never``, or ``<metric>_not_worse`` / ``<metric>_better`` (e.g. ``mae_not_worse``)."""
    value = text.strip().lower()
    if value in ("always", "never"):
        return Rule(value, None, value)
    for kind in ("not_worse", "better"):
        suffix = "_" + kind
        if value.endswith(suffix) and value[: -len(suffix)] in KNOWN_METRICS:
            return Rule(kind, value[: -len(suffix)], value)
    raise ValueError(
        f"unknown promotion rule {text!r}: use always, never, or <metric>_not_worse / <metric>_better "
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

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def decide(rule: Rule | str, champion: Mapping[str, float], challenger: Mapping[str, float]) -> Decision:
    """Apply ``rule`` to the two held-out metric dicts; the reason quotes both numbers."""
    rule = parse_rule(rule) if isinstance(rule, str) else rule
    if rule.kind == "always":
        return Decision(True, rule.text, "promoted: the rule 'always' promotes every challenger")
    if rule.kind == "never":
        return Decision(False, rule.text, "rejected: the rule 'never' keeps the champion")
    metric = rule.metric or "mae"
    old, new = champion.get(metric), challenger.get(metric)
    if old is None or new is None or not math.isfinite(old) or not math.isfinite(new):
        return Decision(False, rule.text, f"rejected: held-out {metric} is missing or not finite "
                        f"(champion {old}, challenger {new})", metric, old, new)
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
    return Decision(ok, rule.text, reason, metric, old, new)
