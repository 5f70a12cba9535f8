"""The Flask application factory: protocol routes plus what wraps every request.

Around each request: a request id (taken from ``X-Request-Id`` or made, echoed back, on every
log line), optional basic auth (every route but ``/health``), a body over ``ISNET_MAX_BODY_BYTES``
refused (413) before it is read, one structured access-log line with the duration, counters for
``/metrics.json`` and Prometheus (``/metrics``), and JSON errors instead of HTML pages, also for a
crash inside a handler.
"""

from __future__ import annotations

import logging
import time

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from backend import redaction, store
from backend.model import ISNetModel
from backend.server import prometheus
from backend.server.auth import basic_auth_ok, needs_auth
from backend.server.routes import bp, error
from backend.server.state import ServerState
from backend.service.logs import new_request_id, reset_request_id, set_request_id
from backend.service.stats import Stats
from backend.service.telemetry import observe_request
from backend.settings import Settings, load

log = logging.getLogger("backend.server.access")


def create_app(settings: Settings | None = None, model: ISNetModel | None = None) -> Flask:
    """A ready app: the model is loaded and its inference thread started before this returns.

    An edge: without ``settings`` (a WSGI server calling the factory) they are read from the
    environment here, and passed down explicitly from here on."""
    settings = settings or load()
    redaction.remember(*settings.secrets)  # masked in every log line and error this process shows
    store.connect(settings)  # ISNET_MODEL_STORE: versions in the object store, pointers in Redis
    stats = model.stats if model is not None else Stats()
    model = model or ISNetModel(settings, stats=stats)
    model.setup()
    app = Flask("isnet_backend")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes  # also bounds a chunked body as it is read
    app.extensions["isnet"] = ServerState(settings, model, stats)
    app.register_blueprint(bp)
    app.register_blueprint(prometheus.bp)

    @app.before_request
    def _begin() -> Response | None:
        g.started = time.monotonic()
        g.request_id = new_request_id(request.headers.get("X-Request-Id"))
        g.log_token = set_request_id(g.request_id)
        if needs_auth(request.path) and not basic_auth_ok(request, settings.basic_auth_user, settings.basic_auth_pass):
            resp = error("authentication required (BASIC_AUTH_USER / BASIC_AUTH_PASS)", 401)
            resp.headers["WWW-Authenticate"] = 'Basic realm="isnet"'
            return resp
        if (request.content_length or 0) > settings.max_body_bytes:  # refused unread
            return error(f"the body has {request.content_length} bytes; at most {settings.max_body_bytes} are "
                         "accepted (ISNET_MAX_BODY_BYTES)", 413)
        return None

    @app.after_request
    def _end(response: Response) -> Response:
        response.headers["X-Request-Id"] = g.get("request_id", "-")
        ms = round((time.monotonic() - g.get("started", time.monotonic())) * 1000, 1)
        route = request.url_rule.rule if request.url_rule is not None else "unrouted"  # bounded key set
        stats.incr(f"requests.{request.method} {route} {response.status_code}")
        observe_request(request.method, route, response.status_code, ms / 1000)
        log.info("%s %s %s %.1f ms", request.method, request.path, response.status_code, ms,
                 extra={"method": request.method, "path": request.path, "status": response.status_code,
                        "duration_ms": ms, "remote": request.remote_addr})
        return response

    @app.teardown_request
    def _teardown(_exc: BaseException | None) -> None:
        token = g.pop("log_token", None)
        if token is not None:
            reset_request_id(token)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        return error(f"{exc.name}: {exc.description}", exc.code or 500)

    @app.errorhandler(Exception)
    def _crash(exc: Exception) -> Response:
        log.exception("unhandled error in %s %s", request.method, request.path)
        stats.error(type(exc).__name__, str(exc), path=request.path, request_id=g.get("request_id"))
        return error(f"internal error ({type(exc).__name__}); request id {g.get('request_id')}", 500)

    return app
