"""One ``isnet serve`` process serving many Label Studio projects, each with a model version of its
own: what a project's first request costs (loading its model), what a warm one costs, and how
peak memory follows ``ISNET_MAX_LOADED_MODELS``.

Ten project lineages each serve a version of their own (copies of the pretrained weights under
different names, so each is loaded on its own, as ten retrained versions would be). For each
setting of ``ISNET_MAX_LOADED_MODELS`` a fresh server gets, project after project and twice round,
two single-task ``/predict`` of the 3000x2000 ``bike.jpeg``: the first is cold whenever that
project's model was evicted since (always, when fewer models fit than projects are used in turn),
the second is warm. Reported: median cold and warm latency, model loads and evictions (from
``/metrics.json``), and the gunicorn worker's peak resident memory (VmHWM).

    .venv/bin/python bench/projects.py [--projects 10] [--size 1024] [--loaded 1,3,10] [--engine torch]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu
from serve import SHARED, backend, file_server, predict, worker_peak_mib

from backend.isnet.versions import CHECKPOINT_FILE
from backend.learning.registry import ModelRegistry
from backend.settings import load


def make_projects(model_dir: Path, projects: int) -> list[str]:
    """``projects`` lineages ``p1..pN``, each serving its own version (a link to the pretrained weights)."""
    settings = load().replace(model_dir_env=str(model_dir))
    base = ModelRegistry(settings)
    weights = base.pretrained().checkpoint
    names = []
    for n in range(1, projects + 1):
        registry = ModelRegistry(settings, f"p{n}")
        name = registry.new_version_name()
        (registry.versions_dir / name).mkdir(parents=True)
        (registry.versions_dir / name / CHECKPOINT_FILE).symlink_to(weights)
        registry.promote(name, how="use")
        names.append(name)
    return names


def run(loaded: int, projects: int, size: int, engine: str, model_dir: Path, images_url: str) -> dict[str, float]:
    cold, warm = [], []
    with backend(size, images_url, 8, MODEL_DIR=str(model_dir), ISNET_MAX_LOADED_MODELS=str(loaded),
                 ISNET_ENGINE=engine) as (url, proc):
        for _round in range(2):
            for n in range(1, projects + 1):
                cold.append(predict(url, project=f"{n}.1700000000"))
                warm.append(predict(url, project=f"{n}.1700000000"))
        inference = requests.get(url + "/metrics.json", timeout=10).json()["inference"]
        peak = worker_peak_mib(proc.pid)
    return {"cold": statistics.median(cold), "warm": statistics.median(warm), "peak": peak,
            "loads": inference["model_loads"], "evictions": inference["model_evictions"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--projects", type=int, default=10)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--loaded", default="1,3,10", help="ISNET_MAX_LOADED_MODELS values to run")
    parser.add_argument("--engine", default="torch", help="ISNET_ENGINE of the server (default torch: no builds)")
    args = parser.parse_args()
    settings = [int(v) for v in args.loaded.split(",")]

    print(f"{args.projects} projects, each with its own version; bike.jpeg 3000x2000 @ {args.size}, "
          f"{args.engine}\n  CPU: {cpu()}")
    print(f"  {'loaded max':>10} {'cold p50 s':>11} {'warm p50 s':>11} {'loads':>6} {'evicted':>8} {'peak MiB':>9}")
    with tempfile.TemporaryDirectory(prefix="isnet-projects-") as tmp, file_server(SHARED) as images:
        model_dir = Path(tmp) / "models"
        make_projects(model_dir, args.projects)
        for loaded in settings:
            r = run(loaded, args.projects, args.size, args.engine, model_dir, images)
            print(f"  {loaded:>10} {r['cold']:>11.2f} {r['warm']:>11.2f} {r['loads']:>6} {r['evictions']:>8} "
                  f"{r['peak']:>9.0f}", flush=True)


if __name__ == "__main__":
    main()
