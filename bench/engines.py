"""Per-image latency of every engine at 320 and 1024, batch 1 and 4, against onnx-fp32.

    .venv/bin/python bench/engines.py [--sizes 320 1024] [--batches 1 4] [--repeat 3]

Runs in one process, engine after engine, on real images (the DUTS-TE subset, preprocessed as
served). Missing engines are built first (int8 calibrated on ISNET_CALIB_DIR, default the
shared DUTS-TR subset), which is not timed. The ratio column is onnx-fp32's time divided by
the engine's: above 1 is faster than onnx-fp32. Medians of ``--repeat`` runs after one warm-up.
The model version and thread count are the serving ones (ISNET_THREADS, 0 = library default).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from backend.images import find_images, load_image  # noqa: E402
from backend.isnet.engines import ENGINE_NAMES, create_engine  # noqa: E402
from backend.isnet.processing import preprocess  # noqa: E402
from backend.learning.registry import ModelRegistry  # noqa: E402
from backend.settings import load  # noqa: E402
from bench.machine import cpu  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


def _batch(size: int, count: int, max_pixels: int) -> np.ndarray:
    paths = find_images([SHARED / "duts-te-500" / "images"])[:count]
    return np.stack([preprocess(load_image(p, max_pixels), size) for p in paths])


def _time(engine, batch: np.ndarray, repeat: int) -> float:
    engine.predict(batch)  # warm-up: allocations, kernel selection
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        engine.predict(batch)
        runs.append(time.perf_counter() - start)
    return statistics.median(runs) / len(batch)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[320, 1024])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--engines", nargs="+", choices=ENGINE_NAMES, default=list(ENGINE_NAMES))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    if not os.environ.get("ISNET_CALIB_DIR"):
        os.environ["ISNET_CALIB_DIR"] = str(SHARED / "duts-tr-300" / "images")
    settings = load()
    version = ModelRegistry(settings).current()
    print(f"model {version.name}, {cpu()}, "
          f"threads {settings.threads or 'default'}, median of {args.repeat}\n")
    rows = []
    for size in args.sizes:
        batches = {b: _batch(size, b, settings.max_pixels) for b in args.batches}
        for name in args.engines:
            engine = create_engine(name, version, settings, size)
            for b, batch in batches.items():
                rows.append((name, engine.precision, size, b, _time(engine, batch, args.repeat)))
                print(f"  {name} @{size} batch {b}: {rows[-1][-1]:.3f} s/image", file=sys.stderr, flush=True)
            del engine
    base = {(size, b): t for name, _, size, b, t in rows if name == "onnx-fp32"}
    print("| engine | precision | size | batch | s/image | vs onnx-fp32 |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name, precision, size, b, t in rows:
        ratio = f"{base[(size, b)] / t:.2f}x" if (size, b) in base else "n/a"
        print(f"| {name} | {precision} | {size} | {b} | {t:.3f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
