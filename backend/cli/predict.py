"""``isnet predict``: masks for image files and folders."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from backend.cli.projects import add_project_argument, version_for
from backend.images import ImageError, find_images, load_image
from backend.isnet.engines import ENGINE_NAMES, EngineError
from backend.isnet.segmenter import Segmenter
from backend.isnet.weights import WeightsError
from backend.settings import check_input_size, load


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "predict",
        help="write one ISNet mask PNG per image",
        description="Segment images with ISNet. Files and folders (searched recursively) go in; "
        "OUT/<stem>.png, a 0-255 mask at the image's original size, comes out. Unreadable images are "
        "reported by name and the exit status is 1, but every other image still gets its mask.",
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image files or folders")
    parser.add_argument("--out", type=Path, required=True, help="folder for the masks (created if missing)")
    parser.add_argument("--size", type=int, default=None,
                        help="network input side, a multiple of 32 (default ISNET_INPUT_SIZE, 1024)")
    parser.add_argument("--engine", choices=ENGINE_NAMES, default=None, help="inference engine (default ISNET_ENGINE)")
    add_project_argument(parser, "predict with")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = load()
    try:
        size = check_input_size(args.size or settings.input_size)
        segmenter = Segmenter.from_settings(settings, version_for(args, settings), engine=args.engine, size=size)
    except (ValueError, WeightsError, EngineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    images = find_images(args.paths)
    if not images:
        print("error: no images found in " + ", ".join(map(str, args.paths)), file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    written: dict[str, Path] = {}
    start = time.perf_counter()
    for path in tqdm(images, desc="predict", unit="img"):
        if path.stem in written:
            failures.append(f"{path}: same name as {written[path.stem]}; its mask would be overwritten")
            continue
        try:
            image = load_image(path, settings.max_pixels)
        except ImageError as exc:
            failures.append(str(exc))
            continue
        mask = segmenter.predict_one(image)
        Image.fromarray(mask, "L").save(args.out / f"{path.stem}.png")
        written[path.stem] = path
    elapsed = time.perf_counter() - start
    for failure in failures:
        print(f"failed: {failure}", file=sys.stderr)
    print(
        f"{len(written)} mask(s) written to {args.out}, {len(failures)} failed, "
        f"{elapsed:.1f} s ({elapsed / max(len(written), 1):.2f} s/image, size {size}, {segmenter.engine.name})"
    )
    return 1 if failures else 0
