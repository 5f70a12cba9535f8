"""A real Label Studio 1.23 for end-to-end tests: installed once, started per test session.

Why a real one: what Label Studio sends and accepts (timeouts, duplicate rules, auth, how it
stores a batch of predictions) is exactly what a mock would get wrong. It lives in its own
venv (``$ISNET_HOME/label-studio-venv``, about 1 GB, made once and reused; a file lock keeps
parallel runs from racing), and each session starts it on a free 127.0.0.1 port with its
data in a temporary directory, with the settings a backend on loopback needs
(``label-studio-1.23.md``): ``ML_BLOCK_LOCAL_IP=false``, ``SSRF_PROTECTION_ENABLED=false`` and
legacy tokens enabled.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from backend.settings import load

LABEL_STUDIO_SPEC = "label-studio==1.23.*"
LABEL_STUDIO_SERIES = "1.23."
SENTRY_SPEC = "sentry-sdk<3"
"""Label Studio 1.23 asks for any sentry-sdk, and 3.0 refuses the options it starts with (it exits at once)."""
INSTALL_TIMEOUT_S = 1200
START_TIMEOUT_S = 300
USERNAME = "e2e@example.com"
PASSWORD = "e2e-password-1234"
LEGACY_TOKEN = "e2e0123456789abcdef0123456789abcdef0123"  # 40 characters, as Label Studio's own


class LabelStudioUnavailable(RuntimeError):
    """Label Studio could not be installed or started; the message says which step and why."""


def venv_dir() -> Path:
    return load().home / "label-studio-venv"


def _installed_version(venv: Path, package: str = "label-studio") -> str | None:
    python = venv / "bin" / "python"
    if not python.exists():
        return None
    proc = subprocess.run(
        [str(python), "-c", f"import importlib.metadata as m; print(m.version({package!r}))"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def _sentry_ok(venv: Path) -> bool:
    version = _installed_version(venv, "sentry-sdk")
    return version is not None and int(version.split(".")[0]) < 3


def ensure_installed(venv: Path | None = None) -> Path:
    """The ``label-studio`` executable of the cached venv, installing it first if needed."""
    venv = venv or venv_dir()
    venv.parent.mkdir(parents=True, exist_ok=True)
    lock_path = venv.parent / (venv.name + ".lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a parallel run waits here until the venv is complete
        version = _installed_version(venv)
        if version is None or not version.startswith(LABEL_STUDIO_SERIES):
            _install(venv)
            version = _installed_version(venv)
            if version is None or not version.startswith(LABEL_STUDIO_SERIES):
                raise LabelStudioUnavailable(f"{venv} holds label-studio {version}, not {LABEL_STUDIO_SPEC}")
        if not _sentry_ok(venv):  # a venv made before the pin
            _pip(venv, [SENTRY_SPEC], venv.parent / (venv.name + "-install.log"))
    return venv / "bin" / "label-studio"


def _install(venv: Path) -> None:
    shutil.rmtree(venv, ignore_errors=True)
    log_path = venv.parent / (venv.name + "-install.log")
    print(f"\ninstalling {LABEL_STUDIO_SPEC} into {venv} (once; about a minute and 1 GB)", file=sys.stderr)
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--timeout", "60", "--retries", "3", LABEL_STUDIO_SPEC, SENTRY_SPEC],
    ]
    with open(log_path, "w") as log:
        for cmd in steps:
            try:
                proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=INSTALL_TIMEOUT_S, check=False)
            except subprocess.TimeoutExpired as exc:
                shutil.rmtree(venv, ignore_errors=True)
                raise LabelStudioUnavailable(
                    f"`{' '.join(cmd[-3:])}` took over {INSTALL_TIMEOUT_S} s; see {log_path}"
                ) from exc
            if proc.returncode != 0:
                shutil.rmtree(venv, ignore_errors=True)
                tail = log_path.read_text(errors="replace")[-2000:]
                raise LabelStudioUnavailable(
                    f"installing {LABEL_STUDIO_SPEC} failed (exit {proc.returncode}); {log_path} ends with:\n{tail}"
                )


def _pip(venv: Path, specs: list[str], log_path: Path) -> None:
    with open(log_path, "a") as log:
        proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                               "--disable-pip-version-check", *specs], stdout=log, stderr=subprocess.STDOUT,
                              timeout=INSTALL_TIMEOUT_S, check=False)
    if proc.returncode != 0:
        raise LabelStudioUnavailable(f"pip install {' '.join(specs)} into {venv} failed; see {log_path}")


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, timeout: float, log_path: Path) -> None:
    """Until ``url`` answers 200; a clear error if the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise LabelStudioUnavailable(f"{url}: the process exited with {process.returncode}; log:\n{tail}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    tail = log_path.read_text(errors="replace")[-3000:]
    raise LabelStudioUnavailable(f"{url} did not answer within {timeout:.0f} s; log:\n{tail}")


def stop(process: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM to the process group this fixture started, then SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout)


@dataclass
class LabelStudio:
    """A running Label Studio and an API client for it (as the admin user, legacy token)."""

    url: str
    process: subprocess.Popen
    data_dir: Path
    log_path: Path
    legacy_token: str = LEGACY_TOKEN
    session: requests.Session = field(default_factory=requests.Session)

    def __post_init__(self) -> None:
        self.session.headers["Authorization"] = f"Token {self.legacy_token}"

    def api(self, method: str, path: str, expect: int | tuple[int, ...] = (200, 201), **kwargs: Any) -> Any:
        """Call ``/api/...``; the decoded JSON, or an AssertionError with Label Studio's answer."""
        kwargs.setdefault("timeout", 300)
        response = self.session.request(method, self.url + path, **kwargs)
        allowed = (expect,) if isinstance(expect, int) else expect
        assert response.status_code in allowed, f"{method} {path}: HTTP {response.status_code}: {response.text[:2000]}"
        return response.json() if response.content else None

    def create_personal_access_token(self) -> str:
        """A personal access token (JWT refresh token) of the admin user, made through the API."""
        return self.api("POST", "/api/token/")["token"]

    def create_project(self, title: str, label_config: str) -> int:
        return self.api("POST", "/api/projects/", json={"title": title, "label_config": label_config})["id"]

    def upload_images(self, project: int, paths: list[Path]) -> list[int]:
        """Upload files as the browser does; the new task ids."""
        files = [(p.name, (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
        self.api("POST", f"/api/projects/{project}/import", files=files)
        return sorted(t["id"] for t in self.tasks(project))

    def tasks(self, project: int) -> list[dict[str, Any]]:
        """Tasks through the Data Manager list (which, unlike opening a task, never calls the backend)."""
        return self.api("GET", "/api/tasks/", params={"project": project, "page_size": 1000})["tasks"]

    def connect_backend(self, project: int, url: str, **extra: Any) -> dict[str, Any]:
        return self.api("POST", "/api/ml/", json={"url": url, "project": project, "title": "isnet", **extra})

    def retrieve_predictions(self, project: int) -> dict[str, Any]:
        """The Data Manager action "Retrieve predictions" on every task of the project."""
        return self.api(
            "POST", "/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": project},
            json={"selectedItems": {"all": True, "excluded": []}},
        )

    def annotate(self, task: int, result: list[dict[str, Any]]) -> dict[str, Any]:
        """Submit an annotation as an annotator would (Label Studio sends ANNOTATION_CREATED on the way)."""
        return self.api("POST", f"/api/tasks/{task}/annotations/", json={"result": result})

    def predictions(self, project: int) -> list[dict[str, Any]]:
        return self.api("GET", "/api/predictions/", params={"project": project})


def start(data_dir: Path) -> LabelStudio:
    """Install if needed, start on a free port, wait until healthy."""
    executable = ensure_installed()
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "label-studio.log"
    env = {
        **os.environ,
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "ML_BLOCK_LOCAL_IP": "false",
        "SSRF_PROTECTION_ENABLED": "false",
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
    }
    cmd = [
        str(executable), "start", "--no-browser", "--host", "127.0.0.1", "--port", str(port),
        "--username", USERNAME, "--password", PASSWORD, "--user-token", LEGACY_TOKEN, "--enable-legacy-api-token",
    ]
    with open(log_path, "w") as log:
        process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=data_dir,
                                   start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(url + "/health", process, START_TIMEOUT_S, log_path)
    except BaseException:
        stop(process)
        raise
    return LabelStudio(url, process, data_dir, log_path)
