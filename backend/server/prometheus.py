"""``GET /metrics``: the operator's view as Prometheus text (``isnet_...`` series).

Two kinds of series. Counted ones (requests and their latency by route and status, inference
latency) are kept by every gunicorn worker of the host and summed at each scrape
(:mod:`backend.service.telemetry`). Shared state is read when scraped, by :class:`StateCollector`:
queue depths and pre-annotation progress (from Redis, so every worker of every host; or the
answering process's in-process queue without ``REDIS_URL``), retraining cycle outcomes, the
served model version and engine, and disk use per lineage (:func:`disk_usage_family`).
The JSON view of one process (counters, recent errors, last events) is ``GET /metrics.json``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping

from flask import Blueprint, Response, current_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric

from backend.jobs import queue as work_queue
from backend.jobs import retrain_outcomes
from backend.jobs.connection import redis_connection
from backend.jobs.retrain_queue import local_runner
from backend.learning.retention import disk_usage as disk_usage_of
from backend.server.state import ServerState
from backend.service import telemetry

log = logging.getLogger(__name__)

bp = Blueprint("prometheus", __name__)

PROGRESS_FIELDS = ("total", "done", "skipped", "failed")


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text format (``prometheus_client``), behind the same auth as every route but ``/health``."""
    state: ServerState = current_app.extensions["isnet"]
    if not state.settings.redis_url:
        telemetry.local_cycles(retrain_outcomes.OUTCOMES)  # shown from 0 before the first cycle
    body, content_type = telemetry.render(StateCollector(state))
    return Response(body, mimetype=None, content_type=content_type)


def disk_usage_family(usage: Mapping[str, Mapping[str, int]]) -> GaugeMetricFamily:
    """``isnet_disk_usage_bytes{lineage,kind}`` from retention's ``{lineage: {kind: bytes}}``."""
    family = GaugeMetricFamily("isnet_disk_usage_bytes",
                               "Bytes a lineage's versions, engines, snapshots and caches take on this host",
                               labels=["lineage", "kind"])
    for lineage, kinds in sorted(usage.items()):
        for kind, size in sorted(kinds.items()):
            family.add_metric([lineage, kind], float(size))
    return family


def disk_usage(state: ServerState) -> dict[str, dict[str, int]]:
    """Bytes on disk per lineage and kind, as retention measures them (names and ``stat`` only)."""
    return disk_usage_of(state.settings)["lineages"]


class StateCollector:
    """Series read from shared state at each scrape (never stored in the worker files)."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        parts = (self._model, self._queues, self._cycles, self._disk)
        for part in parts:
            try:
                yield from part()
            except Exception:  # one unreadable source must not cost the whole scrape
                log.exception("metrics: %s failed", part.__name__)

    def _model(self) -> Iterator[Metric]:
        described = self.state.model.describe()
        info = InfoMetricFamily("isnet_model", "The base model version, engine (and why) and device served")
        info.add_metric([], {key: str(described.get(key) or "") for key in
                             ("model_version", "engine", "precision", "device", "input_size", "engine_reason",
                              "engine_fallback", "engine_upgrade")})
        yield info
        service = self.state.model.service
        if service is not None:
            inference = service.describe()
            yield GaugeMetricFamily("isnet_inference_queue_jobs", "Jobs waiting for this process's inference thread",
                                    value=float(inference.get("queued_jobs") or 0))
            per_image = inference.get("seconds_per_image")
            if per_image is not None:
                yield GaugeMetricFamily("isnet_inference_seconds_per_image",
                                        "Smoothed seconds per image at the serving size", value=float(per_image))
            served = GaugeMetricFamily("isnet_lineage_served_info", "The version each lineage serves (value 1)",
                                       labels=["lineage", "model_version"])
            for lineage, version in sorted((inference.get("served") or {}).items()):
                served.add_metric([lineage, version], 1.0)
            yield served
            engines = GaugeMetricFamily("isnet_loaded_engine_info", "The engine each loaded version runs (value 1)",
                                        labels=["model_version", "engine"])
            for version, engine in sorted((inference.get("engines") or {}).items()):
                engines.add_metric([version, engine], 1.0)
            yield engines
        yield GaugeMetricFamily("isnet_predict_slots_free", "Free /predict slots in this process",
                                value=float(self.state.predict_slots._value))

    def _queues(self) -> Iterator[Metric]:
        """Queue depths and pre-annotation progress: RQ (Redis) or this process's in-process thread."""
        settings = self.state.settings
        progress = work_queue.progress(settings)
        depth = GaugeMetricFamily("isnet_queue_jobs", "Jobs in the background queue, by state",
                                  labels=["queue", "state"])
        if progress.get("backend") == "rq":
            yield GaugeMetricFamily("isnet_queue_up", "1 when Redis answered this scrape",
                                    value=0.0 if "error" in progress else 1.0)
            for state in ("queued", "started", "failed"):
                if f"{state}_jobs" in progress:
                    depth.add_metric([settings.queue_name, state], float(progress[f"{state}_jobs"]))
        else:
            depth.add_metric(["in-process", "queued"], float(progress.get("queued_chunks", 0)))
            runner = local_runner()
            depth.add_metric(["in-process-retrain", "started"], float(len(runner.running)))
            depth.add_metric(["in-process-retrain", "queued"], float(len(runner.pending)))
            yield GaugeMetricFamily("isnet_preannotation_waiting_tasks", "Tasks waiting for the in-process thread",
                                    value=float(progress.get("waiting", 0)))
        yield depth
        tasks = CounterMetricFamily("isnet_preannotation_tasks", "Pre-annotation tasks by outcome "
                                    "(total asked, done, skipped as already predicted, failed)", labels=["outcome"])
        for name in PROGRESS_FIELDS:
            if name in progress:
                tasks.add_metric([name], float(progress[name]))
        yield tasks

    def _cycles(self) -> Iterator[Metric]:
        """Retraining outcomes from Redis (every worker's jobs); without Redis they are the host's own
        counter (:func:`backend.service.telemetry.local_cycles`)."""
        settings = self.state.settings
        if not settings.redis_url:
            return
        connection = redis_connection(settings)
        try:
            counts = retrain_outcomes.redis_counts(connection, settings.queue_name)
        finally:
            connection.close()
        family = CounterMetricFamily(telemetry.CYCLES, "Retraining cycles, by outcome", labels=["outcome"])
        for outcome, count in counts.items():
            family.add_metric([outcome], float(count))
        yield family

    def _disk(self) -> Iterator[Metric]:
        yield disk_usage_family(disk_usage(self.state))

