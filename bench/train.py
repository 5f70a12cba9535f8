"""Training throughput of the segmentation stage (images/s), with and without the feature loss.

One fine-tuning step is what ``isnet train`` runs: images resized to the serving size
(1024), a random ``crop x crop`` window, ISNetDIS forward + backward with BatchNorm frozen,
side-output BCE, plus, with the feature loss on, the frozen GT encoder's forward on the mask
window and the six feature distances; then an Adam step. Measured at crop 320 (the CPU
default) and 1024 (the full serving input, the CUDA default), on real DUTS-TR pairs when
they are present (random ones otherwise), after ``--warmup`` untimed steps. Weights do not
change the cost, so both networks are freshly initialised (no weight download needed).

    .venv/bin/python bench/train.py [--crops 320 1024] [--batch 2] [--iters 3] [--warmup 1] [--device cpu]

CPU note: one step at crop 1024 costs about ten steps at 320; expect minutes per setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import time
from pathlib import Path

import numpy as np
import torch

from backend.isnet.network import ISNetDIS, ISNetGTEncoder
from backend.isnet.training.data import Dataset, Pair, load_pairs
from backend.isnet.training.options import TrainOptions
from backend.isnet.training.trainer import train_segmenter
from backend.settings import load

DUTS_TR = Path(__file__).resolve().parents[2] / "shared" / "data" / "duts-tr-300"


def bench_pairs(count: int, size: int) -> tuple[list[Pair], str]:
    if (DUTS_TR / "images").is_dir():
        items = Dataset.from_folders(DUTS_TR / "images", DUTS_TR / "masks").items[:count]
        return load_pairs(items, 64_000_000, size)[0], f"{count} DUTS-TR pairs"
    rng = np.random.default_rng(0)
    pairs = [Pair(f"random{i}", rng.integers(0, 256, (300, 400, 3), dtype=np.uint8),
                  (rng.random((300, 400)) > 0.5).astype(np.uint8) * 255) for i in range(count)]
    return pairs, f"{count} random pairs"


def measure(pairs: list[Pair], options: TrainOptions, warmup: int) -> tuple[float, float]:
    """(images per second, seconds per iteration) over the timed steps."""
    torch.manual_seed(0)
    model = ISNetDIS()
    encoder = ISNetGTEncoder() if options.uses_features else None
    stamps: list[float] = []
    if options.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    def progress(event) -> None:
        if event.stage == "segmenter":
            if options.device.startswith("cuda"):
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

    start = time.perf_counter()
    train_segmenter(model, encoder, pairs, options, progress=progress)
    timed = stamps[warmup - 1:] if warmup else [start, *stamps]
    per_iter = (timed[-1] - timed[0]) / (len(timed) - 1)
    return options.batch / per_iter, per_iter


def peak_memory(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB GPU (peak allocated)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB RSS (process peak so far)"


def main() -> None:
    settings = load()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, nargs="+", default=[320, 1024])
    parser.add_argument("--size", type=int, default=1024, help="serving size the images are resized to")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3, help="timed iterations per setting")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default=settings.device)
    args = parser.parse_args()
    if settings.threads > 0:
        torch.set_num_threads(settings.threads)
    pairs, source = bench_pairs(8, args.size)
    print(f"segmentation-stage training throughput on {args.device} ({torch.get_num_threads()} threads), "
          f"batch {args.batch}, {source} resized to {args.size}, {args.iters} timed iterations")
    print(f"{'crop':>5} {'feature loss':>12} {'images/s':>9} {'s/iter':>8}  memory")
    for crop in args.crops:
        for feature_loss in ("mse", "off"):
            options = TrainOptions(iters=args.warmup + args.iters, size=max(args.size, crop), crop=crop,
                                   batch=args.batch, device=args.device, feature_loss=feature_loss,
                                   checkpoint_every=10**9)
            options = dataclasses.replace(options, amp=None).resolved()
            rate, per_iter = measure(pairs, options, args.warmup)
            print(f"{crop:>5} {feature_loss:>12} {rate:>9.3f} {per_iter:>8.2f}  {peak_memory(args.device)}", flush=True)


if __name__ == "__main__":
    main()
