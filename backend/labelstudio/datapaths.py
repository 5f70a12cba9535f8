"""Which paths on Label Studio's host get the backend's token: its data routes, and nothing else.

Why: a task's image URL is written by whoever imports tasks. Sent with the token to any path of
Label Studio, ``/api/projects/1/export?exportType=JSON&download_all_tasks=true`` would make the
backend download a whole project export with its own rights. So the token goes only to the
routes Label Studio 1.23 serves task data from (``data_import/urls.py``, ``io_storages/urls.py``):

* ``/data/upload/<file>``: uploaded files; ``/storage-data/uploaded/?filepath=``: the same when
  uploads live in cloud file storage;
* ``/data/local-files/?d=<path>``: local file storage;
* ``/tasks/<id>/presign/``, ``/tasks/<id>/resolve/``, ``/projects/<id>/presign/``,
  ``/projects/<id>/resolve/``: cloud URIs, answered with a redirect to a signed URL or proxied.
  (1.23 serves them at the root; there is no ``/api/`` form.)

The path is judged as a server would read it: percent-decoded, ``\\`` taken as ``/``, ``//``
collapsed, ``.`` and ``..`` resolved. What is sent is that normalised path, so the request carries
exactly the path that was judged. A path that is still percent-encoded after one decoding (Label
Studio never writes one) is never a data route: a server or proxy that decodes twice would read
another path than the one judged. Any ``/api`` path, whichever way it is spelled, is refused
outright: it is never an image, and no request should reach Label Studio's API from a task.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

DATA_ROUTES = (
    re.compile(r"/data/upload/[^/].*"),
    re.compile(r"/storage-data/uploaded/?"),
    re.compile(r"/data/local-files/?"),
    re.compile(r"/(?:tasks|projects)/[0-9]+/(?:presign|resolve)/?"),
)
API = re.compile(r"/api(?:/.*)?")
MAX_DECODES = 5
_ENCODED = re.compile(r"%[0-9A-Fa-f]{2}")
_SAFE = "/:@!$&'()*+,;=-._~"
"""Kept as they are when the normalised path is quoted again (RFC 3986 path characters)."""


@dataclass(frozen=True)
class LabelStudioPath:
    """A request target on Label Studio's host, judged."""

    path: str
    """The normalised, decoded path, relative to Label Studio's base path."""
    target: str
    """What to send: the normalised path (under the base path) quoted again, and the query as given."""
    data_route: bool
    """The token may go with it."""
    api: bool
    """It names Label Studio's API: never fetched."""


def normalise(path: str) -> str:
    """``path`` (already decoded) with ``\\`` as ``/``, ``//`` collapsed and ``.``/``..`` resolved."""
    out: list[str] = []
    segments = path.replace("\\", "/").split("/")
    for segment in segments:
        if segment in ("", "."):
            continue
        if segment == "..":
            if out:
                out.pop()
            continue
        out.append(segment)
    trailing = segments[-1] in ("", ".", "..") and bool(out)
    return "/" + "/".join(out) + ("/" if trailing else "")


def _fully_decoded(path: str) -> str:
    for _ in range(MAX_DECODES):
        decoded = unquote(path)
        if decoded == path:
            break
        path = decoded
    return path


def judge(target: str, base_path: str = "") -> LabelStudioPath:
    """Judge a request target (``path?query``) on Label Studio's host whose base path is ``base_path``.

    A path outside ``base_path`` (Label Studio behind a path prefix) is not Label Studio's: neither
    a data route nor its API.
    """
    raw_path, sep, query = target.partition("?")
    base = normalise(unquote(base_path)).rstrip("/")
    once = normalise(unquote(raw_path))
    full = normalise(_fully_decoded(raw_path))
    relative = _under(once, base)
    relative_full = _under(full, base)
    api = any(p is not None and API.fullmatch(p) is not None for p in (relative, relative_full))
    data_route = (relative is not None and not api and not _ENCODED.search(once)
                  and any(route.fullmatch(relative) for route in DATA_ROUTES))
    return LabelStudioPath(relative if relative is not None else once, quote(once, safe=_SAFE) + sep + query,
                           data_route, api)


def _under(path: str, base: str) -> str | None:
    """``path`` relative to ``base`` (``/`` for ``base`` itself), or ``None`` outside it."""
    if not base:
        return path
    if path == base or path == base + "/":
        return "/"
    return path[len(base):] if path.startswith(base + "/") else None
