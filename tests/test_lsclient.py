"""The Label Studio client's retry rule against a real HTTP server on 127.0.0.1 (no mocks of requests).

Reads are retried with backoff; a create is never retried blindly: after a late answer, a cut
connection or a 5xx the client looks for the prediction first and writes again only if it is
missing. The stub stores each prediction before it misbehaves, as a slow Label Studio would.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import struct
import threading
import urllib.parse
from collections.abc import Iterator

import pytest

from backend.labelstudio.auth import LabelStudioAuth
from backend.labelstudio.client import LabelStudioClient, LabelStudioDown, TaskRejected

TOKEN = "stub-legacy-token-0123456789"
TIMEOUT_S = 0.5
HOLD_S = 10.0
"""How long a held answer waits at most; each test releases it as soon as the client has given up."""
BACKOFF_S = 0.01
TASK = 7


class StubLabelStudio:
    """Projects and predictions in memory; ``faults[route]`` lists what the next requests of a route do.

    Faults: ``hold`` (answer only after :attr:`release`), ``500`` (answer 500, store nothing),
    ``store-then-hold``, ``store-then-500``, ``store-then-reset`` (store, then reset the connection).
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.lock = threading.Lock()
        self.tasks = {TASK, TASK + 1}
        self.predictions: list[dict] = []
        self.requests: list[str] = []
        self.faults: dict[str, list[str]] = {}
        self.release = threading.Event()

    def next_fault(self, route: str) -> str:
        with self.lock:
            self.requests.append(route)
            queue = self.faults.get(route) or []
            return queue.pop(0) if queue else ""

    def store(self, body: dict) -> dict:
        with self.lock:
            prediction = {"id": len(self.predictions) + 1, **body}
            self.predictions.append(prediction)
            return prediction


class _Handler(http.server.BaseHTTPRequestHandler):
    server: http.server.ThreadingHTTPServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        with contextlib.suppress(OSError):  # a client that gave up has closed its end
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    def _reset(self) -> None:
        """Close with a TCP reset, as a crashing proxy or server would: no answer at all."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def _handle(self, method: str) -> None:
        stub: StubLabelStudio = self.server.stub  # type: ignore[attr-defined]
        parts = urllib.parse.urlsplit(self.path)
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
        fault = stub.next_fault(f"{method} {parts.path}")
        if fault == "500":
            return self._send(500, {"detail": "server error"})
        if fault == "hold":
            stub.release.wait(HOLD_S)
        if self.headers.get("Authorization") != f"Token {TOKEN}":
            return self._send(401, {"detail": "no credentials"})
        status, answer = self._route(stub, method, parts, body)
        if fault == "store-then-hold":
            stub.release.wait(HOLD_S)
        elif fault == "store-then-500":
            status, answer = 500, {"detail": "server error"}
        elif fault == "store-then-reset":
            return self._reset()
        self._send(status, answer)

    @staticmethod
    def _route(stub: StubLabelStudio, method: str, parts: urllib.parse.SplitResult, body: object) -> tuple[int, object]:
        query = urllib.parse.parse_qs(parts.query)
        if method == "GET" and parts.path == "/api/projects/1":
            return 200, {"id": 1, "label_config": "<View/>"}
        if method == "GET" and parts.path == "/api/predictions/":
            task = int(query["task"][0])
            with stub.lock:
                return 200, [p for p in stub.predictions if p["task"] == task]
        if method == "POST" and parts.path == "/api/predictions/":
            assert isinstance(body, dict)
            if body.get("task") not in stub.tasks:
                return 400, {"task": ["Invalid pk - object does not exist."]}
            return 201, stub.store(body)
        return 404, {"detail": "Not found."}

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")


@pytest.fixture
def stub() -> Iterator[StubLabelStudio]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    stub = StubLabelStudio(f"http://127.0.0.1:{server.server_address[1]}")
    server.stub = stub  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield stub
    finally:
        stub.release.set()
        server.shutdown()
        server.server_close()


def client_for(url: str, sleeps: list[float], retries: int = 4) -> LabelStudioClient:
    return LabelStudioClient(url, LabelStudioAuth(url, TOKEN), retries=retries, backoff=BACKOFF_S,
                             timeout=TIMEOUT_S, sleep=sleeps.append)


def create(client: LabelStudioClient, task: int = TASK) -> dict:
    return client.create_prediction(task, [{"type": "brushlabels"}], 0.9, "v1")


@pytest.mark.parametrize("fault", ["store-then-hold", "store-then-500", "store-then-reset"])
def test_a_write_stored_but_not_answered_in_time_is_not_written_again(stub, fault):
    stub.faults["POST /api/predictions/"] = [fault]
    sleeps: list[float] = []
    try:
        prediction = create(client_for(stub.url, sleeps))
    finally:
        stub.release.set()
    assert len(stub.predictions) == 1
    assert prediction == stub.predictions[0]
    assert stub.requests == ["POST /api/predictions/", "GET /api/predictions/"]
    assert sleeps == [BACKOFF_S]


def test_a_write_refused_with_a_5xx_before_it_was_stored_is_written_again_once(stub):
    stub.faults["POST /api/predictions/"] = ["500", "500"]
    sleeps: list[float] = []
    create(client_for(stub.url, sleeps))
    assert len(stub.predictions) == 1
    assert stub.requests == ["POST /api/predictions/", "GET /api/predictions/", "POST /api/predictions/",
                             "GET /api/predictions/", "POST /api/predictions/"]
    assert sleeps == [BACKOFF_S, 2 * BACKOFF_S]


def test_a_look_that_times_out_too_is_tried_again_before_anything_is_written(stub):
    stub.faults["POST /api/predictions/"] = ["store-then-hold"]
    stub.faults["GET /api/predictions/"] = ["500", "500"]
    sleeps: list[float] = []
    try:
        create(client_for(stub.url, sleeps))
    finally:
        stub.release.set()
    assert len(stub.predictions) == 1
    assert stub.requests.count("POST /api/predictions/") == 1
    assert sleeps == [BACKOFF_S, 2 * BACKOFF_S, 4 * BACKOFF_S]


def test_an_existing_prediction_of_another_version_does_not_stop_the_write(stub):
    stub.store({"task": TASK, "result": [], "score": 0.0, "model_version": "v0"})
    stub.faults["POST /api/predictions/"] = ["500"]
    create(client_for(stub.url, []))
    assert [p["model_version"] for p in stub.predictions] == ["v0", "v1"]


def test_a_get_that_times_out_is_retried_with_backoff(stub):
    stub.faults["GET /api/projects/1"] = ["hold"]
    sleeps: list[float] = []
    client = client_for(stub.url, sleeps)
    try:
        assert client.project(1)["id"] == 1
    finally:
        stub.release.set()
    assert stub.requests == ["GET /api/projects/1", "GET /api/projects/1"]
    assert sleeps == [BACKOFF_S] and client.retried == 1


def test_a_get_answered_5xx_is_retried_with_doubling_backoff(stub):
    stub.faults["GET /api/predictions/"] = ["500", "500"]
    sleeps: list[float] = []
    client = client_for(stub.url, sleeps)
    assert client.prediction_versions(TASK) == []
    assert stub.requests.count("GET /api/predictions/") == 3
    assert sleeps == [BACKOFF_S, 2 * BACKOFF_S]


def test_a_4xx_is_not_retried(stub):
    sleeps: list[float] = []
    client = client_for(stub.url, sleeps)
    with pytest.raises(TaskRejected) as rejected:
        create(client, task=999)
    assert rejected.value.status == 400 and "Invalid pk" in str(rejected.value)
    with pytest.raises(TaskRejected) as missing:
        client.project(2)
    assert missing.value.status == 404
    assert stub.requests == ["POST /api/predictions/", "GET /api/projects/2"]
    assert sleeps == [] and stub.predictions == []


def test_a_bad_token_is_rejected_at_once(stub):
    url = stub.url
    client = LabelStudioClient(url, LabelStudioAuth(url, "wrong"), retries=4, backoff=BACKOFF_S, timeout=TIMEOUT_S)
    with pytest.raises(TaskRejected) as rejected:
        create(client)
    assert rejected.value.status == 401 and stub.requests == ["POST /api/predictions/"]


def test_label_studio_down_through_every_retry_raises_label_studio_down():
    with socket.create_server(("127.0.0.1", 0)) as sock:  # a port nothing listens on once closed
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sleeps: list[float] = []
    client = client_for(url, sleeps, retries=3)
    with pytest.raises(LabelStudioDown, match=r"GET /api/projects/1: ConnectionError after 3 tries"):
        client.project(1)
    with pytest.raises(LabelStudioDown, match=r"POST /api/predictions/: ConnectionError after 3 tries"):
        create(client)
    assert sleeps == [BACKOFF_S, 2 * BACKOFF_S] * 2
