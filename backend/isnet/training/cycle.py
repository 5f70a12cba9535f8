"""One retraining cycle: labelled pairs in, a new immutable model version (and maybe a new
current model) out.

    data ─ hold-out split (stable hash) ─ GT encoder stage ─ segmentation stage ─┐
    champion (current version) and challenger on the held-out items, serving size ─ rule ─ promote

Why one plain function: the CLI (``isnet train``), a test and an RQ worker all call
:func:`run_cycle` the same way; it reports through a ``progress`` callback, writes nothing
visible until the version is complete (see :mod:`.staging`), and a call after a crash resumes
the interrupted work when the data and options are unchanged.
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

from backend.isnet.registry import CHECKPOINT_FILE, ModelRegistry, ModelVersion
from backend.isnet.training.data import Dataset, Item, Skipped, check_readable, load_pairs, split_holdout
from backend.isnet.training.engine_rebuild import rebuild_engines
from backend.isnet.training.evaluation import Evaluation, evaluate_models, write_reports
from backend.isnet.training.history import METRICS_FILE, collect, write_history, write_json_atomic
from backend.isnet.training.networks import ISNET, Networks
from backend.isnet.training.options import TrainOptions
from backend.isnet.training.progress import ProgressFn, emit
from backend.isnet.training.promotion import Decision, decide
from backend.isnet.training.staging import StagingArea, StagingError
from backend.isnet.training.trainer import TrainingError, TrainingResult, run_training
from backend.isnet.weights import save_torch_atomic
from backend.settings import Settings, load

log = logging.getLogger(__name__)

CYCLE_FILE = "cycle.json"
CHECKPOINT_FORMAT = "isnet-ls-train-1"

DataSource = Dataset | tuple[Path, Path] | tuple[str, str]


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version, "directory": str(self.directory), "champion": self.champion,
            "metrics": self.metrics, "decision": self.decision.to_dict(), "promoted": self.promoted,
            "train": {"count": self.train_count}, "held_out": {"count": len(self.held_out), "keys": self.held_out},
            "skipped": [s.to_dict() for s in self.skipped], "training": self.training, "options": self.options,
            "resumed_from": self.resumed_from, "seconds": self.seconds, "engines": self.engines,
        }


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
    settings: Settings | None = None,
    options: TrainOptions | None = None,
    *,
    held_out: DataSource | None = None,
    out: Path | None = None,
    promote: bool = True,
    resume: bool = True,
    progress: ProgressFn | None = None,
    networks: Networks = ISNET,
    registry: ModelRegistry | None = None,
) -> CycleReport:
    """Train a challenger from the current model on ``dataset`` and decide whether it replaces it.

    ``dataset``: a :class:`Dataset` or ``(images_dir, masks_dir)``. ``held_out``: the same for
    a separate evaluation set; without it a stable hash-based ``options.holdout_fraction`` of
    ``dataset`` is held out and never trained on. ``out``: where the version directory goes
    (default: a new ``versions/<name>`` under ``MODEL_DIR``); a directory outside the
    registry is written but never promoted. ``resume``: continue an interrupted cycle with the
    same data and options from its saved training state. Raises :class:`TrainingError` (or
    ``ValueError`` for bad options / ``FileNotFoundError`` for missing folders) before
    anything is written when there is nothing to train on or to evaluate with.
    """
    settings = settings or load()
    options = (options or TrainOptions.from_settings(settings)).resolved()
    registry = registry or ModelRegistry(settings)
    if settings.threads > 0:
        torch.set_num_threads(settings.threads)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    # -- data ----------------------------------------------------------------------------
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
    timings["load"] = time.perf_counter() - t0

    # -- where the version goes ----------------------------------------------------------------
    champion = registry.current()
    loaded = {p.key for p in train_pairs}
    fp = fingerprint(options, champion.name, [it for it in train_items if it.key in loaded], networks)
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
    resumed = _resume_info(state)
    if resumed:
        emit(progress, "load", 0, 0, message=f"resuming {area.final.name} at {resumed}")
    name = area.final.name

    try:
        report = _train_evaluate_write(
            area, name, champion, train_pairs, val_items, skipped, state, resumed, options, settings,
            networks, registry, progress, promote, timings, t0,
        )
    except BaseException:
        # Keep the staging directory when it holds a state to resume from; otherwise it is junk.
        if area.state_path.is_file():
            area.release()
        else:
            area.discard()
        raise
    _finish(report, champion, [it.image for it in train_items if it.key in loaded], settings, registry, progress)
    return report


def _train_evaluate_write(
    area: StagingArea, name: str, champion: ModelVersion, train_pairs: list, val_items: list[Item],
    skipped: list[Skipped], state: dict[str, Any] | None, resumed: dict[str, Any] | None,
    options: TrainOptions, settings: Settings, networks: Networks, registry: ModelRegistry,
    progress: ProgressFn | None, promote: bool, timings: dict[str, float], t0: float,
) -> CycleReport:
    # -- training --------------------------------------------------------------------------------
    t = time.perf_counter()
    model, gt_state = networks.load(champion.checkpoint)
    torch.manual_seed(options.seed)
    gt_encoder, warm = networks.new_gt_encoder(gt_state) if options.uses_features else (None, False)
    result: TrainingResult = run_training(
        model, gt_encoder, train_pairs, options, gt_encoder_warm=warm, state=state,
        save_state=area.save_state, progress=progress,
    )
    timings["train"] = time.perf_counter() - t

    # -- champion vs challenger ------------------------------------------------------------------
    t = time.perf_counter()
    champion_model, _ = networks.load(champion.checkpoint)
    evaluation: Evaluation = evaluate_models(
        {"champion": champion_model, "challenger": model}, val_items, options.size, settings.max_pixels,
        options.device, progress, describe={"champion": champion.name, "challenger": name},
    )
    del champion_model
    skipped = skipped + evaluation.skipped
    decision = decide(options.promote_rule, evaluation.metrics["champion"], evaluation.metrics["challenger"])
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
        "gt_encoder": gt_encoder.state_dict() if gt_encoder is not None else None,
        "step": result.steps, "gt_step": result.gt.steps if result.gt else 0,
        "meta": {"version": name, "created": created, "parent": champion.name, "networks": networks.name,
                 "size": options.size, "crop": options.crop, "feature_loss": options.feature_loss},
    }
    save_torch_atomic(checkpoint, area.path / CHECKPOINT_FILE)
    held_keys = list(evaluation.items)
    record = {
        "version": name, "created": created, "size": options.size,
        "champion": {"name": champion.name, "metrics": evaluation.metrics["champion"]},
        "challenger": {"name": name, "metrics": evaluation.metrics["challenger"]},
        "decision": decision.to_dict(),
        "held_out": {"count": len(held_keys), "keys": held_keys},
        "train": {"count": len(train_pairs)},
        "per_item_mae": evaluation.per_item,
    }
    write_json_atomic(area.path / METRICS_FILE, record)
    timings["total"] = time.perf_counter() - t0
    report = CycleReport(
        version=name, directory=area.final, champion=champion.name,
        metrics={"champion": evaluation.metrics["champion"], "challenger": evaluation.metrics["challenger"]},
        decision=decision, promoted=False, train_count=len(train_pairs), held_out=held_keys, skipped=skipped,
        training={**result.summary(), "losses": result.losses}, options=options.to_dict(),
        resumed_from=resumed, seconds={k: round(v, 2) for k, v in timings.items()},
    )
    write_json_atomic(area.path / CYCLE_FILE, report.to_dict())
    write_reports(evaluation, area.path / "reports")
    previous = [v.directory for v in registry.list_versions()] if in_registry else []
    write_history([*collect(previous), record], area.path, registry.current_name())
    area.commit()
    return report


def _in_registry(directory: Path, registry: ModelRegistry) -> bool:
    return directory.parent.resolve() == registry.versions_dir.resolve()


def _finish(report: CycleReport, champion: ModelVersion, images: list[Path], settings: Settings,
            registry: ModelRegistry, progress: ProgressFn | None) -> None:
    """After the version is written: on promotion its engines first (serving switches to a
    version that has them), then CURRENT; then the registry-wide history."""
    if report.decision.promote:
        emit(progress, "engines", 0, 0, message=f"rebuilding {champion.name}'s engines for {report.version}")
        report.engines = rebuild_engines(champion, registry.get(report.version), images, settings)
        registry.promote(report.version)
        report.promoted = True
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
