"""Dataset evaluation in parallel worker processes, merged into single-process-identical results.

How: samples are cut into chunks of consecutive indices; each worker decodes its chunk,
steps a fresh :class:`~backend.metrics.measures.MetricSuite` and sends it back; the parent
merges the suites in chunk order. PySODMetrics' state is one list entry per sample, so
the merged lists are exactly the lists one process would have built, in the same order,
and the averages are bit-identical (``workers=1`` runs the same chunks inline).

Each file is decoded once, in the worker that evaluates it; the parent only pairs names
(and, for ``evaluate_segmenter``, runs the model while workers score earlier masks).

Why it is as fast as 2 cores allow, first run included: the workers come from a fork server
that imports the metrics without scikit-learn (:mod:`backend.metrics.preload`); while it
starts, the parent scores samples one at a time; and chunks shrink to single samples at the
end, so no worker idles while another finishes a long chunk.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from backend.metrics.issues import Issue, blocking
from backend.metrics.masks import MaskError, SizeMismatch, align, read_mask
from backend.metrics.measures import MetricSuite
from backend.metrics.pairing import Pair


@dataclass(frozen=True)
class Sample:
    """One pair to score; ``pred`` is a mask already in memory (from the model), else ``pair.source`` is read."""

    index: int
    pair: Pair
    pred: np.ndarray | None = None
    saved: Path | None = None


@dataclass
class ImageResult:
    """One image's own metric values, for the per-image report (sort by any column)."""

    index: int
    name: str
    ground_truth: str
    prediction: str | None
    image: str | None
    height: int
    width: int
    resized: bool
    values: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.values, "height": self.height, "width": self.width,
                "resized": self.resized, "ground_truth": self.ground_truth, "prediction": self.prediction,
                "image": self.image}


@dataclass
class ChunkResult:
    index: int
    suite: MetricSuite
    images: list[ImageResult]
    issues: list[Issue]
    cpu_seconds: float = 0.0


@dataclass
class Evaluation:
    """Dataset metrics, curves (index = threshold 0..255), per-image values and every issue met."""

    metrics: dict[str, float]
    curves: dict[str, list[float]]
    images: list[ImageResult]
    issues: list[Issue]
    workers: int
    seconds: float
    cpu_seconds: float = 0.0
    """CPU time spent decoding and scoring, summed over workers (what one free core would need)."""

    @property
    def count(self) -> int:
        return len(self.images)

    @property
    def blocking(self) -> list[Issue]:
        return blocking(self.issues)


def evaluate_chunk(samples: list[Sample], chunk_index: int, resize: str, max_pixels: int) -> ChunkResult:
    """Score consecutive samples in a fresh suite (runs in a worker, or inline)."""
    cpu_start = time.process_time()
    suite = MetricSuite()
    images: list[ImageResult] = []
    issues: list[Issue] = []
    for sample in samples:
        pair = sample.pair
        gt, pred = None, sample.pred
        try:
            gt = read_mask(pair.gt, max_pixels)
        except MaskError as exc:
            issues.append(Issue("unreadable", pair.name, str(pair.gt), f"ground truth: {exc}"))
        if pred is None:
            try:
                pred = read_mask(pair.source, max_pixels)
            except MaskError as exc:
                issues.append(Issue("unreadable", pair.name, str(pair.source), f"prediction: {exc}"))
        if gt is None or pred is None:
            continue
        shown = str(pair.source) if sample.pred is None else str(sample.saved or pair.source)
        height, width = pred.shape
        try:
            pred, resized = align(pred, gt.shape, resize)
        except SizeMismatch as exc:
            issues.append(Issue("size_mismatch", pair.name, shown, str(exc)))
            continue
        if resized:
            issues.append(Issue("resized", pair.name, shown, f"{width}x{height} -> {gt.shape[1]}x{gt.shape[0]}"))
        if not np.any(gt > 128):
            issues.append(Issue("empty_ground_truth", pair.name, str(pair.gt)))
        values = suite.step(pred, gt)
        images.append(ImageResult(
            index=sample.index, name=pair.name, ground_truth=str(pair.gt),
            prediction=str(pair.source) if sample.pred is None else (str(sample.saved) if sample.saved else None),
            image=None if sample.pred is None else str(pair.source),
            height=int(gt.shape[0]), width=int(gt.shape[1]), resized=resized, values=values))
    return ChunkResult(chunk_index, suite, images, issues, time.process_time() - cpu_start)


def _ready() -> bool:
    return True


def _init_worker() -> None:
    """Workers leave Ctrl-C to the parent and use one OpenCV thread each (the pool is the parallelism)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import cv2

    cv2.setNumThreads(1)


def default_workers() -> int:
    """The CPUs this process may run on (the affinity mask, not the machine's core count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _context() -> multiprocessing.context.BaseContext:
    """A fork server that imports the metrics once and forks clean workers from it.

    Not plain ``fork``: a parent that has already used OpenCV's or torch's thread pools (an
    inline evaluation, the model in ``evaluate_segmenter``, a training loop) hands its children
    a copy of pools whose threads do not exist there, and they hang. ``spawn`` where there is no
    fork server (Windows).
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        # ``preload`` first: it keeps scikit-learn out of the server (and so out of every worker).
        ctx.set_forkserver_preload(["backend.metrics.preload", __name__])
        return ctx
    return multiprocessing.get_context("spawn")


def _chunks(samples: Iterable[Sample], sizes: Callable[[int], int]) -> Iterator[tuple[int, list[Sample]]]:
    """Consecutive samples cut into chunks; ``sizes(n)`` is the size of the chunk after ``n`` samples."""
    chunk: list[Sample] = []
    index = taken = 0
    size = sizes(0)
    for sample in samples:
        chunk.append(sample)
        if len(chunk) == size:
            yield index, chunk
            taken += size
            chunk, index, size = [], index + 1, sizes(taken)
    if chunk:
        yield index, chunk


class Evaluator:
    """Scores samples with ``workers`` processes (1 = inline) and merges them in sample order.

    ``inline_while_starting``: until the workers answer, this process scores chunks itself, so
    their start-up costs nothing; switch it off to run every chunk in the pool (tests, timing).
    Where a chunk ran never changes a result.
    """

    def __init__(self, workers: int | None = None, resize: str = "aspect", max_pixels: int = 64_000_000,
                 chunk_size: int | None = None, progress: bool = True, desc: str = "evaluate",
                 inline_while_starting: bool = True) -> None:
        self.workers = max(1, workers or default_workers())
        self.inline_while_starting = inline_while_starting
        self.resize = resize
        self.max_pixels = max_pixels
        self.chunk_size = chunk_size
        self.progress = progress
        self.desc = desc

    def _chunk_size(self, total: int, taken: int) -> int:
        """Size of the next chunk once ``taken`` of ``total`` samples are handed out.

        Guided scheduling: chunks of up to 16 samples while much is left (pickling one suite
        per chunk is then noise), shrinking to single samples at the end, so the workers run
        out of work together instead of one finishing a long last chunk while the others idle.
        """
        if self.chunk_size:
            return self.chunk_size
        return max(1, min(16, math.ceil((total - taken) / (self.workers * 4))))

    def run(self, samples: Iterable[Sample], total: int, issues: Iterable[Issue] = ()) -> Evaluation:
        """Evaluate ``samples`` (``total`` of them, for the bar); ``issues`` found before are kept first.

        ``issues`` may be a list that ``samples`` appends to while it is consumed (images the
        model could not read); it is read only after every sample has been produced.
        """
        start = time.perf_counter()
        results: list[ChunkResult] = []
        pool = self._start_pool() if self.workers > 1 else None
        started = threading.Event()
        if pool is None:
            started.set()
        # While the workers start, this process scores one sample at a time, so it can hand
        # over to them the moment they are up.
        chunks = _chunks(samples, lambda taken: self._chunk_size(total, taken) if started.is_set() else 1)
        bar = tqdm(total=total, desc=self.desc, unit="img", disable=not self.progress, file=sys.stderr)
        finished = False
        try:
            if pool is None:
                for index, chunk in chunks:
                    results.append(evaluate_chunk(chunk, index, self.resize, self.max_pixels))
                    bar.update(len(chunk))
            else:
                results = self._run_pool(pool, chunks, bar, started)
            finished = True
        finally:
            bar.close()
            if pool is not None:
                pool.shutdown(wait=finished, cancel_futures=True)
        results.sort(key=lambda r: r.index)
        suite = MetricSuite()
        images: list[ImageResult] = []
        found = list(issues)
        for result in results:
            suite.merge(result.suite)
            images.extend(result.images)
            found.extend(result.issues)
        metrics = suite.get_results() if len(suite) else {}
        curves = {k: v.tolist() for k, v in suite.curves().items()} if len(suite) else {}
        return Evaluation(metrics, curves, images, found, self.workers, time.perf_counter() - start,
                          sum(r.cpu_seconds for r in results))

    def _start_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.workers, mp_context=_context(), initializer=_init_worker)

    def _run_pool(self, pool: ProcessPoolExecutor, chunks: Iterator[tuple[int, list[Sample]]],
                  bar: tqdm, started: threading.Event) -> list[ChunkResult]:
        results: list[ChunkResult] = []
        pending: dict[Future[ChunkResult], int] = {}

        def collect(block_until: Callable[[], bool]) -> None:
            while pending and block_until():
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    bar.update(pending.pop(future))
                    results.append(future.result())

        # Starting the workers (a fork server importing the metrics: a third of a second or more) is not
        # idle time: the first submit blocks until the fork server is up, so it is made from a
        # helper thread, and until every worker answers this process scores the chunks itself.
        failed: list[BaseException] = []  # written before ``started`` is set, read after

        def start() -> None:
            try:
                starting = [pool.submit(_ready) for _ in range(self.workers)]
                wait(starting)
                failed.extend(f.exception() for f in starting if f.exception() is not None)
            except BaseException as exc:  # handed to the caller below
                failed.append(exc)
            finally:
                started.set()

        def raise_if_failed() -> None:
            # A pool that never started is an error, even where the parent did all the work.
            if failed:
                raise RuntimeError(f"the evaluation worker processes could not be started: {failed[0]!r}") \
                    from failed[0]

        starter = threading.Thread(target=start, name="evaluator-pool-start", daemon=True)
        starter.start()
        if not self.inline_while_starting:
            started.wait()
        for index, chunk in chunks:
            if not started.is_set():
                results.append(evaluate_chunk(chunk, index, self.resize, self.max_pixels))
                bar.update(len(chunk))
                continue
            raise_if_failed()
            pending[pool.submit(evaluate_chunk, chunk, index, self.resize, self.max_pixels)] = len(chunk)
            # Bounded in flight: masks produced by the model wait in memory only this long.
            collect(lambda: len(pending) >= 4 * self.workers)
        collect(lambda: True)
        starter.join()
        raise_if_failed()
        return results


def evaluate_predictions(pairs: list[Pair], issues: Iterable[Issue] = (), **options: Any) -> Evaluation:
    """Score saved masks: ``pair.source`` is a prediction file."""
    samples = (Sample(index, pair) for index, pair in enumerate(pairs))
    return Evaluator(**options).run(samples, len(pairs), issues)


def evaluate_segmenter(segmenter: Any, pairs: list[Pair], issues: Iterable[Issue] = (),
                       save_dir: Path | None = None, **options: Any) -> Evaluation:
    """Run ``segmenter`` on each ``pair.source`` image in this process and score the masks in workers.

    Masks are optionally written to ``save_dir/<name>.png`` (what ``isnet predict`` writes), so
    the same evaluation can be repeated later from the files with identical results.
    """
    from PIL import Image

    from backend.images import ImageError, load_image

    found = list(issues)
    max_pixels = options.get("max_pixels", 64_000_000)
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)

    def produce() -> Iterator[Sample]:
        for index, pair in enumerate(pairs):
            try:
                image = load_image(pair.source, max_pixels)
            except ImageError as exc:
                found.append(Issue("unreadable", pair.name, str(pair.source), f"image: {exc}"))
                continue
            mask = segmenter.predict_one(image)
            saved = None
            if save_dir is not None:
                saved = save_dir / f"{pair.name}.png"
                Image.fromarray(mask, "L").save(saved)
            yield Sample(index, pair, mask, saved)

    options.setdefault("chunk_size", 1)  # inference is the slow part: score each mask as soon as it exists
    options.setdefault("desc", "predict+evaluate")
    result = Evaluator(**options).run(produce(), len(pairs), [])
    # Image-decoding issues belong before the workers' issues only by kind; keep pairing issues first.
    result.issues = found + result.issues
    return result
