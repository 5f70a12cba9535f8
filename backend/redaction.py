"""Secrets out of everything the backend shows: HTTP answers, ``/metrics`` and log lines.

Why one module: a password reaches text in many ways (``REDIS_URL`` in an error, a presigned
image URL in a failed task, a token in a header someone logged), and one rule set applied at
the few places text leaves the process is safer than care at every place text is made.

What is masked (with ``***``):

* the password of a URL (``redis://:***@host``; a user alone is masked too, ``https://***@host``);
* values of secret-looking names in queries, forms and ``NAME=value`` (``X-Amz-Signature``,
  ``X-Amz-Credential``, ``X-Amz-Security-Token``, ``X-Goog-Signature``, ``sig``, ``key``,
  ``token``, ``access_token``, ``AWS_SECRET_ACCESS_KEY``, ``password``...) and in quoted
  ``"name": "value"`` pairs;
* the credential after ``Bearer``, ``Token`` or ``Basic``;
* any value handed to :func:`remember` (the configured token, passwords), wherever it appears.

:class:`RedactingFilter` applies it to log records; :func:`install` puts it on the root
logger's handlers where a process configures logging with ``logging.basicConfig``.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

MASK = "***"
MIN_REMEMBERED = 4
"""Shorter remembered values are not masked on their own (they would mask ordinary words)."""

_SECRET_WORDS = r"signature|credential|token|secret|passw(?:or)?d|api[_-]?key|access[_-]?key|private[_-]?key"
_SECRET_NAME = re.compile(rf"(?:{_SECRET_WORDS}|authorization)|^(?:sig|key|pwd|pass|auth)$", re.IGNORECASE)

_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^\s/?#@:]*)"
                           r"(?::(?P<password>[^\s/?#@]*))?@")
_ASSIGNMENT = re.compile(rf"(?P<name>(?<![\w.%-])(?:[\w.%-]*(?:{_SECRET_WORDS})[\w.%-]*|sig|key|pwd|pass|auth)=)"
                         r"(?P<value>[^\s&#\"',;<>)\]}]+)", re.IGNORECASE)
_QUOTED_PAIR = re.compile(rf"(?P<name>[\"'][\w.-]*(?:{_SECRET_WORDS}|authorization)[\w.-]*[\"']\s*:\s*)"
                          r"(?P<quote>[\"'])(?P<value>[^\"']+)(?P=quote)", re.IGNORECASE)
_AUTH_SCHEME = re.compile(r"\b(?P<scheme>Bearer|Token|Basic)\s+(?=[\w.~+/=-]*\d)[\w.~+/-]{8,}=*", re.IGNORECASE)

_lock = threading.Lock()
_remembered: tuple[str, ...] = ()


def remember(*values: str | None) -> None:
    """Mask these exact values from now on in this process (the configured token, passwords)."""
    global _remembered
    fresh = {v for v in values if isinstance(v, str) and len(v.strip()) >= MIN_REMEMBERED}
    with _lock:
        _remembered = tuple(sorted(set(_remembered) | {v.strip() for v in fresh}, key=len, reverse=True))


def _userinfo(match: re.Match[str]) -> str:
    if match.group("password") is not None:
        return f"{match.group('scheme')}{match.group('user')}:{MASK}@"
    return f"{match.group('scheme')}{MASK}@" if match.group("user") else match.group(0)


def redact(text: str) -> str:
    """``text`` with every secret it holds masked (see the module's docstring)."""
    if not text:
        return text
    for value in _remembered:
        if value in text:
            text = text.replace(value, MASK)
    text = _URL_USERINFO.sub(_userinfo, text)
    text = _ASSIGNMENT.sub(lambda m: m.group("name") + MASK, text)
    text = _QUOTED_PAIR.sub(lambda m: f"{m.group('name')}{m.group('quote')}{MASK}{m.group('quote')}", text)
    return _AUTH_SCHEME.sub(lambda m: f"{m.group('scheme')} {MASK}", text)


def is_secret_name(name: str) -> bool:
    """Whether a field called ``name`` holds a secret (``api_key``, ``password``, ``sig``...)."""
    return bool(_SECRET_NAME.search(name))


def redact_data(data: Any) -> Any:
    """A copy of JSON-like ``data`` with its strings redacted and values under secret names masked."""
    if isinstance(data, str):
        return redact(data)
    if isinstance(data, dict):
        return {key: MASK if isinstance(key, str) and is_secret_name(key) and isinstance(value, str) and value
                else redact_data(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return type(data)(redact_data(item) for item in data)
    return data


# Attributes every LogRecord has; the others came with ``extra=`` and are redacted too.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "request_id"}


class RedactingFilter(logging.Filter):
    """Masks secrets in a record's message, ``extra`` fields, traceback and stack before any handler
    writes it. Put it on handlers, so records propagated from every logger pass through it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is logging's to report, not ours
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD and not key.startswith("_") and isinstance(value, (str, dict, list, tuple)):
                setattr(record, key, redact_data(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install(logger: logging.Logger | None = None) -> None:
    """Put a :class:`RedactingFilter` on every handler of ``logger`` (the root logger by default)."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
