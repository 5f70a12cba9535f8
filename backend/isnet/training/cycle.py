"""One retraining cycle: labelled pairs in, a new immutable model version (and maybe a new
current model) out.

    data ─ hold-out split (stable hash) ─ champion scored on the held-out items ─┐
    GT encoder (cached per labelled set) ─ segmentation steps until the budget ─ challenger scored
    ─ paired per-image evidence + forgetting guard ─ rule ─ promote (engines first)

Why one plain function: the CLI (``isnet train``), a test and an RQ worker all call
:func:`run_cycle` the same way; it reports through a ``progress`` callback (and a status file
``GET /metrics`` shows), writes nothing visible until the version is complete (see
:mod:`.staging`), and a call after a crash resumes the interrupted work when the data and
options are unchanged. Why the champion is scored first: its score is needed anyway, and the
time it took is what the challenger's will take, so the cycle knows how much of its wall-time
budget (:mod:`.budget`) is left for training.
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

import numpy as np
import torch
from torch import nn

from backend.isnet.registry import CHECKPOINT_FILE, ModelRegistry, ModelVersion
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
from backend.isnet.training.engine_rebuild import estimate_seconds, rebuild_engines
from backend.isnet.training.evaluation import Evaluation, evaluate_models, merge, seconds_per_image, write_reports
from backend.isnet.training.gt_cache import CACHE_DIR, GTEncoderCache, mask_hash
from backend.isnet.training.gt_encoder import GTEncoderResult
from backend.isnet.training.history import (
    METRICS_FILE,
    collect,
    earlier_held_out,
    write_history,
    write_json_atomic,
)
from backend.isnet.training.interpolation import SEARCH_STEPS, interpolate_towards, load_anchors, predict_masks
from backend.isnet.training.networks import ISNET, Networks
from backend.isnet.training.options import TrainOptions
from backend.isnet.training.progress import STATUS_FILE, Progress, ProgressFn, StatusWriter, emit
from backend.isnet.training.promotion import Decision, decide, evidence_from
from backend.isnet.training.staging import StagingArea, StagingError
from backend.isnet.training.trainer import TrainingError, TrainingResult, run_training
from backend.isnet.weights import save_torch_atomic
from backend.settings import Settings

log = logging.getLogger(__name__)

CYCLE_FILE = "cycle.json"
CHECKPOINT_FORMAT = "isnet-ls-train-1"

DataSource = Dataset | tuple[Path, Path] | tuple[str, str]

EARLIER_MAX = 100
"""Most earlier held-out images the forgetting guard scores (newest cycles first): bounds its time."""


@dataclass
class CycleReport:
    """What a cycle did; also written, as JSON, to ``cycle.json`` in the version directory."""

    version: str
    directory: Path
    champion: str
    metrics: dict[str, dict[str, float]]
    """``{"champion": {...}, "challenger": {...}}`` on the held-out items at ``options.size``."""
    decision: Decision
    promoted: bool
    """Whether CURRENT now names this version (the decision, applied where allowed)."""
    train_count: int
    held_out: list[str]
    skipped: list[Skipped]
    training: dict[str, Any]
    options: dict[str, Any]
    resumed_from: dict[str, Any] | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    engines: dict[str, Any] | None = None
    """On promotion: the serving engines rebuilt for this version (see :mod:`.engine_rebuild`)."""
    earlier: dict[str, Any] | None = None
    """The forgetting guard's images (earlier cycles' held-out items) and both models' metrics there."""
    budget: dict[str, Any] = field(default_factory=dict)
    """The wall-time plan: minutes, seconds kept for after training, seconds used."""
    interpolation: dict[str, Any] | None = None
    """How much of the trained weights the challenger keeps (see :mod:`.interpolation`)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version, "directory": str(self.directory), "champion": self.champion,
            "metrics": self.metrics, "decision": self.decision.to_dict(), "promoted": self.promoted,
            "train": {"count": self.train_count}, "held_out": {"count": len(self.held_out), "keys": self.held_out},
            "earlier": self.earlier, "skipped": [s.to_dict() for s in self.skipped], "training": self.training,
            "options": self.options, "budget": self.budget, "resumed_from": self.resumed_from,
            "seconds": self.seconds, "engines": self.engines, "interpolation": self.interpolation,
        }

    def save(self, directory: Path) -> None:
        """Write ``cycle.json`` into ``directory``: once with the version, again after a promotion."""
        write_json_atomic(directory / CYCLE_FILE, self.to_dict())


def _as_dataset(source: DataSource) -> Dataset:
    if isinstance(source, Dataset):
        return source
    images, masks = source
    return Dataset.from_folders(Path(images), Path(masks))


def fingerprint(options: TrainOptions, champion: str, items: list[Item], networks: Networks) -> str:
    """Identity of the training work: a resumed cycle must have the same data, options and start."""
    def stat(path: Path) -> list[int]:
        try:
            st = path.stat()
            return [st.st_size, st.st_mtime_ns]
        except OSError:
            return [-1, -1]

    payload = {
        "options": options.training_key(), "champion": champion, "networks": networks.name,
        "items": [[it.key, str(it.image), stat(it.image), str(it.mask), stat(it.mask)] for it in items],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def run_cycle(
    dataset: DataSource,
    settings: Settings,
    options: TrainOptions | None = None,
    *,
    held_out: DataSource | None = None,
    out: Path | None = None,
    promote: bool = True,
    resume: bool = True,
    progress: ProgressFn | None = None,
    networks: Networks = ISNET,
    registry: ModelRegistry | None = None,
    budget: Budget | None = None,
) -> CycleReport:
    """Train a challenger from the current model on ``dataset`` and decide whether it replaces it.

    ``dataset``: a :class:`Dataset` or ``(images_dir, masks_dir)``. ``held_out``: the same for
    a separate evaluation set; without it a stable hash-based ``options.holdout_fraction`` of
    ``dataset`` is held out and never trained on. ``out``: where the version directory goes
    (default: a new ``versions/<name>`` under ``MODEL_DIR``); a directory outside the
    registry is written but never promoted. ``resume``: continue an interrupted cycle with the
    same data and options from its saved training state. ``budget``: the wall-time plan
    (default: ``options.budget_min`` from now). Raises :class:`TrainingError` (or
    ``ValueError`` for bad options / ``FileNotFoundError`` for missing folders) before
    anything is written when there is nothing to train on or to evaluate with.
    """
    options = (options or TrainOptions.from_settings(settings)).resolved()
    registry = registry or ModelRegistry(settings)
    budget = budget or Budget.minutes(options.budget_min)
    if settings.threads > 0:
        torch.set_num_threads(settings.threads)
    status = StatusWriter(registry.root / STATUS_FILE, {"budget_min": options.budget_min}, inner=progress)
    try:
        report = _run(dataset, settings, options, held_out, out, promote, resume, status, networks, registry, budget)
    except BaseException as exc:
        status.write({"status": "failed", "error": f"{type(exc).__name__}: {exc}"})
        raise
    status.write({"status": "done", "stage": "done", "version": report.version, "promoted": report.promoted,
                  "steps": report.training.get("steps"), "decision": report.decision.to_dict(),
                  "budget": report.budget, "interpolation": report.interpolation, "eta_s": 0})
    return report


def _with_eta(progress: ProgressFn, budget: Budget) -> ProgressFn:
    """Events without an estimate get the latest the budget allows (the segmenter stage knows better)."""
    if not budget.bounded:
        return progress

    def wrapped(event: Progress) -> None:
        if event.eta_s is None:
            event = dataclasses.replace(event, eta_s=round(max(0.0, budget.seconds - budget.elapsed()), 1))
        progress(event)

    return wrapped


def _run(dataset: DataSource, settings: Settings, options: TrainOptions, held_out: DataSource | None,
         out: Path | None, promote: bool, resume: bool, status: StatusWriter, networks: Networks,
         registry: ModelRegistry, budget: Budget) -> CycleReport:
    progress = _with_eta(status, budget)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    _warm_up()
    train_items, train_pairs, val_items, skipped = _gather(dataset, held_out, options, settings, progress)
    loaded = {p.key for p in train_pairs}
    earlier = _earlier_items(registry, loaded | {it.key for it in val_items}, settings.max_pixels)
    anchors = load_anchors(options.anchors, settings.max_pixels)
    timings["load"] = time.perf_counter() - t0

    # -- where the version goes ----------------------------------------------------------------
    champion = registry.current()
    fp = fingerprint(options, champion.name, [it for it in train_items if it.key in loaded], networks)
    area, state = _staging(registry, out, fp, resume, champion)
    resumed = _resume_info(state)
    if resumed:
        emit(progress, "load", 0, 0, message=f"resuming {area.final.name} at {resumed}")
    name = area.final.name
    status.base["version"] = name

    try:
        report = _train_evaluate_write(
            area, name, champion, train_pairs, val_items, earlier, anchors, skipped, state, resumed, options,
            settings, networks, registry, progress, promote, timings, t0, budget,
        )
    except BaseException:
        # Keep the staging directory when it holds a state to resume from; otherwise it is junk.
        if area.state_path.is_file():
            area.release()
        else:
            area.discard()
        raise
    t = time.perf_counter()
    _finish(report, champion, [it.image for it in train_items if it.key in loaded], settings, registry, progress)
    report.seconds["engines_and_history"] = round(time.perf_counter() - t, 2)
    report.seconds["cycle"] = round(time.perf_counter() - t0, 2)
    report.budget["seconds_used"] = round(budget.elapsed(), 1)
    return report


def _warm_up() -> None:
    """Import now what later stages import on first use (the metrics, plotting, the optimizer's
    compiler hooks: seconds), so the champion's evaluation times what the challenger's will take."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot

    from backend.metrics import build_report, evaluate_segmenter, write_report  # noqa: F401

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])


def _gather(dataset: DataSource, held_out: DataSource | None, options: TrainOptions, settings: Settings,
            progress: ProgressFn | None) -> tuple[list[Item], list[Pair], list[Item], list[Skipped]]:
    """Training items and their decoded pairs, the readable held-out items, and what was skipped."""
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
    emit(progress, "load", 0, 0, message=f"reading {len(train_items)} training and {len(val_items)} held-out pairs")
    train_pairs, bad = load_pairs(train_items, settings.max_pixels, options.size)
    skipped += bad
    val_items, bad = check_readable(val_items, settings.max_pixels)
    skipped += bad
    for s in skipped:
        log.warning("skipped %s: %s", s.key, s.reason)
    if not train_pairs:
        raise TrainingError("no readable training pairs" + (f" ({len(skipped)} skipped)" if skipped else ""))
    if not val_items:
        raise TrainingError("no readable held-out pairs to compare the champion and the challenger with")
    return train_items, train_pairs, val_items, skipped


def _earlier_items(registry: ModelRegistry, exclude: set[str], max_pixels: int) -> list[Item]:
    """Earlier cycles' held-out items for the forgetting guard (readable ones, at most :data:`EARLIER_MAX`)."""
    records = collect(v.directory for v in registry.list_versions()) if registry.versions_dir.is_dir() else []
    found = [Item(k, Path(i), Path(m)) for k, i, m in earlier_held_out(records, exclude, EARLIER_MAX)]
    return check_readable(found, max_pixels)[0]


def _staging(registry: ModelRegistry, out: Path | None, fp: str, resume: bool,
             champion: ModelVersion) -> tuple[StagingArea, dict[str, Any] | None]:
    """The locked staging area of this cycle: an abandoned one with the same work (and its state), or a new one."""
    parent, only = (Path(out).parent, Path(out).name) if out is not None else (registry.versions_dir, None)
    # Abandoned staging directories (their worker died) are resumed when they match, else removed.
    area: StagingArea | None = StagingArea.adopt(parent, fp if resume else "", only=only)
    state: dict[str, Any] | None = None
    if area is not None:
        state = area.load_state()
    if area is None or state is None:
        if area is not None:
            area.discard()  # matched, but its state cannot be read: nothing to resume
        final = Path(out) if out is not None else registry.versions_dir / registry.new_version_name()
        area = StagingArea(final)
        if not area.try_lock():
            raise TrainingError(f"another cycle is writing {final}")
        try:
            area.create(fp, {"champion": champion.name, "started": _now()})
        except StagingError as exc:
            area.release(remove_lock_file=True)
            raise TrainingError(str(exc)) from exc
        state = None
    return area, state


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


def _after_training(evaluate_s: float, report_s: float, model: nn.Module, champion: ModelVersion,
                    settings: Settings) -> float:
    """Seconds to keep for after training: the challenger's evaluation (as long as the champion's),
    its report and the history plots, saving the checkpoint, and the champion's engines rebuilt."""
    megabytes = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e6
    save_s = 0.5 + 2 * megabytes / 100.0  # the model and its GT encoder, at a slow disk's 100 MB/s
    return 1.1 * evaluate_s + 3.0 * report_s + save_s + 1.1 * estimate_seconds(champion, settings)


def _train_evaluate_write(
    area: StagingArea, name: str, champion: ModelVersion, train_pairs: list[Pair], val_items: list[Item],
    earlier: list[Item], anchors: list[np.ndarray], skipped: list[Skipped], state: dict[str, Any] | None,
    resumed: dict[str, Any] | None, options: TrainOptions, settings: Settings, networks: Networks,
    registry: ModelRegistry, progress: ProgressFn | None, promote: bool, timings: dict[str, float], t0: float,
    budget: Budget,
) -> CycleReport:
    # -- the champion first: needed anyway, and its time is what the challenger's will take ---------
    t = time.perf_counter()
    model, gt_state = networks.load(champion.checkpoint)
    available = (len(val_items), len(earlier))
    val_items, earlier = _fit_evaluation(model, val_items, earlier, options, settings, budget, progress)
    before = _score(model, "champion", champion.name, val_items, earlier, options, settings, progress)
    timings["champion"] = time.perf_counter() - t
    t = time.perf_counter()
    write_reports(before[0], area.path / "reports")
    report_s = time.perf_counter() - t

    # -- the champion's masks on the anchor photos, what the interpolation keeps close -------------
    t = time.perf_counter()
    start = {k: v.detach().clone() for k, v in model.state_dict().items()} if anchors else {}
    reference = predict_masks(model, anchors, options.size, options.device) if anchors else []
    timings["anchors"] = time.perf_counter() - t
    budget.after_training = (_after_training(timings["champion"], report_s, model, champion, settings)
                             + 1.1 * (SEARCH_STEPS + 1) * timings["anchors"])

    # -- training --------------------------------------------------------------------------------
    t = time.perf_counter()
    torch.manual_seed(options.seed)
    plan = _plan_gt_encoder(networks, gt_state, train_pairs, options,
                            GTEncoderCache(settings.model_dir / CACHE_DIR), progress, resuming=bool(state))
    result: TrainingResult = run_training(
        model, plan.encoder, train_pairs, options, gt_encoder_warm=plan.warm, gt_ready=plan.ready,
        on_gt_trained=plan.trained, state=state, save_state=area.save_state, progress=progress, budget=budget,
    )
    timings["train"] = time.perf_counter() - t
    mix = interpolate_towards(model, start, anchors, reference, options.anchor_drift, options.size, options.device,
                              progress)
    timings["interpolate"] = mix.seconds

    # -- the challenger, the evidence, the decision ------------------------------------------------
    t = time.perf_counter()
    after = _score(model, "challenger", name, val_items, earlier, options, settings, progress)
    evaluation = merge(before[0], after[0])
    guard_eval = merge(before[1], after[1]) if before[1] is not None and after[1] is not None else None
    skipped = skipped + evaluation.skipped
    decision = decide(options.promote_rule, evaluation.metrics["champion"], evaluation.metrics["challenger"],
                      evidence_from(evaluation.per_item, options.min_heldout),
                      evidence_from(guard_eval.per_item, options.min_heldout) if guard_eval else None)
    if len(evaluation.items) < available[0]:
        decision = dataclasses.replace(decision, reason=f"{decision.reason}; {len(evaluation.items)} of "
                                       f"{available[0]} held-out images scored within the budget")
    in_registry = _in_registry(area.final, registry)
    if decision.promote and not in_registry:
        decision = dataclasses.replace(decision, promote=False,
                                       reason=decision.reason + "; not applied: written outside MODEL_DIR")
    elif decision.promote and not promote:
        decision = dataclasses.replace(decision, promote=False, reason=decision.reason + "; not applied: --no-promote")
    timings["evaluate"] = time.perf_counter() - t

    # -- the version directory -------------------------------------------------------------------
    emit(progress, "write", 0, 0, message=f"writing {area.final}")
    created = _now()
    checkpoint = {
        "format": CHECKPOINT_FORMAT, "model": model.state_dict(),
        "gt_encoder": plan.encoder.state_dict() if plan.encoder is not None else None,
        "step": result.steps, "gt_step": result.gt.steps if result.gt else 0,
        "meta": {"version": name, "created": created, "parent": champion.name, "networks": networks.name,
                 "size": options.size, "crop": options.crop, "feature_loss": options.feature_loss,
                 "interpolation": mix.lam},
    }
    save_torch_atomic(checkpoint, area.path / CHECKPOINT_FILE)
    held_keys = list(evaluation.items)
    by_key = {it.key: it for it in val_items}
    earlier_part = _earlier_summary(guard_eval)
    budget_part = {"minutes": options.budget_min, "after_training_s": round(budget.after_training, 1),
                   "stopped_by": result.stopped_by, "held_out_scored": len(held_keys),
                   "held_out_available": available[0], "earlier_scored": len(earlier),
                   "earlier_available": available[1]}
    record = {
        "version": name, "created": created, "size": options.size,
        "champion": {"name": champion.name, "metrics": evaluation.metrics["champion"]},
        "challenger": {"name": name, "metrics": evaluation.metrics["challenger"]},
        "decision": decision.to_dict(),
        "held_out": {"count": len(held_keys), "available": available[0], "keys": held_keys,
                     "items": [[k, str(by_key[k].image), str(by_key[k].mask)] for k in held_keys if k in by_key]},
        "earlier": earlier_part,
        "train": {"count": len(train_pairs)},
        "training": {"steps": result.steps, "stopped_by": result.stopped_by,
                     "gt_encoder": result.gt.to_dict() if result.gt else None},
        "interpolation": mix.to_dict(),
        "per_item_mae": evaluation.per_item,
    }
    write_json_atomic(area.path / METRICS_FILE, record)
    timings["total"] = time.perf_counter() - t0
    report = CycleReport(
        version=name, directory=area.final, champion=champion.name,
        metrics={"champion": evaluation.metrics["champion"], "challenger": evaluation.metrics["challenger"]},
        decision=decision, promoted=False, train_count=len(train_pairs), held_out=held_keys, skipped=skipped,
        training={**result.summary(), "losses": result.losses}, options=options.to_dict(),
        resumed_from=resumed, seconds={k: round(v, 2) for k, v in timings.items()}, earlier=earlier_part,
        budget={**budget_part, "seconds_at_write": round(budget.elapsed(), 1)}, interpolation=mix.to_dict(),
    )
    report.save(area.path)
    write_reports(Evaluation(after[0].metrics, reports=after[0].reports), area.path / "reports")
    previous = [v.directory for v in registry.list_versions()] if in_registry else []
    write_history([*collect(previous), record], area.path, registry.current_name())
    area.commit()
    return report


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


def _score(model: nn.Module, label: str, name: str, val_items: list[Item], earlier: list[Item],
           options: TrainOptions, settings: Settings,
           progress: ProgressFn | None) -> tuple[Evaluation, Evaluation | None]:
    """``model`` (as ``label``) on the held-out items and on the earlier cycles' held-out items."""
    stage = "champion" if label == "champion" else "evaluate"
    held = evaluate_models({label: model}, val_items, options.size, settings.max_pixels, options.device, progress,
                           describe={label: name}, stage=stage)
    if not earlier:
        return held, None
    old = evaluate_models({label: model}, earlier, options.size, settings.max_pixels, options.device, progress,
                          describe={label: name}, stage=stage)
    return held, old


def _earlier_summary(evaluation: Evaluation | None) -> dict[str, Any] | None:
    if evaluation is None:
        return None
    return {"count": len(evaluation.items), "keys": list(evaluation.items),
            "metrics": {k: {m: v.get(m) for m in ("mae", "avgfmeasure", "sm")} for k, v in evaluation.metrics.items()},
            "per_item_mae": evaluation.per_item}


def _in_registry(directory: Path, registry: ModelRegistry) -> bool:
    return directory.parent.resolve() == registry.versions_dir.resolve()


def _finish(report: CycleReport, champion: ModelVersion, images: list[Path], settings: Settings,
            registry: ModelRegistry, progress: ProgressFn | None) -> None:
    """After the version is written: on promotion its engines first (serving switches to a
    version that has them), then CURRENT, then ``cycle.json`` again (it now says promoted, with
    the engines); then the registry-wide history."""
    if report.decision.promote:
        emit(progress, "engines", 0, 0, message=f"rebuilding {champion.name}'s engines for {report.version}")
        report.engines = rebuild_engines(champion, registry.get(report.version), images, settings)
        registry.promote(report.version)
        report.promoted = True
        report.save(report.directory)
    if _in_registry(report.directory, registry):
        write_history(collect(v.directory for v in registry.list_versions()), registry.root, registry.current_name())
    emit(progress, "done", 0, 0, message=report.decision.reason)


def _resume_info(state: dict[str, Any] | None) -> dict[str, Any] | None:
    if not state:
        return None
    return {"stage": state.get("stage"), "step": int(state.get("step", 0)), "gt_step": int(state.get("gt_step", 0))}


def _now() -> str:
    """UTC time to the microsecond: the history is ordered by it, and two cycles (or a test's
    two quick cycles) can finish within the same second, whose version names then sort by
    their random suffix, not by age."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")
