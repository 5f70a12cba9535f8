"""Brush RLE encode time: this implementation against ``label_studio_sdk.converter.brush``.

Measured in one run on a 3000x2000 mask (the official DIS demo result for ``bike.jpeg``,
thresholded at 128, unless ``--mask`` names another): the median encode time of
``backend.labelstudio.rle.mask_to_rle`` and of the SDK's ``mask2rle`` (runs interleaved, so a
busy machine slows both alike), their ratio (target: ours
at least 30x faster), and whether the two byte lists are identical. Also the time of our decoder
(``rle_to_mask``) and, with ``--sdk-decode``, of the SDK's ``decode_rle`` (about 20 s).
Exits with status 1 when the bytes differ or the decoder does not give the mask back.

    .venv/bin/python bench/rle.py [--mask PATH] [--reps 40] [--sdk-reps 10] [--sdk-decode]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from label_studio_sdk.converter import brush
from PIL import Image

from backend.labelstudio.rle import mask_to_rle, rle_to_mask

MASK = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "dis-demo" / "reference" / "bike.png"
TARGET_RATIO = 30.0


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(ours: Callable[[], object], sdk: Callable[[], object], reps: int, sdk_reps: int) -> tuple[float, float]:
    """Median seconds of each, their runs interleaved so that load from other processes on a
    shared machine slows both alike instead of skewing the ratio."""
    ours(), sdk()  # warm-up: first-call allocations
    per_round = max(1, reps // sdk_reps)
    ours_times: list[float] = []
    sdk_times: list[float] = []
    for _ in range(sdk_reps):
        sdk_times.append(seconds(sdk))
        ours_times += [seconds(ours) for _ in range(per_round)]
    return statistics.median(ours_times), statistics.median(sdk_times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mask", type=Path, default=MASK, help="grayscale mask image (default: DIS demo bike.png)")
    parser.add_argument("--reps", type=int, default=40, help="timed runs of our encoder (median reported)")
    parser.add_argument("--sdk-reps", type=int, default=10, help="timed runs of the SDK encoder (median reported)")
    parser.add_argument("--sdk-decode", action="store_true", help="also time the SDK's decoder (slow)")
    args = parser.parse_args()

    mask = np.where(np.asarray(Image.open(args.mask).convert("L")) >= 128, 255, 0).astype(np.uint8)
    height, width = mask.shape
    ours_rle = mask_to_rle(mask)
    sdk_rle = brush.mask2rle(mask)
    identical = ours_rle == sdk_rle
    print(
        f"mask: {args.mask.name}, {width}x{height}, {np.count_nonzero(mask) / mask.size:.1%} inside, "
        f"RLE {len(ours_rle):,} bytes"
    )

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {os.cpu_count()} CPUs, load average {load:.1f} (load slows the memory-bound numpy passes most)")
    ours, sdk = interleaved(lambda: mask_to_rle(mask), lambda: brush.mask2rle(mask), args.reps, args.sdk_reps)
    ours_runs = args.sdk_reps * max(1, args.reps // args.sdk_reps)
    ratio = sdk / ours
    print(f"encode  ours (numpy)            {ours * 1e3:9.2f} ms  (median of {ours_runs})")
    print(f"encode  label_studio_sdk        {sdk * 1e3:9.2f} ms  (median of {args.sdk_reps})")
    print(
        f"encode  ratio sdk / ours        {ratio:9.1f} x   (target >= {TARGET_RATIO:g}x: "
        f"{'met' if ratio >= TARGET_RATIO else 'NOT met'})"
    )
    print(f"bytes identical to the SDK: {'yes' if identical else 'NO'}")

    decoded = rle_to_mask(ours_rle, height, width)
    round_trip = bool(np.array_equal(decoded, mask))
    decode = statistics.median(seconds(lambda: rle_to_mask(ours_rle, height, width)) for _ in range(5))
    print(f"decode  ours (numpy)            {decode * 1e3:9.2f} ms  (round trip {'exact' if round_trip else 'WRONG'})")
    if args.sdk_decode:
        start = time.perf_counter()
        sdk_flat = brush.decode_rle(sdk_rle)
        sdk_decode = time.perf_counter() - start
        same = bool(np.array_equal(sdk_flat.reshape(height, width, 4)[:, :, 3], decoded))
        print(
            f"decode  label_studio_sdk        {sdk_decode * 1e3:9.2f} ms  (ratio {sdk_decode / decode:.0f}x, "
            f"same mask: {'yes' if same else 'NO'})"
        )
    return 0 if identical and round_trip else 1


if __name__ == "__main__":
    sys.exit(main())
