"""How much of a cycle's trained change the new version keeps: chosen on the lineage's own evidence.

Why: a version trained on one project's corrections serves only that project's lineage, so the
share of the change to keep, ``(1 - lam) * champion + lam * trained`` (WiSE-FT), is chosen on
that project's held-out images rather than on general photos. Full strength (``lam = 1``) wins
on average where the corrections teach a house rule, but not on every image, and where they teach
little the champion (``lam = 0``) must be kept.

Why cross-fitting: a share chosen on the same held-out images that then judge the promotion would
favour it. The held-out images are split in two halves by the stable hash that made the split;
each half's share is chosen on the *other* half, so every image enters the promotion evidence
scored with a share chosen without it, and all held-out images still judge (a split that set a
third aside would leave a 150-label project under the 30 images a judgement needs). The version
ships with the share that is best on all of them.

``ISNET_TRAIN_SHARE``: ``evidence`` (this), ``anchors`` (the largest share whose masks on
unlabelled photos move at most ``ISNET_TRAIN_ANCHOR_DRIFT``: :mod:`.interpolation`; the default
for the base lineage, which every project without its own follows), ``full`` (keep it all), or
``auto`` (anchors for the base lineage, evidence for a project's).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from backend.isnet.training.data import holdout_score
from backend.isnet.versions import BASE

CANDIDATES = (1.0, 0.5)
"""Shares scored besides the champion's 0: each costs one pass over the held-out images."""
METHODS = ("auto", "evidence", "anchors", "full")


def method_for(setting: str, lineage: str) -> str:
    """The concrete method ``setting`` stands for in ``lineage``."""
    if setting not in METHODS:
        raise ValueError(f"share must be one of {', '.join(METHODS)}, got {setting!r}")
    if setting != "auto":
        return setting
    return "anchors" if lineage == BASE else "evidence"


@dataclass
class ShareChoice:
    """The share chosen on held-out evidence, and the per-image MAE the promotion is judged on."""

    lam: float
    mean_mae: dict[str, float]
    """Mean held-out MAE of every share scored (``"0"`` is the champion)."""
    folds: list[dict[str, Any]] = field(default_factory=list)
    """Each half: its image count and the share chosen on the *other* half."""
    crossfit: dict[str, float] = field(default_factory=dict)
    """Per image: MAE of the share chosen without that image (what the promotion evidence uses)."""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("crossfit")
        return out


def _best(per_share: Mapping[float, Mapping[str, float]], keys: Sequence[str]) -> float:
    """The share with the lowest mean MAE on ``keys``; a tie goes to the smaller share (the safer)."""
    def mean(lam: float) -> float:
        values = [per_share[lam][k] for k in keys if k in per_share[lam]]
        return sum(values) / len(values) if values else float("inf")
    return min(sorted(per_share), key=mean)


def choose_share(per_share: Mapping[float, Mapping[str, float]]) -> ShareChoice:
    """``per_share``: ``{lam: {image key: MAE}}`` with ``0.0`` the champion's, on the same images."""
    keys = sorted(set.intersection(*(set(v) for v in per_share.values())), key=holdout_score)
    halves = [keys[0::2], keys[1::2]]
    chosen = [_best(per_share, halves[1]), _best(per_share, halves[0])]  # each half's share, chosen on the other
    crossfit = {k: per_share[lam][k] for half, lam in zip(halves, chosen, strict=True) for k in half}
    means = {f"{lam:g}": round(sum(per_share[lam][k] for k in keys) / max(1, len(keys)), 6) for lam in per_share}
    folds = [{"images": len(h), "lam": lam} for h, lam in zip(halves, chosen, strict=True)]
    return ShareChoice(_best(per_share, keys), means, folds, crossfit)
