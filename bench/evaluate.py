"""Time ``backend.metrics`` against a plain single-process PySODMetrics loop on the same masks.

Why both in one run: the machines this runs on are shared, so only times taken side by
side (interleaved, best of ``--repeat``) make a fair ratio. The plain loop is what a user
would otherwise write (PySODEvalToolkit's recipe: ``cv2.imread`` grayscale, resize to the
ground truth, ``step`` every metric); both must give the same numbers, which is checked.

    .venv/bin/python bench/evaluate.py                       # DUTS-TE-500 masks, synthetic predictions
    .venv/bin/python bench/evaluate.py --pred /tmp/duts320-pred --workers 2 --repeat 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import py_sod_metrics as psm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from backend.metrics import COLUMNS, evaluate_predictions, pair_folders  # noqa: E402
from backend.metrics.evaluator import default_workers  # noqa: E402
from backend.metrics.masks import read_mask  # noqa: E402

DEFAULT_GT = REPO.parent / "shared" / "data" / "duts-te-500" / "masks"


def synthesize_predictions(gt_dir: Path, out: Path) -> Path:
    """Deterministic stand-ins for model output: each mask shifted, blurred and noised."""
    rng = np.random.default_rng(0)
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(gt_dir.glob("*.png")):
        gt = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).astype(np.float64)
        pred = cv2.GaussianBlur(np.roll(gt, int(rng.integers(-6, 7)), axis=1), (9, 9), 3)
        pred = np.clip(pred * 0.9 + rng.normal(0, 12, gt.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(out / path.name), pred)
    return out


def plain_loop(pairs: list) -> dict[str, float]:
    """The single-process reference: read, resize like PySODEvalToolkit, step each metric."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fm = psm.FmeasureV2({"fm": psm.FmeasureHandler(with_dynamic=True, with_adaptive=True, beta=0.3),
                             "p": psm.PrecisionHandler(with_dynamic=True, with_adaptive=False),
                             "r": psm.RecallHandler(with_dynamic=True, with_adaptive=False)})
        em, sm, wfm, mae, hce = (psm.Emeasure(), psm.Smeasure(), psm.WeightedFmeasure(), psm.MAE(),
                                 psm.HumanCorrectionEffortMeasure())
    for pair in pairs:
        gt = cv2.imread(str(pair.gt), cv2.IMREAD_GRAYSCALE)
        pred = cv2.imread(str(pair.source), cv2.IMREAD_GRAYSCALE)
        if pred.shape != gt.shape:
            pred = cv2.resize(pred, dsize=gt.shape[::-1], interpolation=cv2.INTER_LINEAR)
        for metric in (fm, em, sm, wfm, mae, hce):
            metric.step(pred, gt)
    f, e = fm.get_results()["fm"], em.get_results()["em"]
    return {"sm": sm.get_results()["sm"], "wfm": wfm.get_results()["wfm"], "mae": mae.get_results()["mae"],
            "maxfmeasure": f["dynamic"].max(), "avgfmeasure": f["dynamic"].mean(), "adpfmeasure": f["adaptive"],
            "maxem": e["curve"].max(), "avgem": e["curve"].mean(), "adpem": e["adp"],
            "hce": hce.get_results()["hce"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gt", type=Path, default=DEFAULT_GT, help="ground-truth masks (default: DUTS-TE-500)")
    parser.add_argument("--pred", type=Path, default=None, help="predictions (default: synthesized from --gt)")
    parser.add_argument("--workers", type=int, default=None, help="evaluator workers (default: CPUs available)")
    parser.add_argument("--repeat", type=int, default=1, help="interleaved repetitions; the best time counts")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        pred_dir = args.pred or synthesize_predictions(args.gt, Path(tmp) / "pred")
        pairs, issues = pair_folders(args.gt, pred_dir)
        workers = args.workers or default_workers()
        print(f"{len(pairs)} pairs from {args.gt} and {pred_dir}; evaluator with {workers} worker(s); "
              f"{len(issues)} pairing issue(s)")

        start = time.perf_counter()
        for pair in pairs:
            read_mask(pair.gt, 10**9)
            read_mask(pair.source, 10**9)
        read_s = time.perf_counter() - start

        plain_s, eval_s, plain_cpu, worker_cpu, parent_cpu = [], [], [], [], []
        for _ in range(args.repeat):
            start, cpu = time.perf_counter(), time.process_time()
            reference = plain_loop(pairs)
            plain_s.append(time.perf_counter() - start)
            plain_cpu.append(time.process_time() - cpu)
            start, cpu = time.perf_counter(), time.process_time()
            result = evaluate_predictions(pairs, issues, workers=workers, progress=False)
            eval_s.append(time.perf_counter() - start)
            parent_cpu.append(time.process_time() - cpu)
            worker_cpu.append(result.cpu_seconds)

    diff = max(abs(result.metrics[c] - float(reference[c])) for c in COLUMNS)
    plain, evaluator = min(plain_s), min(eval_s)
    n = len(pairs)
    for label, seconds in (("read every file once (1 process)", read_s),
                           ("plain pysodmetrics loop (1 process)", plain),
                           (f"backend.metrics ({workers} worker processes)", evaluator)):
        print(f"{label:<40}: {seconds:7.2f} s  ({seconds / n * 1e3:.1f} ms/pair)")
    print(f"speed-up: {plain / evaluator:.2f}x wall clock  (each file decoded once; max |difference| of the "
          f"metrics: {diff:.1e})")
    # On a shared machine the wall-clock ratio measures the neighbours too; CPU time does not.
    cpu_plain, cpu_workers, cpu_parent = min(plain_cpu), min(worker_cpu), min(parent_cpu)
    print(f"CPU time: plain loop {cpu_plain:.2f} s; evaluator {cpu_workers:.2f} s decoding and scoring (all "
          f"processes), {cpu_parent:.2f} s in the parent (it scores while the workers start) -> on {workers} "
          f"free cores about {cpu_plain / max(cpu_workers / workers, cpu_parent):.2f}x")
    return 0 if diff <= 1e-9 else 1


if __name__ == "__main__":
    sys.exit(main())
