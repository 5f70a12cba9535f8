"""Which per-image score sorts the worst masks first: candidate scores against per-image MAE.

    .venv/bin/python bench/uncertainty.py [--sets duts-te-500 butterflies/test] [--engine onnx-int8]
                                          [--size 1024] [--limit N] [--cache DIR] [--out DIR]

Label Studio annotators sort tasks by prediction score, ascending, to correct the worst masks
first; so the score should rank images by their true error. Every candidate maps the uint8
0-255 mask the Segmenter returns to one number, higher = more trustworthy. For each set:

- ``spearman``: rank correlation of ``-score`` with the image's MAE (1 = sorting by score,
  ascending, lists the images exactly from worst to best);
- ``top10``: of the 10% of images with the largest MAE, how many are among the 10% with the
  lowest score (ties in score keep name order).

MAE is PySODMetrics' (ground truth binarised at 128). A second table ranks against the error
of what Label Studio shows, the thresholded brush region (fraction of pixels it gets wrong),
so that a score cannot win by only finding soft but otherwise right masks. Predictions are cached as PNGs under
``--cache`` (default: a folder in the temp dir), keyed by model version, engine and size, so
reruns only score. ``served`` is :func:`backend.labelstudio.results.prediction_score`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import py_sod_metrics as psm
from PIL import Image
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from backend.images import find_images, load_image, load_mask  # noqa: E402
from backend.isnet.segmenter import Segmenter  # noqa: E402
from backend.labelstudio.results import prediction_score  # noqa: E402
from backend.learning.registry import ModelRegistry  # noqa: E402
from backend.settings import Settings, load  # noqa: E402
from bench.machine import cpu  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
BIKE = REPO.parent / "shared" / "fixtures" / "dis-demo" / "reference" / "bike.png"  # a 3000x2000 mask
THRESHOLD = 0.5
LOW, HIGH = 0.1, 0.9  # the "uncertain" confidence range

_P = np.arange(256) / 255.0
with np.errstate(divide="ignore", invalid="ignore"):
    ENTROPY = np.nan_to_num(-(_P * np.log2(_P) + (1 - _P) * np.log2(1 - _P)))  # bits, per 0-255 level


def _entropy(mask: np.ndarray) -> np.ndarray:
    return ENTROPY[mask]


def _inside(mask: np.ndarray) -> np.ndarray:
    return mask > THRESHOLD * 255.0


def _perimeter(inside: np.ndarray) -> int:
    """Pixels where the thresholded region changes between horizontal or vertical neighbours."""
    return int(np.count_nonzero(inside[1:] != inside[:-1]) + np.count_nonzero(inside[:, 1:] != inside[:, :-1]))


def region_confidence(mask: np.ndarray) -> float:
    """The score served before: mean confidence of the pixels inside the region (0 if none)."""
    inside = _inside(mask)
    return float(mask[inside].mean()) / 255.0 if inside.any() else 0.0


def entropy(mask: np.ndarray) -> float:
    """1 - mean binary entropy (bits) over all pixels: MAE is a mean over all pixels too."""
    return 1.0 - float(_entropy(mask).mean())


def expected_error(mask: np.ndarray) -> float:
    """1 - mean 2p(1-p): the MAE the model expects if its confidences were calibrated."""
    p = mask / 255.0
    return 1.0 - float((2 * p * (1 - p)).mean())


def decision_margin(mask: np.ndarray) -> float:
    """1 - 2 * mean min(p, 1-p): how far the pixels are from flipping the served region's decision."""
    return 1.0 - 2.0 * float(np.minimum(mask, 255 - mask).mean()) / 255.0


def certain_fraction(mask: np.ndarray) -> float:
    """Fraction of pixels outside the uncertain range (0.1, 0.9)."""
    uncertain = (mask > LOW * 255) & (mask < HIGH * 255)
    return 1.0 - float(uncertain.mean())


def band_entropy(mask: np.ndarray) -> float:
    """1 - mean entropy of the uncertain-range pixels only: how unsure the unsure pixels are."""
    band = (mask > LOW * 255) & (mask < HIGH * 255)
    return 1.0 - float(_entropy(mask[band]).mean()) if band.any() else 1.0


def entropy_per_area(mask: np.ndarray) -> float:
    """1 / (1 + summed entropy / region area): uncertainty relative to the object's size."""
    area = int(np.count_nonzero(_inside(mask)))
    return 1.0 / (1.0 + float(_entropy(mask).sum()) / area) if area else 0.0


def entropy_per_perimeter(mask: np.ndarray) -> float:
    """1 / (1 + summed entropy / region perimeter): the uncertain band's width in pixels."""
    perimeter = _perimeter(_inside(mask))
    return 1.0 / (1.0 + float(_entropy(mask).sum()) / perimeter) if perimeter else 0.0


def served(mask: np.ndarray) -> float:
    return prediction_score(mask, THRESHOLD)


CANDIDATES: dict[str, Callable[[np.ndarray], float]] = {
    "served": served,
    "region_confidence": region_confidence,
    "entropy": entropy,
    "expected_error": expected_error,
    "decision_margin": decision_margin,
    "certain_fraction": certain_fraction,
    "band_entropy": band_entropy,
    "entropy_per_area": entropy_per_area,
    "entropy_per_perimeter": entropy_per_perimeter,
}


def ranks(x: np.ndarray) -> np.ndarray:
    """0-based ranks, ties given their average rank (as scipy.stats.rankdata)."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + ends - 1) / 2.0)[inverse.ravel()]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation: Pearson's on average ranks."""
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def top_hits(score: np.ndarray, mae: np.ndarray, fraction: float = 0.1) -> tuple[int, int]:
    """How many of the ``fraction`` worst images by MAE are in the first ``fraction`` by ascending score."""
    n = max(1, round(fraction * len(mae)))
    worst = set(np.argsort(-mae, kind="stable")[:n].tolist())
    first = set(np.argsort(score, kind="stable")[:n].tolist())
    return len(worst & first), n


def mae(pred: np.ndarray, gt: np.ndarray) -> float:
    metric = psm.MAE()
    metric.step(pred, gt)
    return float(metric.get_results()["mae"])


def region_error(pred: np.ndarray, gt: np.ndarray) -> float:
    """Fraction of pixels the served brush region (``pred > threshold``) gets wrong."""
    return float(np.count_nonzero(_inside(pred) != (gt > 128))) / gt.size


TARGETS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {"MAE": mae, "region error": region_error}
Result = tuple[dict[str, np.ndarray], dict[str, np.ndarray]]  # per-image errors by target, scores by candidate


class Predictions:
    """The Segmenter's 0-255 maps for a folder of images, cached as PNGs; the engine loads on first miss."""

    def __init__(self, settings: Settings, engine: str, size: int, cache: Path) -> None:
        self.settings, self.engine, self.size = settings, engine, size
        self.version = ModelRegistry(settings).current().name
        self.root = cache / f"{self.version}-{engine}-{size}"
        self._segmenter: Segmenter | None = None
        self.seconds, self.computed = 0.0, 0

    def get(self, set_name: str, image: Path) -> np.ndarray:
        path = self.root / set_name / f"{image.stem}.png"
        if path.exists():
            return np.asarray(Image.open(path))
        if self._segmenter is None:
            version = ModelRegistry(self.settings).current()
            self._segmenter = Segmenter.from_settings(self.settings, version, engine=self.engine, size=self.size)
        start = time.perf_counter()
        mask = self._segmenter.predict_one(load_image(image, self.settings.max_pixels))
        self.seconds, self.computed = self.seconds + time.perf_counter() - start, self.computed + 1
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(path)
        return mask


def measure_set(set_name: str, predictions: Predictions, limit: int | None) -> Result:
    """Every target's per-image error and every candidate's score for one data set."""
    images = find_images([SHARED / set_name / "images"])[:limit]
    errors, scores = {name: [] for name in TARGETS}, {name: [] for name in CANDIDATES}
    for image in tqdm(images, desc=set_name, unit="img"):
        pred = predictions.get(set_name, image)
        gt = load_mask(SHARED / set_name / "masks" / f"{image.stem}.png", predictions.settings.max_pixels)
        for name, target in TARGETS.items():
            errors[name].append(target(pred, gt))
        for name, score in CANDIDATES.items():
            scores[name].append(score(pred))
    return {k: np.array(v) for k, v in errors.items()}, {k: np.array(v) for k, v in scores.items()}


def served_cost(repeat: int = 30) -> tuple[float, float]:
    """Median wall and CPU milliseconds of the served score on a 3000x2000 mask (the DIS demo bike).

    CPU time is reported too because on a shared machine the wall clock also measures the neighbours.
    """
    mask = np.ascontiguousarray(load_mask(BIKE, 64_000_000))
    prediction_score(mask, THRESHOLD)
    wall, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        prediction_score(mask, THRESHOLD)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return float(np.median(wall)) * 1000.0, float(np.median(cpu)) * 1000.0


def report(results: dict[str, Result], target: str) -> None:
    """One row per candidate: Spearman(-score, error) and top-10% hits on every set."""
    sets = list(results)
    print(f"against {target}:\n")
    print("| candidate | " + " | ".join(f"{s} spearman | {s} top10" for s in sets) + " |")
    print("| --- |" + " ---: | ---: |" * len(sets))
    for name in CANDIDATES:
        cells = []
        for s in sets:
            errors, scores = results[s][0][target], results[s][1]
            hits, n = top_hits(scores[name], errors)
            cells += [f"{spearman(-scores[name], errors):.3f}", f"{hits}/{n}"]
        print(f"| {name} | " + " | ".join(cells) + " |")


def plot(results: dict[str, Result], out: Path) -> Path:
    """Served score against MAE, one panel per set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False)
    for ax, (set_name, (by_target, scores)) in zip(axes[0], results.items(), strict=True):
        errors = by_target["MAE"]
        ax.scatter(scores["served"], errors, s=6, alpha=0.6)
        ax.set(title=f"{set_name}: Spearman {spearman(-scores['served'], errors):.2f}", xlabel="served score",
               ylabel="MAE", yscale="log")
    out.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out / "uncertainty.png", dpi=120)
    return out / "uncertainty.png"


def save_csv(results: dict[str, Result], out: Path) -> None:
    """Per-image errors and scores, one CSV per set, for anyone who wants to try another ordering."""
    out.mkdir(parents=True, exist_ok=True)
    for set_name, (errors, scores) in results.items():
        columns = np.column_stack([*errors.values(), *scores.values()])
        np.savetxt(out / f"{set_name.replace('/', '-')}.csv", columns, delimiter=",", fmt="%.6f",
                   header=",".join([*errors, *scores]), comments="")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=["duts-te-500", "butterflies/test"])
    parser.add_argument("--engine", default="onnx-int8", help="engine that makes the predictions (default onnx-int8)")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--limit", type=int, default=None, help="first N images of each set")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "isnet-uncertainty")
    parser.add_argument("--out", type=Path, default=None, help="save a scatter plot and per-image CSVs here")
    args = parser.parse_args()

    if not os.environ.get("ISNET_CALIB_DIR"):  # int8 calibrates on training images, never on the test sets
        os.environ["ISNET_CALIB_DIR"] = str(SHARED / "duts-tr-300" / "images")
    predictions = Predictions(load(), args.engine, args.size, args.cache)
    print(f"model {predictions.version}, engine {args.engine}, size {args.size}, {cpu()}")
    results = {s: measure_set(s, predictions, args.limit) for s in args.sets}
    if predictions.computed:
        print(f"predicted {predictions.computed} images, {predictions.seconds / predictions.computed:.2f} s/image "
              f"(load, engine, postprocess); cache {predictions.root}")
    for set_name, (errors, _) in results.items():
        print(f"{set_name}: {len(errors['MAE'])} images, mean MAE {errors['MAE'].mean():.4f}, "
              f"mean region error {errors['region error'].mean():.4f}")
    print("\nspearman = rank correlation of (-score) with the per-image error; top10 = worst 10% by that error "
          "found in the first 10% by ascending score\n")
    for target in TARGETS:
        report(results, target)
        print()
    wall_ms, cpu_ms = served_cost()
    print(f"served score on a 3000x2000 mask: {wall_ms:.2f} ms wall, {cpu_ms:.2f} ms CPU (medians of 30)")
    if args.out:
        save_csv(results, args.out)
        print(f"plot: {plot(results, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
