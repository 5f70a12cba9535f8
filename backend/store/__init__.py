"""The shared model store of several hosts: versions in S3-compatible object storage, pointers and
locks in Redis (``ISNET_MODEL_STORE`` with ``REDIS_URL``).

Why a package of its own: ISNet and the retraining application define what they need
(:mod:`backend.isnet.remote`, :mod:`backend.learning.pointers`) and know neither boto3 nor Redis;
each program's entry point (``isnet``, ``python -m worker``, the HTTP app) calls :func:`connect`
once, which hands them the clients here. Without ``ISNET_MODEL_STORE`` it does nothing, and
``MODEL_DIR`` alone holds everything, as on one machine.
"""

from __future__ import annotations

from backend.settings import Settings


class StoreSetupError(ValueError):
    """``ISNET_MODEL_STORE`` is set but cannot be used as configured; the message says what to set."""


def connect(settings: Settings) -> bool:
    """Connect ISNet and the registry to the shared store when ``ISNET_MODEL_STORE`` is set; whether
    it is. Raises :class:`StoreSetupError` when ``REDIS_URL`` is missing (pointers and locks must
    agree across hosts, and only Redis makes them). Clients are made on first use."""
    if not settings.model_store:
        return False
    if not settings.redis_url:
        raise StoreSetupError(f"ISNET_MODEL_STORE={settings.model_store} needs REDIS_URL: with a shared store the "
                              "current versions, their switches and the cycle locks live in Redis "
                              "(set REDIS_URL=redis://host:6379/0, or unset ISNET_MODEL_STORE to use MODEL_DIR alone)")
    from backend.isnet import remote
    from backend.learning import pointers
    from backend.store.objects import S3Versions
    from backend.store.pointers import RedisPointers

    remote.install(lambda s: S3Versions(s.model_store))
    pointers.install(RedisPointers.from_settings)
    return True
