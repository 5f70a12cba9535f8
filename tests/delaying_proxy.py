"""An HTTP proxy on 127.0.0.1 that forwards every request but holds chosen answers back.

Why: the fault "Label Studio stored the write but its answer came too late" needs a real Label
Studio that really stores the prediction, and an answer that really arrives after the client's
timeout. The proxy forwards the request, reads Label Studio's whole answer (so the write is done),
and then holds it until the client hangs up or ``hold_s`` passes. One request per connection
(``Connection: close`` both ways) keeps the parsing to a request head and a ``Content-Length`` body.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

HEAD_END = b"\r\n\r\n"

Rule = Callable[[str, str], bool]
"""``rule(method, path)``: hold this request's answer back (called once per request, in order)."""


def first(method: str, path: str) -> Rule:
    """A rule that holds only the first request with ``method`` whose path starts with ``path``."""
    left = [1]

    def rule(m: str, p: str) -> bool:
        if left[0] and m == method and p.startswith(path):
            left[0] -= 1
            return True
        return False

    return rule


@dataclass
class Held:
    """One held answer: when Label Studio gave it, and when the client hung up without it."""

    method: str
    path: str
    answered_at: float
    client_gone_at: float | None = None


@dataclass
class DelayingProxy:
    """Forwards to ``upstream_port``; answers for which ``rule`` is true are held back ``hold_s`` at most."""

    upstream_port: int
    rule: Rule
    hold_s: float = 60.0
    requests: list[str] = field(default_factory=list)
    held: list[Held] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        """One request: forward it, read the whole answer, hold it if the rule says so, pass it on."""
        with client:
            try:
                request, method, path = read_request(client)
            except (OSError, ValueError):
                return
            with self._lock:
                self.requests.append(f"{method} {path}")
                hold = self.rule(method, path)
            with socket.create_connection(("127.0.0.1", self.upstream_port)) as upstream:
                upstream.sendall(request)
                answer = read_answer(upstream)
            if hold:
                self._hold(client, Held(method, path, time.monotonic()))
            with contextlib.suppress(OSError):
                client.sendall(answer)

    def _hold(self, client: socket.socket, held: Held) -> None:
        """Wait until the client hangs up (it timed out) or ``hold_s`` passes; record which."""
        with self._lock:
            self.held.append(held)
        deadline = held.answered_at + self.hold_s
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([client], [], [], left)
            if readable and not _peek(client):
                held.client_gone_at = time.monotonic()
                return


def _peek(sock: socket.socket) -> bytes:
    """Bytes waiting on ``sock`` without taking them; ``b""`` once the peer has closed (or reset) it."""
    try:
        return sock.recv(1, socket.MSG_PEEK)
    except OSError:
        return b""


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """The head (up to the blank line) and whatever body bytes came with it."""
    data = b""
    while HEAD_END not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ValueError("connection closed before a complete head")
        data += chunk
    head, rest = data.split(HEAD_END, 1)
    return head, rest


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return None


def _read_body(sock: socket.socket, rest: bytes, length: int | None) -> bytes:
    """``length`` body bytes, or everything until the peer closes when the length is unknown."""
    body = rest
    while length is None or len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return body


def _close_connection(head: bytes) -> bytes:
    """The head with ``Connection: close`` in place of any connection header."""
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith((b"connection:", b"keep-alive:"))]
    return b"\r\n".join([*lines, b"Connection: close"])


def read_request(sock: socket.socket) -> tuple[bytes, str, str]:
    """A whole request rewritten for one-shot forwarding, with its method and path (query removed)."""
    head, rest = _read_head(sock)
    if b"transfer-encoding: chunked" in head.lower():
        raise ValueError("chunked request bodies are not supported")
    body = _read_body(sock, rest, _content_length(head) or 0)
    method, target = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")[:2]
    return _close_connection(head) + HEAD_END + body, method, target.split("?", 1)[0]


def read_answer(sock: socket.socket) -> bytes:
    """A whole answer, rewritten so the client closes the connection after it."""
    head, rest = _read_head(sock)
    return _close_connection(head) + HEAD_END + _read_body(sock, rest, _content_length(head))
