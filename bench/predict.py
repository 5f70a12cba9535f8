"""Per-image latency of `isnet predict`'s path against the published fp16 ONNX graph.

Measured in one run, on the DIS demo images (3000x2000 and 650x434), end to end per image
(decode excluded, pre-processing + network + post-processing included):
- this implementation at 320 and 1024 with the configured engine (``ISNET_ENGINE``, or
  ``--engine``),
- the reference: a plain onnxruntime session of the official fused fp16 graph at 1024 with the
  same pre/post-processing (the graph only accepts 1024).
Prints seconds per image and the ratio reference / ours (above 1 means we are faster).

    .venv/bin/python bench/predict.py [--engine torch] [--reps 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from backend.images import load_image
from backend.isnet.processing import postprocess, preprocess
from backend.isnet.segmenter import Segmenter
from backend.isnet.weights import WeightCache
from backend.learning.registry import ModelRegistry
from backend.settings import load

IMAGES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "dis-demo" / "images"


def per_image(fn: Callable[[np.ndarray], np.ndarray], images: list[np.ndarray], reps: int) -> float:
    fn(images[-1])  # warm-up: first-call allocations and lazy initialisation
    times = []
    for _ in range(reps):
        for img in images:
            start = time.perf_counter()
            fn(img)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def reference_session(settings) -> Callable[[np.ndarray], np.ndarray]:
    opts = ort.SessionOptions()
    if settings.threads:
        opts.intra_op_num_threads = settings.threads
    session = ort.InferenceSession(str(WeightCache(settings).reference_onnx), opts, providers=["CPUExecutionProvider"])

    def run(img: np.ndarray) -> np.ndarray:
        prob = session.run(["output"], {"input": preprocess(img, 1024)[None]})[0]
        return postprocess(prob[0, 0], img.shape[0], img.shape[1])

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", default=None)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    settings = load()
    images = [load_image(p, settings.max_pixels) for p in sorted(IMAGES.glob("*.jpeg"))]
    ref = per_image(reference_session(settings), images, args.reps)
    print(f"reference onnxruntime fp16 graph @1024: {ref:.3f} s/image")
    for size in (320, 1024):
        seg = Segmenter.from_settings(settings, ModelRegistry(settings).current(), engine=args.engine, size=size)
        ours = per_image(seg.predict_one, images, args.reps)
        print(f"isnet ({seg.engine.name}, {seg.engine.precision}) @{size}: {ours:.3f} s/image, "
              f"reference@1024 / ours = {ref / ours:.2f}x")


if __name__ == "__main__":
    main()
