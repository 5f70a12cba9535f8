"""End to end against a real Label Studio 1.23, a real Redis and real ``python -m worker`` processes.

Images are imported into a project whose backend (and so its webhook) is this server; no task
is ever opened, so every prediction comes from pre-annotation jobs. Then the faults: a worker
killed in the middle of a chunk and started again, and Label Studio unreachable for a while.
An untrained ISNet at 64x64 predicts (the weights do not matter here, the plumbing does).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
import requests
from redis import Redis
from rq import Queue

from tests import labelstudio_server
from tests.paths import DIS_DEMO_IMAGES

pytestmark = pytest.mark.slow

CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="tag" toName="image"><Label value="Foreground"/></BrushLabels></View>'
)
REDIS_URL = "redis://127.0.0.1:6379/0"
DEADLINE_S = 120


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


class Worker:
    """One ``python -m worker`` subprocess."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        with open(log_path, "a") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "worker"], env={**os.environ, **env},
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        """SIGKILL to the worker and its work horse (RQ forks it into a session of its own): no chance
        to finish the chunk or tell Redis."""
        for child in children(self.process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            labelstudio_server.stop(self.process)


@pytest.fixture(scope="module")
def stack(label_studio, serve_backend, random_checkpoint, tmp_path_factory):
    """The backend (REDIS_URL set, its own queue) and the environment a worker needs."""
    home = tmp_path_factory.mktemp("preannotate-home")
    env = {
        "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.legacy_token,
        "ISNET_INPUT_SIZE": "64", "ISNET_ENGINE": "torch", "ISNET_WEIGHTS": str(random_checkpoint),
        "ISNET_DEVICE": "cpu", "ISNET_HOME": str(home), "MODEL_DIR": str(home / "models"),
        "REDIS_URL": REDIS_URL, "ISNET_QUEUE": f"isnet-e2e-{uuid.uuid4().hex[:8]}",
        "ISNET_PREANNOTATE_BATCH": "2", "ISNET_LS_BACKOFF": "1", "ISNET_LS_RETRIES": "6",
    }
    backend = serve_backend(env)
    version = requests.post(backend.url + "/setup", json={"schema": CONFIG}, timeout=5).json()["model_version"]
    workers: list[Worker] = []

    def start_worker(**extra: str) -> Worker:
        """A new worker, the only one: earlier ones are stopped so each test has the queue to itself."""
        for earlier in workers:
            earlier.stop()
        worker = Worker({**env, **extra}, tmp_path_factory.mktemp("worker") / "worker.log")
        workers.append(worker)
        return worker

    yield backend, version, env, start_worker
    for worker in workers:
        worker.stop()
    connection = Redis.from_url(REDIS_URL)
    Queue(env["ISNET_QUEUE"], connection=connection).delete(delete_jobs=True)
    connection.delete(f"isnet:{env['ISNET_QUEUE']}:progress")


def images(tmp_path: Path, names: list[str]) -> list[Path]:
    """Copies under new names: Label Studio keeps each upload as a new task."""
    out = []
    for n, name in enumerate(names):
        path = tmp_path / f"{n}-{uuid.uuid4().hex[:6]}-{name}"
        shutil.copy(DIS_DEMO_IMAGES / name, path)
        out.append(path)
    return out


def wait_for_predictions(label_studio, project: int, task_ids: list[int], version: str,
                         timeout: float = DEADLINE_S) -> Counter:
    """Predictions per task once every task has one of ``version`` (or the deadline passed)."""
    deadline = time.monotonic() + timeout
    while True:
        per_task = Counter(p["task"] for p in label_studio.predictions(project) if p["model_version"] == version)
        if all(per_task[t] >= 1 for t in task_ids) or time.monotonic() > deadline:
            return per_task
        time.sleep(1)


def test_imported_images_are_pre_annotated_once_and_a_second_import_adds_only_the_new_tasks(
        stack, label_studio, tmp_path):
    backend, version, _, start_worker = stack
    worker = start_worker()
    try:
        check_two_imports(backend, version, label_studio, tmp_path)
    finally:
        worker.stop()  # the next test needs the queue to itself


def check_two_imports(backend, version, label_studio, tmp_path) -> None:
    project = label_studio.create_project("pre-annotation", CONFIG)
    label_studio.connect_backend(project, backend.url)
    names = sorted(p.name for p in DIS_DEMO_IMAGES.glob("*.jpeg"))
    first = label_studio.upload_images(project, images(tmp_path, names[:3]))
    per_task = wait_for_predictions(label_studio, project, first, version)
    assert {t: per_task[t] for t in first} == dict.fromkeys(first, 1)

    everything = label_studio.upload_images(project, images(tmp_path, names[:2]))
    new = sorted(set(everything) - set(first))
    per_task = wait_for_predictions(label_studio, project, everything, version)
    assert len(new) == 2
    assert {t: per_task[t] for t in everything} == dict.fromkeys(everything, 1)
    assert len(label_studio.predictions(project)) == len(everything)
    for prediction in label_studio.predictions(project):
        assert 0.0 <= prediction["score"] <= 1.0
    metrics = requests.get(backend.url + "/metrics.json", timeout=5).json()["preannotation"]
    assert metrics["backend"] == "rq" and metrics["done"] >= len(everything)


def test_a_worker_killed_mid_chunk_and_restarted_finishes_with_none_missing_or_duplicated(
        stack, label_studio, tmp_path):
    backend, version, _, start_worker = stack
    project = label_studio.create_project("killed worker", CONFIG)
    label_studio.connect_backend(project, backend.url)
    # A slow worker (the version name does not depend on the input size), so it dies mid-chunk.
    slow = start_worker(ISNET_INPUT_SIZE="1024", ISNET_PREDICT_BATCH="1")
    names = sorted(p.name for p in DIS_DEMO_IMAGES.glob("*.jpeg"))
    task_ids = label_studio.upload_images(project, images(tmp_path, (names * 4)[:8]))
    deadline = time.monotonic() + DEADLINE_S
    while not label_studio.predictions(project) and time.monotonic() < deadline:
        time.sleep(0.2)
    slow.kill()
    time.sleep(1.0)  # a write already received by Label Studio is stored; that is not the dead worker
    written = len(label_studio.predictions(project))
    assert 0 < written < len(task_ids), "the worker must die with part of the import done"
    time.sleep(3)
    assert len(label_studio.predictions(project)) == written, "nothing of the killed worker may live on"
    restarted = start_worker()
    # Recovery is at once when the restarted worker re-queues the dead job, but under load RQ's own
    # clean-up may get to it first and retry it after its retry interval: allow for that path too.
    per_task = wait_for_predictions(label_studio, project, task_ids, version, timeout=3 * DEADLINE_S)
    assert {t: per_task[t] for t in task_ids} == dict.fromkeys(task_ids, 1)
    assert len(label_studio.predictions(project)) == len(task_ids)
    assert "re-queued 1 job(s) whose worker died" in restarted.log_path.read_text()


class Outage:
    """A TCP proxy in front of Label Studio that can refuse and cut every connection: Label Studio "down"."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.down = False
        self._open: list[socket.socket] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def set_down(self, down: bool) -> None:
        self.down = down
        if down:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            self._open.clear()

    def _accept(self) -> None:
        while True:
            client, _ = self._server.accept()
            if self.down:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def test_label_studio_down_for_a_while_is_retried_not_lost(stack, label_studio, tmp_path):
    backend, version, _, start_worker = stack
    outage = Outage(int(label_studio.url.rsplit(":", 1)[1]))
    project = label_studio.create_project("outage", CONFIG)
    label_studio.connect_backend(project, backend.url)
    outage.set_down(True)
    worker = start_worker(LABEL_STUDIO_URL=outage.url)
    names = sorted(p.name for p in DIS_DEMO_IMAGES.glob("*.jpeg"))
    task_ids = label_studio.upload_images(project, images(tmp_path, names[:2]))
    deadline = time.monotonic() + 60
    while "retry" not in worker.log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(5)  # down for a while: several retries
    assert label_studio.predictions(project) == []
    outage.set_down(False)
    per_task = wait_for_predictions(label_studio, project, task_ids, version)
    assert {t: per_task[t] for t in task_ids} == dict.fromkeys(task_ids, 1)
    assert "retry" in worker.log_path.read_text()
