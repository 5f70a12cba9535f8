"""Pre-annotation throughput: tasks per minute for 50 tasks with 1 and with 2 RQ workers.

    .venv/bin/python bench/preannotate.py [--tasks 50] [--workers 1 2] [--size 1024] [--engine auto]

Everything is real: a Label Studio 1.23 (the tests' cached install, started here), the Redis at
REDIS_URL (default redis://127.0.0.1:6379/0), ``python -m worker`` processes and the served model
version (ISNET_WEIGHTS or the fetched weights). For each worker count a fresh project gets
``--tasks`` images (the DIS demo images, repeated), the workers are started and registered, then
the tasks are queued exactly as ``TASKS_CREATED`` queues them, and the clock runs until every task
has its prediction. The time includes each worker loading the network on its first job.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from redis import Redis  # noqa: E402
from rq import Queue, Worker  # noqa: E402

from backend.jobs.queue import submit  # noqa: E402
from backend.learning.registry import ModelRegistry  # noqa: E402
from backend.settings import load  # noqa: E402
from tests import labelstudio_server  # noqa: E402
from tests.paths import DIS_DEMO_IMAGES  # noqa: E402

CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="tag" toName="image"><Label value="Foreground"/></BrushLabels></View>'
)


def run_once(ls: labelstudio_server.LabelStudio, env: dict[str, str], tasks: int, workers: int,
             tmp: Path) -> float:
    """Seconds from queueing ``tasks`` tasks until each has a prediction, with ``workers`` workers."""
    os.environ.update(env)
    settings = load()
    project = ls.create_project(f"bench {workers} worker(s)", CONFIG)
    sources = sorted(DIS_DEMO_IMAGES.glob("*.jpeg"))
    paths = []
    for n in range(tasks):
        path = tmp / f"{n}-{uuid.uuid4().hex[:6]}-{sources[n % len(sources)].name}"
        shutil.copy(sources[n % len(sources)], path)
        paths.append(path)
    task_ids = []
    for i in range(0, len(paths), 10):
        task_ids = ls.upload_images(project, paths[i:i + 10])
    connection = Redis.from_url(settings.redis_url)
    queue = Queue(settings.queue_name, connection=connection)
    procs = [subprocess.Popen([sys.executable, "-m", "worker"], env={**os.environ}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True) for _ in range(workers)]
    try:
        while len(Worker.all(queue=queue)) < workers:
            time.sleep(0.2)
        version = ModelRegistry(settings).current().name
        start = time.monotonic()
        submit(project, task_ids, version, settings)
        while len({p["task"] for p in ls.predictions(project)}) < len(task_ids):
            time.sleep(0.5)
        return time.monotonic() - start
    finally:
        for proc in procs:
            labelstudio_server.stop(proc)
        queue.delete(delete_jobs=True)
        connection.delete(f"isnet:{settings.queue_name}:progress")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--size", type=int, default=0, help="ISNET_INPUT_SIZE (default: the setting)")
    parser.add_argument("--engine", default="", help="ISNET_ENGINE (default: the setting)")
    args = parser.parse_args()
    base = load()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        ls = labelstudio_server.start(tmp / "label-studio")
        try:
            env = {"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ls.legacy_token,
                   "REDIS_URL": base.redis_url or "redis://127.0.0.1:6379/0",
                   "ISNET_QUEUE": f"isnet-bench-{uuid.uuid4().hex[:8]}",
                   "ISNET_INPUT_SIZE": str(args.size or base.input_size), "ISNET_ENGINE": args.engine or base.engine}
            print(f"{platform.node()}: {os.cpu_count()} CPUs, device {base.device}, input {env['ISNET_INPUT_SIZE']}, "
                  f"engine {env['ISNET_ENGINE']}, batch {base.preannotate_batch} tasks per job")
            print(f"{'workers':>7} {'tasks':>6} {'seconds':>8} {'tasks/min':>10}")
            for workers in args.workers:
                seconds = run_once(ls, env, args.tasks, workers, tmp)
                print(f"{workers:>7} {args.tasks:>6} {seconds:>8.1f} {60 * args.tasks / seconds:>10.1f}", flush=True)
        finally:
            labelstudio_server.stop(ls.process)
    return 0


if __name__ == "__main__":
    sys.exit(main())
