"""Image bytes for every way Label Studio stores images, fetched under guard.

Why a fetcher of our own rather than ``requests.get`` or the SDK's ``get_local_path``: the URL
comes from task data, so every hop (redirects included) is checked by :mod:`.hosts` and the
connection goes to the address that was checked; the body is streamed against a byte limit
and a deadline, and credentials go to Label Studio's data routes only (:mod:`.datapaths`),
never to its API, a presigned bucket URL or another host.

Where a task's image URL leads:

* ``/data/upload/...``, ``/data/local-files/?d=...`` and any other path starting with ``/``:
  ``LABEL_STUDIO_URL`` + path; with Label Studio's auth header only on its data routes (uploads,
  local files, presign/resolve), refused on ``/api/...``, fetched without credentials otherwise;
* ``s3://``, ``gs://``, ``azure-blob://``: Label Studio's presign endpoint
  ``/tasks/<task id>/presign/?fileuri=<url-safe base64 of the URI>``, which answers with a
  redirect to a signed URL (or to its own proxy), followed without credentials;
* ``http(s)://``: fetched directly when the guard allows the host.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import socket
import time
from dataclasses import dataclass
from urllib.parse import quote, urljoin, urlsplit

import certifi
import urllib3
from requests.utils import requote_uri
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import NewConnectionError, ProtocolError
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from backend.labelstudio.auth import AuthError, LabelStudioAuth
from backend.labelstudio.datapaths import judge
from backend.labelstudio.hosts import DEFAULT_PORTS, BlockedURL, HostPolicy, Resolver
from backend.settings import Settings

log = logging.getLogger(__name__)

CLOUD_SCHEMES = frozenset({"s3", "gs", "azure-blob"})
REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
CHUNK_BYTES = 1 << 16
USER_AGENT = "isnet-label-studio"
SHOWN_CHARS = 200


class FetchError(Exception):
    """An image that could not be fetched; the message names the URL (as the task has it) and why."""


class _Unauthorized(Exception):
    """Label Studio answered 401: a refreshed access token may help."""


@dataclass(frozen=True)
class _Hop:
    url: str
    scheme: str
    host: str
    port: int
    target: str
    """Path and query, as sent in the request line."""


def presign_url(label_studio_url: str, task_id: int, uri: str) -> str:
    """Label Studio's presign endpoint for a cloud URI of a task (the SDK encodes it the same way)."""
    encoded = base64.urlsafe_b64encode(uri.encode()).decode()
    return f"{label_studio_url.rstrip('/')}/tasks/{int(task_id)}/presign/?fileuri={quote(encoded, safe='')}"


def _shown(url: object) -> str:
    """The URL for messages and logs: shortened, and without credentials."""
    text = str(url) or "(empty)"
    with contextlib.suppress(ValueError):
        parts = urlsplit(text)
        if "@" in parts.netloc:
            text = parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]).geturl()
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def _hop(url: str) -> _Hop:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise BlockedURL(f"{scheme or 'scheme-less'} URLs are not fetched, only http(s)")
    if parts.username is not None or parts.password is not None:
        raise BlockedURL("URLs with credentials in them are not fetched")
    if not parts.hostname:
        raise BlockedURL("the URL has no host")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError as exc:
        raise BlockedURL(f"invalid port: {exc}") from exc
    target = requote_uri((parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
    return _Hop(url, scheme, parts.hostname, port, target)


class ImageFetcher:
    """Fetches task images as bytes; one instance serves all threads."""

    def __init__(
        self,
        settings: Settings,
        auth: LabelStudioAuth | None = None,
        resolver: Resolver = socket.getaddrinfo,
    ) -> None:
        self.base_url = settings.label_studio_url.rstrip("/")
        self.auth = auth or LabelStudioAuth(self.base_url, settings.label_studio_api_key, settings.fetch_timeout)
        self.policy = HostPolicy(self.base_url, settings.allowed_hosts, resolver)
        self.max_bytes = settings.max_image_bytes
        self.timeout = settings.fetch_timeout
        self.ls_scheme = urlsplit(self.base_url).scheme.lower()
        self.ls_path = urlsplit(self.base_url).path

    def use_token(self, api_key: str) -> bool:
        """Authenticate with ``api_key`` from now on (the fallback token ``/setup`` carries).

        The fetcher is shared by every user of it (requests, background pre-annotation, prompts),
        so swapping its auth here reaches them all at once. True if the key changed.
        """
        key = api_key.strip()
        if not key or key == self.auth.api_key:
            return False
        self.auth = LabelStudioAuth(self.base_url, key, self.timeout)
        return True

    def resolve(self, url: str, task_id: int | None = None) -> str:
        """The absolute http(s) URL to start from for a task's image URL."""
        text = url.strip()
        if not text:
            raise BlockedURL("the image URL is empty")
        if text.startswith("/"):
            return self.base_url + text
        scheme = urlsplit(text).scheme.lower()
        if scheme in CLOUD_SCHEMES:
            if task_id is None:
                raise BlockedURL("cloud storage URIs are presigned by Label Studio per task, and no task id was given")
            return presign_url(self.base_url, task_id, text)
        if scheme in DEFAULT_PORTS:
            return text
        supported = "only Label Studio paths (/data/...), http(s) URLs and s3://, gs://, azure-blob:// URIs are"
        if scheme:
            raise BlockedURL(f"{scheme!r} URLs are not fetched; {supported}")
        raise BlockedURL(f"a relative URL that is not a Label Studio path is not fetched; {supported}")

    def fetch(self, url: str, task_id: int | None = None) -> bytes:
        """The bytes at a task's image URL, or :class:`FetchError` naming the URL and why not."""
        shown = _shown(url)
        if not isinstance(url, str):
            raise FetchError(f"{shown}: the image URL is not a string")
        try:
            start = self.resolve(url, task_id)
            try:
                return self._get(start)
            except _Unauthorized:
                if self.auth.kind != "pat":
                    raise
                self.auth.invalidate()  # the access token may have been revoked early: one more try
                return self._get(start)
        except _Unauthorized:
            hint = "set LABEL_STUDIO_API_KEY" if self.auth.kind == "none" else "check LABEL_STUDIO_API_KEY"
            raise FetchError(f"{shown}: Label Studio answered 401 Unauthorized; {hint}") from None
        except (FetchError, BlockedURL, AuthError) as exc:
            raise FetchError(f"{shown}: {exc}") from exc
        except ValueError as exc:  # urlsplit on a malformed URL, e.g. an unclosed IPv6 bracket
            raise FetchError(f"{shown}: not a valid URL ({exc})") from exc

    def _get(self, url: str) -> bytes:
        """Follow ``url`` through redirects, checking every hop; raises reasons without the URL."""
        deadline = time.monotonic() + self.timeout
        hop = _hop(url)
        from_label_studio = False
        for redirects in range(MAX_REDIRECTS + 1):
            where = f"redirected to {_shown(hop.url)}: " if redirects else ""
            try:
                addresses = self.policy.addresses(hop.host, hop.port, redirected_by_label_studio=from_label_studio)
            except BlockedURL as exc:
                raise BlockedURL(where + str(exc)) from exc
            except OSError as exc:
                raise FetchError(f"{where}cannot resolve {hop.host} ({exc})") from exc
            is_ls = hop.scheme == self.ls_scheme and self.policy.is_label_studio(hop.host, hop.port)
            authed = False
            if is_ls:  # the token goes to Label Studio's data routes only, as the path really reads
                route = judge(hop.target, self.ls_path)
                if route.api:
                    raise BlockedURL(f"{where}{_shown(route.path)} is Label Studio's API, not an image: never fetched "
                                     "(the token goes only to uploads, local files and presign/resolve routes)")
                if route.data_route:
                    hop, authed = _Hop(hop.url, hop.scheme, hop.host, hop.port, route.target), True
            headers = {
                "Host": _host_header(hop),
                "User-Agent": USER_AGENT,
                "Accept": "image/*, */*;q=0.5",
                "Accept-Encoding": "identity",
                **(self.auth.headers() if authed else {}),
            }
            pool, response = self._open(hop, addresses, headers, deadline, where)
            log.debug("GET %s via %s: HTTP %s", _shown(hop.url), addresses, response.status)
            try:
                if response.status in REDIRECTS:
                    location = response.headers.get("Location")
                    if not location:
                        raise FetchError(f"{where}HTTP {response.status} redirect without a Location")
                    try:
                        hop = _hop(urljoin(hop.url, location))
                    except BlockedURL as exc:
                        raise BlockedURL(f"redirected to {_shown(location)}: {exc}") from exc
                    from_label_studio = is_ls
                    continue
                if response.status == 401 and authed:
                    raise _Unauthorized()
                if response.status == 401 and is_ls:
                    raise FetchError(f"{where}HTTP 401 Unauthorized: not one of Label Studio's data routes (uploads, "
                                     "local files, presign/resolve), so it was fetched without the token")
                if response.status != 200:
                    raise FetchError(f"{where}HTTP {response.status} {response.reason or ''}".rstrip())
                return self._body(response, deadline, where)
            finally:
                response.release_conn()
                pool.close()
        raise FetchError(f"more than {MAX_REDIRECTS} redirects")

    def _open(
        self, hop: _Hop, addresses: list[str], headers: dict[str, str], deadline: float, where: str
    ) -> tuple[urllib3.HTTPConnectionPool, urllib3.BaseHTTPResponse]:
        """GET ``hop`` from the first checked address that accepts a connection."""
        refused: Exception | None = None
        for address in addresses:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            timeout = urllib3.Timeout(connect=remaining, read=remaining)
            if hop.scheme == "https":
                pool: urllib3.HTTPConnectionPool = urllib3.HTTPSConnectionPool(
                    address,
                    hop.port,
                    timeout=timeout,
                    retries=False,
                    maxsize=1,
                    cert_reqs="CERT_REQUIRED",
                    ca_certs=certifi.where(),
                    server_hostname=hop.host,
                    assert_hostname=hop.host,
                )
            else:
                pool = urllib3.HTTPConnectionPool(address, hop.port, timeout=timeout, retries=False, maxsize=1)
            try:
                response = pool.urlopen(
                    "GET",
                    hop.target,
                    headers=headers,
                    redirect=False,
                    retries=False,
                    preload_content=False,
                    assert_same_host=False,
                )
                return pool, response
            except NewConnectionError as exc:
                refused = exc  # try the name's next address
                pool.close()
            except Urllib3Timeout as exc:
                pool.close()
                raise FetchError(f"{where}{self._timed_out()}") from exc
            except Urllib3Error as exc:
                pool.close()
                raise FetchError(f"{where}{_reason(exc)}") from exc
        if refused is None:
            raise FetchError(f"{where}{self._timed_out()}")
        raise FetchError(f"{where}cannot connect to {_host_header(hop)}: {_reason(refused)}") from refused

    def _body(self, response: urllib3.BaseHTTPResponse, deadline: float, where: str) -> bytes:
        """The response body, within the byte limit and the deadline."""
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            raise FetchError(
                f"{where}{int(length):,} bytes is over the limit of {self.max_bytes:,} (ISNET_MAX_IMAGE_BYTES)"
            )
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise FetchError(f"{where}{self._timed_out()}")
                _set_read_timeout(response, remaining)
                chunk = response.read1(CHUNK_BYTES)  # what has arrived: the deadline is checked per chunk
                if not chunk:
                    break
                size += len(chunk)
                if size > self.max_bytes:
                    raise FetchError(f"{where}more than {self.max_bytes:,} bytes (ISNET_MAX_IMAGE_BYTES)")
                chunks.append(chunk)
        except Urllib3Timeout as exc:
            raise FetchError(f"{where}{self._timed_out()}") from exc
        except Urllib3Error as exc:
            raise FetchError(f"{where}{_reason(exc)}") from exc
        return b"".join(chunks)

    def _timed_out(self) -> str:
        return f"timed out after {self.timeout:g} s (ISNET_FETCH_TIMEOUT)"


def _host_header(hop: _Hop) -> str:
    host = f"[{hop.host}]" if ":" in hop.host else hop.host
    return host if hop.port == DEFAULT_PORTS[hop.scheme] else f"{host}:{hop.port}"


def _set_read_timeout(response: urllib3.BaseHTTPResponse, seconds: float) -> None:
    """Bound the next socket read by what is left of the deadline (slow-drip servers)."""
    sock = getattr(getattr(response, "connection", None), "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.settimeout(max(seconds, 0.001))


def _reason(exc: BaseException) -> str:
    """A urllib3 error in words (its str() names internal objects)."""
    text = str(exc)
    marker = "Failed to establish a new connection: "
    if marker in text:
        return text.split(marker, 1)[1]
    if isinstance(exc, ProtocolError) and exc.args:
        return f"connection broken: {exc.args[0]}".replace("Connection broken: ", "")
    return text
