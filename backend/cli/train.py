"""``isnet train``: one retraining cycle from local image and mask folders."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from backend.cli.projects import add_project_argument, registry_for
from backend.isnet.training import FEATURE_LOSSES, TqdmProgress, TrainingError, TrainOptions
from backend.isnet.training.options import SCHEDULES
from backend.isnet.weights import WeightsError
from backend.learning import cycle_lock
from backend.learning.cycle import Cycle, CycleReport, CycleTarget
from backend.learning.share import METHODS
from backend.settings import Settings, load

SHOWN = ("mae", "avgfmeasure", "sm", "maxfmeasure")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "train",
        help="fine-tune a lineage's current model on labelled pairs (GT encoder + feature loss), evaluate, promote",
        description="One retraining cycle as in the DIS paper, within a wall-time budget (ISNET_TRAIN_BUDGET, "
        "30 min). The current model (champion) is scored on held-out pairs at the serving size; a GT encoder "
        "reconstructs the masks (cached per labelled set, so an unchanged set costs nothing); the champion is "
        "fine-tuned on whole images at the serving size with side-output BCE plus feature-level supervision "
        "against that encoder, for as many steps as the budget leaves after evaluation; the new model "
        "(challenger) is scored on the same pairs. It becomes current only if the per-image evidence allows "
        "(default: the 95%% interval of the paired MAE change is below 0, on at least 30 held-out images, and "
        "it is not significantly worse on earlier cycles' held-out images). Pairs are IMAGES/NAME.* with "
        "MASKS/NAME.*; unreadable pairs are skipped and listed. An interrupted cycle with the same data and "
        "options resumes where it stopped. One cycle per lineage runs at a time: while another one runs (a "
        "worker's, another isnet train), this one waits and says for whom. With --project N the cycle starts "
        "from project N's current model "
        "and promotes into project N's lineage, keeping the share of the change its held-out images favour; "
        "without it, it trains the base lineage, which every project without a lineage of its own follows "
        "(and keeps the share that unlabelled general photos allow).",
    )
    add_project_argument(parser, "train into")
    parser.add_argument("--images", type=Path, required=True, help="folder of training images")
    parser.add_argument("--masks", type=Path, required=True, help="folder of their masks (same file stems)")
    parser.add_argument("--val-images", type=Path, help="held-out images (default: a stable 20%% of --images)")
    parser.add_argument("--val-masks", type=Path, help="held-out masks (with --val-images)")
    parser.add_argument("--budget", type=float, metavar="MINUTES",
                        help="wall time of the whole cycle (default ISNET_TRAIN_BUDGET, 30; 0 = no limit, then "
                        "--iters is the step count)")
    parser.add_argument("--iters", type=int,
                        help="cap on segmentation steps (default ISNET_TRAIN_ITERS, 0: as many as the budget allows)")
    parser.add_argument("--size", type=int,
                        help="serving input size the images are resized to (default ISNET_INPUT_SIZE, 1024)")
    parser.add_argument("--crop", type=int,
                        help="train on random crops of this side instead of whole images (default ISNET_TRAIN_CROP, "
                        "0: whole images)")
    parser.add_argument("--batch", type=int, help="batch size (default ISNET_TRAIN_BATCH, 0: 1 on CPU, 8 on CUDA)")
    parser.add_argument("--lr", type=float, help="peak Adam learning rate (default ISNET_TRAIN_LR, 1e-5)")
    parser.add_argument("--schedule", choices=SCHEDULES,
                        help="learning-rate schedule (default ISNET_TRAIN_SCHEDULE, cosine: warm-up, then decay to "
                        "0.3 lr at the step count the budget allows)")
    parser.add_argument("--feature-loss", choices=FEATURE_LOSSES,
                        help="intermediate supervision; 'off' trains with side-output BCE only (default mse)")
    parser.add_argument("--feature-weight", type=float,
                        help="weight of the feature loss (default ISNET_TRAIN_FEATURE_WEIGHT, 0.02)")
    parser.add_argument("--gt-iters", type=int, help="iteration cap of the GT encoder stage (default 2000)")
    parser.add_argument("--min-scale", type=float,
                        help="scale jitter: resize each sample to a side in [min-scale*size, size] (default 1: none)")
    parser.add_argument("--scales", type=_sides, metavar="S[,S...]",
                        help="whole-image multi-scale training: step k uses whole images resized to the k-th "
                        "side in turn, e.g. 1024,320 (no crops; overrides --crop and --min-scale)")
    parser.add_argument("--share", choices=METHODS,
                        help="how much of the trained change to keep: chosen on held-out 'evidence', by 'anchors' "
                        "photos, 'full'; auto (default ISNET_TRAIN_SHARE): anchors for the base lineage, evidence "
                        "for a project's")
    parser.add_argument("--anchors",
                        help="photos whose masks the cycle must keep: 'builtin' (scikit-image's), a folder, or "
                        "'none' to keep the trained weights whole (default ISNET_TRAIN_ANCHORS, builtin)")
    parser.add_argument("--anchor-drift", type=float,
                        help="most the anchor masks may move (mean absolute difference); the trained weights are "
                        "mixed with the champion's to stay within it (default ISNET_TRAIN_ANCHOR_DRIFT, 0.025)")
    parser.add_argument("--seed", type=int, help="random seed (default 0)")
    parser.add_argument("--checkpoint-every", type=int, help="iterations between resumable checkpoints (default 100)")
    parser.add_argument("--promote-rule", help="promotion rule (default ISNET_PROMOTE_RULE, bootstrap)")
    parser.add_argument("--no-promote", action="store_true", help="write the version but never make it current")
    parser.add_argument("--no-resume", action="store_true", help="start afresh even if an interrupted cycle matches")
    parser.add_argument("--out", type=Path,
                        help="write the cycle's directory here (must not exist; default: a new version in MODEL_DIR)")
    parser.set_defaults(func=run)


def _sides(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated sides such as 1024,320, got {text!r}") from exc


def options_from_args(args: argparse.Namespace, settings: Settings) -> TrainOptions:
    """The cycle's options: the settings' defaults (as a Label Studio-fed cycle gets them), then the flags given."""
    return TrainOptions.from_settings(
        settings, iters=args.iters, budget_min=args.budget, size=args.size, crop=args.crop, batch=args.batch,
        lr=args.lr, schedule=args.schedule, feature_loss=args.feature_loss, feature_weight=args.feature_weight,
        gt_max_iters=args.gt_iters, min_scale=args.min_scale, scales=args.scales, seed=args.seed,
        checkpoint_every=args.checkpoint_every, promote_rule=args.promote_rule, anchors=args.anchors,
        anchor_drift=args.anchor_drift,
    )


def run(args: argparse.Namespace) -> int:
    settings = load()
    if (args.val_images is None) != (args.val_masks is None):
        print("error: --val-images and --val-masks go together", file=sys.stderr)
        return 2
    if args.out is not None and args.out.exists():
        print(f"error: {args.out} already exists; a cycle writes a new directory", file=sys.stderr)
        return 2
    if args.share:
        settings = settings.replace(train_share=args.share)
    progress = TqdmProgress()
    try:
        options = options_from_args(args, settings)
        held_out = (args.val_images, args.val_masks) if args.val_images is not None else None
        registry = registry_for(args, settings)
        with registry.cycle_lock("isnet train", on_wait=_say_waiting(registry.lineage)):
            cycle = Cycle(settings, options, registry=registry, progress=progress)
            report = cycle.run((args.images, args.masks), held_out,
                               CycleTarget(out=args.out, promote=not args.no_promote, resume=not args.no_resume))
    except (ValueError, TrainingError, WeightsError, FileNotFoundError) as exc:
        progress.close()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    progress.close()
    for item in report.skipped:
        print(f"skipped: {item.key} ({item.path}): {item.reason}", file=sys.stderr)
    print(f"version {report.version} written to {report.directory}")
    print(f"trained on {report.train_count} pairs, compared on {len(report.held_out)} held-out pairs "
          f"at size {options.size} ({_geometry(options)}, batch {options.batch}, feature loss {options.feature_loss})")
    print(_time_line(report, options))
    mix = report.interpolation or {}
    if mix.get("anchors"):
        print(f"kept {mix['lam']:.4f} of the trained change: anchor masks moved {mix['drift']:.4f} "
              f"(limit {mix['max_drift']:g}, {mix['anchors']} photos, {mix['seconds']:.0f} s)")
    elif mix.get("method") == "evidence":
        print(f"kept {mix['lam']:g} of the trained change: {mix['reason']}")
    for label in ("champion", "challenger"):
        metrics = report.metrics[label]
        name = report.champion if label == "champion" else report.version
        print(f"  {label:10s} {name}: " + ", ".join(f"{k} {metrics[k]:.4f}" for k in SHOWN if k in metrics))
    print(report.decision.reason)
    if report.engines and report.engines.get("built"):
        print("engines rebuilt: " + ", ".join(report.engines["built"]))
    elif report.engines and report.engines.get("error"):
        print(f"engines not rebuilt ({report.engines['error']}); serving builds them on demand")
    print(f"now current: {report.version if report.promoted else report.champion} (lineage {report.lineage})")
    return 0


def _say_waiting(lineage: str) -> Callable[[cycle_lock.Holder | None], None]:
    def say(holder: cycle_lock.Holder | None) -> None:
        print(f"waiting for {holder.describe() if holder else 'another cycle'} to finish: one cycle of lineage "
              f"{lineage} at a time", file=sys.stderr, flush=True)

    return say


def _geometry(options: TrainOptions) -> str:
    if options.scales:
        return "whole images at " + "/".join(str(s) for s in options.scales)
    if options.crop >= options.size:
        return "whole images"
    return f"crop {options.crop}"


def _time_line(report: CycleReport, options: TrainOptions) -> str:
    """Steps, why they stopped, the GT encoder's source, and the wall time against the budget."""
    training = report.training
    gt = training.get("gt_encoder") or {}
    step = (training.get("step_seconds") or {}).get("median")
    parts = [f"{training.get('steps')} steps" + (f" of {step:.1f} s" if step else "")
             + f" (stopped by {training.get('stopped_by') or '?'})"]
    if gt:
        parts.append(f"GT encoder {gt.get('source')}, {gt.get('steps')} steps, max F {gt.get('max_f', 0):.4f}")
    used = report.seconds.get("cycle", 0.0) / 60
    budget = f" of a {options.budget_min:g} min budget" if options.budget_min else ""
    parts.append(f"{used:.1f} min{budget}")
    return "; ".join(parts)
