"""What the request handlers of one server process share."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from flask import g

from backend.jobs.webhook_auth import WebhookAuth
from backend.model import ISNetModel
from backend.service.stats import Stats
from backend.settings import Settings

# Request threads kept free of /predict, so /health, /setup and /webhook always find one.
RESERVED_THREADS = 2


@dataclass
class ServerState:
    settings: Settings
    model: ISNetModel
    stats: Stats
    predict_slots: threading.BoundedSemaphore = field(init=False)
    webhook_auth: WebhookAuth = field(init=False)
    """Adds the basic auth to the webhook Label Studio made for the backend (checked at ``/setup``)."""

    def __post_init__(self) -> None:
        self.predict_slots = threading.BoundedSemaphore(max(1, self.settings.server_threads - RESERVED_THREADS))
        self.webhook_auth = WebhookAuth(self.settings, lambda: self.model.fetcher.auth)

    def slot_wait(self) -> float:
        """How long a request may wait for a ``/predict`` slot: its budget, less one image's inference.

        Concurrent requests (annotators opening tasks at once) queue here and then in the inference
        thread's queue, instead of being refused; only a wait that could not end in an answer is.
        """
        service = self.model.service
        per_image = (service.seconds_per_image if service else None) or 0.0
        return max(0.0, self.deadline_for_request() - time.monotonic() - per_image)

    def deadline_for_request(self) -> float:
        """``time.monotonic()`` by which this request's predictions must be done (its arrival + budget)."""
        return getattr(g, "started", time.monotonic()) + self.settings.predict_budget
