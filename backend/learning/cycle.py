"""One retraining cycle of one lineage: labelled pairs in, a new immutable model version (and
maybe a new current version of that lineage) out.

    gather ─ hold-out split (stable hash) ─ score champion on the held-out items ─ train (GT
    encoder, cached per labelled set; segmentation steps until the budget) ─ keep a share of the
    trained change (:mod:`.share`) ─ decide (paired per-image evidence + forgetting guard) ─ write
    ─ promote (engines first, then a compare-and-swap of the lineage's pointer)

Why an object with a method per stage: the CLI (``isnet train``), a test and an RQ worker run it
the same way; each stage reads what the earlier ones left on ``self`` instead of threading twenty
values through one function. It reports through a ``progress`` callback (and the lineage's status
file ``GET /metrics`` shows), writes nothing visible until the version is complete (see
:mod:`.staging`), and a run after a crash resumes the interrupted work when the data and options
are unchanged. Why the champion is scored first: its score is needed anyway, and the time it took
is what the challenger's will take, so the cycle knows how much of its wall-time budget
(:class:`Budget`) is left for training.

The one record a cycle leaves is :class:`CycleReport`: ``cycle.json`` in the version directory,
and its :meth:`CycleReport.summary` is what the status file and a Label Studio-fed cycle's outcome
say.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from backend import atomic
from backend.isnet import remote
from backend.isnet.training.budget import Budget
from backend.isnet.training.data import (
    Dataset,
    Item,
    Pair,
    Skipped,
    check_readable,
    holdout_score,
    load_pairs,
    split_holdout,
)
from backend.isnet.training.gt_cache import CACHE_DIR, GTEncoderCache, mask_hash
from backend.isnet.training.gt_encoder import GTEncoderResult
from backend.isnet.training.networks import ISNET, Networks
from backend.isnet.training.options import TrainOptions
from backend.isnet.training.progress import STATUS_FILE, Progress, ProgressFn, StatusWriter, emit
from backend.isnet.training.trainer import TrainingError, TrainingResult, run_training
from backend.isnet.versions import CHECKPOINT_FILE, ModelVersion
from backend.isnet.weights import save_torch_atomic
from backend.learning import cycle_lock
from backend.learning.engine_rebuild import estimate_seconds, prepare_engines
from backend.learning.evaluation import Evaluation, evaluate_models, merge, seconds_per_image, write_reports
from backend.learning.history import CYCLE_FILE, collect, earlier_held_out, guard_entries, write_history
from backend.learning.interpolation import (
    SEARCH_STEPS,
    Interpolation,
    interpolate,
    interpolate_towards,
    load_anchors,
    predict_masks,
)
from backend.learning.promotion import Decision, decide, evidence_from, parse_rule
from backend.learning.registry import ModelRegistry, PromotionConflict
from backend.learning.retention import prune_after_cycle
from backend.learning.share import CANDIDATES, choose_share, method_for
from backend.learning.staging import StagingArea, StagingError
from backend.settings import Settings

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "isnet-ls-train-1"

DataSource = Dataset | tuple[Path, Path] | tuple[str, str]

EARLIER_MAX = 100
"""Most earlier held-out images the forgetting guard scores (newest cycles first): bounds its time."""


@dataclass
class CycleReport:
    """What a cycle did: the one record, written as ``cycle.json`` into the version directory."""

    version: str
    directory: Path
    champion: str
    metrics: dict[str, dict[str, float]]
    """``{"champion": {...}, "challenger": {...}}`` on the held-out items at ``options.size``."""
    decision: Decision
    promoted: bool
    """Whether the lineage's CURRENT now names this version (the decision, applied where allowed)."""
    train_count: int
    held_out: list[str]
    skipped: list[Skipped]
    training: dict[str, Any]
    options: dict[str, Any]
    lineage: str = "base"
    created: str = ""
    size: int = 0
    held_out_items: list[list[str]] = field(default_factory=list)
    """``[key, image, mask]`` of each held-out item: what later cycles' forgetting guard scores."""
    held_out_available: int = 0
    per_item_mae: dict[str, dict[str, float]] = field(default_factory=dict)
    resumed_from: dict[str, Any] | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    engines: dict[str, Any] | None = None
    """On promotion: the serving engines rebuilt for this version (see :mod:`.engine_rebuild`)."""
    earlier: dict[str, Any] | None = None
    """The forgetting guard's images (earlier cycles' held-out items) and both models' metrics there."""
    budget: dict[str, Any] = field(default_factory=dict)
    """The wall-time plan: minutes, seconds kept for after training, seconds used."""
    interpolation: dict[str, Any] | None = None
    """How much of the trained change the version keeps, and how that was chosen (:mod:`.share`)."""
    retention: dict[str, Any] | None = None
    """What the retention policy removed after the cycle (:mod:`.retention`), or why it could not."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version, "lineage": self.lineage, "created": self.created, "size": self.size,
            "directory": str(self.directory),
            "champion": {"name": self.champion, "metrics": self.metrics["champion"]},
            "challenger": {"name": self.version, "metrics": self.metrics["challenger"]},
            "decision": self.decision.to_dict(), "promoted": self.promoted,
            "train": {"count": self.train_count},
            "held_out": {"count": len(self.held_out), "available": self.held_out_available, "keys": self.held_out,
                         "items": self.held_out_items},
            "earlier": self.earlier, "skipped": [s.to_dict() for s in self.skipped], "training": self.training,
            "options": self.options, "budget": self.budget, "resumed_from": self.resumed_from,
            "seconds": self.seconds, "engines": self.engines, "interpolation": self.interpolation,
            "per_item_mae": self.per_item_mae,
        }

    def summary(self) -> dict[str, Any]:
        """The few fields the training status and a Label Studio-fed cycle's outcome show."""
        return {"version": self.version, "lineage": self.lineage, "champion": self.champion,
                "promoted": self.promoted, "reason": self.decision.reason, "decision": self.decision.to_dict(),
                "metrics": self.metrics, "steps": self.training.get("steps"), "trained_on": self.train_count,
                "held_out": len(self.held_out), "budget": self.budget, "interpolation": self.interpolation,
                "engines": self.engines, "resumed_from": self.resumed_from, "retention": self.retention,
                "report_path": str(self.directory / CYCLE_FILE)}

    def save(self, directory: Path) -> None:
        """Write ``cycle.json`` into ``directory``: once with the version, again after a promotion."""
        atomic.write_strict_json(directory / CYCLE_FILE, self.to_dict())


def _as_dataset(source: DataSource) -> Dataset:
    if isinstance(source, Dataset):
        return source
    images, masks = source
    return Dataset.from_folders(Path(images), Path(masks))


def fingerprint(options: TrainOptions, champion: str, items: list[Item], networks: Networks,
                lineage: str = "base") -> str:
    """Identity of the training work: a resumed cycle must have the same data, options, start and
    lineage. The data by content (each pair's key and the SHA-256 of its image and mask files), not
    by path or time: a Label Studio-fed cycle writes the same labels into a new snapshot folder
    each time they are exported, and must still resume."""
    def digest(path: Path) -> str:
        try:
            with open(path, "rb") as fh:
                return hashlib.file_digest(fh, "sha256").hexdigest()
        except OSError:
            return ""

    payload = {
        "options": options.training_key(), "champion": champion, "networks": networks.name, "lineage": lineage,
        "items": [[it.key, digest(it.image), digest(it.mask)] for it in items],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass
class CycleTarget:
    """Where a cycle's version goes and what may happen to it."""

    out: Path | None = None
    """The version directory (default: a new ``versions/<name>``); outside the registry it is never promoted."""
    promote: bool = True
    resume: bool = True


class Cycle:
    """A cycle of ``registry``'s lineage: :meth:`run` goes through the stages in order."""

    def __init__(self, settings: Settings, options: TrainOptions | None = None, *,
                 registry: ModelRegistry | None = None, networks: Networks = ISNET,
                 progress: ProgressFn | None = None, budget: Budget | None = None) -> None:
        self.settings = settings
        self.options = (options or TrainOptions.from_settings(settings)).resolved()
        parse_rule(self.options.promote_rule)  # a bad rule is reported before anything is written
        self.registry = registry or ModelRegistry(settings)
        self.networks = networks
        self.budget = budget or Budget.minutes(self.options.budget_min)
        self.status = StatusWriter(self.registry.home / STATUS_FILE,
                                   {"budget_min": self.options.budget_min, "lineage": self.registry.lineage},
                                   inner=progress)
        self.progress = _with_eta(self.status, self.budget)
        self.share_method = method_for(settings.train_share, self.registry.lineage)
        self.timings: dict[str, float] = {}
        self.skipped: list[Skipped] = []

    def run(self, dataset: DataSource, held_out: DataSource | None = None,
            target: CycleTarget | None = None) -> CycleReport:
        """Train a challenger from the lineage's current model on ``dataset`` and decide whether it
        replaces it. ``held_out``: a separate evaluation set; without it a stable hash-based
        ``options.holdout_fraction`` of ``dataset`` is held out and never trained on. Raises
        :class:`TrainingError` (or ``ValueError`` / ``FileNotFoundError``) before anything is written
        when there is nothing to train on or to evaluate with."""
        target = target or CycleTarget()
        if self.settings.threads > 0:
            torch.set_num_threads(self.settings.threads)
        with self.registry.cycle_lock(f"a cycle of lineage {self.registry.lineage}",
                                      on_wait=self._waiting) as waited:
            if waited:  # the budget and the status's clock start now, not while another cycle ran
                self.budget.started, self.status.started = self.budget.clock(), time.time()
            try:
                report = self._stages(dataset, held_out, target)
            except BaseException as exc:
                self.status.write({"status": "failed", "error": f"{type(exc).__name__}: {exc}"})
                raise
            self.status.write({"status": "done", "stage": "done", "eta_s": 0, **report.summary()})
        return report

    def _waiting(self, holder: cycle_lock.Holder | None) -> None:
        log.warning("lineage %s: waiting for %s to finish (one cycle per lineage at a time)", self.registry.lineage,
                    holder.describe() if holder else "another cycle")

    def _stages(self, dataset: DataSource, held_out: DataSource | None, target: CycleTarget) -> CycleReport:
        t0 = time.perf_counter()
        self.gather(dataset, held_out)
        self.timings["load"] = time.perf_counter() - t0
        self.open_version(target)
        try:
            self.score_champion()
            self.train()
            self.keep_share()
            decision = self.decide(target.promote)
            report = self.write(decision, t0)
        except BaseException:
            # Keep the staging directory when it holds a state to resume from; otherwise it is junk.
            if self.area.state_path.is_file():
                self.area.release()
            else:
                self.area.discard()
            raise
        t = time.perf_counter()
        self.promote(report)
        report.seconds["engines_and_history"] = round(time.perf_counter() - t, 2)
        report.seconds["cycle"] = round(time.perf_counter() - t0, 2)
        report.budget["seconds_used"] = round(self.budget.elapsed(), 1)
        return report

    # -- stage 1: the data ------------------------------------------------------------------------

    def gather(self, dataset: DataSource, held_out: DataSource | None) -> None:
        """Training items and their decoded pairs, the readable held-out items, the forgetting
        guard's earlier items (this lineage's), the anchor photos, and what was skipped."""
        _warm_up()
        options, settings = self.options, self.settings
        data = _as_dataset(dataset)
        skipped: list[Skipped] = list(data.skipped)
        if held_out is not None:
            val_data = _as_dataset(held_out)
            skipped += val_data.skipped
            val_keys = {it.key for it in val_data.items}
            train_items = [it for it in data.items if it.key not in val_keys]
            skipped += [Skipped(it.key, str(it.image), "also in the held-out set; used there only")
                        for it in data.items if it.key in val_keys]
            val_items = list(val_data.items)
        else:
            train_items, val_items = split_holdout(data.items, options.holdout_fraction)
        emit(self.progress, "load", 0, 0,
             message=f"reading {len(train_items)} training and {len(val_items)} held-out pairs")
        self.pairs, bad = load_pairs(train_items, settings.max_pixels, options.size)
        skipped += bad
        self.val_items, bad = check_readable(val_items, settings.max_pixels)
        skipped += bad
        for s in skipped:
            log.warning("skipped %s: %s", s.key, s.reason)
        if not self.pairs:
            raise TrainingError("no readable training pairs" + (f" ({len(skipped)} skipped)" if skipped else ""))
        if not self.val_items:
            raise TrainingError("no readable held-out pairs to compare the champion and the challenger with")
        loaded = {p.key for p in self.pairs}
        self.train_items = [it for it in train_items if it.key in loaded]
        self.skipped = skipped
        self.earlier = self._earlier_items(loaded | {it.key for it in self.val_items})
        self.anchors = load_anchors(options.anchors, settings.max_pixels) if self.share_method == "anchors" else []

    def _earlier_items(self, exclude: set[str]) -> list[Item]:
        """This lineage's earlier cycles' held-out items (readable ones, at most :data:`EARLIER_MAX`);
        missing or unreadable ones are listed as skipped and counted (``budget.earlier_missing``)."""
        records = collect(self.registry.record_dirs(), self.registry.lineage)
        remote.share_files(self.settings, [Path(f) for _, image, mask in guard_entries(records) for f in (image, mask)],
                           "pull")  # with a store: the ones another worker's snapshots hold
        earlier = earlier_held_out(records, exclude, EARLIER_MAX)
        found, bad = check_readable([Item(k, Path(i), Path(m)) for k, i, m in earlier.items], self.settings.max_pixels)
        gone = [Skipped(k, i, "earlier held-out image or mask is gone: the forgetting guard cannot score it")
                for k, i, _ in earlier.missing] + [Skipped(b.key, b.path, f"earlier held-out: {b.reason}") for b in bad]
        for b in bad:  # the missing ones were logged by earlier_held_out
            log.warning("earlier held-out item %s is unreadable: %s", b.key, b.reason)
        self.skipped, self.earlier_missing = self.skipped + gone, len(gone)
        return found

    def open_version(self, target: CycleTarget) -> None:
        """The locked staging area of this cycle: an abandoned one with the same work (and its state
        to resume from), or a new one. Fixes the champion: the lineage's current version now."""
        self.champion: ModelVersion = self.registry.current()
        fp = fingerprint(self.options, self.champion.name, self.train_items, self.networks, self.registry.lineage)
        out = target.out
        parent, only = (Path(out).parent, Path(out).name) if out is not None else (self.registry.versions_dir, None)
        # Abandoned staging directories (their worker died) are resumed when they match, else removed.
        area = StagingArea.adopt(parent, fp if target.resume else "", only=only, lineage=self.registry.lineage)
        state = area.load_state() if area is not None else None
        if area is None or state is None:
            if area is not None:
                area.discard()  # matched, but its state cannot be read: nothing to resume
            final = Path(out) if out is not None else self.registry.versions_dir / self.registry.new_version_name()
            area = StagingArea(final)
            if not area.try_lock():
                raise TrainingError(f"another cycle is writing {final}")
            try:
                area.create(fp, {"champion": self.champion.name, "started": _now(),
                                 "lineage": self.registry.lineage})
            except StagingError as exc:
                area.release(remove_lock_file=True)
                raise TrainingError(str(exc)) from exc
        self.area, self.state = area, state
        self.resumed = _resume_info(state)
        if self.resumed:
            emit(self.progress, "load", 0, 0, message=f"resuming {area.final.name} at {self.resumed}")
        self.name = area.final.name
        self.status.base["version"] = self.name

    # -- stage 2: the champion --------------------------------------------------------------------

    def score_champion(self) -> None:
        """The champion on the held-out and earlier items (what fits the budget), its anchor masks
        where the anchor method keeps the share, and the time kept for after training."""
        t = time.perf_counter()
        self.model, self.gt_state = self.networks.load(self.champion.checkpoint)
        self.available = (len(self.val_items), len(self.earlier))
        self.val_items, self.earlier = _fit_evaluation(self.model, self.val_items, self.earlier, self.options,
                                                       self.settings, self.budget, self.progress)
        self.before = self._score("champion", self.champion.name, self.val_items, "champion")
        self.before_earlier = (self._score("champion", self.champion.name, self.earlier, "champion")
                               if self.earlier else None)
        self.timings["champion"] = time.perf_counter() - t
        t = time.perf_counter()
        write_reports(self.before, self.area.path / "reports")
        report_s = time.perf_counter() - t

        t = time.perf_counter()
        self.start = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.reference = (predict_masks(self.model, self.anchors, self.options.size, self.options.device)
                          if self.anchors else [])
        self.timings["anchors"] = time.perf_counter() - t
        megabytes = sum(t.numel() * t.element_size() for t in self.model.state_dict().values()) / 1e6
        save_s = 0.5 + 2 * megabytes / 100.0  # the model and its GT encoder, at a slow disk's 100 MB/s
        per_image = self.timings["champion"] / max(1, len(self.val_items) + len(self.earlier))
        scoring = (len(CANDIDATES) + 0.1 if self.share_method == "evidence" else 1.1) * self.timings["champion"]
        self.budget.after_training = (scoring + 3.0 * report_s + save_s
                                      + (1.1 * estimate_seconds(self.champion, self.settings, per_image,
                                                                len(self.val_items)) if self._serves() else 0.0)
                                      + 1.1 * (SEARCH_STEPS + 1) * self.timings["anchors"])

    # -- stage 3: training ------------------------------------------------------------------------

    def train(self) -> None:
        """The GT encoder (cached per labelled set), then segmentation steps until the budget."""
        t = time.perf_counter()
        torch.manual_seed(self.options.seed)
        cache_dir = self.settings.model_dir / CACHE_DIR
        remote.share_folder(self.settings, CACHE_DIR, cache_dir, "pull")  # encoders other workers trained
        plan = _plan_gt_encoder(self.networks, self.gt_state, self.pairs, self.options,
                                GTEncoderCache(cache_dir, self.registry.lineage),
                                self.progress,
                                resuming=bool(self.state))
        self.gt_plan = plan
        self.result: TrainingResult = run_training(
            self.model, plan.encoder, self.pairs, self.options, gt_encoder_warm=plan.warm, gt_ready=plan.ready,
            on_gt_trained=plan.trained, state=self.state, save_state=self.area.save_state, progress=self.progress,
            budget=self.budget,
        )
        remote.share_folder(self.settings, CACHE_DIR, cache_dir, "push")
        self.timings["train"] = time.perf_counter() - t

    # -- stage 4: the share of the change to keep -------------------------------------------------

    def keep_share(self) -> None:
        """Load into the model the share of the trained change this lineage keeps, and score it on
        the held-out items: chosen on their evidence (cross-fitted), by the anchor photos, or whole."""
        t = time.perf_counter()
        if self.share_method == "evidence":
            self._share_by_evidence()
        else:
            if self.share_method == "anchors":
                mix = interpolate_towards(self.model, self.start, self.anchors, self.reference,
                                          self.options.anchor_drift, self.options.size, self.options.device,
                                          self.progress)
            else:  # full: the model already holds the trained weights
                mix = Interpolation(1.0, 0.0, 0.0, 0, reason="ISNET_TRAIN_SHARE=full: the trained change is kept whole")
            self.share = {"method": self.share_method, **mix.to_dict()}
            self.lam = mix.lam
            self.after = self._score("challenger", self.name, self.val_items, "evaluate")
            self.crossfit = None
        self.after_earlier = (self._score("challenger", self.name, self.earlier, "evaluate")
                              if self.earlier else None)
        self.timings["interpolate"] = time.perf_counter() - t

    def _share_by_evidence(self) -> None:
        end = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        per_share = {0.0: {k: v["champion"] for k, v in self.before.per_item.items()}}
        scored: dict[float, Evaluation] = {}
        for lam in CANDIDATES:
            self.model.load_state_dict(interpolate(self.start, end, lam))
            emit(self.progress, "interpolate", 0, 0, message=f"scoring share {lam:g} of the trained change")
            scored[lam] = self._score("challenger", self.name, self.val_items, "evaluate")
            per_share[lam] = {k: v["challenger"] for k, v in scored[lam].per_item.items()}
        choice = choose_share(per_share)
        folds = [fold["lam"] for fold in choice.folds]
        self.lam = choice.lam
        self.model.load_state_dict(interpolate(self.start, end, choice.lam))
        # The share 0 ships the champion's weights: scored as the challenger, it is the champion's score.
        self.after = scored.get(choice.lam) or _relabel(self.before, "champion", "challenger")
        self.crossfit = choice.crossfit
        reason = (f"share {choice.lam:g} of the trained change has the lowest held-out MAE "
                  f"({', '.join(f'{k}: {v:.4f}' for k, v in choice.mean_mae.items())}); the promotion is judged "
                  f"with each half's share chosen on the other half ({', '.join(f'{lam:g}' for lam in folds)})")
        self.share = {"method": "evidence", "reason": reason, **choice.to_dict()}

    # -- stage 5: the decision --------------------------------------------------------------------

    def decide(self, promote: bool) -> Decision:
        """The rule on the paired per-image evidence and the forgetting guard, and where it may apply."""
        options = self.options
        evaluation = merge(self.before, self.after)
        self.evaluation = evaluation
        self.skipped = self.skipped + evaluation.skipped
        per_item = evaluation.per_item
        if self.crossfit is not None:  # judged on shares chosen without each image
            per_item = {k: {"champion": v["champion"], "challenger": self.crossfit[k]}
                        for k, v in per_item.items() if k in self.crossfit and "champion" in v}
        self.guard = (merge(self.before_earlier, self.after_earlier)
                      if self.before_earlier is not None and self.after_earlier is not None else None)
        decision = decide(options.promote_rule, evaluation.metrics["champion"], evaluation.metrics["challenger"],
                          evidence_from(per_item, options.min_heldout),
                          evidence_from(self.guard.per_item, options.min_heldout) if self.guard else None)
        if self.lam == 0.0 and decision.promote and options.promote_rule != "always":
            decision = dataclasses.replace(decision, promote=False, reason="no share of the trained change did better "
                                           "than the champion on the held-out images")
        if len(evaluation.items) < self.available[0]:
            decision = dataclasses.replace(decision, reason=f"{decision.reason}; {len(evaluation.items)} of "
                                           f"{self.available[0]} held-out images scored within the budget")
        if decision.promote and not self._in_registry():
            decision = dataclasses.replace(decision, promote=False,
                                           reason=decision.reason + "; not applied: written outside MODEL_DIR")
        elif decision.promote and not promote:
            decision = dataclasses.replace(decision, promote=False,
                                           reason=decision.reason + "; not applied: --no-promote")
        return decision

    # -- stage 6: the version directory -----------------------------------------------------------

    def write(self, decision: Decision, t0: float) -> CycleReport:
        """The checkpoint, ``cycle.json``, the reports and the lineage's history, then the rename
        that makes the version exist."""
        emit(self.progress, "write", 0, 0, message=f"writing {self.area.final}")
        area, options, result, evaluation = self.area, self.options, self.result, self.evaluation
        created = _now()
        checkpoint = {
            "format": CHECKPOINT_FORMAT, "model": self.model.state_dict(),
            "gt_encoder": self.gt_plan.encoder.state_dict() if self.gt_plan.encoder is not None else None,
            "step": result.steps, "gt_step": result.gt.steps if result.gt else 0,
            "meta": {"version": self.name, "created": created, "parent": self.champion.name,
                     "lineage": self.registry.lineage, "networks": self.networks.name, "size": options.size,
                     "crop": options.crop, "feature_loss": options.feature_loss, "interpolation": self.lam},
        }
        save_torch_atomic(checkpoint, area.path / CHECKPOINT_FILE)
        held_keys = list(evaluation.items)
        by_key = {it.key: it for it in self.val_items}
        self.timings["total"] = time.perf_counter() - t0
        report = CycleReport(
            version=self.name, directory=area.final, champion=self.champion.name,
            metrics={"champion": evaluation.metrics["champion"], "challenger": evaluation.metrics["challenger"]},
            decision=decision, promoted=False, train_count=len(self.pairs), held_out=held_keys, skipped=self.skipped,
            training={**result.summary(), "losses": result.losses},
            options=options.to_dict(), lineage=self.registry.lineage, created=created, size=options.size,
            held_out_items=[[k, str(by_key[k].image), str(by_key[k].mask)] for k in held_keys if k in by_key],
            held_out_available=self.available[0], per_item_mae=evaluation.per_item, resumed_from=self.resumed,
            seconds={k: round(v, 2) for k, v in self.timings.items()}, earlier=_earlier_summary(self.guard),
            budget={"minutes": options.budget_min, "after_training_s": round(self.budget.after_training, 1),
                    "stopped_by": result.stopped_by, "held_out_scored": len(held_keys),
                    "held_out_available": self.available[0], "earlier_scored": len(self.earlier),
                    "earlier_available": self.available[1], "earlier_missing": self.earlier_missing,
                    "seconds_at_write": round(self.budget.elapsed(), 1)},
            interpolation=self.share,
        )
        report.save(area.path)
        write_reports(Evaluation(self.after.metrics, reports=self.after.reports), area.path / "reports")
        previous = self.registry.record_dirs() if self._in_registry() else []
        write_history([*collect(previous, self.registry.lineage), report.to_dict()], area.path,
                      self.registry.current_name())
        area.commit()
        if self._in_registry():
            self._publish(area.final.name)  # with ISNET_MODEL_STORE: every host's history sees it
            remote.share_files(self.settings, [Path(f) for _, image, mask in report.held_out_items
                                               for f in (image, mask)], "push")  # later guards, on any worker
        return report

    # -- stage 7: promotion -----------------------------------------------------------------------

    def promote(self, report: CycleReport) -> None:
        """On promotion: the version's engines first (serving switches to a version that has them),
        then the lineage's pointer, only if the champion is still current (a rollback or another
        cycle meanwhile wins), then ``cycle.json`` again; then the lineage's history."""
        registry = self.registry
        if report.decision.promote:
            if self._serves():
                emit(self.progress, "engines", 0, 0, message=f"building and measuring {report.version}'s engines")
                report.engines = prepare_engines(self.champion, registry.get(report.version),
                                                 [it.image for it in self.train_items], self.val_items, self.settings)
            try:
                registry.promote(report.version, expected=self.champion.name)
                report.promoted = True
            except PromotionConflict as exc:
                report.decision = dataclasses.replace(report.decision, promote=False,
                                                      reason=f"{report.decision.reason}; not applied: {exc}")
            except OSError as exc:  # the shared store or Redis unreachable past ISNET_STORE_WAIT
                report.decision = dataclasses.replace(
                    report.decision, promote=False, reason=f"{report.decision.reason}; not applied: the model store "
                    f"is unreachable ({exc}); {report.version} is kept on this host (isnet model use promotes it)")
            report.save(report.directory)
            if self._in_registry():
                self._publish(report.version)  # its final cycle.json
        if self._in_registry():
            report.retention = prune_after_cycle(self.settings, registry.lineage)  # never raises: logs, reports
            write_history(collect(registry.record_dirs(), registry.lineage),
                          registry.home, registry.current_name())
        emit(self.progress, "done", 0, 0, message=report.decision.reason)

    # -- helpers ----------------------------------------------------------------------------------

    def _score(self, label: str, name: str, items: list[Item], stage: str) -> Evaluation:
        return evaluate_models({label: self.model}, items, self.options.size, self.settings.max_pixels,
                               self.options.device, self.progress, describe={label: name}, stage=stage)

    def _serves(self) -> bool:
        """Whether the version is an ISNet the serving engines can be built from (not a test network)."""
        return self.networks.name == ISNET.name

    def _publish(self, name: str) -> None:
        """Upload the version's records to the shared store; unreachable, it is said and left (the
        promotion publishes again, and waits for the store)."""
        try:
            self.registry.store.publish(name)
        except OSError as exc:
            log.warning("%s is not in the model store yet: %s", name, exc)

    def _in_registry(self) -> bool:
        return self.area.final.parent.resolve() == self.registry.versions_dir.resolve()


def run_cycle(dataset: DataSource, settings: Settings, options: TrainOptions | None = None, *,
              held_out: DataSource | None = None, target: CycleTarget | None = None,
              progress: ProgressFn | None = None, networks: Networks = ISNET,
              registry: ModelRegistry | None = None) -> CycleReport:
    """One cycle of ``registry``'s lineage (default: the base): :class:`Cycle` in one call."""
    cycle = Cycle(settings, options, registry=registry, networks=networks, progress=progress)
    return cycle.run(dataset, held_out, target)


def _relabel(evaluation: Evaluation, old: str, new: str) -> Evaluation:
    """The same scores under another model label."""
    return Evaluation({new: evaluation.metrics[old]}, {k: {new: v[old]} for k, v in evaluation.per_item.items()},
                      evaluation.items, evaluation.skipped, {new: evaluation.reports[old]}, evaluation.seconds)


def _with_eta(progress: ProgressFn, budget: Budget) -> ProgressFn:
    """Events without an estimate get the latest the budget allows (the segmenter stage knows better)."""
    if not budget.bounded:
        return progress

    def wrapped(event: Progress) -> None:
        if event.eta_s is None:
            event = dataclasses.replace(event, eta_s=round(max(0.0, budget.seconds - budget.elapsed()), 1))
        progress(event)

    return wrapped


def _warm_up() -> None:
    """Import now what later stages import on first use (the metrics, plotting, the optimizer's
    compiler hooks: seconds), so the champion's evaluation times what the challenger's will take."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot

    from backend.metrics import build_report, evaluate_segmenter, write_report  # noqa: F401

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])


@dataclass
class _GTPlan:
    """Where this cycle's GT encoder comes from, and how a trained one is cached."""

    encoder: nn.Module | None
    ready: GTEncoderResult | None = None
    warm: bool = False
    source: str = "scratch"
    cache: GTEncoderCache | None = None
    hashes: list[str] = field(default_factory=list)
    recipe: str = ""

    def trained(self, encoder: nn.Module, result: GTEncoderResult) -> None:
        """Record the source in the result and cache the encoder for this labelled set."""
        result.source = self.source
        if self.cache is None:
            return
        try:
            self.cache.store(self.hashes, self.recipe, encoder, result.to_dict())
        except OSError as exc:
            log.warning("GT encoder not cached: %s", exc)


def _plan_gt_encoder(networks: Networks, gt_state: Any, pairs: list[Pair], options: TrainOptions,
                     cache: GTEncoderCache, progress: ProgressFn | None, resuming: bool) -> _GTPlan:
    """The cached encoder of exactly these masks (no training), else a cached one of a similar
    set or the champion's (checked, then trained until it fits), else a fresh one. A resumed
    cycle takes its encoder from the saved state."""
    if not options.uses_features:
        return _GTPlan(None, source="")
    hashes = [mask_hash(p) for p in pairs]
    recipe = cache.recipe_hash(options, networks.name)
    plan = _GTPlan(None, cache=cache, hashes=hashes, recipe=recipe)
    if resuming:
        plan.encoder, plan.source = networks.new_gt_encoder(None)[0], "resumed"
        return plan
    found = cache.lookup(hashes, recipe)
    if found is not None:
        encoder, ok = networks.new_gt_encoder(found.state)
        if ok and found.exact and found.reached:
            emit(progress, "gt_encoder", 0, 0, message=f"cached GT encoder {found.key} fits these masks "
                 f"(max F {found.max_f:.4f}): not retrained")
            plan.encoder, plan.warm, plan.source = encoder, True, "cache"
            plan.ready = GTEncoderResult(0, found.max_f, True, [], 0.0, "cache", "cache")
            return plan
        if ok:
            emit(progress, "gt_encoder", 0, 0, message=f"refreshing cached GT encoder {found.key} "
                 f"({found.new_masks} of {len(set(hashes))} masks new)")
            plan.encoder, plan.warm, plan.source = encoder, True, "refreshed"
            return plan
    encoder, warm = networks.new_gt_encoder(gt_state)
    plan.encoder, plan.warm, plan.source = encoder, warm, "champion" if warm else "scratch"
    return plan


def _fit_evaluation(model: nn.Module, val_items: list[Item], earlier: list[Item], options: TrainOptions,
                    settings: Settings, budget: Budget, progress: ProgressFn | None) -> tuple[list[Item], list[Item]]:
    """The held-out and earlier held-out items one model can be scored on within the budget's
    evaluation share, from the time of one prediction: all of them on an idle machine; on a busy
    one the first in a stable order (the hash that made the split), half for each set at most."""
    if not budget.bounded or not val_items:
        return val_items, earlier
    fit = budget.images_that_fit(seconds_per_image(model, val_items[0], options.size, settings.max_pixels,
                                                   options.device))
    if fit is None or fit >= len(val_items) + len(earlier):
        return val_items, earlier
    ordered = sorted(val_items, key=lambda it: holdout_score(it.key))
    n_earlier = min(len(earlier), fit // 2)
    n_held = max(1, min(len(val_items), fit - n_earlier))
    n_earlier = max(0, min(len(earlier), fit - n_held))
    emit(progress, "champion", 0, 0, message=f"scoring {n_held} of {len(val_items)} held-out images "
         f"(and {n_earlier} of {len(earlier)} earlier ones): what fits in the budget on this machine")
    return ordered[:n_held], earlier[:n_earlier]


def _earlier_summary(evaluation: Evaluation | None) -> dict[str, Any] | None:
    if evaluation is None:
        return None
    return {"count": len(evaluation.items), "keys": list(evaluation.items),
            "metrics": {k: {m: v.get(m) for m in ("mae", "avgfmeasure", "sm")} for k, v in evaluation.metrics.items()},
            "per_item_mae": evaluation.per_item}


def _resume_info(state: dict[str, Any] | None) -> dict[str, Any] | None:
    if not state:
        return None
    return {"stage": state.get("stage"), "step": int(state.get("step", 0)), "gt_step": int(state.get("gt_step", 0))}


def _now() -> str:
    """UTC time to the microsecond: the history is ordered by it, and two cycles (or a test's
    two quick cycles) can finish within the same second, whose version names then sort by
    their random suffix, not by age."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")
