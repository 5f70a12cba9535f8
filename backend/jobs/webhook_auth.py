"""Puts the backend's basic-auth credentials on the webhook Label Studio made for it, checked at ``/setup``.

Why: with ``BASIC_AUTH_USER`` set, Label Studio's calls to ``/setup``, ``/predict`` and "Start
training" carry the credentials, but the webhook it creates for the backend does not
(:mod:`backend.labelstudio.webhooks`), so auto-annotation and retraining events would get 401.

When: Label Studio calls ``/setup`` when a model is connected (before it saves the connection,
which creates the webhook, and again just after), before each batch of predictions, and whenever
its model list is shown. Each such ``/setup`` asks for a check of its project; the check runs in one
background thread (``/setup`` has 3 s and must answer at once), reads the project's webhooks and
patches those of the backend that lack the header. It never writes a header that is already
there. Then the project is checked again after ``RECHECK_S`` once its webhook was seen with the
header (a connection made anew gets a new bare webhook), after ``RETRY_S`` when the check failed
(logged, never fatal to ``/setup``), and at the next ``/setup`` when no webhook was found yet.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from backend.labelstudio.auth import AuthError, LabelStudioAuth
from backend.labelstudio.client import LabelStudioClient, LabelStudioDown, TaskRejected
from backend.labelstudio.webhooks import backend_webhooks, basic_auth_header, webhook_patches
from backend.settings import Settings

log = logging.getLogger(__name__)

RECHECK_S = 600.0
RETRY_S = 60.0
SET, ALREADY_SET, NOT_FOUND, FAILED, NO_TOKEN = "set", "already set", "not found", "failed", "no token"


def _project_id(project: Any) -> int | None:
    """Label Studio's ``"<id>.<created timestamp>"`` (or a plain id) as the id."""
    head = str(project).split(".", 1)[0].strip() if project is not None else ""
    return int(head) if head.isdigit() else None


class WebhookAuth:
    """Checks, in the background, that each project's backend webhook sends the backend's basic auth.

    ``auth`` gives the Label Studio token to use at the time of the check (``LABEL_STUDIO_API_KEY``,
    or the token ``/setup`` carries).
    """

    def __init__(self, settings: Settings, auth: Callable[[], LabelStudioAuth],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        on = bool(settings.basic_auth_user and settings.basic_auth_pass)
        self.header = basic_auth_header(settings.basic_auth_user, settings.basic_auth_pass) if on else None
        self._auth = auth
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[int, str] = {}
        self._next: dict[int, float] = {}
        self._thread: threading.Thread | None = None
        self._idle = threading.Event()
        self._idle.set()
        self.outcomes: dict[int, str] = {}
        """The last check's outcome per project (``set``, ``already set``, ``not found``, ``failed``, ``no token``)."""

    def request(self, project: Any, host: str) -> bool:
        """A ``/setup`` for ``project`` arrived at ``host`` (its ``Host`` header): check that project's webhook
        in the background unless it was checked recently. Returns at once; True if a check was queued."""
        project_id = _project_id(project)
        if self.header is None or project_id is None or not host:
            return False
        with self._lock:
            if self._clock() < self._next.get(project_id, 0.0):
                return False
            self._pending[project_id] = host
            if self._thread is None:
                self._idle.clear()
                self._thread = threading.Thread(target=self._drain, daemon=True, name="isnet-webhook-auth")
                self._thread.start()
        return True

    def wait_idle(self, timeout: float) -> bool:
        """Until no check is queued or running (tests); False if ``timeout`` passed first."""
        return self._idle.wait(timeout)

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    self._thread = None
                    self._idle.set()
                    return
                project_id, host = self._pending.popitem()
            try:
                outcome = self.check(project_id, host)
            except Exception:  # a bug here must not stop later checks
                log.exception("checking the webhook of project %s failed", project_id)
                outcome = FAILED
            delay = {SET: RECHECK_S, ALREADY_SET: RECHECK_S, FAILED: RETRY_S, NO_TOKEN: RETRY_S}.get(outcome, 0.0)
            with self._lock:
                self.outcomes[project_id] = outcome
                self._next[project_id] = self._clock() + delay

    def check(self, project_id: int, host: str) -> str:
        """Patch the project's backend webhooks that lack the header, now; the outcome."""
        assert self.header is not None
        auth = self._auth()
        if auth.kind == "none":
            log.warning("basic auth is on, but without a Label Studio token (LABEL_STUDIO_API_KEY) the backend "
                        "cannot add it to the webhook Label Studio made for project %s: its events will get 401",
                        project_id)
            return NO_TOKEN
        client = LabelStudioClient(self.settings.label_studio_url, auth, retries=2, backoff=0.5,
                                   timeout=self.settings.ls_timeout)
        try:
            hooks = client.webhooks(project_id)
            patches = webhook_patches(hooks, host, self.header)
            for webhook_id, body in patches:
                client.update_webhook(webhook_id, body)
                log.info("Label Studio webhook %s of project %s now sends the backend's basic auth",
                         webhook_id, project_id)
        except (TaskRejected, LabelStudioDown, AuthError, ValueError) as exc:
            log.warning("could not add the backend's basic auth to the webhook of project %s in Label Studio "
                        "(retried in %.0f s): %s", project_id, RETRY_S, exc)
            return FAILED
        if patches:
            return SET
        if backend_webhooks(hooks, host):
            return ALREADY_SET
        if self.outcomes.get(project_id) != NOT_FOUND:  # once, not at every /setup
            log.info("project %s has no webhook at %s/webhook yet (Label Studio creates it when the model is "
                     "connected; without SSRF_PROTECTION_ENABLED=false on a private network it never does)",
                     project_id, host)
        return NOT_FOUND
