"""How much of a retrained model to keep: anchor drift and accuracy along the champion -> challenger line.

    .venv/bin/python bench/interpolation.py --challenger VERSION_DIR/checkpoint.pth
        [--champion CHECKPOINT] [--lambdas 0,0.25,0.5,1] [--sets duts-te-500 butterflies/test]
        [--every N] [--size 1024] [--engine onnx-fp32|torch] [--out DIR]

For each ``lambda`` the weights ``(1 - lambda) * champion + lambda * challenger`` are scored on every
set (MAE, avg F, S, HCE with PySODMetrics, against each set's masks), and their masks on the
anchor photos (``ISNET_TRAIN_ANCHORS``, default scikit-image's) are compared with the champion's:
the ``drift`` a cycle keeps within ``ISNET_TRAIN_ANCHOR_DRIFT``. This is the evidence behind that
rule: does the drift on a few unlabelled photos track the change of MAE on a labelled general set?

``--challenger`` is a checkpoint. A cycle saves its weights already mixed (their lambda is in
``meta.interpolation``), so on one of those the line runs from the champion to that mix; the
whole line needs the trained weights, e.g. from a cycle run with ``--anchors none``.
``--champion`` defaults to the pretrained weights. ``--every N`` scores every N-th image of each
set (name order). Prints the CPU, a table and writes ``interpolation.json`` (and a plot) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from backend.isnet.engines.export import export_fp32  # noqa: E402
from backend.isnet.engines.onnx_engine import OnnxEngine  # noqa: E402
from backend.isnet.engines.torch_engine import TorchEngine  # noqa: E402
from backend.isnet.segmenter import Segmenter  # noqa: E402
from backend.isnet.training.networks import ISNET  # noqa: E402
from backend.learning.interpolation import drift, interpolate, load_anchors  # noqa: E402
from backend.learning.registry import ModelRegistry  # noqa: E402
from backend.metrics import Pair, evaluate_segmenter  # noqa: E402
from backend.settings import load  # noqa: E402
from bench.machine import cpu  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
SHOWN = ("mae", "avgfmeasure", "sm", "hce")


def _pairs(name: str, every: int) -> list[Pair]:
    folder = SHARED / name
    images = sorted((folder / "images").iterdir())[::every]
    return [Pair(p.stem, folder / "masks" / f"{p.stem}.png", p) for p in images]


def _segmenter(model, engine: str, size: int, scratch: Path) -> Segmenter:
    if engine == "torch":
        return Segmenter(TorchEngine(model), size)
    path = scratch / "model.onnx"
    export_fp32(model, path)
    return Segmenter(OnnxEngine(path, "onnx-fp32", "fp32"), size)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--challenger", type=Path, required=True)
    parser.add_argument("--champion", type=Path, help="default: the pretrained weights")
    parser.add_argument("--lambdas", default="0,0.25,0.375,0.5,1")
    parser.add_argument("--sets", nargs="+", default=["duts-te-500", "butterflies/test"])
    parser.add_argument("--every", type=int, default=1)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--engine", choices=("torch", "onnx-fp32"), default="onnx-fp32")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "isnet-interpolation")
    args = parser.parse_args()

    settings = load()
    print(f"CPU: {cpu()}")
    champion_path = args.champion or ModelRegistry(settings).pretrained().checkpoint
    model, _ = ISNET.load(champion_path)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    end = {k: v.clone() for k, v in ISNET.load(args.challenger)[0].state_dict().items()}
    anchors = load_anchors(settings.train_anchors, settings.max_pixels)
    sets = {name: _pairs(name, args.every) for name in args.sets}
    lambdas = [float(v) for v in args.lambdas.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory() as scratch:  # the champion's anchor masks, through the same engine
        segmenter = _segmenter(model, args.engine, args.size, Path(scratch))
        reference = [segmenter.predict_one(a) for a in tqdm(anchors, desc="champion anchors", leave=False)]
    rows = []
    for lam in lambdas:
        model.load_state_dict(interpolate(start, end, lam))
        with tempfile.TemporaryDirectory() as scratch:
            segmenter = _segmenter(model, args.engine, args.size, Path(scratch))
            masks = [segmenter.predict_one(a) for a in tqdm(anchors, desc=f"lambda {lam:g} anchors", leave=False)]
            row = {"lambda": lam, "anchor_drift": round(drift(masks, reference), 6)}
            for name, pairs in sets.items():
                t = time.perf_counter()
                ev = evaluate_segmenter(segmenter, pairs, workers=1, progress=True)
                row[name] = {k: round(float(ev.metrics[k]), 5) for k in SHOWN if k in ev.metrics}
                row[name]["count"], row[name]["seconds"] = ev.count, round(time.perf_counter() - t, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
        (args.out / "interpolation.json").write_text(json.dumps({"cpu": cpu(), "size": args.size, "engine": args.engine,
                                                                  "every": args.every, "rows": rows}, indent=1))

    header = ["lambda", "anchor drift"] + [f"{n} {m}" for n in sets for m in SHOWN]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        cells = [f"{row['lambda']:g}", f"{row['anchor_drift']:.4f}"]
        cells += [f"{row[n].get(m, float('nan')):.4f}" for n in sets for m in SHOWN]
        print("| " + " | ".join(cells) + " |")
    _plot(rows, list(sets), args.out / "interpolation.png")
    return 0


def _plot(rows: list[dict], sets: list[str], path: Path) -> None:
    """MAE of each set and the anchor drift against lambda: where the line trades gain for forgetting."""
    fig, ax = plt.subplots(figsize=(6, 4))
    lams = [r["lambda"] for r in rows]
    for name in sets:
        ax.plot(lams, [r[name]["mae"] for r in rows], marker="o", label=f"{name} MAE")
    ax.plot(lams, [r["anchor_drift"] for r in rows], marker="s", linestyle="--", label="anchor drift")
    ax.set_xlabel("lambda (share of the trained change kept)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
