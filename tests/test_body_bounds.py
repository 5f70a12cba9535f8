"""A body is read only when it can be served: on a real ``isnet serve`` with one ``/predict`` slot,
a 64 MiB ``/predict`` arriving while the slot is busy is refused (503, ``Retry-After``) before its
body is read, and a body over ``ISNET_MAX_BODY_BYTES`` is refused (413) unread.

The proof that nothing was parsed: the answer comes while almost all of the body was never sent.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="tag" toName="image"><Label value="Foreground"/></BrushLabels></View>'
)
MAX_BODY = 64 * 1024 * 1024
BUDGET_S = 3


@contextlib.contextmanager
def silent_host() -> Iterator[str]:
    """An image host that accepts connections and never answers: a fetch from it holds its slot."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()


@pytest.fixture(scope="module")
def host() -> Iterator[str]:
    with silent_host() as url:
        yield url


@pytest.fixture(scope="module")
def backend(serve_backend, random_checkpoint, host, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    return serve_backend({
        "ISNET_WEIGHTS": str(random_checkpoint), "ISNET_ENGINE": "torch", "ISNET_INPUT_SIZE": "64",
        "ISNET_HOME": str(home), "MODEL_DIR": str(home / "models"), "LABEL_STUDIO_URL": host,
        "LABEL_STUDIO_API_KEY": "", "THREADS": "3",  # two kept for /health and /setup: one /predict slot
        "ISNET_PREDICT_BUDGET": str(BUDGET_S), "ISNET_FETCH_TIMEOUT": "20", "ISNET_MAX_BODY_BYTES": str(MAX_BODY),
    })


def raw_request(url: str, path: str, length: int, sent: int, timeout: float) -> tuple[bytes, float]:
    """POST ``path`` declaring ``length`` body bytes but sending only ``sent``; the answer and its time."""
    port = int(url.rsplit(":", 1)[1])
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {length}\r\n\r\n".encode() + b"[" * sent)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < _length(answer):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer, time.monotonic() - started


def _length(answer: bytes) -> int:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def free_slots(backend) -> float:
    text = requests.get(backend.url + "/metrics", timeout=5).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    return families["isnet_predict_slots_free"].samples[0].value


def occupy_the_slot(backend) -> threading.Thread:
    """A one-task /predict whose image never arrives: it holds the only slot for the fetch timeout."""
    body = {"tasks": [{"id": 1, "data": {"image": "/never.jpeg"}}], "label_config": CONFIG}

    def post() -> None:
        with contextlib.suppress(requests.RequestException):
            requests.post(backend.url + "/predict", json=body, timeout=60)

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    return thread


def test_a_64_mib_predict_while_every_slot_is_busy_is_refused_before_its_body_is_read(backend):
    occupy_the_slot(backend)
    deadline = time.monotonic() + 30
    while free_slots(backend) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert free_slots(backend) == 0
    head, took = raw_request(backend.url, "/predict", MAX_BODY, sent=1024 * 1024, timeout=BUDGET_S + 30)
    status_line = head.split(b"\r\n", 1)[0]
    assert b" 503 " in status_line, head[:500]
    assert b"retry-after:" in head.lower()
    # 63 of the 64 MiB were never sent: the server cannot have read or parsed the body.
    assert took < BUDGET_S + 15, took
    assert requests.get(backend.url + "/health", timeout=5).status_code == 200


@pytest.mark.parametrize("path", ["/predict", "/webhook"])
def test_a_body_over_the_limit_is_refused_with_413_unread(backend, path):
    head, took = raw_request(backend.url, path, MAX_BODY + 1, sent=0, timeout=30)
    assert b" 413 " in head.split(b"\r\n", 1)[0], head[:500]
    assert b"ISNET_MAX_BODY_BYTES" in head  # the reason, in the JSON body after the head
    assert took < 30
