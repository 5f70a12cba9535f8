"""Task images are fetched from wherever Label Studio keeps them, and from nowhere else.

Real HTTP servers on 127.0.0.1 play Label Studio (uploads, local files, the presign endpoint,
the token refresh endpoint) and a second host (a bucket, an allowed image host); nothing in
the HTTP stack is mocked. Only name resolution is replaced where a test needs a name that
resolves to a given address.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from PIL import Image

from backend.labelstudio.auth import LabelStudioAuth, is_personal_access_token
from backend.labelstudio.config import BrushTarget
from backend.labelstudio.fetch import FetchError, ImageFetcher, presign_url
from backend.labelstudio.hosts import BlockedURL, HostPolicy, parse_rule
from backend.labelstudio.tasks import TaskImageError, image_url
from backend.pipeline import LOAD_ERRORS, TaskImages
from backend.settings import Settings, load
from tests.paths import DIS_DEMO_IMAGES

LEGACY = "0123456789abcdef0123456789abcdef01234567"


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def make_jwt(**claims: Any) -> str:
    """A JWT shaped like Label Studio's (the signature is never checked by the backend)."""
    return f"{_b64({'alg': 'HS256', 'typ': 'JWT'})}.{_b64(claims)}.c2lnbmF0dXJl"


PAT = make_jwt(token_type="refresh", user_id=1, jti="pat-1", iat=int(time.time()), exp=int(time.time()) + 86400)


def _png(width: int = 32, height: int = 24) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


PNG = _png()


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    def _dispatch(self) -> None:
        site = self.server.site
        parts = urlsplit(self.path)
        body = b""
        if self.command == "POST":
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        site.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers)})
        route = site.routes.get(parts.path)
        try:
            if route is None:
                send(self, 404, b"not found")
            else:
                route(self, {k: v[-1] for k, v in parse_qs(parts.query).items()}, body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    do_GET = do_POST = _dispatch


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    site: Site


Route = Callable[[_Handler, dict[str, str], bytes], None]


def send(handler: _Handler, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
    handler.send_response(status)
    headers = {"Content-Length": str(len(body)), **(headers or {})}
    for key, value in headers.items():
        handler.send_header(key, value)
    handler.end_headers()
    handler.wfile.write(body)


class Site:
    """A real HTTP server on 127.0.0.1 with a route per path; it records every request."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[dict[str, Any]] = []
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.site = self
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def paths(self) -> list[str]:
        return [r["path"] for r in self.requests]


class FakeLabelStudio(Site):
    """Label Studio's endpoints that the backend uses, with its auth rules (1.23)."""

    def __init__(self, bucket: Site) -> None:
        super().__init__()
        self.valid_access: set[str] = set()
        self.pat_revoked = False
        self.refreshes = 0
        self.presigned: list[str] = []
        self.routes.update(
            {
                "/data/upload/1/img.png": self.authed(lambda h, q, b: send(h, 200, PNG, {"Content-Type": "image/png"})),
                "/data/local-files/": self.authed(self.local_file),
                "/api/token/refresh/": self.refresh,
                "/tasks/7/presign/": self.authed(self.presign(bucket)),
                "/redirect": lambda h, q, b: send(h, 302, b"", {"Location": q["to"]}),
                "/loop": lambda h, q, b: send(h, 302, b"", {"Location": "/loop"}),
            }
        )

    def authed(self, route: Route) -> Route:
        def check(handler: _Handler, query: dict[str, str], body: bytes) -> None:
            auth = handler.headers.get("Authorization", "")
            ok = auth == f"Token {LEGACY}" or (auth.startswith("Bearer ") and auth[7:] in self.valid_access)
            if ok:
                route(handler, query, body)
            else:
                send(handler, 401, b'{"detail": "Authentication credentials were not provided."}')

        return check

    def local_file(self, handler: _Handler, query: dict[str, str], body: bytes) -> None:
        if query.get("d") == "images/cat 1.png":
            send(handler, 200, PNG)
        else:
            send(handler, 404)

    def refresh(self, handler: _Handler, query: dict[str, str], body: bytes) -> None:
        if json.loads(body).get("refresh") != PAT or self.pat_revoked:
            send(handler, 401, b'{"detail": "Token is invalid or expired", "code": "token_not_valid"}')
            return
        self.refreshes += 1
        now = int(time.time())
        access = make_jwt(token_type="access", user_id=1, jti=f"a{self.refreshes}", iat=now, exp=now + 300)
        self.valid_access.add(access)
        send(handler, 200, json.dumps({"access": access}).encode(), {"Content-Type": "application/json"})

    def presign(self, bucket: Site) -> Route:
        def route(handler: _Handler, query: dict[str, str], body: bytes) -> None:
            self.presigned.append(base64.urlsafe_b64decode(query["fileuri"].encode()).decode())
            send(handler, 303, b"", {"Location": f"{bucket.url}/signed/img.png?X-Amz-Signature=abc"})

        return route


def _slow(handler: _Handler, query: dict[str, str], body: bytes) -> None:
    time.sleep(3)
    send(handler, 200, PNG)


def _drip(handler: _Handler, query: dict[str, str], body: bytes) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    for _ in range(1000):
        handler.wfile.write(b"x")
        handler.wfile.flush()
        time.sleep(0.05)


def _declared_huge(handler: _Handler, query: dict[str, str], body: bytes) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", str(10**9))
    handler.end_headers()
    handler.wfile.write(b"x" * 100)


def _streamed_huge(handler: _Handler, query: dict[str, str], body: bytes) -> None:
    handler.send_response(200)  # no Content-Length: the body runs until the connection closes
    handler.end_headers()
    for _ in range(64):
        handler.wfile.write(b"x" * 65536)


def _cut_short(handler: _Handler, query: dict[str, str], body: bytes) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    handler.wfile.write(b"x" * 10)


@pytest.fixture
def bucket() -> Iterator[Site]:
    site = Site()
    truncated = (DIS_DEMO_IMAGES / "0003.jpeg").read_bytes()
    site.routes.update(
        {
            "/img.png": lambda h, q, b: send(h, 200, PNG, {"Content-Type": "image/png"}),
            "/big.png": lambda h, q, b: send(h, 200, _png(100, 100)),
            "/signed/img.png": lambda h, q, b: send(h, 200, PNG),
            "/page.html": lambda h, q, b: send(h, 200, b"<html><body>not an image</body></html>"),
            "/truncated.jpeg": lambda h, q, b: send(h, 200, truncated[: len(truncated) // 2]),
            "/slow": _slow,
            "/drip": _drip,
            "/declared-huge": _declared_huge,
            "/streamed-huge": _streamed_huge,
            "/cut-short": _cut_short,
        }
    )
    yield site
    site.close()


@pytest.fixture
def ls(bucket: Site) -> Iterator[FakeLabelStudio]:
    site = FakeLabelStudio(bucket)
    yield site
    site.close()


@pytest.fixture(scope="module")
def base_settings() -> Settings:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ISNET_DEVICE", "cpu")  # skips importing torch to find a GPU: nothing here needs one
        return load()


@pytest.fixture
def settings(base_settings: Settings, ls: FakeLabelStudio) -> Callable[..., Settings]:
    def make(**changes: Any) -> Settings:
        values = {
            "label_studio_url": ls.url,
            "label_studio_api_key": LEGACY,
            "allowed_hosts": (),
            "fetch_timeout": 2.0,
            "max_image_bytes": 1 << 20,
            **changes,
        }
        return base_settings.replace(**values)

    return make


def fetcher(settings: Settings, **kw: Any) -> ImageFetcher:
    return ImageFetcher(settings, **kw)


def resolver_for(names: dict[str, str], calls: list[str] | None = None) -> Callable[..., list[tuple[Any, ...]]]:
    """getaddrinfo for made-up names: each resolves to the given address."""

    def resolve(host: str, port: int, *args: Any, **kw: Any) -> list[tuple[Any, ...]]:
        if calls is not None:
            calls.append(host)
        if host not in names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (names[host], port))]

    return resolve


# --- what Label Studio stores ---------------------------------------------------------------


def test_uploaded_file_is_fetched_from_label_studio_with_the_legacy_token(ls, settings):
    assert fetcher(settings()).fetch("/data/upload/1/img.png", task_id=1) == PNG
    assert ls.requests[-1]["headers"]["Authorization"] == f"Token {LEGACY}"


def test_local_files_url_keeps_its_query(ls, settings):
    assert fetcher(settings()).fetch("/data/local-files/?d=images/cat%201.png") == PNG


def test_personal_access_token_is_exchanged_for_a_bearer_token_that_is_reused(ls, settings):
    images = fetcher(settings(label_studio_api_key=PAT))
    assert images.fetch("/data/upload/1/img.png") == PNG
    assert images.fetch("/data/upload/1/img.png") == PNG
    assert ls.refreshes == 1
    assert ls.requests[-1]["headers"]["Authorization"].startswith("Bearer ")
    assert ls.requests[-1]["headers"]["Authorization"] != f"Bearer {PAT}"


def test_access_token_is_refreshed_before_its_five_minutes_are_up(ls):
    now = [1000.0]
    auth = LabelStudioAuth(ls.url, PAT, clock=lambda: now[0])
    first = auth.headers()
    now[0] += 200
    assert auth.headers() == first and ls.refreshes == 1
    now[0] += 80  # 280 s: inside the 30 s margin before expiry
    assert auth.headers() != first and ls.refreshes == 2


def test_access_token_refused_with_401_is_refreshed_once_and_the_fetch_retried(ls, settings):
    images = fetcher(settings(label_studio_api_key=PAT))
    images.fetch("/data/upload/1/img.png")
    ls.valid_access.clear()  # e.g. Label Studio restarted with a new secret
    assert images.fetch("/data/upload/1/img.png") == PNG
    assert ls.refreshes == 2


def test_revoked_personal_access_token_is_an_error_naming_the_setting(ls, settings):
    ls.pat_revoked = True
    with pytest.raises(FetchError, match="refused the personal access token in LABEL_STUDIO_API_KEY"):
        fetcher(settings(label_studio_api_key=PAT)).fetch("/data/upload/1/img.png")


def test_without_a_key_label_studio_files_fail_with_a_hint_to_set_it(ls, settings):
    with pytest.raises(FetchError, match="401 Unauthorized; set LABEL_STUDIO_API_KEY"):
        fetcher(settings(label_studio_api_key="")).fetch("/data/upload/1/img.png")


def test_without_a_key_the_token_setup_carries_is_used_from_then_on(ls, settings):
    images = fetcher(settings(label_studio_api_key=""))
    with pytest.raises(FetchError, match="401"):
        images.fetch("/data/upload/1/img.png")
    assert images.use_token(LEGACY)
    assert images.fetch("/data/upload/1/img.png") == PNG
    assert ls.requests[-1]["headers"]["Authorization"] == f"Token {LEGACY}"
    assert not images.use_token(LEGACY)  # the same token again changes nothing


def test_key_kind_is_detected_from_its_shape():
    assert is_personal_access_token(PAT)
    assert not is_personal_access_token(LEGACY)
    assert not is_personal_access_token("a.b.c")


@pytest.mark.parametrize("uri", ["s3://bucket/dir/img.png", "gs://bucket/img.png", "azure-blob://container/img.png"])
def test_cloud_uri_is_presigned_by_label_studio_and_followed_without_credentials(ls, bucket, settings, uri):
    images = fetcher(settings(allowed_hosts=(f"127.0.0.1:{bucket.port}",)))
    assert images.fetch(uri, task_id=7) == PNG
    assert ls.presigned == [uri]
    signed = bucket.requests[-1]
    assert signed["path"] == "/signed/img.png?X-Amz-Signature=abc"
    assert "Authorization" not in signed["headers"]


def test_presign_url_carries_the_uri_as_url_safe_base64():
    url = presign_url("http://ls:8080/", 42, "s3://b/ä ?.png")
    parts = urlsplit(url)
    assert parts.path == "/tasks/42/presign/"
    assert base64.urlsafe_b64decode(parse_qs(parts.query)["fileuri"][0]).decode() == "s3://b/ä ?.png"


def test_cloud_uri_without_a_task_id_is_refused(settings):
    with pytest.raises(FetchError, match="no task id"):
        fetcher(settings()).fetch("s3://bucket/img.png")


def test_url_on_an_allowed_host_is_fetched_without_label_studio_credentials(bucket, settings):
    images = fetcher(settings(allowed_hosts=(f"127.0.0.1:{bucket.port}",)))
    assert images.fetch(f"{bucket.url}/img.png") == PNG
    assert "Authorization" not in bucket.requests[-1]["headers"]


def test_allowed_host_without_a_port_allows_any_port_and_every_address_of_the_name(bucket, settings):
    # "localhost" may resolve to ::1 first; the server only listens on 127.0.0.1.
    images = fetcher(settings(allowed_hosts=("localhost",)))
    assert images.fetch(f"http://localhost:{bucket.port}/img.png") == PNG


# --- the guard ------------------------------------------------------------------------------


def test_metadata_address_is_never_fetched_even_if_listed(settings):
    images = fetcher(settings(allowed_hosts=("169.254.169.254",)))
    with pytest.raises(FetchError, match="cloud metadata address: never fetched"):
        images.fetch("http://169.254.169.254/latest/meta-data/iam/security-credentials/")


@pytest.mark.parametrize(
    "url",
    ["http://[fe80::1]/x.png", "http://[::ffff:169.254.169.254]/x.png", "http://169.254.10.10:8080/x.png"],
)
def test_link_local_addresses_are_never_fetched(settings, url):
    with pytest.raises(FetchError, match="never fetched"):
        fetcher(settings(allowed_hosts=("*",))).fetch(url)


@pytest.mark.parametrize("address", ["64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::1", "fd00:ec2::254"])
def test_metadata_addresses_hidden_in_ipv6_forms_are_never_fetched(address):
    policy = HostPolicy("http://127.0.0.1:8080", ("*",), resolver_for({"evil.test": address}))
    with pytest.raises(BlockedURL, match="never fetched"):
        policy.addresses("evil.test", 80)


def test_label_studio_on_ipv6_loopback_is_allowed():
    assert HostPolicy("http://[::1]:8080").addresses("::1", 8080) == ["::1"]


def test_loopback_on_another_port_than_label_studio_is_refused(bucket, settings):
    with pytest.raises(FetchError, match=rf"127\.0\.0\.1:{bucket.port} is neither Label Studio.*ISNET_ALLOWED_HOSTS"):
        fetcher(settings()).fetch(f"{bucket.url}/img.png")
    assert bucket.requests == []


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.png", "data:image/png;base64,AAAA"])
def test_other_schemes_are_refused(settings, url):
    with pytest.raises(FetchError, match="not fetched"):
        fetcher(settings()).fetch(url)


@pytest.mark.parametrize("url", ["http://[::1/x.png", "http://127.0.0.1:99999/x.png", "http:///x.png"])
def test_malformed_urls_are_fetch_errors(settings, url):
    with pytest.raises(FetchError):
        fetcher(settings()).fetch(url)


def test_url_with_credentials_in_it_is_refused(ls, settings):
    with pytest.raises(FetchError, match=r"^http://\*\*\*@127.*credentials") as error:
        fetcher(settings()).fetch(f"http://user:pw@127.0.0.1:{ls.port}/data/upload/1/img.png")
    assert "pw" not in str(error.value)


def test_redirect_to_a_metadata_address_is_refused(ls, settings):
    with pytest.raises(FetchError, match=r"redirected to http://169\.254\.169\.254/.*never fetched"):
        fetcher(settings()).fetch("/redirect?to=http://169.254.169.254/latest/meta-data/")


def test_redirect_to_a_file_url_is_refused(ls, settings):
    with pytest.raises(FetchError, match=r"redirected to file:///etc/passwd: file URLs are not fetched"):
        fetcher(settings()).fetch("/redirect?to=file:///etc/passwd")


def test_redirect_to_a_private_host_that_is_not_allowed_is_refused(ls, bucket, settings):
    with pytest.raises(FetchError, match="private address"):
        fetcher(settings()).fetch(f"/redirect?to={bucket.url}/img.png")
    assert bucket.requests == []


def test_redirect_from_an_allowed_host_is_checked_again(ls, bucket, settings):
    bucket.routes["/away"] = lambda h, q, b: send(h, 302, b"", {"Location": "http://10.1.2.3/x.png"})
    images = fetcher(settings(allowed_hosts=(f"127.0.0.1:{bucket.port}",)))
    with pytest.raises(FetchError, match=r"10\.1\.2\.3:80 is neither Label Studio"):
        images.fetch(f"{bucket.url}/away")


def test_redirect_loops_end_after_five_hops(ls, settings):
    with pytest.raises(FetchError, match="more than 5 redirects"):
        fetcher(settings()).fetch("/loop")
    assert ls.paths().count("/loop") == 6


def test_name_that_resolves_to_a_metadata_address_is_refused(settings):
    images = fetcher(
        settings(allowed_hosts=("images.test",)), resolver=resolver_for({"images.test": "169.254.169.254"})
    )
    with pytest.raises(FetchError, match=r"images\.test resolves to 169\.254\.169\.254, a cloud metadata address"):
        images.fetch("http://images.test/x.png")


def test_connection_goes_to_the_checked_address_with_the_name_as_host_header(bucket, settings):
    calls: list[str] = []
    images = fetcher(
        settings(allowed_hosts=("images.test",)), resolver=resolver_for({"images.test": "127.0.0.1"}, calls)
    )
    assert images.fetch(f"http://images.test:{bucket.port}/img.png") == PNG
    assert calls == ["images.test"]  # resolved once, by the guard; the connection reused its answer
    assert bucket.requests[-1]["headers"]["Host"] == f"images.test:{bucket.port}"


def test_label_studio_redirects_may_lead_to_public_hosts_only():
    names = {"bucket.s3.amazonaws.com": "52.216.8.10", "minio.internal": "10.0.0.5"}
    policy = HostPolicy("http://127.0.0.1:8080", (), resolver_for(names))
    assert policy.addresses("bucket.s3.amazonaws.com", 443, redirected_by_label_studio=True) == ["52.216.8.10"]
    with pytest.raises(BlockedURL, match=r"private address.*add minio\.internal:9000 to ISNET_ALLOWED_HOSTS"):
        policy.addresses("minio.internal", 9000, redirected_by_label_studio=True)
    with pytest.raises(BlockedURL, match="neither Label Studio"):
        policy.addresses("bucket.s3.amazonaws.com", 443)


def test_star_allows_every_public_host_but_no_private_one():
    names = {"cdn.example.com": "93.184.216.34", "db.internal": "192.168.1.20"}
    policy = HostPolicy("http://127.0.0.1:8080", ("*",), resolver_for(names))
    assert policy.addresses("cdn.example.com", 443) == ["93.184.216.34"]
    with pytest.raises(BlockedURL, match="private address"):
        policy.addresses("db.internal", 80)


@pytest.mark.parametrize("entry", ["http://host/", "user@host", "host:notaport", "a b"])
def test_allowed_host_entries_must_be_host_or_host_port(entry):
    with pytest.raises(ValueError, match="ISNET_ALLOWED_HOSTS entry"):
        parse_rule(entry)


def test_allowed_host_entries_accept_ports_and_ipv6():
    assert (parse_rule("Images.Example.com:8443").host, parse_rule("images.example.com:8443").port) == (
        "images.example.com",
        8443,
    )
    assert parse_rule("[::1]:9000").host == "::1" and parse_rule("::1").port is None


# --- limits and failures --------------------------------------------------------------------


def test_missing_image_is_an_error_with_the_status(ls, settings):
    with pytest.raises(FetchError, match="HTTP 404"):
        fetcher(settings()).fetch("/data/upload/1/nope.png")


def test_body_declared_over_the_byte_limit_is_refused_before_downloading(bucket, settings):
    images = fetcher(settings(allowed_hosts=(f"127.0.0.1:{bucket.port}",)))
    with pytest.raises(FetchError, match=r"1,000,000,000 bytes is over the limit of 1,048,576 \(ISNET_MAX_IMAGE"):
        images.fetch(f"{bucket.url}/declared-huge")


def test_streamed_body_over_the_byte_limit_is_cut_off(bucket, settings):
    images = fetcher(settings(allowed_hosts=(f"127.0.0.1:{bucket.port}",)))
    with pytest.raises(FetchError, match=r"more than 1,048,576 bytes \(ISNET_MAX_IMAGE_BYTES\)"):
        images.fetch(f"{bucket.url}/streamed-huge")


def test_server_that_does_not_answer_times_out(bucket, settings):
    images = fetcher(settings(allowed_hosts=(f"127.0.0.1:{bucket.port}",), fetch_timeout=0.5))
    start = time.monotonic()
    with pytest.raises(FetchError, match=r"timed out after 0.5 s \(ISNET_FETCH_TIMEOUT\)"):
        images.fetch(f"{bucket.url}/slow")
    assert time.monotonic() - start < 2.0


def test_slow_drip_body_times_out_at_the_deadline(bucket, settings):
    images = fetcher(settings(allowed_hosts=(f"127.0.0.1:{bucket.port}",), fetch_timeout=0.5))
    start = time.monotonic()
    with pytest.raises(FetchError, match="timed out"):
        images.fetch(f"{bucket.url}/drip")
    assert time.monotonic() - start < 2.0


def test_body_cut_short_is_an_error(bucket, settings):
    images = fetcher(settings(allowed_hosts=(f"127.0.0.1:{bucket.port}",)))
    with pytest.raises(FetchError, match="IncompleteRead"):
        images.fetch(f"{bucket.url}/cut-short")


def test_closed_port_is_a_connection_error(settings):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    images = fetcher(settings(allowed_hosts=(f"127.0.0.1:{port}",)))
    with pytest.raises(FetchError, match=f"cannot connect to 127.0.0.1:{port}"):
        images.fetch(f"http://127.0.0.1:{port}/img.png")


def test_name_that_does_not_resolve_is_an_error(settings):
    images = fetcher(settings(allowed_hosts=("nowhere.test",)), resolver=resolver_for({}))
    with pytest.raises(FetchError, match=r"cannot resolve nowhere\.test"):
        images.fetch("http://nowhere.test/img.png")


# --- a task's image -------------------------------------------------------------------------

TARGET = BrushTarget(from_name="tag", to_name="image", value_key="image", label="Foreground")


def test_task_image_is_fetched_and_decoded_to_rgb(ls, settings):
    task = {"id": 1, "data": {"image": "/data/upload/1/img.png"}}
    image = TaskImages(settings(), fetcher(settings())).image(task, TARGET)
    assert image.shape == (24, 32, 3) and image.dtype == np.uint8


def test_task_without_the_image_field_names_the_key_and_what_it_has():
    with pytest.raises(TaskImageError, match=r"task 5 has no 'image' in its data .*its data keys: 'text'"):
        image_url({"id": 5, "data": {"text": "hello"}}, TARGET)


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/img-404.png", "HTTP 404"),
        ("/page.html", "not an image"),
        ("/truncated.jpeg", "truncated"),
        ("/big.png", "over the limit of 5,000"),
    ],
)
def test_task_image_that_cannot_be_used_is_one_error_naming_task_and_reason(bucket, settings, path, reason):
    limited = settings(allowed_hosts=(f"127.0.0.1:{bucket.port}",), max_pixels=5000)
    task = {"id": 9, "data": {"image": f"{bucket.url}{path}"}}
    with pytest.raises(LOAD_ERRORS, match=rf"^task 9\b.*{reason}"):
        TaskImages(limited, fetcher(limited)).image(task, TARGET)
