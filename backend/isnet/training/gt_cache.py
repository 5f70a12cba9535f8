"""GT encoders cached per labelled set, so a cycle does not train one from scratch every time.

Why: the GT encoder only has to reconstruct the training masks (max F 0.99, the paper's test).
The same masks give the same target, so a cycle on an unchanged set reuses the cached encoder
at no cost, and a set with a few new masks starts from the encoder of the set it grew from,
checked first and trained only until it fits again. An entry is keyed by the content of the
masks (their decoded pixels, not file names or dates) and by the encoder's recipe (networks,
the views it is trained and checked on, its learning rate and target).

Layout: ``<MODEL_DIR>/gt-encoders/<key>.pth`` (the state dict) with ``<key>.json`` (recipe,
mask hashes, max F, steps, the lineage that trained it); the newest :data:`KEEP` entries are kept,
and retention (``backend.learning.retention``) keeps only each lineage's newest one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from backend import atomic
from backend.isnet.training.data import Pair
from backend.isnet.training.options import TrainOptions
from backend.isnet.weights import save_torch_atomic

log = logging.getLogger(__name__)

CACHE_DIR = "gt-encoders"
KEEP = 8
REFRESH_MIN_SHARED = 0.5
"""A cached encoder is refreshed for a new set when at least this share of the set's masks was
in its own set (a few masks new); below that the champion's encoder or a fresh one is used."""


def mask_hash(pair: Pair) -> str:
    """Content hash of one training mask as trained on (decoded pixels and their shape)."""
    digest = hashlib.sha256(f"{pair.mask.shape}".encode())
    digest.update(pair.mask.tobytes())
    return digest.hexdigest()[:32]


def recipe(options: TrainOptions, networks: str) -> dict[str, Any]:
    """What defines the encoder a set needs: networks, the views it sees, how and how far it is trained."""
    return {"networks": networks, "size": options.size, "crop": options.crop, "scales": list(options.scales),
            "min_scale": options.min_scale, "flip": options.flip, "gt_lr": options.gt_lr,
            "target_f": options.gt_target_f, "check_view": list(options.check_view)}


@dataclass(frozen=True)
class CachedEncoder:
    """A cache entry found for a set: its weights and how it relates to the set."""

    key: str
    state: Mapping[str, torch.Tensor]
    exact: bool
    """Trained for exactly these masks with this recipe."""
    reached: bool
    max_f: float
    new_masks: int
    """Masks of the set that the cached encoder was not trained on."""


class GTEncoderCache:
    """The cache directory of one MODEL_DIR; ``lineage``: recorded with what it stores (for retention)."""

    def __init__(self, root: Path, lineage: str | None = None) -> None:
        self.root = Path(root)
        self.lineage = lineage

    @staticmethod
    def recipe_hash(options: TrainOptions, networks: str) -> str:
        return hashlib.sha256(json.dumps(recipe(options, networks), sort_keys=True).encode()).hexdigest()[:16]

    @staticmethod
    def key(hashes: Sequence[str], recipe_hash: str) -> str:
        """The entry name of a set: its recipe and the sorted hashes of its masks."""
        digest = hashlib.sha256(recipe_hash.encode())
        for h in sorted(set(hashes)):
            digest.update(h.encode())
        return f"{recipe_hash}-{digest.hexdigest()[:24]}"

    def _entries(self, recipe_hash: str) -> list[dict[str, Any]]:
        found = []
        for meta_path in sorted(self.root.glob(f"{recipe_hash}-*.json")):
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(meta, dict) and (self.root / f"{meta_path.stem}.pth").is_file():
                found.append({**meta, "key": meta_path.stem})
        return found

    def lookup(self, hashes: Sequence[str], recipe_hash: str) -> CachedEncoder | None:
        """The exact entry for this set, else the one sharing the most masks (at least
        :data:`REFRESH_MIN_SHARED` of the set), else None."""
        wanted = set(hashes)
        if not wanted:
            return None
        key = self.key(hashes, recipe_hash)
        best: tuple[int, dict[str, Any]] | None = None
        for meta in self._entries(recipe_hash):
            shared = len(wanted & set(meta.get("masks", [])))
            if meta["key"] == key:
                best = (len(wanted) + 1, meta)
                break
            if shared >= REFRESH_MIN_SHARED * len(wanted) and (best is None or shared > best[0]):
                best = (shared, meta)
        if best is None:
            return None
        meta = best[1]
        state = self._load(meta["key"])
        if state is None:
            return None
        exact = meta["key"] == key
        return CachedEncoder(meta["key"], state, exact, bool(meta.get("reached")), float(meta.get("max_f", 0.0)),
                             len(wanted - set(meta.get("masks", []))))

    def _load(self, key: str) -> Mapping[str, torch.Tensor] | None:
        try:
            return torch.load(self.root / f"{key}.pth", map_location="cpu", weights_only=True)
        except Exception as exc:  # a half-written or foreign file: train instead
            log.warning("cached GT encoder %s is unreadable (%s); not used", key, exc)
            return None

    def store(self, hashes: Sequence[str], recipe_hash: str, encoder: torch.nn.Module,
              result: Mapping[str, Any]) -> str:
        """Save ``encoder`` as the entry of this set (replacing an older one), then prune old entries."""
        key = self.key(hashes, recipe_hash)
        self.root.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in encoder.state_dict().items()}
        save_torch_atomic(state, self.root / f"{key}.pth")
        atomic.write_strict_json(self.root / f"{key}.json", {
            "recipe": recipe_hash, "masks": sorted(set(hashes)), "max_f": result.get("max_f"),
            "reached": result.get("reached"), "steps": result.get("steps"), "lineage": self.lineage,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        self.prune()
        return key

    def prune(self, keep: int = KEEP) -> None:
        """Remove all but the ``keep`` most recently written entries."""
        metas = sorted(self.root.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        for meta in metas[keep:]:
            for path in (meta, meta.with_suffix(".pth")):
                path.unlink(missing_ok=True)
