"""Peak memory of ``isnet serve`` under ``--concurrency`` (default 20) simultaneous ``/predict`` of
3000x2000 photos, and the settings that bound it.

Each request is one task whose image is a different 3000x2000 photo (the DIS demo ``bike.jpeg``,
flipped, rotated and recompressed, so no two are alike), fetched by the server from a local file
server standing in for Label Studio; the result cache is off. While they run, the resident memory
(RSS) of the whole server process tree (the gunicorn master and its workers) is sampled every
50 ms; the peak and the idle figure before the burst are printed with the settings that bound
the difference:

* ``THREADS`` (less the two kept free): ``/predict`` slots; a request holds its decoded image only
  while it has one, and one arriving while none is free waits with its body unread;
* ``ISNET_PREDICT_BATCH``: images in one engine call (the network's activations);
* ``WORKERS``: each process holds its own model.

    .venv/bin/python bench/memory.py [--engine onnx-fp32] [--size 1024] [--threads 32] [--batch 4]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu
from serve import CONFIG, IMAGE, backend, file_server

SAMPLE_S = 0.05
RESERVED_THREADS = 2  # backend.server.state: kept free of /predict


def tree_rss_mib(root: int) -> float:
    """Resident memory of ``root`` and every process below it, in MiB."""
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


class Sampler:
    """The peak of :func:`tree_rss_mib` while it runs, sampled every ``SAMPLE_S``."""

    def __init__(self, root: int) -> None:
        self.root, self.peak, self._stop = root, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_mib(self.root))
            self._stop.wait(SAMPLE_S)


def photos(folder: Path, count: int) -> list[str]:
    """``count`` different 3000x2000 JPEGs made from ``bike.jpeg``, as served paths."""
    base = Image.open(IMAGE).convert("RGB")
    paths = []
    for i in range(count):
        image = base.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if i % 2 else base
        image = image.rotate(i * 3, fillcolor=(i * 9 % 255, 128, 128)) if i else image
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=85 + i % 10)
        (folder / f"photo-{i}.jpeg").write_bytes(buf.getvalue())
        paths.append(f"/photo-{i}.jpeg")
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", default="onnx-fp32")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--threads", type=int, default=32, help="THREADS (the code's default: 32)")
    parser.add_argument("--batch", type=int, default=4, help="ISNET_PREDICT_BATCH (the code's default: 4)")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    with Image.open(IMAGE) as img:
        size = img.size
    with tempfile.TemporaryDirectory() as tmp:
        paths = photos(Path(tmp), args.concurrency)
        with file_server(Path(tmp)) as host, backend(args.size, host, args.threads, ISNET_ENGINE=args.engine,
                                                     ISNET_PREDICT_BATCH=str(args.batch),
                                                     WORKERS=str(args.workers)) as (url, proc):
            idle = tree_rss_mib(proc.pid)

            def one(i: int) -> tuple[int, float]:
                body = {"tasks": [{"id": i + 1, "data": {"image": paths[i]}}], "label_config": CONFIG}
                start = time.perf_counter()
                response = requests.post(url + "/predict", json=body, timeout=3600)
                (entry,) = response.json()["results"]
                assert entry.get("result"), entry  # a region, not a deferral
                return response.status_code, time.perf_counter() - start

            started = time.perf_counter()
            with Sampler(proc.pid) as sampler, ThreadPoolExecutor(args.concurrency) as pool:
                answers = list(pool.map(one, range(args.concurrency)))
            wall = time.perf_counter() - started
    slots = max(1, args.threads - RESERVED_THREADS)
    statuses = sorted({status for status, _ in answers})
    slowest = max(seconds for _, seconds in answers)
    print(f"isnet serve, {args.concurrency} concurrent /predict of {size[0]}x{size[1]} photos "
          f"({args.engine} at {args.size}, cache off)\n  CPU: {cpu()}")
    print(f"  settings: WORKERS={args.workers}  THREADS={args.threads} ({slots} /predict slots)  "
          f"ISNET_PREDICT_BATCH={args.batch}")
    print(f"  answers: {statuses}  wall {wall:.1f} s  slowest {slowest:.1f} s")
    print(f"  server tree RSS: idle {idle:.0f} MiB  peak {sampler.peak:.0f} MiB  "
          f"(+{sampler.peak - idle:.0f} MiB under load)")


if __name__ == "__main__":
    main()
