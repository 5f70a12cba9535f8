"""The basic-auth header that the webhook Label Studio creates for the backend lacks, and the patch that adds it.

Why: connected with "Authentication method: Basic", Label Studio 1.23 sends the credentials with
``/health``, ``/setup``, ``/predict``, ``/versions`` and "Start training" (``ml/api_connector.py``),
but the webhook it creates for the backend (``ml/models.py`` ``create_ml_webhook``: the model's URL
+ ``/webhook``, every action, no headers) carries none, so with auth on every ``TASKS_CREATED`` and
annotation event would be refused with 401. A webhook's ``headers`` are sent with each of its
calls, so the backend sets an ``Authorization`` header there through Label Studio's API. This
module decides which webhooks are the backend's and what to write; the calls are
:class:`backend.labelstudio.client.LabelStudioClient`'s.

Which webhooks are the backend's: those at ``.../webhook`` on the host and port that Label Studio
calls ``/setup`` at, i.e. the ``Host`` header of that request. (Listing the project's model
connections instead is no way out: ``GET /api/ml`` makes Label Studio call every backend's
``/setup`` again.)
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}
WEBHOOK_PATH = "/webhook"


def basic_auth_header(user: str, password: str) -> str:
    """``Authorization`` value for HTTP basic auth, as ``requests.auth.HTTPBasicAuth`` writes it."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _host_port(netloc: str) -> tuple[str, int | None] | None:
    try:
        parts = urlsplit("//" + netloc.rsplit("@", 1)[-1])
        return (parts.hostname or "").rstrip("."), parts.port
    except ValueError:
        return None


def is_backend_webhook(url: Any, host: str) -> bool:
    """Whether a webhook ``url`` is ``/webhook`` on ``host`` (a ``Host`` header: ``name[:port]``)."""
    if not isinstance(url, str):
        return False
    try:
        parts = urlsplit(url)
        port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:
        return False
    wanted = _host_port(host)
    if wanted is None or not wanted[0] or not parts.path.rstrip("/").endswith(WEBHOOK_PATH):
        return False
    name, wanted_port = wanted
    same_port = wanted_port == port or (wanted_port is None and port == DEFAULT_PORTS.get(parts.scheme.lower()))
    return (parts.hostname or "").rstrip(".") == name and same_port


def webhook_patches(webhooks: Iterable[Any], host: str, authorization: str) -> list[tuple[int, dict[str, Any]]]:
    """``(webhook id, PATCH body)`` for each of the backend's webhooks whose headers lack ``authorization``.

    The body keeps the webhook's other headers and replaces an ``Authorization`` of another case or
    value. A webhook that already carries it gets no patch, so a second run writes nothing.
    """
    patches = []
    for hook in webhooks:
        if not isinstance(hook, dict) or not isinstance(hook.get("id"), int) or not is_backend_webhook(
                hook.get("url"), host):
            continue
        headers = hook.get("headers") if isinstance(hook.get("headers"), dict) else {}
        if headers.get("Authorization") == authorization:
            continue
        kept = {k: v for k, v in headers.items() if str(k).lower() != "authorization"}
        patches.append((hook["id"], {"headers": {**kept, "Authorization": authorization}}))
    return patches


def backend_webhooks(webhooks: Iterable[Any], host: str) -> list[dict[str, Any]]:
    """The backend's webhooks among ``webhooks`` (see :func:`is_backend_webhook`)."""
    return [h for h in webhooks if isinstance(h, dict) and is_backend_webhook(h.get("url"), host)]
