"""The few Label Studio API calls pre-annotation needs, retried only where retrying cannot duplicate.

Why its own client: a job writes thousands of predictions while Label Studio may restart, time
out under an import, or have deleted a task since the webhook. Reads (GET) are idempotent, so a
timeout, a refused or cut connection or a 5xx is retried with exponential backoff (urllib3's
``Retry`` on the session). A create is not: Label Studio may have stored a prediction whose answer
came late or never, so after such a failure :meth:`LabelStudioClient.create_prediction` first looks
for it (same task, same model version) and writes again only when it is not there. A 4xx (deleted
task, bad token, invalid prediction) will not change by retrying, so it raises
:class:`TaskRejected` at once and the job records the task as failed and goes on.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.response import BaseHTTPResponse
from urllib3.util.retry import Retry

from backend.labelstudio.auth import LabelStudioAuth
from backend.settings import Settings

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 60.0
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
"""Methods retried blindly: asking twice changes nothing in Label Studio."""
PREDICTIONS = "/api/predictions/"

Pause = Callable[[str, str, str, int], None]
"""``pause(method, path, reason, retry)``: log and wait before retry number ``retry`` (1-based)."""


class TaskRejected(Exception):
    """Label Studio answered 4xx: retrying will not help."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class LabelStudioDown(Exception):
    """Label Studio kept timing out or answering 5xx through every retry."""


class _Unsure(Exception):
    """One try of a write round failed in a way that says nothing about what Label Studio stored."""


def backoff_delay(backoff: float, retry: int) -> float:
    """Seconds before retry number ``retry`` (1-based): ``backoff``, doubled each time, capped at 60 s."""
    return min(MAX_BACKOFF_S, backoff * 2 ** (retry - 1))


class _ReadRetry(Retry):
    """urllib3's ``Retry`` that waits through the client's :data:`Pause` (its backoff, sleep and log line).

    urllib3 decides what is retried (reads only, timeouts, cut connections, 5xx) and counts the
    tries; the client decides how long to wait, so tests can replace the clock.
    """

    pause: Pause | None = None

    def new(self, **kw: Any) -> _ReadRetry:
        retry = super().new(**kw)
        retry.pause = self.pause
        return retry

    def sleep(self, response: BaseHTTPResponse | None = None) -> None:
        if self.pause is None:
            return super().sleep(response)
        last = self.history[-1]
        reason = f"HTTP {last.status}" if last.status else type(last.error).__name__
        self.pause(last.method or "GET", (last.url or "?").split("?", 1)[0], reason, len(self.history))


def _reads_session(tries: int, pause: Pause) -> requests.Session:
    """A session whose GETs urllib3 retries ``tries - 1`` times; other methods are never retried after sending."""
    retry = _ReadRetry(total=tries - 1, allowed_methods=READ_METHODS, status_forcelist=frozenset(range(500, 600)),
                       raise_on_status=False, respect_retry_after_header=False)
    retry.pause = pause
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class LabelStudioClient:
    """Label Studio's API with :class:`LabelStudioAuth` headers: reads retried, creates never duplicated."""

    def __init__(self, url: str, auth: LabelStudioAuth, retries: int = 6, backoff: float = 1.0,
                 timeout: float = 30.0, sleep: Callable[[float], None] = time.sleep) -> None:
        self.url = url.rstrip("/")
        self.auth = auth
        self.retries = max(1, retries)
        self.backoff = backoff
        self.timeout = timeout
        self._sleep = sleep
        self._reads = _reads_session(self.retries, self._pause)
        self._writes = requests.Session()  # one try per request: create_prediction decides what comes next
        self.retried = 0
        """How many retries were made, reads and writes (for job meta and tests)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> LabelStudioClient:
        return cls(settings.label_studio_url, LabelStudioAuth(settings.label_studio_url, settings.label_studio_api_key),
                   settings.ls_retries, settings.ls_backoff, settings.ls_timeout)

    # -- transport -----------------------------------------------------------------------------

    def _pause(self, method: str, path: str, reason: str, retry: int) -> None:
        """Log the failure and wait the backoff before retry number ``retry``."""
        delay = backoff_delay(self.backoff, retry)
        self.retried += 1
        log.warning("Label Studio %s %s failed (%s); retry %d/%d in %.1f s",
                    method, path, reason, retry, self.retries - 1, delay)
        self._sleep(delay)

    def _send(self, session: requests.Session, method: str, path: str, **kwargs: Any) -> requests.Response:
        """One request; a personal access token refused with 401 is refreshed and the request sent once more.

        Sending again after a 401 is safe for any method: Label Studio refused it before doing anything.
        """
        def send() -> requests.Response:
            return session.request(method, self.url + path, headers=self.auth.headers(), timeout=self.timeout,
                                   **kwargs)

        response = send()
        if response.status_code == 401 and self.auth.kind == "pat":
            self.auth.invalidate()  # an access token that expired early
            response = send()
        return response

    @staticmethod
    def _decode(method: str, path: str, response: requests.Response) -> Any:
        """The decoded JSON answer of a request that got an answer below 500; :class:`TaskRejected` on 4xx."""
        if response.status_code >= 400:
            raise TaskRejected(response.status_code,
                               f"{method} {path}: HTTP {response.status_code}: {response.text[:300]}")
        return response.json() if response.content else None

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The decoded JSON answer; :class:`TaskRejected` on 4xx, :class:`LabelStudioDown` when out of tries.

        A read is retried with backoff; any other method is sent once (a create that must not
        duplicate goes through :meth:`create_prediction`).
        """
        reading = method.upper() in READ_METHODS
        tries = self.retries if reading else 1
        try:
            response = self._send(self._reads if reading else self._writes, method, path, **kwargs)
        except requests.RequestException as exc:  # refused, reset, timed out, through every retry
            raise LabelStudioDown(f"{method} {path}: {type(exc).__name__} after {tries} tries") from exc
        if response.status_code >= 500:
            raise LabelStudioDown(f"{method} {path}: HTTP {response.status_code} after {tries} tries")
        return self._decode(method, path, response)

    def _once(self, method: str, path: str, **kwargs: Any) -> Any:
        """One try of a write round: the answer, :class:`TaskRejected` on 4xx, :class:`_Unsure` otherwise."""
        try:
            response = self._send(self._writes, method, path, **kwargs)
        except requests.RequestException as exc:
            raise _Unsure(type(exc).__name__) from exc
        if response.status_code >= 500:
            raise _Unsure(f"HTTP {response.status_code}")
        return self._decode(method, path, response)

    # -- what a pre-annotation job asks --------------------------------------------------------

    def project(self, project_id: int) -> dict[str, Any]:
        return self.call("GET", f"/api/projects/{project_id}")

    def tasks(self, project_id: int, task_ids: list[int]) -> dict[int, dict[str, Any]]:
        """The tasks among ``task_ids`` that exist, by id, through the Data Manager's list.

        Never ``GET /api/tasks/{id}``: opening a task without predictions makes Label Studio call
        ``/predict`` for it, which would predict every task twice.
        """
        query = json.dumps({"selectedItems": {"all": False, "included": list(task_ids)}})
        answer = self.call("GET", "/api/tasks/", params={"project": project_id, "query": query, "fields": "all",
                                                         "page_size": max(1, len(task_ids))})
        tasks = answer.get("tasks", []) if isinstance(answer, dict) else answer
        wanted = set(task_ids)
        return {int(t["id"]): t for t in tasks if int(t["id"]) in wanted}

    def prediction_versions(self, task_id: int) -> list[str]:
        """The ``model_version`` of every prediction the task has."""
        return [str(p.get("model_version")) for p in _of_task(self.call("GET", PREDICTIONS, params={"task": task_id}),
                                                               task_id)]

    def find_prediction(self, task_id: int, model_version: str) -> dict[str, Any] | None:
        """The task's prediction of ``model_version``, if it has one (a read, retried)."""
        return _matching(self.call("GET", PREDICTIONS, params=_version_query(task_id, model_version)),
                         task_id, model_version)

    def project_task_ids(self, project_id: int) -> list[int]:
        """Every task id of a project, page by page."""
        ids: list[int] = []
        page = 1
        while True:
            try:
                answer = self.call("GET", "/api/tasks/", params={"project": project_id, "page": page,
                                                                 "page_size": 500, "fields": "all"})
            except TaskRejected as exc:
                if exc.status == 404 and page > 1:  # past the last page
                    return ids
                raise
            tasks = answer.get("tasks", []) if isinstance(answer, dict) else answer
            ids.extend(int(t["id"]) for t in tasks)
            total = answer.get("total") if isinstance(answer, dict) else None
            if not tasks or (isinstance(total, int) and len(ids) >= total):
                return ids
            page += 1

    # -- the backend's own webhook (backend.jobs.webhook_auth) -----------------------------------

    def webhooks(self, project_id: int) -> list[dict[str, Any]]:
        """The project's webhooks (``id``, ``url``, ``headers``, ...)."""
        answer = self.call("GET", "/api/webhooks/", params={"project": project_id})
        return [w for w in _items(answer) if w.get("project", project_id) == project_id]

    def update_webhook(self, webhook_id: int, body: dict[str, Any]) -> dict[str, Any]:
        """``PATCH`` a webhook (sent once: a repeat would only write the same again)."""
        return self.call("PATCH", f"/api/webhooks/{int(webhook_id)}/", json=body)

    def create_prediction(self, task_id: int, result: list[dict[str, Any]], score: float,
                          model_version: str) -> dict[str, Any]:
        """Write one prediction, at most once: the stored prediction (this write's, or one found stored).

        After a timeout, a cut connection or a 5xx, Label Studio may have stored the write anyway,
        so each later round first reads the task's predictions and returns the one of
        ``model_version`` if it is there; only when it is not is the prediction written again.
        :class:`TaskRejected` on 4xx; :class:`LabelStudioDown` when every round failed.
        """
        body = {"task": task_id, "result": result, "score": score, "model_version": model_version}
        reason = ""
        for attempt in range(self.retries):
            if attempt:
                self._pause("POST", PREDICTIONS, reason, attempt)
            try:
                return self._create_round(body, check=attempt > 0)
            except _Unsure as exc:
                reason = str(exc)
        raise LabelStudioDown(f"POST {PREDICTIONS}: {reason} after {self.retries} tries")

    def _create_round(self, body: dict[str, Any], check: bool) -> dict[str, Any]:
        """One round of :meth:`create_prediction`: look first when ``check``, then write if still missing."""
        task_id, version = body["task"], body["model_version"]
        if check:
            found = _matching(self._once("GET", PREDICTIONS, params=_version_query(task_id, version)), task_id, version)
            if found is not None:
                log.warning("task %s: the earlier write of its %s prediction was stored after all; not written again",
                            task_id, version)
                return found
        return self._once("POST", PREDICTIONS, json=body)


def _version_query(task_id: int, model_version: str) -> dict[str, Any]:
    """Query for a task's predictions of one version (Label Studio may ignore the version filter)."""
    return {"task": task_id, "model_version": model_version}


def _items(answer: Any) -> list[dict[str, Any]]:
    """The objects of a list answer or a paginated one."""
    items = answer.get("results", []) if isinstance(answer, dict) else answer
    return [item for item in items or [] if isinstance(item, dict)]


def _of_task(answer: Any, task_id: int) -> list[dict[str, Any]]:
    """The predictions of ``task_id`` in a list answer or a paginated one."""
    items = answer.get("results", answer) if isinstance(answer, dict) else answer
    return [p for p in items or [] if isinstance(p, dict) and p.get("task", task_id) == task_id]


def _matching(answer: Any, task_id: int, model_version: str) -> dict[str, Any] | None:
    """The first prediction in ``answer`` of ``task_id`` and ``model_version``, else ``None``."""
    return next((p for p in _of_task(answer, task_id) if str(p.get("model_version")) == model_version), None)
