"""The ML backend protocol Label Studio 1.23 speaks, and nothing else.

Every handler parses and checks the request, calls the model, and shapes the answer; the
model decides what a prediction is. Malformed requests get a 400 with an ``error`` that says
what was wrong; the server goes on serving whatever a request contained.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from flask import Blueprint, Response, current_app, request

from backend.jobs.connection import QueueUnavailable
from backend.model import LabelConfigError
from backend.redaction import redact
from backend.server.state import ServerState
from backend.store.health import store_status

bp = Blueprint("protocol", __name__)
RETRY_AFTER_S = 5
"""What a busy ``/predict`` tells the client to wait (``Retry-After``)."""


class BadRequest(ValueError):
    """The request itself is unusable; answered with 400 and this message."""


def state() -> ServerState:
    return current_app.extensions["isnet"]


def reply(body: Any, status: int = 200) -> Response:
    """Compact JSON, written by orjson: a 3000x2000 mask's RLE is a hundred thousand integers,
    which the standard library takes 6 ms to write and orjson 0.5 ms (the same bytes)."""
    return Response(orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS), status=status, mimetype="application/json")


def error(message: str, status: int) -> Response:
    """An error body; secrets in ``message`` (a Redis URL's password, a presigned query) are masked."""
    return reply({"error": redact(message)}, status)


def json_body(kind: type = dict) -> Any:
    """The request's JSON body, which must be a ``kind``; :class:`BadRequest` otherwise."""
    raw = request.get_data(cache=False)
    if not raw.strip():
        raise BadRequest("the request has no body; expected a JSON object")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(body, kind):
        raise BadRequest(f"the body must be a JSON {'object' if kind is dict else kind.__name__}")
    return body


@bp.errorhandler(BadRequest)
def _bad_request(exc: BadRequest) -> Response:
    return error(str(exc), 400)


@bp.errorhandler(LabelConfigError)
def _bad_config(exc: LabelConfigError) -> Response:
    return error(f"labeling config: {exc}", 400)


@bp.get("/")
@bp.get("/health")
def health() -> Response:
    """Liveness for Label Studio's 1 s check: never waits for inference."""
    st = state()
    alive = st.model.service is not None and st.model.service.alive
    store = store_status(st.settings)  # ISNET_MODEL_STORE: its last background check; the cache serves meanwhile
    extra = {"store": store} if store is not None else {}
    return reply({"status": "UP" if alive else "DOWN", **st.model.describe(), **extra}, 200 if alive else 503)


@bp.post("/setup")
def setup() -> Response:
    """Label Studio connects or is about to predict: report the model version, check the config."""
    body = json_body()
    schema = body.get("schema")
    if isinstance(schema, str) and schema.strip():
        state().model.check_label_config(schema)
    token = body.get("access_token")
    state().model.use_label_studio_token(token if isinstance(token, str) else None)
    state().webhook_auth.request(body.get("project"), request.host)  # in the background: basic auth on its webhook
    return reply({"model_version": state().model.version_for(body.get("project"))})


@bp.get("/versions")
def versions() -> Response:
    """Label Studio's model-version list (``GET /api/ml/{id}/versions`` asks here). Label Studio 1.23
    sends no project with it, so it lists every lineage's versions, newest first (their names say
    the lineage); ``current`` is the base lineage's."""
    model = state().model
    current = model.model_version
    return reply({"versions": model.watcher.registry.version_names(), "current": current})


@bp.post("/predict")
def predict() -> Response:
    """A slot first, then the body: a request that cannot be served is refused with its body unread."""
    st = state()
    wait = st.slot_wait()
    if not st.predict_slots.acquire(timeout=wait):
        st.stats.incr("predict.refused")
        resp = error(f"busy: no /predict slot came free within {wait:.0f} s, the time this request had left; "
                     "its body was not read; try again shortly", 503)
        resp.headers["Retry-After"] = str(RETRY_AFTER_S)
        return resp
    try:
        body = json_body()
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise BadRequest('"tasks" must be a list of task objects')
        if not tasks:
            return reply({"results": []})
        label_config = body.get("label_config")
        if not isinstance(label_config, str) or not label_config.strip():
            raise BadRequest('"label_config" is missing: send the project\'s labeling config')
        params = body.get("params") if isinstance(body.get("params"), dict) else {}
        results = st.model.predict(tasks, context=params.get("context"), label_config=label_config,
                                   project=body.get("project"), deadline=st.deadline_for_request())
    finally:
        st.predict_slots.release()
    st.stats.incr("predict.tasks", len(tasks))
    return reply({"results": results})


@bp.post("/webhook")
def webhook() -> Response:
    """Accepted at once; the model queues whatever work the event asks for."""
    body = json_body()
    action = body.get("action")
    if not isinstance(action, str) or not action:
        raise BadRequest('"action" is missing: expected a Label Studio webhook payload')
    try:
        return reply(state().model.fit(action, body))
    except QueueUnavailable as exc:  # Redis down: say so at once; /predict and /setup go on serving
        return error(f"the job queue is unavailable, the event was not queued: {exc}", 503)


@bp.get("/metrics.json")
def metrics_json() -> Response:
    """This process's JSON view: counters, recent errors, last events, retraining reports
    (Prometheus text is ``GET /metrics``, :mod:`backend.server.prometheus`)."""
    st = state()
    return reply({**st.stats.snapshot(), **st.model.metrics()})
