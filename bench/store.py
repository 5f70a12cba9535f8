"""What a shared model store (``ISNET_MODEL_STORE``) costs a serving replica: the cold replica's first
``/predict`` of a project (the version downloaded from the store, checked by sha256, and loaded),
and the warm overhead against a local ``MODEL_DIR``.

Project 7 serves a version of its own (a copy of the pretrained weights, 176 MB). Local: a server
whose ``MODEL_DIR`` holds it. Store: the version is published to ``rclone serve s3`` on this
machine (a stand-in for S3; a real one adds network time to the cold number only), its pointer in
Redis, and a server with an empty ``MODEL_DIR`` serves it. Both servers run at once; each gets
the project's first ``/predict`` (cold), then ``--reps`` more each, alternated so both see the same
load (warm, the median reported), one at a time, with the result cache off. The warm bar: within 5 % of local.

    .venv/bin/python bench/store.py [--size 1024] [--reps 20] [--engine torch]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine import cpu
from serve import SHARED, backend, file_server, predict

from backend import store
from backend.isnet.versions import CHECKPOINT_FILE
from backend.learning.registry import ModelRegistry
from backend.settings import load
from tests import s3_server

PROJECT = "7.1700000000"
REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"


def add_version(model_dir: Path, url: str = "") -> str:
    """Project 7's own version (a real copy of the pretrained weights), current; published when ``url``."""
    settings = load().replace(model_dir_env=str(model_dir), model_store=url, redis_url=REDIS_URL if url else "")
    store.connect(settings)
    registry = ModelRegistry(settings, "p7")
    name = registry.new_version_name()
    (registry.versions_dir / name).mkdir(parents=True)
    shutil.copyfile(registry.pretrained().checkpoint, registry.versions_dir / name / CHECKPOINT_FILE)
    registry.promote(name, how="use")
    return name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--engine", default="torch")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, file_server(SHARED) as images_url, \
            s3_server.serve(Path(tmp) / "s3") as s3:
        root = Path(tmp)
        os.environ.update(s3.env())
        store_url = f"s3://models/bench-{uuid.uuid4().hex[:8]}"
        add_version(root / "local")
        add_version(root / "publisher", store_url)
        try:
            with backend(args.size, images_url, 8, MODEL_DIR=str(root / "local"), ISNET_ENGINE=args.engine) \
                    as (local, _), \
                 backend(args.size, images_url, 8, MODEL_DIR=str(root / "replica"), ISNET_ENGINE=args.engine,
                         ISNET_MODEL_STORE=store_url, REDIS_URL=REDIS_URL) as (replica, _):
                cold = {"local": predict(local, project=PROJECT), "store": predict(replica, project=PROJECT)}
                warm: dict[str, list[float]] = {"local": [], "store": []}
                for _ in range(args.reps):  # alternated: both see the same machine load
                    warm["local"].append(predict(local, project=PROJECT))
                    warm["store"].append(predict(replica, project=PROJECT))
        finally:
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            for key in client.scan_iter(match=f"isnet:store:{store_url}:*"):
                client.delete(key)
    rows = [(label, cold[key], statistics.median(warm[key]))
            for label, key in (("local MODEL_DIR", "local"), ("store (cold replica, empty MODEL_DIR)", "store"))]
    print(f"{cpu()}; {args.engine} at {args.size}, one task of bike.jpeg (3000x2000), {args.reps} warm requests")
    print("| MODEL_DIR | first /predict of project 7 (s) | warm /predict, median (s) |")
    print("| --- | --- | --- |")
    for name, cold, warm in rows:
        print(f"| {name} | {cold:.2f} | {warm:.3f} |")
    overhead = rows[1][2] / rows[0][2] - 1
    print(f"warm overhead of the store: {overhead * 100:+.1f} % (bar: within 5 %)")


if __name__ == "__main__":
    main()
