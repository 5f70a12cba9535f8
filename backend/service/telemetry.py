"""Prometheus instruments of the serving processes, counted across the gunicorn workers of a host.

Why multiprocess mode: ``isnet serve`` runs ``WORKERS`` processes and a scrape reaches one of
them; each process writes its counters and histograms to files in ``PROMETHEUS_MULTIPROC_DIR``
and whichever process answers ``GET /metrics`` sums them all (``prometheus_client``'s
multiprocess collector). :func:`prepare_multiprocess_dir` sets that directory in the gunicorn
master before the workers fork (a temporary one when the user sets none), and gunicorn's
``child_exit`` hook calls :func:`mark_dead`. Without the variable (tests, a single process) the
default registry is used.

Why the instruments are made lazily: ``prometheus_client`` decides between in-memory and
file-backed values when a metric is made, so they must be made after the directory is set.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CYCLES = "isnet_retrain_cycles"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
"""Seconds: ``/health`` answers in milliseconds, a ``/predict`` of many tasks in up to its budget (60 s)."""


@dataclass(frozen=True)
class Instruments:
    requests: Counter
    request_seconds: Histogram
    inference_seconds: Histogram
    inference_images: Counter


_lock = threading.Lock()
_instruments: Instruments | None = None


def instruments() -> Instruments:
    """The process's instruments, made on first use (after :func:`prepare_multiprocess_dir`)."""
    global _instruments
    with _lock:
        if _instruments is None:
            _instruments = Instruments(
                requests=Counter("isnet_http_requests", "HTTP requests answered, by route and status",
                                 ["method", "route", "status"]),
                request_seconds=Histogram("isnet_http_request_duration_seconds",
                                          "Time to answer an HTTP request, by route and status",
                                          ["method", "route", "status"], buckets=LATENCY_BUCKETS),
                inference_seconds=Histogram("isnet_inference_seconds", "Time of one engine call (a batch of images)",
                                            buckets=LATENCY_BUCKETS),
                inference_images=Counter("isnet_inference_images", "Images through the network"),
            )
        return _instruments


_cycles: Counter | None = None


def local_cycles(outcomes: Iterable[str]) -> Counter:
    """``isnet_retrain_cycles_total{outcome}`` of the in-process retrainer (no Redis), every outcome shown
    from 0. Made only where there is no Redis: with Redis the same series is read from Redis."""
    global _cycles
    with _lock:
        if _cycles is None:
            _cycles = Counter(CYCLES, "Retraining cycles, by outcome", ["outcome"])
            for outcome in outcomes:
                _cycles.labels(outcome)
        return _cycles


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    """One answered request (``route`` is the URL rule, a bounded set, never the raw path)."""
    metrics = instruments()
    labels = (method, route, str(status))
    metrics.requests.labels(*labels).inc()
    metrics.request_seconds.labels(*labels).observe(seconds)


def observe_inference(seconds: float, images: int) -> None:
    """One engine call of ``images`` images that took ``seconds``."""
    metrics = instruments()
    metrics.inference_seconds.observe(seconds)
    metrics.inference_images.inc(images)


def prepare_multiprocess_dir() -> Path:
    """Set ``PROMETHEUS_MULTIPROC_DIR`` (in the gunicorn master, before the fork) and empty it.

    A directory the user set is emptied of the last run's files (their processes are gone);
    without one a fresh temporary directory is made."""
    given = os.environ.get(MULTIPROC_ENV, "").strip()
    if given:
        folder = Path(given)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.db"):
            stale.unlink(missing_ok=True)
    else:
        folder = Path(tempfile.mkdtemp(prefix="isnet-prometheus-"))
        os.environ[MULTIPROC_ENV] = str(folder)
    from prometheus_client import values

    values.ValueClass = values.get_value_class()  # in case prometheus_client was imported before
    return folder


def remove_multiprocess_dir(folder: Path) -> None:
    """Remove a temporary directory :func:`prepare_multiprocess_dir` made (server shutdown)."""
    if folder.name.startswith("isnet-prometheus-"):
        shutil.rmtree(folder, ignore_errors=True)


def mark_dead(pid: int) -> None:
    """A worker exited: its live gauges go (gunicorn's ``child_exit`` hook)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


class _Default:
    """The default registry's collectors (single-process mode), as one collector."""

    def collect(self) -> Iterable[Any]:
        return REGISTRY.collect()


def render(*collectors: Any) -> tuple[bytes, str]:
    """The Prometheus text of every process's instruments plus ``collectors`` (read at scrape time)."""
    registry = CollectorRegistry()
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_Default())
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry), CONTENT_TYPE_LATEST
