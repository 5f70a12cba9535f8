"""The Redis connection every job module shares, and the one error an unreachable Redis becomes.

Why short timeouts: Label Studio waits 1 s for ``/webhook`` inside the import request, so an
unreachable Redis must fail fast (:class:`QueueUnavailable`, which ``/webhook`` turns into a 503)
rather than hang.
"""

from __future__ import annotations

from typing import Any

from backend.settings import Settings


class QueueUnavailable(Exception):
    """Redis could not be reached in time."""


def redis_connection(settings: Settings) -> Any:
    """A client that gives up after ``ISNET_REDIS_TIMEOUT`` seconds instead of blocking a request."""
    from redis import Redis

    return Redis.from_url(settings.redis_url, socket_timeout=settings.redis_timeout,
                          socket_connect_timeout=settings.redis_timeout)
