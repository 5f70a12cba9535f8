"""What the request handlers of one server process share."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from flask import g

from backend.model import ISNetModel
from backend.server.stats import Stats
from backend.settings import Settings

# Request threads kept free of /predict, so /health, /setup and /webhook always find one.
RESERVED_THREADS = 2


@dataclass
class ServerState:
    settings: Settings
    model: ISNetModel
    stats: Stats
    predict_slots: threading.BoundedSemaphore = field(init=False)

    def __post_init__(self) -> None:
        self.predict_slots = threading.BoundedSemaphore(max(1, self.settings.server_threads - RESERVED_THREADS))

    def deadline_for_request(self) -> float:
        """``time.monotonic()`` by which this request's predictions must be done (its arrival + budget)."""
        return getattr(g, "started", time.monotonic()) + self.settings.predict_budget
