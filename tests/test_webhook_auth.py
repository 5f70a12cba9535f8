"""With basic auth on, ``/setup`` gets the backend's credentials onto the webhook Label Studio made for it.

A real HTTP server on 127.0.0.1 plays Label Studio's webhook API (``GET /api/webhooks/?project=``,
``PATCH /api/webhooks/<id>/``) and records every write; the backend is the real Flask app. The
check runs in the background, so ``/setup`` answers at once whatever Label Studio does.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from backend.jobs.webhook_auth import ALREADY_SET, FAILED, NO_TOKEN, NOT_FOUND, SET
from backend.labelstudio.auth import LabelStudioAuth
from backend.labelstudio.webhooks import basic_auth_header, is_backend_webhook, webhook_patches
from backend.model import ISNetModel
from backend.server.app import create_app
from backend.settings import Settings

TOKEN = "0123456789abcdef0123456789abcdef01234567"
USER, PASSWORD = "ls", "s3cret"
HEADER = basic_auth_header(USER, PASSWORD)
PROJECT = 5
SETUP = {"project": f"{PROJECT}.1700000000", "schema": "", "access_token": ""}
WAIT_S = 30


class _WebhookAPI(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        ls = self.server.ls
        parts = urlsplit(self.path)
        if self.headers.get("Authorization") != f"Token {TOKEN}":
            return self._send(401, {"detail": "Authentication credentials were not provided."})
        if parts.path != "/api/webhooks/":
            return self._send(404, {"detail": "Not found."})
        project = int(parse_qs(parts.query)["project"][0])
        with ls.lock:
            return self._send(200, [h for h in ls.webhooks.values() if h["project"] == project])

    def do_PATCH(self) -> None:
        ls = self.server.ls
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        match = re.fullmatch(r"/api/webhooks/(\d+)/", self.path)
        if self.headers.get("Authorization") != f"Token {TOKEN}" or ls.refuse_writes:
            return self._send(403, {"detail": "You do not have permission to perform this action."})
        if match is None or int(match[1]) not in ls.webhooks:
            return self._send(404, {"detail": "Not found."})
        with ls.lock:
            ls.patches.append((int(match[1]), body))
            ls.webhooks[int(match[1])].update(body)
            return self._send(200, ls.webhooks[int(match[1])])


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    ls: WebhookLabelStudio


@dataclasses.dataclass
class WebhookLabelStudio:
    url: str = ""
    webhooks: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)
    patches: list[tuple[int, dict[str, Any]]] = dataclasses.field(default_factory=list)
    refuse_writes: bool = False
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def add(self, webhook_id: int, url: str, headers: dict[str, str] | None = None, project: int = PROJECT) -> None:
        with self.lock:  # what create_ml_webhook makes: every action, the payload, no headers
            self.webhooks[webhook_id] = {"id": webhook_id, "project": project, "url": url, "send_payload": True,
                                         "send_for_all_actions": True, "headers": headers or {}, "is_active": True}


@pytest.fixture
def ls() -> Iterator[WebhookLabelStudio]:
    server = _Server(("127.0.0.1", 0), _WebhookAPI)
    server.ls = WebhookLabelStudio(f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield server.ls
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def model(random_checkpoint, tmp_path_factory) -> Iterator[ISNetModel]:
    home = tmp_path_factory.mktemp("home")
    settings = Settings(home=home, weights=str(random_checkpoint), input_size=64, engine="torch", device="cpu",
                        label_studio_api_key="", redis_url="", model_dir_env=str(home / "models"))
    model = ISNetModel(settings)
    model.setup()
    yield model
    model.service.stop()


def backend(model: ISNetModel, ls: WebhookLabelStudio, **changes: Any):
    """The app in front of ``model``, with basic auth on and ``ls`` as Label Studio."""
    settings = model.settings.replace(**{
        "label_studio_url": ls.url, "label_studio_api_key": TOKEN, "basic_auth_user": USER,
        "basic_auth_pass": PASSWORD, "ls_timeout": 5.0, "ls_retries": 1, **changes})
    model.fetcher.auth = LabelStudioAuth(settings.label_studio_url, settings.label_studio_api_key)
    app = create_app(settings, model)
    return app.extensions["isnet"].webhook_auth, app.test_client()


def setup(client, host: str = "backend.local:9090") -> int:
    return client.post("/setup", json=SETUP, auth=(USER, PASSWORD), headers={"Host": host}).status_code


# --- which webhooks are the backend's, and what is written ---------------------------------------------


def test_the_header_is_what_requests_sends_for_basic_auth():
    prepared = requests.Request("GET", "http://x/", auth=(USER, PASSWORD)).prepare()
    assert prepared.headers["Authorization"] == HEADER


@pytest.mark.parametrize(("url", "host", "ours"), [
    ("http://backend.local:9090/webhook", "backend.local:9090", True),
    ("http://ls:pw@backend.local:9090/webhook", "backend.local:9090", True),  # credentials in the connection URL
    ("http://backend.local:9090/ml/webhook/", "backend.local:9090", True),
    ("http://backend.local/webhook", "backend.local", True),
    ("https://backend.local/webhook", "backend.local", True),
    ("https://backend.local:443/webhook", "backend.local", True),
    ("http://backend.local:9091/webhook", "backend.local:9090", False),  # another backend on the same machine
    ("http://other.local:9090/webhook", "backend.local:9090", False),
    ("http://backend.local:9090/hooks/slack", "backend.local:9090", False),
    ("http://backend.local:9090/webhook", "", False),
    ("not a url [", "backend.local:9090", False),
])
def test_the_backends_webhooks_are_webhook_on_the_host_label_studio_calls_setup_at(url, host, ours):
    assert is_backend_webhook(url, host) is ours


def test_the_patch_keeps_other_headers_and_replaces_another_authorization():
    hooks = [{"id": 1, "url": "http://b:9090/webhook", "headers": {"X-Trace": "1", "authorization": "Basic old"}},
             {"id": 2, "url": "http://b:9090/webhook", "headers": {"Authorization": HEADER}},
             {"id": 3, "url": "http://elsewhere:80/webhook", "headers": {}}]
    assert webhook_patches(hooks, "b:9090", HEADER) == [(1, {"headers": {"X-Trace": "1", "Authorization": HEADER}})]


# --- through /setup ------------------------------------------------------------------------------------


def test_setup_puts_the_basic_auth_on_the_backends_webhook_once(model, ls):
    ls.add(1, "http://backend.local:9090/webhook")
    ls.add(2, "http://hooks.example/slack")  # someone else's webhook in the same project
    mender, client = backend(model, ls)
    assert setup(client) == 200
    assert mender.wait_idle(WAIT_S) and mender.outcomes[PROJECT] == SET
    assert ls.patches == [(1, {"headers": {"Authorization": HEADER}})]
    assert ls.webhooks[2]["headers"] == {}
    assert mender.check(PROJECT, "backend.local:9090") == ALREADY_SET  # a second look writes nothing
    assert len(ls.patches) == 1


def test_a_setup_soon_after_a_successful_check_asks_label_studio_nothing(model, ls):
    ls.add(1, "http://backend.local:9090/webhook")
    mender, client = backend(model, ls)
    setup(client)
    assert mender.wait_idle(WAIT_S)
    assert not mender.request(SETUP["project"], "backend.local:9090")  # checked again only after RECHECK_S


def test_the_webhook_made_after_the_first_setup_is_mended_at_the_next(model, ls):
    mender, client = backend(model, ls)
    setup(client)  # Label Studio validates the connection before it saves it and creates the webhook
    assert mender.wait_idle(WAIT_S) and mender.outcomes[PROJECT] == NOT_FOUND
    ls.add(1, "http://backend.local:9090/webhook")
    setup(client)  # update_state, just after the save
    assert mender.wait_idle(WAIT_S) and mender.outcomes[PROJECT] == SET
    assert ls.webhooks[1]["headers"] == {"Authorization": HEADER}


def test_label_studio_refusing_the_write_is_logged_and_setup_is_served(model, ls, caplog):
    ls.add(1, "http://backend.local:9090/webhook")
    ls.refuse_writes = True
    mender, client = backend(model, ls)
    with caplog.at_level(logging.WARNING, logger="backend.jobs.webhook_auth"):
        assert setup(client) == 200
        assert mender.wait_idle(WAIT_S)
    assert mender.outcomes[PROJECT] == FAILED
    assert "could not add the backend's basic auth to the webhook of project 5" in caplog.text
    assert "HTTP 403" in caplog.text


def test_label_studio_unreachable_is_logged_and_setup_is_served(model, ls, caplog):
    mender, client = backend(model, ls, label_studio_url="http://127.0.0.1:9")
    with caplog.at_level(logging.WARNING, logger="backend.jobs.webhook_auth"):
        assert setup(client) == 200
        assert mender.wait_idle(WAIT_S)
    assert mender.outcomes[PROJECT] == FAILED


def test_without_a_label_studio_token_it_says_the_events_will_be_refused(model, ls, caplog):
    mender, client = backend(model, ls, label_studio_api_key="")
    with caplog.at_level(logging.WARNING, logger="backend.jobs.webhook_auth"):
        setup(client)
        assert mender.wait_idle(WAIT_S)
    assert mender.outcomes[PROJECT] == NO_TOKEN
    assert "its events will get 401" in caplog.text


def test_without_basic_auth_nothing_is_asked_of_label_studio(model, ls):
    ls.add(1, "http://backend.local:9090/webhook")
    mender, client = backend(model, ls, basic_auth_user="", basic_auth_pass="")
    assert client.post("/setup", json=SETUP, headers={"Host": "backend.local:9090"}).status_code == 200
    assert mender.header is None and mender.wait_idle(1) and ls.patches == []
