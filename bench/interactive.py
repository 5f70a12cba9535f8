"""Interactive prompts: accuracy of box prompts on real data, and latency through ``isnet serve``.

1. ``duts``: every ``duts-te-500`` image with its ground-truth bounding box plus 10% as the
   prompt. Mean IoU (threshold 0.5) of the box prompt's mask (as the server makes it: the
   whole-image prediction where the box frames its foreground, else the box's crop), next to
   the full-image prediction at the serving size. Bar: the box is not below the full image.
2. ``canvas``: 100 two-object canvases, two ``duts-te-500`` images of the same height side by
   side at their own scale (consecutive in name order among images of that height; no padding,
   which would put an artificial flat region into the crops). The box around one object (alternately left and
   right) against that object predicted alone (its own image, full-image prediction); the
   full-canvas prediction's IoU for the same object is printed beside it. Bar: within 0.02.
3. ``latency``: a box prompt on the 3000x2000 ``bike.jpeg`` through ``POST /predict`` of a real
   ``isnet serve`` (first prompt on a new image, then a second prompt on the same image, then a
   small box whose crop needs its own inference), next to a full-image ``/predict`` of it. Bars:
   first-prompt p50 at most 1.0 s, second-prompt p50 at most 0.5 s.
4. ``switch``: a fresh ``MODEL_DIR`` at default settings serves 24 different ``duts-tr-300`` photos,
   then waits until ``/health`` reports the engine ``auto`` measured on them (bar: onnx-int8
   within 5 minutes on a CPU with VNNI). ``--parts switch,latency`` then measures the latency on
   that ``MODEL_DIR``, with no engine flag: what a new user gets after 24 photos.

Every mask is computed with the project's own code (:mod:`backend.isnet.prompting`); crops run at
``--size`` (default ``ISNET_INTERACTIVE_SIZE``), full images at ``ISNET_INPUT_SIZE``, all on
``--engine`` (default ``ISNET_ENGINE``). Several ``--margins`` or ``--sizes`` compare settings.

    .venv/bin/python bench/interactive.py [--parts duts,canvas,latency,switch] [--limit N] [--reps 9]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
from tqdm import tqdm

from backend.geometry import Box
from backend.images import load_image, load_mask
from backend.isnet.engines import create_engine
from backend.isnet.prompting import segment_object
from backend.isnet.segmenter import Segmenter
from backend.learning.registry import ModelRegistry
from backend.settings import load

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu
from serve import CONFIG as BRUSH_CONFIG
from serve import IMAGE, backend, file_server

DUTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "duts-te-500"
PROMPT_PAD = 0.10
LATENCY_BAR_S = 1.0
SECOND_BAR_S = 0.5
SWITCH_BAR_S = 300
SMALL_BOX = (20, 20, 40, 40)
"""A box whose crop (the box and its margin, squared) is not the whole image: a crop inference."""
DUTS_TR = Path(__file__).resolve().parents[2] / "shared" / "data" / "duts-tr-300"
CANVAS_BAR = 0.02
CONFIG = BRUSH_CONFIG.replace(
    "</View>", '<RectangleLabels name="box" toName="image" smart="true"><Label value="Foreground"/>'
               "</RectangleLabels></View>")


def gt_box(mask: np.ndarray, pad: float = PROMPT_PAD) -> Box | None:
    """The ground truth's bounding box, ``pad`` of its size added on each side (unclipped)."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return None
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    px, py = pad * (x1 - x0), pad * (y1 - y0)
    return Box(x0 - px, y0 - py, x1 + px, y1 + py)


def iou(prob: np.ndarray, gt: np.ndarray, threshold: float = 0.5) -> float:
    pred = prob > threshold * 255
    union = np.count_nonzero(pred | gt)
    return np.count_nonzero(pred & gt) / union if union else 1.0


class Models:
    """The full-image segmenter at the serving size and one crop segmenter per ``--sizes`` entry."""

    def __init__(self, engine: str, sizes: list[int]) -> None:
        settings = load()
        version = ModelRegistry(settings).current()
        self.engine = create_engine(engine, version, settings, settings.input_size)
        self.full = Segmenter(self.engine, settings.input_size)
        self.sizes = sizes
        self._segmenters: dict[int, Segmenter] = {}
        self._whole: dict[str, np.ndarray] = {}

    def crop_predict(self, size: int):
        """What the server does for a crop: the same engine at the interactive input size."""
        return self._segmenters.setdefault(size, Segmenter(self.engine, size)).predict

    def whole(self, name: str, image: np.ndarray) -> np.ndarray:
        if name not in self._whole:
            self._whole[name] = self.full.predict_one(image)
        return self._whole[name]


def read_pairs(limit: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    masks = sorted((DUTS / "masks").glob("*.png"))[:limit]
    return [(m.stem, load_image(DUTS / "images" / f"{m.stem}.jpg", 10**8), load_mask(m, 10**8) > 127)
            for m in tqdm(masks, desc="reading duts-te-500", leave=False)]


def bench_duts(models: Models, pairs, margins: list[float]) -> None:
    rows: dict[str, list[float]] = {"full image": []}
    for name, image, gt in tqdm(pairs, desc="duts-te-500 box prompts"):
        box = gt_box(gt)
        if box is None:
            continue
        rows["full image"].append(iou(models.whole(name, image), gt))
        for size in models.sizes:
            for margin in margins:
                prob = segment_object(image, models.crop_predict(size), box.clip(image.shape[1], image.shape[0]),
                                      margin=margin, whole=functools.partial(models.whole, name, image))
                rows.setdefault(f"box, size {size}, margin {margin:g}", []).append(iou(prob, gt))
    full = float(np.mean(rows["full image"]))
    print(f"\nduts-te-500, {len(rows['full image'])} images, prompt = ground-truth box + {PROMPT_PAD:.0%}")
    for label, values in rows.items():
        mean = float(np.mean(values))
        verdict = "" if label == "full image" else f"  {'ok' if mean >= full else 'BELOW'} (bar: >= full image)"
        print(f"  {label:32} mean IoU {mean:.4f}{verdict}")


def canvas_pairs(pairs, count: int) -> list[tuple[int, int]]:
    """Indices of ``count`` image pairs of the same height, consecutive in name order within a height."""
    waiting: dict[int, int] = {}
    out = []
    for k, (_, image, _) in enumerate(pairs):
        height = image.shape[0]
        if height in waiting:
            out.append((waiting.pop(height), k))
            if len(out) == count:
                break
        else:
            waiting[height] = k
    return out


def bench_canvas(models: Models, pairs, margins: list[float], count: int) -> None:
    alone, full, boxed = [], [], {}
    for n, (i, j) in enumerate(tqdm(canvas_pairs(pairs, count), desc="two-object canvases")):
        (na, a, ga), (nb, b, gb) = pairs[i], pairs[j]
        image = np.concatenate([a, b], axis=1)
        pick_right = n % 2 == 1
        name, own, gt_own = (nb, b, gb) if pick_right else (na, a, ga)
        gt = np.zeros(image.shape[:2], bool)
        x0 = a.shape[1] if pick_right else 0
        gt[:, x0: x0 + gt_own.shape[1]] = gt_own
        box = gt_box(gt)
        if box is None:
            continue
        alone.append(iou(models.whole(name, own), gt_own))
        canvas = models.full.predict_one(image)
        full.append(iou(canvas, gt))
        for size in models.sizes:
            for margin in margins:
                prob = segment_object(image, models.crop_predict(size), box.clip(image.shape[1], image.shape[0]),
                                      margin=margin, whole=functools.partial(np.copy, canvas))
                boxed.setdefault((size, margin), []).append(iou(prob, gt))
    ref = float(np.mean(alone))
    print(f"\n{len(alone)} two-object canvases (duts-te-500 images of the same height side by side), one object each")
    print(f"  object predicted alone (its own image)  mean IoU {ref:.4f}")
    print(f"  full-canvas prediction, same object     mean IoU {float(np.mean(full)):.4f}")
    for (size, margin), values in boxed.items():
        mean = float(np.mean(values))
        verdict = "ok" if mean >= ref - CANVAS_BAR else "OUTSIDE"
        print(f"  box, size {size}, margin {margin:g}:              mean IoU {mean:.4f} ({mean - ref:+.4f}; "
              f"bar within {CANVAS_BAR}: {verdict})")


def prompt_body(task_id: int, rect: tuple[float, float, float, float] | None) -> dict:
    body: dict = {"tasks": [{"id": task_id, "data": {"image": f"/{IMAGE.name}?task={task_id}"}}],
                  "label_config": CONFIG}
    if rect is not None:
        x, y, w, h = rect
        region = {"from_name": "box", "to_name": "image", "type": "rectanglelabels", "original_width": 3000,
                  "original_height": 2000, "value": {"x": x, "y": y, "width": w, "height": h,
                                                     "rectanglelabels": ["Foreground"]}}
        body["params"] = {"context": {"result": [region]}}
    return body


def timed(url: str, body: dict) -> float:
    start = time.perf_counter()
    response = requests.post(url + "/predict", json=body, timeout=600)
    elapsed = time.perf_counter() - start
    (entry,) = response.json()["results"]
    assert entry["result"] and entry["result"][0]["original_width"] == 3000, entry
    return elapsed


def bench_latency(reps: int, size: int) -> None:
    first, second, small, whole = [], [], [], []
    with file_server(IMAGE.parent) as images, backend(load().input_size, images, 4) as (url, _):
        health = requests.get(url + "/health", timeout=5).json()
        timed(url, prompt_body(0, (5, 10, 90, 80)))  # warm-up of the request path and the crop size
        for rep in tqdm(range(1, reps + 1), desc="latency"):
            first.append(timed(url, prompt_body(rep, (8, 10, 85, 82))))
            second.append(timed(url, prompt_body(rep, (10, 12, 80, 80))))
            small.append(timed(url, prompt_body(rep, SMALL_BOX)))
            whole.append(timed(url, prompt_body(1000 + rep, None)))
    print(f"\nbike.jpeg 3000x2000, crops at {size}, full image at {load().input_size}, {reps} runs, "
          f"{os.cpu_count()} CPUs, engine {health['engine']} ({health.get('engine_reason', '')})")
    rows = (("box prompt, first on the image", first, LATENCY_BAR_S),
            ("box prompt, second on the image", second, SECOND_BAR_S),
            ("small box, third (crop inference)", small, None), ("full-image /predict", whole, None))
    for label, values, bar in rows:
        p50, p95 = statistics.median(values), float(np.percentile(values, 95))
        extra = f" (bar p50 <= {bar} s: {'ok' if p50 <= bar else 'OVER'})" if bar else ""
        print(f"  {label:34} p50 {p50:6.3f} s  p95 {p95:6.3f} s{extra}")


def bench_switch(photos: int) -> None:
    """A fresh ``MODEL_DIR`` at default settings: ``photos`` different photos through ``/predict``, then
    the time until ``/health`` reports the engine ``auto`` measured (the bar: int8 within 5 minutes)."""
    pictures = sorted((DUTS_TR / "images").glob("*.jpg"))[:photos]
    with file_server(DUTS_TR / "images") as images, backend(load().input_size, images, 4) as (url, _):
        print(f"fresh MODEL_DIR {os.environ['MODEL_DIR']}: /health says {health_engine(url)}")
        for n, picture in enumerate(tqdm(pictures, desc="serving photos"), 1):
            body = {"tasks": [{"id": n, "data": {"image": f"/{picture.name}"}}], "label_config": CONFIG}
            assert requests.post(url + "/predict", json=body, timeout=600).json()["results"][0]["result"]
        start = time.monotonic()
        while "served:" not in health_engine(url) and time.monotonic() - start < 900:
            time.sleep(1)
        print(f"{photos} photos served; {time.monotonic() - start:.0f} s later /health says {health_engine(url)} "
              f"(bar: onnx-int8 within {SWITCH_BAR_S} s on a CPU with VNNI)")


def health_engine(url: str) -> str:
    health = requests.get(url + "/health", timeout=5).json()
    return f"{health['engine']}: {health.get('engine_reason') or health.get('engine_upgrade') or ''}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    settings = load()
    parser.add_argument("--parts", default="duts,canvas,latency")
    parser.add_argument("--limit", type=int, default=500, help="duts-te-500 images to use")
    parser.add_argument("--canvases", type=int, default=100)
    parser.add_argument("--engine", default=settings.engine)
    parser.add_argument("--sizes", default=str(settings.interactive_size), help="crop input sizes, comma-separated")
    parser.add_argument("--margins", default=str(settings.interactive_margin), help="box margins, comma-separated")
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--photos", type=int, default=24, help="photos served before the switch is awaited")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    sizes = [int(s) for s in args.sizes.split(",")]
    margins = [float(m) for m in args.margins.split(",")]
    print(f"CPU: {cpu()}")
    if parts & {"duts", "canvas"}:
        models = Models(args.engine, sizes)
        print(f"engine {models.engine.name}, full images at {models.full.size}, crops at {sizes}")
        pairs = read_pairs(len(list((DUTS / "masks").glob("*.png"))) if "canvas" in parts else args.limit)
        if "duts" in parts:
            bench_duts(models, pairs[: args.limit], margins)
        if "canvas" in parts:
            bench_canvas(models, pairs, margins, args.canvases)
    if "switch" in parts:  # a fresh MODEL_DIR, kept for the latency part: it then serves what auto chose
        os.environ["MODEL_DIR"] = tempfile.mkdtemp(prefix="isnet-bench-switch-")
        os.environ["ISNET_ENGINE"] = args.engine
        bench_switch(args.photos)
    if "latency" in parts:
        if len(sizes) == 1:
            os.environ["ISNET_INTERACTIVE_SIZE"] = str(sizes[0])
        os.environ["ISNET_ENGINE"] = args.engine
        bench_latency(args.reps, sizes[0])


if __name__ == "__main__":
    main()
