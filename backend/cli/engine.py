"""``isnet engine``: build, list and measure the ONNX Runtime serving engines."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from backend.cli.projects import add_project_argument
from backend.isnet.engines import ENGINE_NAMES, EngineError
from backend.isnet.weights import WeightsError
from backend.settings import Settings, check_input_size, load

EPILOG = """\
examples:
  isnet engine build deploy/engines/isnet_int8.yaml
  isnet engine build deploy/engines/isnet_int8.yaml --calib my-images/ --size 1024 --num 50
  isnet engine list
  isnet engine measure --engine onnx-int8 --size 320 --images data/images --gt data/masks --out reports/int8-320
  isnet engine upgrade --project 7

Engines are cached under the model version's directory (MODEL_DIR/versions/NAME/engines) with
a sidecar holding their sha256 and build config; a file that does not verify is rebuilt,
never served. `measure` records accuracy and speed for ISNET_ENGINE=auto.

`upgrade` is what the server does by itself once a lineage has served ISNET_AUTO_INT8_AFTER
images: int8 calibrated on two thirds of the served images, then int8 and fp32 measured on the
other third with fp32's masks as the reference; auto serves int8 if it is within budget and faster.

int8 calibrates on --calib DIR, else the build file's dataset.path, else ISNET_CALIB_DIR, else
the images this backend has segmented (up to ISNET_CALIB_SAMPLE of them, kept downsized in
MODEL_DIR/calibration): serve some images first, or pass --calib.
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "engine",
        help="build, list and measure fp32 / fp16 / int8 serving engines",
        description="ONNX Runtime engines built from a model version, from a build file that mirrors the "
        "vendor's (deploy/engines/*.yaml).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="engine_command", metavar="ACTION", required=True)

    build = commands.add_parser("build", help="build (or find cached) the engine a build file describes")
    build.add_argument("config", type=Path, metavar="CONFIG.yaml", help="build file (see deploy/engines/)")
    build.add_argument("--calib", type=Path, default=None,
                       help="int8 calibration folder (default: dataset.path, ISNET_CALIB_DIR, else the images served)")
    build.add_argument("--num", type=int, default=None, help="calibration images (overrides get_data_num, 50)")
    build.add_argument("--size", type=int, default=None, help="input side (overrides frontend.shape)")
    build.add_argument("--model", default=None, help="model version (default: the current one)")
    add_project_argument(build)
    build.add_argument("--force", action="store_true", help="rebuild even if a verified file exists")
    build.set_defaults(func=_build)

    listing = commands.add_parser("list", help="built engines, whether they verify, and measurements")
    listing.add_argument("--model", default=None, help="model version (default: the current one)")
    add_project_argument(listing)
    listing.set_defaults(func=_list)

    measure = commands.add_parser(
        "measure", help="accuracy and speed of one engine on a labelled folder, recorded for ISNET_ENGINE=auto"
    )
    measure.add_argument("--engine", choices=ENGINE_NAMES, required=True)
    measure.add_argument("--size", type=int, default=None, help="input side (default ISNET_INPUT_SIZE)")
    measure.add_argument("--images", type=Path, required=True, help="folder of images")
    measure.add_argument("--gt", type=Path, required=True, help="folder of ground-truth masks (same stems)")
    measure.add_argument("--out", type=Path, default=None, help="also write an `isnet evaluate` report here")
    measure.add_argument("--save-pred", type=Path, default=None, help="also write the masks here as NAME.png")
    measure.add_argument("--model", default=None, help="model version (default: the current one)")
    add_project_argument(measure)
    measure.set_defaults(func=_measure)

    upgrade = commands.add_parser(
        "upgrade", help="int8 built on the images this backend served and measured against fp32 there "
        "(what the server does by itself under ISNET_ENGINE=auto)")
    upgrade.add_argument("--size", type=int, default=None, help="input side measured (default ISNET_INPUT_SIZE)")
    upgrade.add_argument("--model", default=None, help="model version (default: the current one)")
    upgrade.add_argument("--build-only", action="store_true",
                         help="only build int8 on the served images (ISNET_ENGINE=onnx-int8 waiting for them)")
    add_project_argument(upgrade)
    upgrade.set_defaults(func=_upgrade)


def _version(settings: Settings, args: argparse.Namespace) -> Any:
    from backend.cli.projects import version_for

    return version_for(args, settings, args.model)


def _fail(exc: BaseException) -> int:
    print(f"error: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
    return 2


def _build(args: argparse.Namespace) -> int:
    from backend.isnet.engines.config import load_config
    from backend.isnet.engines.store import EngineStore

    settings = load()
    try:
        config = load_config(args.config).override(size=args.size, calib_dir=args.calib, num=args.num)
        version = _version(settings, args)
        start = time.perf_counter()
        path = EngineStore(version, settings).build(config, force=args.force)
    except (EngineError, WeightsError, KeyError, ValueError) as exc:
        return _fail(exc)
    print(f"{config.engine_name} ({config.name}, size {config.size}) for {version.name}: {path} "
          f"({path.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - start:.0f} s)")
    return 0


def _list(args: argparse.Namespace) -> int:
    from backend.isnet.engines.selection import Measurements
    from backend.isnet.engines.store import EngineStore

    settings = load()
    try:
        version = _version(settings, args)
    except (WeightsError, KeyError) as exc:
        return _fail(exc)
    good, bad = EngineStore(version, settings).scan()
    print(f"model version {version.name}: {len(good)} engine(s) in {version.directory / 'engines'}")
    for artefact in good:
        config, record = artefact.config, artefact.record
        images = len(record["calibration"]["images"])
        calib = f", {config.calibrate_mode} on {images} image(s) at {config.size}" if config.dtype == "int8" else ""
        print(f"  ok      {config.engine_name:10} {record['bytes'] / 1e6:6.1f} MB  "
              f"built {record['built_at']}{calib}  {artefact.path.name}")
    for path, reason in bad.items():
        print(f"  BROKEN  {path.name}: {reason} (rebuilt when next needed)")
    measured = Measurements(version).load()
    for engine, by_size in sorted(measured.items()):
        for size, m in sorted(by_size.items(), key=lambda kv: int(kv[0])):
            print(f"  measured {engine:10} @{size:<5} MAE {m['mae']:.4f}  avgF {m['avgfmeasure']:.4f}  "
                  f"S {m['sm']:.4f}  {m['seconds_per_image']:.3f} s/image  ({m['images']} images)")
    for size in sorted({int(s) for by_size in measured.values() for s in by_size}):
        chosen, why = Measurements(version).choose(size)
        print(f"  auto @{size}: {chosen} ({why})")
    return 0


def _measure(args: argparse.Namespace) -> int:
    from backend.isnet.engines import create_engine
    from backend.isnet.engines.selection import Measurements
    from backend.isnet.measurement.measure import TimedEngine
    from backend.isnet.segmenter import Segmenter
    from backend.metrics.evaluator import evaluate_segmenter
    from backend.metrics.pairing import PairingError, pair_folders
    from backend.metrics.report import build_report, markdown_table, write_report

    settings = load()
    try:
        size = check_input_size(args.size or settings.input_size)
        version = _version(settings, args)
        engine = TimedEngine(create_engine(args.engine, version, settings, size))
        pairs, issues = pair_folders(args.gt, args.images, "image")
    except (EngineError, WeightsError, KeyError, ValueError, PairingError) as exc:
        return _fail(exc)
    if not pairs:
        print(f"error: no image in {args.images} has a mask in {args.gt}", file=sys.stderr)
        return 2
    # One worker: scoring in other processes would compete with the engine for the CPU and
    # make its time per image meaningless.
    evaluation = evaluate_segmenter(Segmenter(engine, size), pairs, issues, save_dir=args.save_pred,
                                    workers=1, max_pixels=settings.max_pixels)
    if not evaluation.count:
        print("error: no pair could be evaluated", file=sys.stderr)
        return 1
    per_image = engine.seconds_per_image
    entry = Measurements(version).record(args.engine, size, engine.engine.precision, evaluation.metrics, per_image,
                                         str(args.gt.resolve()), evaluation.count)
    name = f"{args.engine}-{size}"
    if args.out is not None:
        run = {"model_version": version.name, "engine": args.engine, "input_size": size,
               "dataset": str(args.gt.resolve()), "images": str(args.images.resolve()),
               "predictions": str(args.save_pred.resolve()) if args.save_pred else None,
               "resize": "aspect", "engine_seconds_per_image": round(per_image, 4)}
        write_report(build_report(evaluation, name, run), args.out, 3)
    print(markdown_table([(name, evaluation.count, evaluation.metrics)], 4))
    print(f"{args.engine} @{size}: {entry['seconds_per_image']:.3f} s/image in the engine; "
          f"recorded for {version.name} ({Measurements(version).path})")
    return 0


def _upgrade(args: argparse.Namespace) -> int:
    from backend.isnet.engines.store import EngineStore
    from backend.isnet.measurement.served import upgrade

    settings = load()
    try:
        size = check_input_size(args.size or settings.input_size)
        version = _version(settings, args)
        if args.build_only:
            path = EngineStore(version, settings).engine_file("int8")
            print(f"onnx-int8 for {version.name}: {path}")
            return 0
        outcome = upgrade(version, settings, size)
    except (EngineError, WeightsError, KeyError, ValueError) as exc:
        return _fail(exc)
    for engine, entry in outcome["measurements"].items():
        print(f"{engine:10} @{size}: MAE {entry['mae']:.4f}  avgF {entry['avgfmeasure']:.4f}  S {entry['sm']:.4f}  "
              f"{entry['seconds_per_image']:.3f} s/image")
    print(f"auto @{size} for {version.name}: {outcome['auto']} ({outcome['why']})")
    return 0
