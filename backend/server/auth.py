"""Optional HTTP basic auth, as Label Studio sends it when the backend is connected with
"Basic Authentication" (``BASIC_AUTH_USER`` / ``BASIC_AUTH_PASS``).

It covers every route but ``GET /health``, which says only whether the model is up (and which
version and engine), so that container healthchecks and load balancers need no credentials.
"""

from __future__ import annotations

import hmac

from flask import Request

OPEN_PATHS = frozenset({"/health"})
"""Served without credentials: liveness only."""


def needs_auth(path: str) -> bool:
    """Whether a request to ``path`` must carry the credentials (when auth is on)."""
    return path not in OPEN_PATHS


def basic_auth_ok(request: Request, user: str, password: str) -> bool:
    """True when auth is off (no user set) or the request carries exactly these credentials."""
    if not user:
        return True
    auth = request.authorization
    if auth is None or auth.type != "basic":
        return False
    # compare_digest on both, always, so the time taken says nothing about which was wrong.
    user_ok = hmac.compare_digest((auth.username or "").encode(), user.encode())
    pass_ok = hmac.compare_digest((auth.password or "").encode(), password.encode())
    return user_ok and pass_ok
