"""Shared fixtures: an untrained checkpoint, an image host, `isnet serve` processes, Label Studio."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests import labelstudio_server
from tests.paths import DIS_DEMO_IMAGES

BACKEND_START_TIMEOUT_S = 180

# The tests train tiny networks, whose few-pixel maps hit NaN gradients in oneDNN's bf16 kernels
# now and then; bf16 autocast (the default on AMX CPUs) is for the real ISNet at 1024.
os.environ.setdefault("ISNET_TRAIN_AMP", "off")


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory) -> Path:
    """Where only the plumbing is under test, an untrained ISNetDIS (any state dict of the right shape) will do."""
    import torch

    from backend.isnet.network import ISNetDIS

    path = tmp_path_factory.mktemp("weights") / "random.pth"
    torch.manual_seed(0)
    torch.save(ISNetDIS().state_dict(), path)
    return path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class ImageHost:
    """A real HTTP server for image files: stands in for Label Studio's ``/data/upload``."""

    root: Path
    url: str
    port: int

    def add(self, name: str, data: bytes) -> str:
        """Serve ``data`` as ``/<name>``; returns that path."""
        (self.root / name).write_bytes(data)
        return "/" + name


@contextlib.contextmanager
def serve_directory(root: Path) -> Iterator[ImageHost]:
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    try:
        yield ImageHost(root, f"http://127.0.0.1:{port}", port)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def image_host(tmp_path_factory) -> Iterator[ImageHost]:
    """The DIS demo images (and whatever tests add) over HTTP on 127.0.0.1."""
    root = tmp_path_factory.mktemp("image-host")
    for image in DIS_DEMO_IMAGES.iterdir():
        shutil.copy(image, root / image.name)
    with serve_directory(root) as host:
        yield host


@dataclass
class Backend:
    """A running ``isnet serve`` subprocess."""

    url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="session")
def serve_backend(tmp_path_factory) -> Iterator[Callable[..., Backend]]:
    """Start ``isnet serve`` with extra environment; every process is stopped at the end of the session."""
    started: list[Backend] = []

    def start(env: dict[str, str], timeout: float = BACKEND_START_TIMEOUT_S) -> Backend:
        port = labelstudio_server.free_port()
        log_path = tmp_path_factory.mktemp("backend") / "serve.log"
        full_env = {**os.environ, "LOG_LEVEL": "INFO", **env}
        cmd = [sys.executable, "-m", "backend.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
        with open(log_path, "w") as log:
            process = subprocess.Popen(cmd, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        backend = Backend(f"http://127.0.0.1:{port}", process, log_path)
        started.append(backend)
        labelstudio_server.wait_for_http(backend.url + "/health", process, timeout, log_path)
        return backend

    yield start
    for backend in started:
        labelstudio_server.stop(backend.process)


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory) -> Iterator[labelstudio_server.LabelStudio]:
    """A real Label Studio 1.23 on a free 127.0.0.1 port (installed into its cached venv on first use)."""
    try:
        ls = labelstudio_server.start(tmp_path_factory.mktemp("label-studio"))
    except labelstudio_server.LabelStudioUnavailable as exc:
        pytest.fail(f"Label Studio is needed for this test and could not be started: {exc}", pytrace=False)
    yield ls
    labelstudio_server.stop(ls.process)


def healthy(url: str) -> bool:
    with contextlib.suppress(requests.RequestException):
        return requests.get(url + "/health", timeout=5).status_code == 200
    return False


# --- Training data fixtures used by tests/test_train_data.py. An earlier tests/conftest.py that
# defined them was overwritten by mistake while this file was created; rebuilt from their use.


@pytest.fixture(scope="session")
def duts_tr() -> Path:
    """The shared DUTS-TR subset (``images/NAME.jpg`` with ``masks/NAME.png``), read in place."""
    from tests.paths import DUTS_TR

    if not (DUTS_TR / "images").is_dir():
        pytest.skip(f"{DUTS_TR} is not available")
    return DUTS_TR


@pytest.fixture
def tiny_pairs(tmp_path, duts_tr) -> Callable[[int], tuple[Path, Path]]:
    """``tiny_pairs(n)``: fresh ``images/`` and ``masks/`` folders holding the first ``n`` DUTS-TR pairs."""

    def make(n: int) -> tuple[Path, Path]:
        images, masks = tmp_path / "images", tmp_path / "masks"
        images.mkdir(exist_ok=True)
        masks.mkdir(exist_ok=True)
        for image in sorted((duts_tr / "images").iterdir())[:n]:
            shutil.copy(image, images / image.name)
            shutil.copy(duts_tr / "masks" / (image.stem + ".png"), masks / (image.stem + ".png"))
        return images, masks

    return make


@pytest.fixture
def tiny_settings(tmp_path):
    """Settings for training-cycle tests: the "pretrained" model is a random tiny segmenter
    (``backend.isnet.training.tiny``) and MODEL_DIR is empty, so a cycle step costs milliseconds."""
    import torch

    from backend.isnet.training.tiny import TinySegmenter
    from backend.settings import Settings

    torch.manual_seed(0)
    checkpoint = tmp_path / "tiny-pretrained.pth"
    torch.save(TinySegmenter().state_dict(), checkpoint)
    return Settings(home=tmp_path / "home", model_dir_env=str(tmp_path / "models"), weights=str(checkpoint),
                    device="cpu", threads=1)


# --- A stand-in Label Studio for the pre-annotation tests (tests/test_preannotate*.py, tests/test_worker*.py):
# a real HTTP server with the few API routes a pre-annotation job calls, and faults to inject.

FAKE_LS_TOKEN = "fake-legacy-token-0123456789"


class FakeLabelStudio:
    """Projects, tasks and predictions in memory behind real HTTP; ``faults`` makes routes answer 5xx."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.lock = threading.Lock()
        self.label_config = ""
        self.tasks: dict[int, dict] = {}
        self.predictions: list[dict] = []
        self.images: dict[str, bytes] = {}
        self.failures: dict[str, int] = {}  # "POST /api/predictions/" -> answer 503 this many more times
        self.rejections: dict[str, int] = {}  # the same, answered 400
        self.down = False
        self.requests: list[str] = []

    def add_tasks(self, project: int, image_path: str, count: int) -> list[int]:
        with self.lock:
            start = max(self.tasks, default=0) + 1
            for task_id in range(start, start + count):
                self.tasks[task_id] = {"id": task_id, "project": project, "data": {"image": image_path}}
            return list(range(start, start + count))

    def predictions_of(self, task_id: int) -> list[dict]:
        with self.lock:
            return [p for p in self.predictions if p["task"] == task_id]


class _FakeLSHandler(http.server.BaseHTTPRequestHandler):
    server: http.server.ThreadingHTTPServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, body: object = None, raw: bytes | None = None) -> None:
        data = raw if raw is not None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "image/png" if raw is not None else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        ls: FakeLabelStudio = self.server.ls  # type: ignore[attr-defined]
        parts = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(parts.query)
        route = f"{method} {parts.path}"
        with ls.lock:
            ls.requests.append(route)
            failing = ls.failures.get(route, 0)
            if failing:
                ls.failures[route] = failing - 1
            rejecting = ls.rejections.get(route, 0)
            if rejecting and not failing:
                ls.rejections[route] = rejecting - 1
        if ls.down or failing:
            return self._send(503, {"detail": "unavailable"})
        if rejecting:
            return self._send(400, {"detail": "rejected"})
        if parts.path.startswith("/img/"):
            data = ls.images.get(parts.path[5:])
            return self._send(200, raw=data) if data else self._send(404, {"detail": "no image"})
        if self.headers.get("Authorization") != f"Token {FAKE_LS_TOKEN}":
            return self._send(401, {"detail": "Authentication credentials were not provided."})
        with ls.lock:
            if method == "GET" and parts.path.startswith("/api/projects/"):
                return self._send(200, {"id": int(parts.path.split("/")[3]), "label_config": ls.label_config})
            if method == "GET" and parts.path == "/api/tasks/":
                project = int(query["project"][0])
                tasks = [t for t in ls.tasks.values() if t["project"] == project]
                if "query" in query:  # the Data Manager's {"selectedItems": {"all": false, "included": [...]}}
                    included = set(json.loads(query["query"][0])["selectedItems"]["included"])
                    tasks = [t for t in tasks if t["id"] in included]
                return self._send(200, {"tasks": tasks, "total": len(tasks)})
            if method == "GET" and parts.path.startswith("/api/tasks/"):  # opening a task: never by a job
                return self._send(500, {"detail": "a job opened a task (Label Studio would call /predict)"})
            if method == "GET" and parts.path == "/api/predictions/":
                task_id = int(query["task"][0])
                return self._send(200, [p for p in ls.predictions if p["task"] == task_id])
            if method == "POST" and parts.path == "/api/predictions/":
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                if body.get("task") not in ls.tasks:
                    return self._send(400, {"task": ["Invalid pk - object does not exist."]})
                prediction = {"id": len(ls.predictions) + 1, **body}
                ls.predictions.append(prediction)
                return self._send(201, prediction)
        return self._send(404, {"detail": "no such route"})

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")


@pytest.fixture
def fake_label_studio() -> Iterator[FakeLabelStudio]:
    """A fresh stand-in Label Studio on a free 127.0.0.1 port (``FAKE_LS_TOKEN`` is its legacy token)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeLSHandler)
    ls = FakeLabelStudio(f"http://127.0.0.1:{server.server_address[1]}")
    server.ls = ls  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield ls
    finally:
        server.shutdown()
        server.server_close()


# --- Retraining tests (tests/test_retrain*.py): the same stand-in Label Studio, also answering the JSON
# export (``GET /api/projects/<id>/export``) with every task of the project that has annotations.


class _FakeLSExportHandler(_FakeLSHandler):
    def _handle(self, method: str) -> None:
        ls: FakeLabelStudio = self.server.ls  # type: ignore[attr-defined]
        parts = urllib.parse.urlsplit(self.path)
        pieces = parts.path.strip("/").split("/")
        if method != "GET" or len(pieces) != 4 or pieces[:2] != ["api", "projects"] or pieces[3] != "export":
            return super()._handle(method)
        with ls.lock:
            ls.requests.append(f"GET {parts.path}")
        if ls.down:
            return self._send(503, {"detail": "unavailable"})
        if self.headers.get("Authorization") != f"Token {FAKE_LS_TOKEN}":
            return self._send(401, {"detail": "Authentication credentials were not provided."})
        with ls.lock:
            project = int(pieces[2])
            tasks = [t for t in ls.tasks.values() if t["project"] == project and t.get("annotations")]
        return self._send(200, tasks)


@pytest.fixture
def fake_label_studio_export() -> Iterator[FakeLabelStudio]:
    """``fake_label_studio`` that also serves the project export (tasks carry an ``annotations`` list)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeLSExportHandler)
    ls = FakeLabelStudio(f"http://127.0.0.1:{server.server_address[1]}")
    server.ls = ls  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield ls
    finally:
        server.shutdown()
        server.server_close()
