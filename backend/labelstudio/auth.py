"""Request headers for Label Studio, from a legacy token or a personal access token.

Why this is not just ``Authorization: Token <key>``: Label Studio 1.23 turns legacy tokens off
by default, and its personal access tokens are JWT refresh tokens that are not accepted as
they are: each must be exchanged at ``POST /api/token/refresh/`` for an access token that
lives five minutes. This class hides the difference; callers ask for :meth:`headers` and call
:meth:`invalidate` when Label Studio answers 401.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
import time
from collections.abc import Callable

import requests

REFRESH_PATH = "/api/token/refresh/"
REFRESH_MARGIN_S = 30.0
"""Refresh this long before the access token expires, so no request carries a stale one."""
FALLBACK_LIFETIME_S = 60.0
"""Used when an access token's lifetime cannot be read (Label Studio's is 300 s)."""

_B64URL = re.compile(r"^[A-Za-z0-9_-]+={0,2}$")


class AuthError(Exception):
    """Label Studio refused the key, or could not be reached to exchange it."""


def _b64url_json(part: str) -> dict[str, object]:
    padded = part + "=" * (-len(part) % 4)
    value = json.loads(base64.urlsafe_b64decode(padded.encode()))
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def jwt_claims(token: str) -> dict[str, object] | None:
    """The (unverified) payload of a JWT, or ``None`` when ``token`` is not shaped like one.

    Verifying the signature is Label Studio's job; the backend only reads ``exp``/``iat`` to
    know when to refresh.
    """
    parts = token.split(".")
    if len(parts) != 3 or not all(_B64URL.match(p) for p in parts[:2]):
        return None
    try:
        header = _b64url_json(parts[0])
        claims = _b64url_json(parts[1])
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    return claims if "alg" in header else None


def is_personal_access_token(key: str) -> bool:
    """A JWT (three dot-separated base64url parts) is a personal access token; else legacy."""
    return jwt_claims(key) is not None


def _number(claims: dict[str, object], name: str) -> float | None:
    value = claims.get(name)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class LabelStudioAuth:
    """Headers that Label Studio at ``url`` accepts for ``api_key``; safe to share between threads.

    * no key: no header (only public URLs will work);
    * a legacy token: ``Authorization: Token <key>``;
    * a personal access token: ``Authorization: Bearer <access>``, the access token fetched
      from ``/api/token/refresh/``, cached, and fetched again ``REFRESH_MARGIN_S`` before it
      expires or after :meth:`invalidate`. Its lifetime is read as ``exp - iat`` from the token
      and counted on this machine's clock, so a skewed clock does not matter.
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key.strip()
        self.timeout = timeout
        self.kind = "none" if not self.api_key else ("pat" if is_personal_access_token(self.api_key) else "legacy")
        self._clock = clock
        self._lock = threading.Lock()
        self._access: str | None = None
        self._refresh_at = 0.0
        self.refreshes = 0
        """How many access tokens were fetched (for logs and tests)."""

    def headers(self) -> dict[str, str]:
        """The ``Authorization`` header to send to Label Studio (empty without a key)."""
        if self.kind == "none":
            return {}
        if self.kind == "legacy":
            return {"Authorization": f"Token {self.api_key}"}
        with self._lock:
            if self._access is None or self._clock() >= self._refresh_at:
                self._access, lifetime = self._exchange()
                self._refresh_at = self._clock() + max(lifetime - REFRESH_MARGIN_S, lifetime / 2)
                self.refreshes += 1
            return {"Authorization": f"Bearer {self._access}"}

    def invalidate(self) -> None:
        """Forget the access token (Label Studio answered 401): the next :meth:`headers` refreshes."""
        with self._lock:
            self._access = None

    def _exchange(self) -> tuple[str, float]:
        """A fresh access token and its lifetime in seconds."""
        claims = jwt_claims(self.api_key) or {}
        expires = _number(claims, "exp")
        if expires is not None and expires < time.time():
            raise AuthError(
                "the personal access token in LABEL_STUDIO_API_KEY has expired "
                f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(expires))}): create a new one in Label Studio"
            )
        endpoint = self.url + REFRESH_PATH
        try:
            response = requests.post(
                endpoint, json={"refresh": self.api_key}, timeout=self.timeout, allow_redirects=False
            )
        except requests.RequestException as exc:
            raise AuthError(f"could not reach Label Studio at {endpoint} to refresh the access token: {exc}") from exc
        if response.status_code in (400, 401, 403):
            raise AuthError(
                f"Label Studio refused the personal access token in LABEL_STUDIO_API_KEY (HTTP {response.status_code} "
                f"from {endpoint}): it is revoked, expired or from another Label Studio"
            )
        if response.status_code != 200:
            raise AuthError(f"refreshing the access token at {endpoint} failed: HTTP {response.status_code}")
        try:
            access = response.json()["access"]
        except (ValueError, KeyError, TypeError) as exc:
            raise AuthError(f"{endpoint} answered without an access token") from exc
        if not isinstance(access, str) or not access:
            raise AuthError(f"{endpoint} answered without an access token")
        access_claims = jwt_claims(access) or {}
        exp, iat = _number(access_claims, "exp"), _number(access_claims, "iat")
        if exp is not None and iat is not None and exp > iat:
            lifetime = exp - iat
        elif exp is not None:
            lifetime = exp - time.time()
        else:
            lifetime = FALLBACK_LIFETIME_S
        return access, max(lifetime, 1.0)
