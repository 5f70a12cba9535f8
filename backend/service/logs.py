"""Structured (JSON lines) logs with the id of the request that caused them.

Why: one ``/predict`` fans out into fetches, an inference job on another thread and a
result per task; with several requests in flight, only a request id on every line lets an
operator follow one of them. The id comes from the caller's ``X-Request-Id`` when it sends a
sane one, else it is made here, and it is echoed in the response.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
import uuid
from typing import Any

from backend.redaction import RedactingFilter

_REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# Attributes every LogRecord has; anything else was passed with ``extra=`` and is logged as a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "request_id"}


def new_request_id(candidate: str | None = None) -> str:
    """The caller's id if it is short and plain (it ends up in logs), else a fresh one."""
    if candidate and _SANE_ID.match(candidate):
        return candidate
    return uuid.uuid4().hex[:16]


def set_request_id(request_id: str) -> contextvars.Token:
    return _REQUEST_ID.set(request_id)


def reset_request_id(token: contextvars.Token) -> None:
    _REQUEST_ID.reset(token)


def current_request_id() -> str:
    return _REQUEST_ID.get()


class RequestIdFilter(logging.Filter):
    """Stamps every record with the request id of the thread (or context) that logs it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = _REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": getattr(record, "request_id", _REQUEST_ID.get()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = record.exc_text or self.formatException(record.exc_info)  # redacted by the filter
        return json.dumps(entry, default=str)


def logging_config(level: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for the server and gunicorn's own loggers alike."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "filters": ["request_id", "redact"],
               "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}, "redact": {"()": RedactingFilter}},
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"json": handler},
        "root": {"level": level, "handlers": ["json"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": ["json"], "propagate": False},
            # Every request is logged once by the app, with its id and duration.
            "gunicorn.access": {"level": "WARNING", "handlers": ["json"], "propagate": False},
            "werkzeug": {"level": "WARNING"},
        },
    }


def configure(level: str) -> None:
    """Apply :func:`logging_config` in this process (tests, and the gunicorn master)."""
    import logging.config

    logging.config.dictConfig(logging_config(level))
