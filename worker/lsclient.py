"""The few Label Studio API calls pre-annotation needs, with retries where retrying can help.

Why its own client: a job writes thousands of predictions while Label Studio may restart,
time out under an import, or have deleted a task since the webhook. A timeout, a refused
connection or a 5xx is transient, so it is retried with exponential backoff; a 4xx (deleted
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

from backend.labelstudio.auth import LabelStudioAuth
from backend.settings import Settings

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 60.0


class TaskRejected(Exception):
    """Label Studio answered 4xx: retrying will not help."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class LabelStudioDown(Exception):
    """Label Studio kept timing out or answering 5xx through every retry."""


class LabelStudioClient:
    """``GET``/``POST`` on Label Studio's API with :class:`LabelStudioAuth` headers and retries."""

    def __init__(self, url: str, auth: LabelStudioAuth, retries: int = 6, backoff: float = 1.0,
                 timeout: float = 30.0, sleep: Callable[[float], None] = time.sleep) -> None:
        self.url = url.rstrip("/")
        self.auth = auth
        self.retries = max(1, retries)
        self.backoff = backoff
        self.timeout = timeout
        self._sleep = sleep
        self._session = requests.Session()
        self.retried = 0
        """How many calls were retried (for job meta and tests)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> LabelStudioClient:
        return cls(settings.label_studio_url, LabelStudioAuth(settings.label_studio_url, settings.label_studio_api_key),
                   settings.ls_retries, settings.ls_backoff, settings.ls_timeout)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The decoded JSON answer; :class:`TaskRejected` on 4xx, :class:`LabelStudioDown` when out of tries."""
        last = ""
        for attempt in range(self.retries):
            if attempt:
                delay = min(MAX_BACKOFF_S, self.backoff * 2 ** (attempt - 1))
                self.retried += 1
                log.warning("Label Studio %s %s failed (%s); retry %d/%d in %.1f s",
                            method, path, last, attempt, self.retries - 1, delay)
                self._sleep(delay)
            try:
                response = self._session.request(method, self.url + path, headers=self.auth.headers(),
                                                  timeout=self.timeout, **kwargs)
            except requests.RequestException as exc:  # refused, reset, timed out: transient
                last = type(exc).__name__
                continue
            if response.status_code == 401 and self.auth.kind == "pat" and attempt == 0:
                self.auth.invalidate()  # an access token that expired early: refresh once
                last = "HTTP 401"
                continue
            if response.status_code >= 500:
                last = f"HTTP {response.status_code}"
                continue
            if response.status_code >= 400:
                raise TaskRejected(response.status_code,
                                   f"{method} {path}: HTTP {response.status_code}: {response.text[:300]}")
            return response.json() if response.content else None
        raise LabelStudioDown(f"{method} {path}: {last} after {self.retries} tries")

    # -- what a pre-annotation job asks ------------------------------------------------------

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
        answer = self.call("GET", "/api/predictions/", params={"task": task_id})
        items = answer.get("results", answer) if isinstance(answer, dict) else answer
        return [str(p.get("model_version")) for p in items or [] if p.get("task", task_id) == task_id]

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

    def create_prediction(self, task_id: int, result: list[dict[str, Any]], score: float,
                          model_version: str) -> dict[str, Any]:
        return self.call("POST", "/api/predictions/", json={
            "task": task_id, "result": result, "score": score, "model_version": model_version})
