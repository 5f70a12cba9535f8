"""Where a retraining step's time goes, per recipe: forward, feature loss, backward, optimizer.

One step is the trainer's own step (:func:`backend.isnet.training.trainer.segmenter_step`, which
``isnet train`` runs), timed by the phase hook it offers: one butterflies image resized whole to
the serving size (1024) ("data"), the ISNetDIS forward with BatchNorm frozen ("forward"), the
frozen GT encoder's forward on the mask ("feature loss", when it is on), the six side-output
BCEs plus the six feature distances ("losses"), backward, and an Adam step ("optimizer"). Phases
are timed after ``--warmup`` untimed steps; weights do not change the cost, so both networks are
freshly initialised (no download needed).

Recipes: whole images at 1024 in fp32, and in bf16 autocast (the default on CPUs with AMX or AVX-512 BF16),
each with the feature loss on and off (the ablation), and the old default (random 320 crops of
the 1024-resized image) for comparison.

    .venv/bin/python bench/train.py [--iters 3] [--warmup 1] [--recipes NAME ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from backend.isnet.network import ISNetDIS, ISNetGTEncoder  # noqa: E402
from backend.isnet.training.batchnorm import freeze, set_train_mode  # noqa: E402
from backend.isnet.training.data import Dataset, load_pairs  # noqa: E402
from backend.isnet.training.options import TrainOptions, cpu_has_native_bf16  # noqa: E402
from backend.isnet.training.trainer import segmenter_step  # noqa: E402
from bench.machine import cpu  # noqa: E402

BUTTERFLIES = REPO.parent / "shared" / "data" / "butterflies" / "train"


def _recipe(crop: int, bf16: bool, features: bool) -> TrainOptions:
    """The trainer's options for one recipe: whole images (or ``crop``) at 1024, batch 1."""
    return TrainOptions(size=1024, crop=crop, batch=1, amp=bf16, feature_loss="mse" if features else "off").resolved()


RECIPES = {
    "whole-1024-fp32": _recipe(1024, False, True),
    "whole-1024-fp32-no-feature-loss": _recipe(1024, False, False),
    "whole-1024-bf16": _recipe(1024, True, True),
    "whole-1024-bf16-no-feature-loss": _recipe(1024, True, False),
    "crop-320-fp32 (old default)": _recipe(320, False, True),
}
PHASES = ("data", "forward", "feature loss", "losses", "backward", "optimizer")


def step_phases(model, encoder, optimizer, scaler, pairs, options: TrainOptions, step: int) -> dict[str, float]:
    """One step of the trainer's own :func:`segmenter_step`, with each phase's seconds."""
    times: dict[str, float] = {}
    tick = time.perf_counter()

    def lap(phase: str) -> None:
        nonlocal tick
        now = time.perf_counter()
        times[phase] = now - tick
        tick = now

    if segmenter_step(model, encoder, pairs, options, step, optimizer, scaler, lap) is None:
        raise RuntimeError(f"the loss was not finite at step {step}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=3, help="timed steps per recipe")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    args = parser.parse_args()
    items = Dataset.from_folders(BUTTERFLIES / "images", BUTTERFLIES / "masks").items[:4]
    pairs = load_pairs(items, 64_000_000, 1024)[0]
    print(f"one training step per recipe, batch 1, {len(pairs)} butterflies pairs; {args.iters} timed steps after "
          f"{args.warmup} warm-up; {torch.get_num_threads()} torch threads\nCPU: {cpu()}; "
          f"cycles here train in {'bf16' if cpu_has_native_bf16() else 'fp32'} by default")
    header = "".join(f"{p:>13}" for p in PHASES)
    print(f"{'recipe':34}{header}{'step s':>9}{'images/s':>10}")
    for name in args.recipes:
        options = RECIPES[name]
        torch.manual_seed(0)
        model = set_train_mode(ISNetDIS(), "frozen")
        encoder = freeze(ISNetGTEncoder()) if options.uses_features else None
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=options.lr)
        scaler = torch.amp.GradScaler("cuda", enabled=False)
        rows = [step_phases(model, encoder, optimizer, scaler, pairs, options, k)
                for k in range(args.warmup + args.iters)]
        timed = rows[args.warmup:]
        means = {p: float(np.mean([r[p] for r in timed])) for p in PHASES}
        step = sum(means.values())
        cells = "".join(f"{means[p]:>12.2f}s" for p in PHASES)
        print(f"{name:34}{cells}{step:>8.2f}s{1 / step:>10.3f}", flush=True)


if __name__ == "__main__":
    main()
