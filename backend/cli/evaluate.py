"""``isnet evaluate``: the saliency / DIS metrics of saved masks or of the model, on a user's data."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from backend.cli.projects import add_project_argument
from backend.isnet.engines import ENGINE_NAMES

# backend.metrics imports PySODMetrics (scikit-image, scikit-learn: seconds); it is imported
# inside the commands so that `isnet --help` and the other subcommands stay fast.

EPILOG = """\
examples:
  isnet evaluate --gt data/masks --pred out/masks --out reports/mine
  isnet evaluate --gt data/masks --images data/images --size 320 --save-pred out/320 --out reports/320
  isnet evaluate --compare reports/fp32/metrics.json reports/int8/metrics.json

Images and masks are paired by file stem (0001.jpg with 0001.png). Unpaired, unreadable and
size-mismatched files are listed in the output and the report; any of them fails the run
(exit 1) unless --allow-missing is given. Predictions of another resolution but the same
aspect ratio are resized to the ground truth's size (bilinear, as PySODEvalToolkit does) and
listed as resized; other sizes are mismatches (see --resize).
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "evaluate",
        help="dataset metrics (S-measure, F, E, MAE, weighted F, HCE) of masks or of the model",
        description="Evaluate predictions against ground-truth masks with PySODMetrics, the library behind "
        "PySODEvalToolkit, and write metrics.json, metrics.md, metrics.csv, per_image.csv, pr_curve.png and "
        "fm_curve.png into --out. Or put several reports side by side with --compare.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--gt", type=Path, help="folder of ground-truth masks (0-255; binarised at >128)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--pred", type=Path, help="folder of saved prediction masks (0-255 maps)")
    source.add_argument("--images", type=Path, help="folder of images: run the model on them and evaluate")
    source.add_argument("--compare", type=Path, nargs="+", metavar="METRICS_JSON",
                        help="print one table with a row per metrics.json (and plots with --out)")
    parser.add_argument("--out", type=Path, help="folder for the report (required unless --compare)")
    parser.add_argument("--name", help="the run's label in tables (default: ENGINE-SIZE with --images, "
                        "else the prediction folder's name)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="evaluate the usable pairs even if some are missing, unreadable or mismatched "
                        "(they are still listed); without it such a run exits with status 1")
    parser.add_argument("--resize", choices=("aspect", "always", "never"), default="aspect",
                        help="predictions of another size: resize when the aspect ratio matches (default), "
                        "always (PySODEvalToolkit), or never")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default: the CPUs available; 1 = in this process)")
    parser.add_argument("--digits", type=int, default=3, help="decimals in printed tables (default 3)")
    model = parser.add_argument_group("with --images")
    model.add_argument("--size", type=int, default=None,
                       help="network input side, a multiple of 32 (default ISNET_INPUT_SIZE, 1024)")
    model.add_argument("--engine", choices=ENGINE_NAMES, default=None, help="inference engine (default ISNET_ENGINE)")
    model.add_argument("--model", default=None, help="model version (default: the current one)")
    add_project_argument(model)
    model.add_argument("--save-pred", type=Path, default=None, help="also write the masks here as NAME.png")
    parser.set_defaults(func=run)


def _usage(args: argparse.Namespace) -> str | None:
    """What is wrong with the combination of options, if anything."""
    if args.compare:
        extra = [f"--{n.replace('_', '-')}" for n in ("gt", "size", "engine", "model", "save_pred")
                 if getattr(args, n) is not None]
        return f"--compare takes no {', '.join(extra)}" if extra else None
    if args.gt is None or (args.pred is None and args.images is None):
        return "give --gt and one of --pred or --images (or --compare)"
    if args.out is None:
        return "--out is required"
    if args.pred is not None:
        extra = [f"--{n.replace('_', '-')}" for n in ("size", "engine", "model", "save_pred")
                 if getattr(args, n) is not None]
        if extra:
            return f"{', '.join(extra)} only apply with --images"
    if args.workers is not None and args.workers < 1:
        return "--workers must be at least 1"
    return None


def run(args: argparse.Namespace) -> int:
    problem = _usage(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.compare:
        return _compare(args)
    return _evaluate(args)


def _compare(args: argparse.Namespace) -> int:
    from backend.metrics.compare import compare
    from backend.metrics.report import ReportError, legend

    try:
        table, warnings = compare(args.compare, args.digits, args.out)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(table)
    print()
    print(legend())
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _segmenter(args: argparse.Namespace, settings: Any) -> tuple[Any, str]:
    """The segmenter for ``--images`` and the model version it runs."""
    from backend.cli.projects import version_for
    from backend.isnet.engines import create_engine
    from backend.isnet.segmenter import Segmenter
    from backend.settings import check_input_size

    size = check_input_size(args.size or settings.input_size)
    version = version_for(args, settings, args.model)
    engine = create_engine(args.engine or settings.engine, version, settings, size)
    return Segmenter(engine, size), version.name


def _evaluate(args: argparse.Namespace) -> int:
    from backend.metrics.evaluator import evaluate_predictions, evaluate_segmenter
    from backend.metrics.issues import blocking, summarize
    from backend.metrics.pairing import PairingError, pair_folders
    from backend.metrics.report import build_report, legend, markdown_table, write_report
    from backend.settings import load

    settings = load()
    source = args.images if args.images is not None else args.pred
    try:
        pairs, issues = pair_folders(args.gt, source, "image" if args.images is not None else "prediction")
    except PairingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if blocking(issues) and not args.allow_missing:
        for line in summarize(issues):
            print(line, file=sys.stderr)
        print(f"error: {len(blocking(issues))} file(s) cannot be paired (listed above); nothing was evaluated. "
              f"Fix them, or pass --allow-missing to evaluate the {len(pairs)} complete pair(s).", file=sys.stderr)
        return 1
    if not pairs:
        for line in summarize(issues):
            print(line, file=sys.stderr)
        print(f"error: no ground truth in {args.gt} has a counterpart in {source}", file=sys.stderr)
        return 2

    options = {"workers": args.workers, "resize": args.resize, "max_pixels": settings.max_pixels}
    run_settings: dict[str, Any] = {"model_version": None, "engine": None, "input_size": None,
                                    "dataset": str(args.gt.resolve()), "predictions": None, "images": None,
                                    "resize": args.resize}
    if args.images is not None:
        from backend.isnet.engines import EngineError
        from backend.isnet.weights import WeightsError

        try:
            segmenter, version = _segmenter(args, settings)
        except (ValueError, KeyError, WeightsError, EngineError) as exc:
            print(f"error: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
            return 2
        run_settings.update(model_version=version, engine=segmenter.engine.name, input_size=segmenter.size,
                            images=str(args.images.resolve()),
                            predictions=str(args.save_pred.resolve()) if args.save_pred else None)
        name = args.name or f"{segmenter.engine.name}-{segmenter.size}"
        evaluation = evaluate_segmenter(segmenter, pairs, issues, save_dir=args.save_pred, **options)
    else:
        run_settings["predictions"] = str(args.pred.resolve())
        name = args.name or args.pred.resolve().name
        evaluation = evaluate_predictions(pairs, issues, **options)

    for line in summarize(evaluation.issues):
        print(line, file=sys.stderr)
    if not evaluation.count:
        print("error: no pair could be evaluated (see above); no report written", file=sys.stderr)
        return 1
    report = build_report(evaluation, name, run_settings)
    written = write_report(report, args.out, args.digits)
    print(markdown_table([(name, evaluation.count, evaluation.metrics)], args.digits))
    print()
    print(legend())
    print(f"{evaluation.count} image(s) evaluated in {evaluation.seconds:.1f} s with {evaluation.workers} "
          f"worker(s); report: {', '.join(str(p) for p in written)}")
    failed = evaluation.blocking
    if failed and not args.allow_missing:
        print(f"error: {len(failed)} pair(s) could not be evaluated (listed above); the report is marked "
              f"incomplete. Pass --allow-missing to accept that.", file=sys.stderr)
        return 1
    return 0
