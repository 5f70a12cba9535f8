"""Running the app under gunicorn from Python, so ``isnet serve`` is the whole command.

Why gunicorn with ``gthread`` workers: a production server (never Flask's development one)
whose request threads keep answering ``/health`` and ``/setup`` while other threads wait on
inference. Each worker process loads its own model before it takes requests, after the fork:
torch's OpenMP thread pool does not survive a fork, so nothing runs the network in the master.
The master also sets ``PROMETHEUS_MULTIPROC_DIR`` before the fork, so ``GET /metrics`` counts
across the workers (:mod:`backend.service.telemetry`); ``child_exit`` tells it a worker is gone.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from backend.service import telemetry
from backend.service.logs import logging_config
from backend.settings import Settings

# Seconds a worker may go without a heartbeat; the gthread main loop beats while requests run.
WORKER_TIMEOUT = 120


def gunicorn_options(settings: Settings, host: str, port: int) -> dict[str, Any]:
    return {
        "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "workers": max(1, settings.workers),
        "threads": max(3, settings.server_threads),
        "worker_class": "gthread",
        "timeout": WORKER_TIMEOUT,
        "graceful_timeout": 30,
        "keepalive": 5,
        "preload_app": False,
        "accesslog": None,
        "logconfig_dict": logging_config(settings.log_level),
        "proc_name": "isnet-serve",
        # The heartbeat file lives in memory where there is /dev/shm (containers have a slow /tmp).
        "worker_tmp_dir": "/dev/shm" if os.path.isdir("/dev/shm") else None,
        # gunicorn >= 25.1 opens a control socket at one fixed path per user: two servers would collide.
        "control_socket_disable": True,
        "child_exit": _child_exit,
    }


def _child_exit(_server: Any, worker: Any) -> None:
    telemetry.mark_dead(worker.pid)


class GunicornServer(BaseApplication):
    """``create_app(settings)`` in every worker, bound to ``host:port``."""

    def __init__(self, settings: Settings, host: str, port: int) -> None:
        self.settings = settings
        self.options = gunicorn_options(settings, host, port)
        self.metrics_dir = telemetry.prepare_multiprocess_dir()
        super().__init__()

    def run(self) -> None:
        try:
            super().run()
        finally:
            telemetry.remove_multiprocess_dir(self.metrics_dir)

    def load_config(self) -> None:
        for key, value in self.options.items():
            if value is not None and key in self.cfg.settings:  # older gunicorns lack some settings
                self.cfg.set(key, value)

    def load(self) -> Flask:
        from backend.server.app import create_app

        return create_app(self.settings)
